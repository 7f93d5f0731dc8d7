//! AWS Signature Version 4 verification, for the `Authorization` header form and for presigned
//! URLs (`X-Amz-Signature` in the query).
//!
//! The canonical request is rebuilt from the request exactly as AWS's signing guide (and
//! botocore's `SigV4Auth`) define it: method, URI-encoded path, sorted re-encoded query,
//! canonical headers (lower-case names, trimmed values with inner runs of spaces collapsed,
//! repeated headers joined by `,`), the signed header list, and the payload hash
//! (`x-amz-content-sha256` when sent, else the SHA-256 of the body). The signature is compared
//! in constant time by `hmac`'s `verify_slice`.

use hmac::{Hmac, Mac};
use http::request::Parts;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

use crate::error::AwsError;

type HmacSha256 = Hmac<Sha256>;

/// Clock skew AWS tolerates between the signer and the service.
pub const MAX_SKEW_SECS: i64 = 15 * 60;
/// Longest presigned URL lifetime AWS accepts (7 days).
pub const MAX_PRESIGN_EXPIRES_SECS: i64 = 7 * 24 * 3600;

/// RFC 3986 unreserved characters stay; everything else is percent-encoded (AWS's UriEncode).
const AWS_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// The same for paths, where `/` separates segments and stays.
const AWS_PATH: &AsciiSet = &AWS_UNRESERVED.remove(b'/');

/// The credential scope of a request: who claims to sign it, for which day, region, service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub access_key_id: String,
    /// `YYYYMMDD`.
    pub date: String,
    pub region: String,
    pub service: String,
}

/// The SigV4 parameters found in a request, before verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequest {
    pub scope: Scope,
    pub signed_headers: Vec<String>,
    pub signature: String,
    /// `X-Amz-Date` (ISO 8601 basic, `20150830T123600Z`).
    pub amz_date: String,
    /// Presigned URLs: lifetime in seconds from `amz_date`.
    pub expires_secs: Option<i64>,
}

/// Finds the SigV4 parameters of a request. `Ok(None)`: the request carries no signature at
/// all; `Err`: it carries a malformed one (AWS's IncompleteSignature).
pub fn parse(parts: &Parts) -> Result<Option<SignedRequest>, AwsError> {
    if let Some(auth) = parts.headers.get(http::header::AUTHORIZATION) {
        let auth = auth
            .to_str()
            .map_err(|_| AwsError::incomplete_signature("Authorization header is not ASCII"))?;
        return parse_authorization(auth, parts).map(Some);
    }
    let query = query_pairs(parts.uri.query().unwrap_or(""));
    if !query.iter().any(|(k, _)| k == "X-Amz-Signature") {
        return Ok(None);
    }
    let get = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| {
                AwsError::incomplete_signature(format!(
                    "AWS query-string parameters must include '{name}'."
                ))
            })
    };
    if get("X-Amz-Algorithm")? != "AWS4-HMAC-SHA256" {
        return Err(AwsError::incomplete_signature(
            "Unsupported AWS 'algorithm': only AWS4-HMAC-SHA256 is supported.",
        ));
    }
    let expires_secs = get("X-Amz-Expires")?
        .parse::<i64>()
        .ok()
        .filter(|e| (0..=MAX_PRESIGN_EXPIRES_SECS).contains(e))
        .ok_or_else(|| AwsError::incomplete_signature("X-Amz-Expires is not valid."))?;
    Ok(Some(SignedRequest {
        scope: parse_credential(&get("X-Amz-Credential")?)?,
        signed_headers: get("X-Amz-SignedHeaders")?
            .split(';')
            .map(str::to_string)
            .collect(),
        signature: get("X-Amz-Signature")?,
        amz_date: get("X-Amz-Date")?,
        expires_secs: Some(expires_secs),
    }))
}

fn parse_authorization(auth: &str, parts: &Parts) -> Result<SignedRequest, AwsError> {
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(|| {
        AwsError::incomplete_signature(
            "Unsupported Authorization header: expected AWS4-HMAC-SHA256.",
        )
    })?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for field in rest.split(',') {
        let (k, v) = field.trim().split_once('=').unwrap_or((field.trim(), ""));
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => signature = Some(v),
            _ => {}
        }
    }
    let missing = |what: &str| {
        AwsError::incomplete_signature(format!(
            "Authorization header requires '{what}' parameter. Authorization={auth}"
        ))
    };
    let amz_date = parts
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            AwsError::incomplete_signature(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
            )
        })?
        .to_string();
    Ok(SignedRequest {
        scope: parse_credential(credential.ok_or_else(|| missing("Credential"))?)?,
        signed_headers: signed
            .ok_or_else(|| missing("SignedHeaders"))?
            .split(';')
            .map(str::to_string)
            .collect(),
        signature: signature.ok_or_else(|| missing("Signature"))?.to_string(),
        amz_date,
        expires_secs: None,
    })
}

fn parse_credential(c: &str) -> Result<Scope, AwsError> {
    let f: Vec<&str> = c.split('/').collect();
    match f.as_slice() {
        [key, date, region, service, "aws4_request"] if !key.is_empty() => Ok(Scope {
            access_key_id: key.to_string(),
            date: date.to_string(),
            region: region.to_string(),
            service: service.to_string(),
        }),
        _ => Err(AwsError::incomplete_signature(format!(
            "Credential should be scoped to a valid region and service: {c}"
        ))),
    }
}

/// Checks the signature of a request whose SigV4 parameters [`parse`] found, with the secret
/// of its access key, at `now_unix` (seconds). Errors are AWS's: RequestExpired for a date out
/// of the allowed window, SignatureDoesNotMatch for a wrong signature.
pub fn verify(
    parts: &Parts,
    body: &[u8],
    signed: &SignedRequest,
    secret: &str,
    now_unix: i64,
) -> Result<(), AwsError> {
    verify_with(parts, body, signed, secret, now_unix, None)
}

/// [`verify`], taking the signing key from `keys` when it was derived before (one HMAC per
/// request instead of five).
pub fn verify_cached(
    parts: &Parts,
    body: &[u8],
    signed: &SignedRequest,
    secret: &str,
    now_unix: i64,
    keys: &SigningKeys,
) -> Result<(), AwsError> {
    verify_with(parts, body, signed, secret, now_unix, Some(keys))
}

fn verify_with(
    parts: &Parts,
    body: &[u8],
    signed: &SignedRequest,
    secret: &str,
    now_unix: i64,
    keys: Option<&SigningKeys>,
) -> Result<(), AwsError> {
    let when = parse_amz_date(&signed.amz_date).ok_or_else(|| {
        AwsError::incomplete_signature(format!("Invalid X-Amz-Date: {}", signed.amz_date))
    })?;
    if !signed.amz_date.starts_with(&signed.scope.date) {
        return Err(AwsError::signature_does_not_match(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP",
        ));
    }
    match signed.expires_secs {
        Some(expires) => {
            if now_unix > when + expires || when > now_unix + MAX_SKEW_SECS {
                return Err(AwsError::request_expired("Request has expired."));
            }
        }
        None => {
            if (now_unix - when).abs() > MAX_SKEW_SECS {
                return Err(AwsError::request_expired(format!(
                    "Signature expired: {} is now outside the allowed 15 minute window.",
                    signed.amz_date
                )));
            }
        }
    }
    let presigned = signed.expires_secs.is_some();
    let canonical = canonical_request(parts, body, &signed.signed_headers, presigned);
    let sts = string_to_sign(&signed.amz_date, &signed.scope, &canonical);
    let key = match keys {
        Some(keys) => keys.get(secret, &signed.scope),
        None => signing_key(secret, &signed.scope),
    };
    let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(sts.as_bytes());
    let given = hex::decode(&signed.signature).unwrap_or_default();
    mac.verify_slice(&given).map_err(|_| {
        AwsError::signature_does_not_match(
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method. Consult the service \
             documentation for details.",
        )
    })
}

/// Seconds since the Unix epoch of an `X-Amz-Date` value.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let dt = time::PrimitiveDateTime::parse(s, format).ok()?;
    Some(dt.assume_utc().unix_timestamp())
}

/// The canonical request. Presigned URLs leave `X-Amz-Signature` out of the query.
pub fn canonical_request(
    parts: &Parts,
    body: &[u8],
    signed_headers: &[String],
    presigned: bool,
) -> String {
    let path = parts.uri.path();
    let path = if path.is_empty() { "/" } else { path };
    let mut query: Vec<(String, String)> = query_pairs(parts.uri.query().unwrap_or(""))
        .into_iter()
        .filter(|(k, _)| !(presigned && k == "X-Amz-Signature"))
        .map(|(k, v)| (aws_encode(&k), aws_encode(&v)))
        .collect();
    query.sort();
    let query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    // One buffer, no per-header allocations: this runs on every request.
    let mut out = String::with_capacity(256 + query.len() + 64 * signed_headers.len());
    out.push_str(parts.method.as_str());
    out.push('\n');
    for piece in utf8_percent_encode(path, AWS_PATH) {
        out.push_str(piece);
    }
    out.push('\n');
    out.push_str(&query);
    out.push('\n');
    for name in signed_headers {
        out.push_str(name);
        out.push(':');
        let mut values = parts.headers.get_all(name.as_str()).iter().peekable();
        if values.peek().is_none() && name == "host" {
            // HTTP/1.1 clients send Host; hyper exposes it as a header, HTTP/2 as the
            // authority.
            if let Some(a) = parts.uri.authority() {
                out.push_str(a.as_str());
            }
        }
        for (i, v) in values.enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_trim_all(&mut out, &String::from_utf8_lossy(v.as_bytes()));
        }
        out.push('\n');
    }
    out.push('\n');
    for (i, name) in signed_headers.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        out.push_str(name);
    }
    out.push('\n');
    match parts
        .headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
    {
        Some(given) => out.push_str(given),
        None => out.push_str(&hex::encode(Sha256::digest(body))),
    }
    out
}

fn string_to_sign(amz_date: &str, scope: &Scope, canonical: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{}/{}/{}/aws4_request\n{}",
        scope.date,
        scope.region,
        scope.service,
        hex::encode(Sha256::digest(canonical.as_bytes()))
    )
}

fn hmac(key: &[u8], data: &str) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().into()
}

fn signing_key(secret: &str, scope: &Scope) -> [u8; 32] {
    let k = hmac(format!("AWS4{secret}").as_bytes(), &scope.date);
    let k = hmac(&k, &scope.region);
    let k = hmac(&k, &scope.service);
    hmac(&k, "aws4_request")
}

/// Derived signing keys by (secret, date, region, service): a key is valid for a whole day, so
/// a client's requests of that day share one derivation (4 HMACs) instead of paying it each.
/// The caller owns the cache (the bridge keeps no state of its own); it is emptied when it
/// reaches `SIGNING_KEYS_MAX` entries, so stale days and unknown scopes cannot grow it.
#[derive(Debug, Default)]
pub struct SigningKeys {
    keys: std::sync::Mutex<std::collections::HashMap<String, [u8; 32]>>,
}

/// Most keys a [`SigningKeys`] holds before it starts over.
const SIGNING_KEYS_MAX: usize = 1024;

impl SigningKeys {
    /// The signing key of `secret` for `scope`, derived on first use.
    pub fn get(&self, secret: &str, scope: &Scope) -> [u8; 32] {
        // NUL cannot occur in any of the four (header values and secrets are printable).
        let id = format!(
            "{secret}\0{}\0{}\0{}",
            scope.date, scope.region, scope.service
        );
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = keys.get(&id) {
            return *k;
        }
        let k = signing_key(secret, scope);
        if keys.len() >= SIGNING_KEYS_MAX {
            keys.clear();
        }
        keys.insert(id, k);
        k
    }

    /// How many keys are cached.
    pub fn len(&self) -> usize {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Signs a canonical request: used by tests and by anything in Wharf that calls AWS-shaped
/// endpoints of itself.
pub fn sign(secret: &str, scope: &Scope, amz_date: &str, canonical: &str) -> String {
    let key = signing_key(secret, scope);
    hex::encode(hmac(&key, &string_to_sign(amz_date, scope, canonical)))
}

fn aws_encode(s: &str) -> String {
    utf8_percent_encode(s, AWS_UNRESERVED).to_string()
}

/// Splits a raw query string into decoded pairs. `+` stays a plus: SigV4 signers encode spaces
/// as `%20`, and a literal `+` must survive re-encoding as `%2B`.
fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                percent_decode_str(k).decode_utf8_lossy().into_owned(),
                percent_decode_str(v).decode_utf8_lossy().into_owned(),
            )
        })
        .collect()
}

/// Trims a header value and collapses inner runs of spaces to one, as SigV4's Trimall does.
#[cfg(test)]
fn trim_all(v: &str) -> String {
    let mut out = String::new();
    push_trim_all(&mut out, v);
    out
}

/// [`trim_all`] appended to `out`.
fn push_trim_all(out: &mut String, v: &str) {
    for (i, word) in v.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(word);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    const AWS_TEST_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    /// AWS's published SigV4 test suite, case `get-vanilla`.
    #[test]
    fn aws_test_suite_get_vanilla() {
        let p = parts(
            "GET",
            "/",
            &[
                ("host", "example.amazonaws.com"),
                ("x-amz-date", "20150830T123600Z"),
                (
                    "authorization",
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                     SignedHeaders=host;x-amz-date, \
                     Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
                ),
            ],
        );
        let signed = parse(&p).unwrap().unwrap();
        assert_eq!(signed.scope.service, "service");
        let now = parse_amz_date("20150830T123600Z").unwrap();
        verify(&p, b"", &signed, AWS_TEST_SECRET, now).unwrap();
        // One character of the secret off: no match.
        let e = verify(
            &p,
            b"",
            &signed,
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEZ",
            now,
        )
        .unwrap_err();
        assert_eq!(e.code, "SignatureDoesNotMatch");
        assert_eq!(e.status, 403);
    }

    /// AWS's published SigV4 test suite, case `post-x-www-form-urlencoded`.
    #[test]
    fn aws_test_suite_post_form() {
        let p = parts(
            "POST",
            "/",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("host", "example.amazonaws.com"),
                ("x-amz-date", "20150830T123600Z"),
            ],
        );
        let body = b"Param1=value1";
        let signed_headers: Vec<String> = ["content-type", "host", "x-amz-date"]
            .map(String::from)
            .to_vec();
        let cr = canonical_request(&p, body, &signed_headers, false);
        let scope = Scope {
            access_key_id: "AKIDEXAMPLE".into(),
            date: "20150830".into(),
            region: "us-east-1".into(),
            service: "service".into(),
        };
        assert_eq!(
            sign(AWS_TEST_SECRET, &scope, "20150830T123600Z", &cr),
            "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"
        );
    }

    // A request botocore 1.44.8 signed for SQS (JSON protocol), captured with
    // tests/python/sigv4_capture.py.
    include!("sigv4_botocore_fixture.rs");

    #[test]
    fn botocore_signed_sqs_request_verifies() {
        let mut b = http::Request::builder().method("POST").uri(BOTOCORE_URI);
        for (k, v) in BOTOCORE_HEADERS {
            b = b.header(*k, *v);
        }
        let p = b.body(()).unwrap().into_parts().0;
        let signed = parse(&p).unwrap().unwrap();
        assert_eq!(signed.scope.service, "sqs");
        assert_eq!(signed.scope.region, "eu-west-1");
        let now = parse_amz_date(&signed.amz_date).unwrap();
        verify(&p, BOTOCORE_BODY.as_bytes(), &signed, BOTOCORE_SECRET, now).unwrap();
        // A changed body fails.
        let e = verify(&p, b"{}", &signed, BOTOCORE_SECRET, now).unwrap_err();
        assert_eq!(e.code, "SignatureDoesNotMatch");
        // Sixteen minutes later the signature has expired.
        let e = verify(
            &p,
            BOTOCORE_BODY.as_bytes(),
            &signed,
            BOTOCORE_SECRET,
            now + 16 * 60,
        )
        .unwrap_err();
        assert_eq!(e.code, "RequestExpired");
    }

    #[test]
    fn botocore_presigned_url_verifies() {
        let p = parts("GET", BOTOCORE_PRESIGNED, &[("host", BOTOCORE_HOST)]);
        let signed = parse(&p).unwrap().unwrap();
        assert_eq!(signed.expires_secs, Some(300));
        let t = parse_amz_date(&signed.amz_date).unwrap();
        verify(&p, b"", &signed, BOTOCORE_SECRET, t + 299).unwrap();
        let e = verify(&p, b"", &signed, BOTOCORE_SECRET, t + 301).unwrap_err();
        assert_eq!(e.code, "RequestExpired");
        let tampered = BOTOCORE_PRESIGNED.replace("QueueName=", "QueueName=x");
        let p = parts("GET", &tampered, &[("host", BOTOCORE_HOST)]);
        let e = verify(&p, b"", &signed, BOTOCORE_SECRET, t).unwrap_err();
        assert_eq!(e.code, "SignatureDoesNotMatch");
    }

    #[test]
    fn malformed_authorization_is_incomplete_signature() {
        let p = parts(
            "POST",
            "/",
            &[
                ("x-amz-date", "20150830T123600Z"),
                (
                    "authorization",
                    "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1",
                ),
            ],
        );
        assert_eq!(parse(&p).unwrap_err().code, "IncompleteSignature");
        let p = parts("POST", "/", &[]);
        assert_eq!(parse(&p).unwrap(), None);
    }

    #[test]
    fn signing_key_cache_matches_derivation_and_keys_by_scope() {
        let keys = SigningKeys::default();
        let scope = Scope {
            access_key_id: "AKID".into(),
            date: "20150830".into(),
            region: "us-east-1".into(),
            service: "sqs".into(),
        };
        let first = keys.get("secret", &scope);
        assert_eq!(first, signing_key("secret", &scope));
        // Cached: the same key, no new entry.
        assert_eq!(keys.get("secret", &scope), first);
        assert_eq!(keys.len(), 1);
        // Another day, region, service or secret derives its own key.
        for other in [
            Scope {
                date: "20150831".into(),
                ..scope.clone()
            },
            Scope {
                region: "eu-west-1".into(),
                ..scope.clone()
            },
            Scope {
                service: "sns".into(),
                ..scope.clone()
            },
        ] {
            let k = keys.get("secret", &other);
            assert_eq!(k, signing_key("secret", &other));
            assert_ne!(k, first);
        }
        assert_ne!(keys.get("other", &scope), first);
        assert_eq!(keys.len(), 5);
        // The access key id is not part of the derivation: one entry per secret and scope.
        let same = Scope {
            access_key_id: "AKID2".into(),
            ..scope.clone()
        };
        assert_eq!(keys.get("secret", &same), first);
        assert_eq!(keys.len(), 5);
    }

    #[test]
    fn trim_all_collapses_spaces() {
        assert_eq!(trim_all("  a   b  c "), "a b c");
    }
}
