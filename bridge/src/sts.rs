//! AWS STS, as far as SDK tooling needs it against a local endpoint: GetCallerIdentity
//! (`aws sts get-caller-identity`, credential checks). Query protocol, XML in the STS
//! namespace; any other action is answered as AWS answers an unknown one.

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Response};
use quick_xml::escape::escape;

use crate::error::AwsError;

pub const STS_XMLNS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";

/// Who the caller is, as GetCallerIdentity reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub account: String,
    pub arn: String,
    pub user_id: String,
}

/// Whether a request is for STS: signed for the `sts` service, or a Query GetCallerIdentity.
pub fn is_sts(scope_service: Option<&str>, parts: &Parts, body: &[u8]) -> bool {
    scope_service == Some("sts")
        || (scope_service.is_none()
            && crate::sqs::query_params(parts, body)
                .iter()
                .any(|(k, v)| k == "Action" && v == "GetCallerIdentity"))
}

/// Serves one STS request for an authenticated caller.
pub fn handle(parts: &Parts, body: &[u8], who: &Identity, request_id: &str) -> Response<Bytes> {
    let params = crate::sqs::query_params(parts, body);
    let action = params
        .iter()
        .find(|(k, _)| k == "Action")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    if action != "GetCallerIdentity" {
        let e = if action.is_empty() {
            AwsError::missing_parameter("The request must contain the parameter Action.")
        } else {
            AwsError::invalid_action(format!(
                "Could not find operation {action} for version 2011-06-15"
            ))
        };
        return error_response(&e, request_id);
    }
    let body = format!(
        "<GetCallerIdentityResponse xmlns=\"{STS_XMLNS}\"><GetCallerIdentityResult>\
         <Arn>{}</Arn><UserId>{}</UserId><Account>{}</Account></GetCallerIdentityResult>\
         <ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata>\
         </GetCallerIdentityResponse>",
        escape(who.arn.as_str()),
        escape(who.user_id.as_str()),
        escape(who.account.as_str()),
        escape(request_id)
    );
    let mut r = Response::new(Bytes::from(body));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml"),
    );
    r
}

/// An error in STS's XML shape.
pub fn error_response(e: &AwsError, request_id: &str) -> Response<Bytes> {
    e.to_xml_response(request_id, STS_XMLNS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(body_type: bool) -> Parts {
        let mut b = http::Request::builder().method("POST").uri("/");
        if body_type {
            b = b.header("content-type", "application/x-www-form-urlencoded");
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn get_caller_identity() {
        let who = Identity {
            account: "000000000000".into(),
            arn: "arn:aws:iam::000000000000:user/guest".into(),
            user_id: "guest".into(),
        };
        let body = b"Action=GetCallerIdentity&Version=2011-06-15";
        assert!(is_sts(None, &parts(true), body));
        assert!(!is_sts(Some("sqs"), &parts(true), body));
        let r = handle(&parts(true), body, &who, "rid");
        assert_eq!(r.status(), 200);
        let s = std::str::from_utf8(r.body()).unwrap();
        assert!(s.contains("<Account>000000000000</Account>"), "{s}");
        assert!(s.contains("<Arn>arn:aws:iam::000000000000:user/guest</Arn>"));
        let r = handle(&parts(true), b"Action=AssumeRole", &who, "rid");
        assert_eq!(r.status(), 400);
        assert!(std::str::from_utf8(r.body())
            .unwrap()
            .contains("<Code>InvalidAction</Code>"));
    }
}
