//! Amazon SNS: the Query protocol (form-encoded `Action=`, XML responses in the 2010-03-31
//! namespace, AWS's `ErrorResponse`) in, one typed [`SnsRequest`] out to an [`SnsBackend`], and
//! its [`SnsResponse`] back as XML.
//!
//! The bridge checks what needs no state (names, ARN syntax, message size and structure,
//! message attributes, batch shapes, tags); the backend owns topics and subscriptions.
//!
//! Layout: [`params`] the Query parameter forms, [`types`] requests and responses,
//! [`validate`] the stateless rules, [`xml`] responses, [`envelope`] what subscribers receive,
//! [`filter`] subscription filter policies, [`signature`] message signatures.

pub mod envelope;
pub mod filter;
pub mod params;
pub mod signature;
pub mod types;
pub mod validate;
pub mod xml;

use std::future::Future;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Response};

pub use types::*;
pub use validate::{SubscriptionArn, TopicArn};

use crate::error::{AwsError, SNS_XMLNS};
use crate::sqs::RequestContext;

/// What the broker implements: one call per decoded, statelessly valid request.
pub trait SnsBackend: Send + Sync {
    fn call(
        &self,
        ctx: &RequestContext,
        request: SnsRequest,
    ) -> impl Future<Output = Result<SnsResponse, AwsError>> + Send;
}

/// Whether a request is for SNS: signed for the `sns` service or, unsigned (`sigv4` off), a
/// Query action only SNS has.
pub fn is_sns(scope_service: Option<&str>, parts: &Parts, body: &[u8]) -> bool {
    match scope_service {
        Some(s) => s == "sns",
        None => crate::sqs::query_params(parts, body).iter().any(|(k, v)| {
            (k == "Action"
                && OPERATIONS.contains(&v.as_str())
                && !crate::sqs::OPERATIONS.contains(&v.as_str()))
                || k == "TopicArn"
        }),
    }
}

/// Decodes a request and applies the stateless rules.
pub fn decode(parts: &Parts, body: &[u8]) -> Result<(&'static str, SnsRequest), AwsError> {
    let params = params::Params::new(crate::sqs::query_params(parts, body));
    let action = params.get("Action").ok_or_else(|| {
        AwsError::missing_parameter("The request must contain the parameter Action.")
    })?;
    let Some(op) = OPERATIONS.iter().copied().find(|o| *o == action) else {
        return Err(AwsError::invalid_action(format!(
            "The action {action} is not valid for this endpoint."
        )));
    };
    let request = SnsRequest::decode(op, &params)?;
    validate(&request)?;
    Ok((op, request))
}

fn validate(request: &SnsRequest) -> Result<(), AwsError> {
    match request {
        SnsRequest::CreateTopic { name, tags, .. } => {
            validate::validate_topic_name(name)?;
            validate::validate_tags(tags)
        }
        SnsRequest::TagResource { tags, .. } => validate::validate_tags(tags),
        SnsRequest::Publish { input, .. } => validate::validate_publish(input),
        SnsRequest::PublishBatch { entries, .. } => validate::validate_batch(entries),
        SnsRequest::AddPermission {
            label,
            account_ids,
            actions,
            ..
        } => {
            let label_ok = !label.is_empty()
                && label.len() <= 80
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !label_ok {
                return Err(AwsError::sns_invalid_parameter(
                    "Invalid parameter: Label Reason: Alphanumeric characters, hyphens and underscores only, 1 to 80 long",
                ));
            }
            if account_ids.is_empty() {
                return Err(AwsError::sns_invalid_parameter(
                    "Invalid parameter: AWSAccountId Reason: At least one account id is required",
                ));
            }
            if actions.is_empty() {
                return Err(AwsError::sns_invalid_parameter(
                    "Invalid parameter: ActionName Reason: At least one action is required",
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Serves one SNS request: decode, call the backend, answer in XML.
pub async fn handle<B: SnsBackend>(
    backend: &B,
    ctx: &RequestContext,
    parts: &Parts,
    body: &[u8],
) -> Response<Bytes> {
    let (op, request) = match decode(parts, body) {
        Ok(r) => r,
        Err(e) => return error_response(&e, &ctx.request_id),
    };
    match backend.call(ctx, request).await {
        Ok(resp) => success_response(op, &resp, &ctx.request_id),
        Err(e) => error_response(&e, &ctx.request_id),
    }
}

pub fn error_response(e: &AwsError, request_id: &str) -> Response<Bytes> {
    e.to_xml_response(request_id, SNS_XMLNS)
}

pub fn success_response(op: &str, resp: &SnsResponse, request_id: &str) -> Response<Bytes> {
    let mut r = Response::new(Bytes::from(xml::response(op, resp, request_id)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml"),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        r.headers_mut().insert("x-amzn-requestid", v);
    }
    r
}

#[cfg(test)]
mod tests;
