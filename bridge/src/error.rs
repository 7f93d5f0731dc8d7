//! AWS error shapes. One [`AwsError`] carries both names AWS gives an error: the Query protocol
//! code (`AWS.SimpleQueueService.NonExistentQueue`), which JSON responses repeat in the
//! `x-amzn-query-error` header for SDKs in query-compatible mode, and the JSON `__type` shape
//! (`com.amazonaws.sqs#QueueDoesNotExist`).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

/// Who is to blame, as AWS reports it (`Sender` = client error, `Receiver` = server error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Sender,
    Receiver,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Sender => "Sender",
            Fault::Receiver => "Receiver",
        }
    }
}

/// An error as AWS returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsError {
    /// Query-protocol code, also the code SDKs report (`x-amzn-query-error`).
    pub code: &'static str,
    /// JSON `__type`, with its namespace.
    pub json_type: &'static str,
    pub status: StatusCode,
    pub fault: Fault,
    pub message: String,
}

/// Declares the errors we return: constructor name, Query code, JSON `__type`, HTTP status.
macro_rules! aws_errors {
    ($($fn_name:ident => $code:literal, $json:literal, $status:literal;)*) => {
        impl AwsError {
            $(
                pub fn $fn_name(message: impl Into<String>) -> AwsError {
                    let status = StatusCode::from_u16($status).unwrap_or(StatusCode::BAD_REQUEST);
                    AwsError {
                        code: $code,
                        json_type: $json,
                        status,
                        fault: if $status >= 500 { Fault::Receiver } else { Fault::Sender },
                        message: message.into(),
                    }
                }
            )*
        }
    };
}

aws_errors! {
    // Common errors (every AWS Query/JSON service).
    missing_authentication_token => "MissingAuthenticationToken",
        "com.amazon.coral.service#MissingAuthenticationTokenException", 403;
    incomplete_signature => "IncompleteSignature",
        "com.amazon.coral.service#IncompleteSignatureException", 400;
    invalid_client_token_id => "InvalidClientTokenId",
        "com.amazon.coral.service#UnrecognizedClientException", 403;
    signature_does_not_match => "SignatureDoesNotMatch",
        "com.amazon.coral.service#InvalidSignatureException", 403;
    request_expired => "RequestExpired",
        "com.amazon.coral.service#RequestExpired", 400;
    access_denied => "AccessDenied", "com.amazon.coral.service#AccessDeniedException", 403;
    // Query protocol's name for an action it does not know; JSON's is UnknownOperation.
    invalid_action => "InvalidAction", "com.amazon.coral.service#UnknownOperationException", 400;
    missing_parameter => "MissingParameter", "com.amazonaws.sqs#MissingParameter", 400;
    invalid_parameter_value => "InvalidParameterValue",
        "com.amazonaws.sqs#InvalidParameterValueException", 400;
    serialization => "SerializationException",
        "com.amazon.coral.service#SerializationException", 400;
    internal => "InternalFailure", "com.amazon.coral.service#InternalFailure", 500;
    // SQS errors: codes from the SQS API reference, JSON shapes from its Smithy model.
    queue_does_not_exist => "AWS.SimpleQueueService.NonExistentQueue",
        "com.amazonaws.sqs#QueueDoesNotExist", 400;
    queue_already_exists => "QueueAlreadyExists", "com.amazonaws.sqs#QueueNameExists", 400;
    queue_deleted_recently => "AWS.SimpleQueueService.QueueDeletedRecently",
        "com.amazonaws.sqs#QueueDeletedRecently", 400;
    invalid_attribute_name => "InvalidAttributeName", "com.amazonaws.sqs#InvalidAttributeName", 400;
    invalid_attribute_value => "InvalidAttributeValue",
        "com.amazonaws.sqs#InvalidAttributeValue", 400;
    invalid_message_contents => "InvalidMessageContents",
        "com.amazonaws.sqs#InvalidMessageContents", 400;
    receipt_handle_is_invalid => "ReceiptHandleIsInvalid",
        "com.amazonaws.sqs#ReceiptHandleIsInvalid", 400;
    message_not_inflight => "AWS.SimpleQueueService.MessageNotInflight",
        "com.amazonaws.sqs#MessageNotInflight", 400;
    empty_batch_request => "AWS.SimpleQueueService.EmptyBatchRequest",
        "com.amazonaws.sqs#EmptyBatchRequest", 400;
    batch_entry_ids_not_distinct => "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
        "com.amazonaws.sqs#BatchEntryIdsNotDistinct", 400;
    too_many_entries_in_batch_request => "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
        "com.amazonaws.sqs#TooManyEntriesInBatchRequest", 400;
    invalid_batch_entry_id => "AWS.SimpleQueueService.InvalidBatchEntryId",
        "com.amazonaws.sqs#InvalidBatchEntryId", 400;
    batch_request_too_long => "AWS.SimpleQueueService.BatchRequestTooLong",
        "com.amazonaws.sqs#BatchRequestTooLong", 400;
    purge_queue_in_progress => "AWS.SimpleQueueService.PurgeQueueInProgress",
        "com.amazonaws.sqs#PurgeQueueInProgress", 403;
    unsupported_operation => "AWS.SimpleQueueService.UnsupportedOperation",
        "com.amazonaws.sqs#UnsupportedOperation", 400;
    resource_not_found => "ResourceNotFoundException",
        "com.amazonaws.sqs#ResourceNotFoundException", 404;
    // SNS errors (Query protocol only): codes and statuses from SNS's API model.
    sns_invalid_parameter => "InvalidParameter", "com.amazonaws.sns#InvalidParameterException", 400;
    sns_invalid_parameter_value => "ParameterValueInvalid",
        "com.amazonaws.sns#InvalidParameterValueException", 400;
    sns_not_found => "NotFound", "com.amazonaws.sns#NotFoundException", 404;
    sns_resource_not_found => "ResourceNotFound",
        "com.amazonaws.sns#ResourceNotFoundException", 404;
    sns_authorization_error => "AuthorizationError",
        "com.amazonaws.sns#AuthorizationErrorException", 403;
    sns_internal_error => "InternalError", "com.amazonaws.sns#InternalErrorException", 500;
    sns_tag_limit_exceeded => "TagLimitExceeded",
        "com.amazonaws.sns#TagLimitExceededException", 400;
    sns_empty_batch_request => "EmptyBatchRequest",
        "com.amazonaws.sns#EmptyBatchRequestException", 400;
    sns_too_many_entries_in_batch_request => "TooManyEntriesInBatchRequest",
        "com.amazonaws.sns#TooManyEntriesInBatchRequestException", 400;
    sns_batch_entry_ids_not_distinct => "BatchEntryIdsNotDistinct",
        "com.amazonaws.sns#BatchEntryIdsNotDistinctException", 400;
    sns_invalid_batch_entry_id => "InvalidBatchEntryId",
        "com.amazonaws.sns#InvalidBatchEntryIdException", 400;
    sns_batch_request_too_long => "BatchRequestTooLong",
        "com.amazonaws.sns#BatchRequestTooLongException", 400;
    sns_validation => "ValidationException", "com.amazonaws.sns#ValidationException", 400;
}

/// The XML namespace of SQS Query responses (API version 2012-11-05).
pub const SQS_XMLNS: &str = "http://queue.amazonaws.com/doc/2012-11-05/";
/// The XML namespace of SNS responses (API version 2010-03-31).
pub const SNS_XMLNS: &str = "http://sns.amazonaws.com/doc/2010-03-31/";

impl AwsError {
    /// The JSON 1.0 rendering: `{"__type": ..., "message": ...}` plus `x-amzn-query-error`
    /// (`Code;Fault`), which botocore reads to report the Query code.
    pub fn to_json_response(&self, request_id: &str) -> Response<Bytes> {
        let body = serde_json::json!({ "__type": self.json_type, "message": self.message });
        let mut resp = Response::new(Bytes::from(body.to_string()));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-amz-json-1.0"),
        );
        if let Ok(v) = HeaderValue::from_str(&format!("{};{}", self.code, self.fault.as_str())) {
            h.insert("x-amzn-query-error", v);
        }
        if let Ok(v) = HeaderValue::from_str(request_id) {
            h.insert("x-amzn-requestid", v);
        }
        resp
    }

    /// The Query protocol rendering: an `ErrorResponse` document.
    pub fn to_xml_response(&self, request_id: &str, xmlns: &str) -> Response<Bytes> {
        let body = format!(
            "<?xml version=\"1.0\"?><ErrorResponse xmlns=\"{xmlns}\"><Error><Type>{}</Type>\
             <Code>{}</Code><Message>{}</Message><Detail/></Error><RequestId>{}</RequestId>\
             </ErrorResponse>",
            self.fault.as_str(),
            self.code,
            quick_xml::escape::escape(self.message.as_str()),
            quick_xml::escape::escape(request_id),
        );
        let mut resp = Response::new(Bytes::from(body));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/xml"),
        );
        if let Ok(v) = HeaderValue::from_str(request_id) {
            resp.headers_mut().insert("x-amzn-requestid", v);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_error_has_type_message_and_query_error_header() {
        let e = AwsError::queue_does_not_exist("The specified queue does not exist.");
        let r = e.to_json_response("rid");
        assert_eq!(r.status(), 400);
        assert_eq!(
            r.headers()["x-amzn-query-error"],
            "AWS.SimpleQueueService.NonExistentQueue;Sender"
        );
        let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v["__type"], "com.amazonaws.sqs#QueueDoesNotExist");
        assert_eq!(v["message"], "The specified queue does not exist.");
    }

    #[test]
    fn xml_error_escapes_message() {
        let e = AwsError::invalid_parameter_value("a<b & c");
        let r = e.to_xml_response("rid", SQS_XMLNS);
        let s = std::str::from_utf8(r.body()).unwrap();
        assert!(s.contains("<Code>InvalidParameterValue</Code>"), "{s}");
        assert!(s.contains("<Message>a&lt;b &amp; c</Message>"), "{s}");
        assert!(s.contains("<Type>Sender</Type>"));
    }

    #[test]
    fn server_errors_are_receiver_faults() {
        let e = AwsError::internal("x");
        assert_eq!(e.status, 500);
        assert_eq!(e.fault, Fault::Receiver);
    }
}
