//! The property the fuzz target (bridge/fuzz) and the seed replay test assert. Public only with
//! the `fuzzing` feature: it panics by design.
//!
//! Input: an HTTP request as text, `METHOD TARGET\n`, then `name: value\n` header lines, an
//! empty line, and the body (everything after it, bytes). The seeds in
//! `bridge/fuzz/seeds/requests/` are real boto3/botocore requests in this form
//! (`bridge/fuzz/request_seeds.py`), so mutations start from what SDKs send. Lines the `http`
//! crate refuses (bad method, URI, header name or value) are skipped: hyper refuses them before
//! the bridge sees a request.
//!
//! Whatever the bytes, the request parsers must not panic, and:
//! - `sigv4::parse` finds parameters or refuses with a 400 (IncompleteSignature); `verify` of
//!   what it found answers with a 4xx (or success), never a panic on odd dates, scopes or
//!   signatures;
//! - `sqs::decode`, under both protocols and under the one the headers pick, gives a request
//!   that passes `validate` again, or an AWS error of status 4xx (a 5xx would tell the SDK to
//!   retry a request that can never succeed), whose response renders in that protocol;
//! - a decoded SendMessage's digests compute; STS routing and answering never fail with a 5xx;
//! - `sns::decode` gives a request, or an AWS error of status 4xx rendered as SNS XML; a
//!   decoded Publish's per-protocol message picks without failing.

use http::request::Parts;
use http::{HeaderName, HeaderValue, Method, Request};

use crate::sqs::{self, Protocol, RequestContext, SqsRequest};
use crate::{sigv4, sns, sts};

/// The request in the input, or `None` when `http` refuses its request line.
pub fn parse_input(data: &[u8]) -> Option<(Parts, &[u8])> {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &data[data.len()..]),
    };
    let mut lines = head.split(|&b| b == b'\n');
    let request_line = lines.next()?;
    let sp = request_line.iter().position(|&b| b == b' ')?;
    let method = Method::from_bytes(&request_line[..sp]).ok()?;
    let target = std::str::from_utf8(&request_line[sp + 1..]).ok()?;
    let mut builder = Request::builder().method(method).uri(target);
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = line[colon + 1..]
            .strip_prefix(b" ")
            .unwrap_or(&line[colon + 1..]);
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            builder = builder.header(n, v);
        }
    }
    let (parts, ()) = builder.body(()).ok()?.into_parts();
    Some((parts, body))
}

/// Checks every property above on one input; panics on a violation.
pub fn check(data: &[u8]) {
    let Some((parts, body)) = parse_input(data) else {
        return;
    };
    let scope_service = check_sigv4(&parts, body);
    let ctx = RequestContext {
        account_id: "000000000000".into(),
        region: "us-east-1".into(),
        base_url: "http://localhost:4566".into(),
        access_key_id: None,
        request_id: "fuzz".into(),
    };
    for protocol in [sqs::protocol_of(&parts), Protocol::Json, Protocol::Query] {
        check_decode(protocol, &parts, body, &ctx);
    }
    // Routing must not panic either, whatever the service.
    let _ = sns::is_sns(scope_service.as_deref(), &parts, body);
    check_sns_decode(&parts, body);
    if sts::is_sts(scope_service.as_deref(), &parts, body) {
        let who = sts::Identity {
            arn: "arn:aws:iam::000000000000:user/guest".into(),
            user_id: "guest".into(),
            account: "000000000000".into(),
        };
        let r = sts::handle(&parts, body, &who, "fuzz");
        assert!(r.status().as_u16() < 500, "STS answered {}", r.status());
    }
}

/// SigV4 parsing and verification; returns the scope's service for STS routing.
fn check_sigv4(parts: &Parts, body: &[u8]) -> Option<String> {
    match sigv4::parse(parts) {
        Ok(None) => None,
        Ok(Some(signed)) => {
            // At the request's own time, so the signature comparison runs when the date parses.
            let now = sigv4::parse_amz_date(&signed.amz_date).unwrap_or(0);
            if let Err(e) = sigv4::verify(parts, body, &signed, "fuzz-secret", now) {
                assert!(e.status.is_client_error(), "verify: {e:?}");
            }
            Some(signed.scope.service)
        }
        Err(e) => {
            assert_eq!(e.code, "IncompleteSignature", "parse: {e:?}");
            assert_eq!(e.status.as_u16(), 400);
            None
        }
    }
}

fn check_sns_decode(parts: &Parts, body: &[u8]) {
    match sns::decode(parts, body) {
        Ok((_, sns::SnsRequest::Publish { input, .. })) => {
            let json = sns::validate::is_json_structure(&input);
            let _ = sns::envelope::message_for(&input.message, json, "sqs");
        }
        Ok(_) => {}
        Err(e) => {
            assert!(e.status.is_client_error(), "SNS decode: {e:?}");
            let r = sns::error_response(&e, "fuzz");
            assert_eq!(r.status(), e.status);
        }
    }
}

fn check_decode(protocol: Protocol, parts: &Parts, body: &[u8], ctx: &RequestContext) {
    match sqs::decode(protocol, parts, body, ctx) {
        Ok(request) => {
            sqs::validate(&request).expect("a decoded request is valid");
            if let SqsRequest::SendMessage(i) = &request {
                let out = sqs::SendMessageOutput::for_input(i, "id".into(), None);
                assert_eq!(out.md5_of_message_body.len(), 32);
            }
        }
        Err(e) => {
            assert!(e.status.is_client_error(), "{protocol:?} decode: {e:?}");
            let r = sqs::error_response(protocol, &e, &ctx.request_id);
            assert_eq!(r.status(), e.status);
            if protocol == Protocol::Json {
                let v: serde_json::Value =
                    serde_json::from_slice(r.body()).expect("JSON error body parses");
                assert_eq!(v["__type"], e.json_type);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed corpus of the fuzz target, replayed by `cargo test -p bridge`.
    #[test]
    fn seed_corpus_replays() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/requests");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).expect("seed directory") {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            check(&data);
            n += 1;
        }
        assert!(n >= 20, "only {n} seeds");
    }

    /// The seeds are real requests: most must parse and decode, or the corpus is not exercising
    /// the decoders at all.
    #[test]
    fn seeds_decode_as_sqs_requests() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/requests");
        let ctx = RequestContext {
            account_id: "000000000000".into(),
            region: "us-east-1".into(),
            base_url: "http://localhost:4566".into(),
            access_key_id: None,
            request_id: "t".into(),
        };
        let (mut ok, mut total) = (0, 0);
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if !path
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("sqs_")
            {
                continue;
            }
            total += 1;
            let data = std::fs::read(&path).unwrap();
            let (parts, body) = parse_input(&data).expect("seed parses");
            let protocol = sqs::protocol_of(&parts);
            match sqs::decode(protocol, &parts, body, &ctx) {
                Ok(_) => ok += 1,
                Err(e) => panic!("{}: {e:?}", path.display()),
            }
            // Signed by botocore with guest/guest: the verifier must accept them at their time.
            let signed = sigv4::parse(&parts).unwrap().expect("seed is signed");
            let now = sigv4::parse_amz_date(&signed.amz_date).unwrap();
            sigv4::verify(&parts, body, &signed, "guest", now)
                .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
        }
        assert!(total >= 20 && ok == total);
    }
}
