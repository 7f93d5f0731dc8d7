//! Amazon SQS: both wire protocols in, one typed [`SqsRequest`] out to an [`SqsBackend`], and
//! its [`SqsResponse`] back in the caller's protocol.
//!
//! - JSON 1.0: `POST /`, `X-Amz-Target: AmazonSQS.<Op>`, a JSON body; used by current SDKs.
//! - Query: `Action=<Op>` form parameters (body or query string), XML responses in the
//!   2012-11-05 namespace; used by older SDKs and tools. The queue URL may also be the path.
//!
//! The bridge checks what needs no state (parameter ranges, batch shapes, attribute names),
//! selects the received attributes a request asked for and computes the MD5 digests; the
//! backend owns queues and messages.

pub mod attributes;
pub mod query;
pub mod types;
pub mod xml;

use std::collections::HashSet;
use std::future::Future;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Response};

pub use attributes::QueueConfig;
pub use types::*;

use crate::error::{AwsError, SQS_XMLNS};
use crate::md5::{md5_of_attributes, md5_of_body};

/// Which SQS wire protocol a request used; its response and errors use the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Json,
    Query,
}

/// Who is calling and where: resolved by the HTTP server (SigV4 scope, configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    /// The 12-digit account the resources live in.
    pub account_id: String,
    pub region: String,
    /// `http://host:port` as the client addressed us; queue URLs start with it.
    pub base_url: String,
    /// The signing access key, when the request was signed (SenderId).
    pub access_key_id: Option<String>,
    pub request_id: String,
}

impl RequestContext {
    pub fn queue_url(&self, name: &str) -> String {
        format!("{}/{}/{}", self.base_url, self.account_id, name)
    }
    pub fn queue_arn(&self, name: &str) -> String {
        format!("arn:aws:sqs:{}:{}:{}", self.region, self.account_id, name)
    }
}

/// What the broker implements: one call per decoded request. Requests reach it validated as
/// far as no state is needed; ReceiveMessage answers carry every attribute (the bridge keeps
/// the ones asked for).
pub trait SqsBackend: Send + Sync {
    fn call(
        &self,
        ctx: &RequestContext,
        request: SqsRequest,
    ) -> impl Future<Output = Result<SqsResponse, AwsError>> + Send;
}

/// The protocol of a request, by its target header or content type. Query is the fallback, as
/// it is AWS's oldest.
pub fn protocol_of(parts: &Parts) -> Protocol {
    let json_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-amz-json"));
    if json_type || parts.headers.contains_key("x-amz-target") {
        Protocol::Json
    } else {
        Protocol::Query
    }
}

/// Query parameters of a request: the query string, then a form body.
pub fn query_params(parts: &Parts, body: &[u8]) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> =
        form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let form = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("application/x-www-form-urlencoded"));
    if form {
        params.extend(form_urlencoded::parse(body).into_owned());
    }
    params
}

/// Decodes a request of either protocol.
pub fn decode(
    protocol: Protocol,
    parts: &Parts,
    body: &[u8],
    ctx: &RequestContext,
) -> Result<SqsRequest, AwsError> {
    let (op, input) = match protocol {
        Protocol::Json => {
            let target = parts
                .headers
                .get("x-amz-target")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let op = target.strip_prefix("AmazonSQS.").unwrap_or("");
            if !OPERATIONS.contains(&op) {
                return Err(unknown_operation(protocol, op));
            }
            let body: &[u8] = match body.iter().find(|b| !b.is_ascii_whitespace()) {
                None => b"{}",
                Some(b'{') => body,
                Some(_) => {
                    return Err(
                        match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                            Err(e) => not_json(&e),
                            Ok(_) => AwsError::serialization("Request body must be a JSON object."),
                        },
                    )
                }
            };
            // Typed straight from the bytes: no intermediate Value on the hot path.
            let decoded = SqsRequest::decode_json(op, body)
                .unwrap_or_else(|| unreachable!("{op} is in OPERATIONS"));
            let request = match decoded {
                Err(e) if e.is_syntax() || e.is_eof() => return Err(not_json(&e)),
                r => r.map_err(|e| input_error(&e))?,
            };
            validate(&request)?;
            return Ok(request);
        }
        Protocol::Query => {
            let params = query_params(parts, body);
            let op = params
                .iter()
                .find(|(k, _)| k == "Action")
                .map(|(_, v)| v.clone())
                .ok_or_else(|| {
                    AwsError::missing_parameter("The request must contain the parameter Action.")
                })?;
            if !OPERATIONS.contains(&op.as_str()) {
                return Err(unknown_operation(protocol, &op));
            }
            let rest: Vec<(String, String)> = params
                .into_iter()
                .filter(|(k, _)| k != "Action" && k != "Version")
                .collect();
            let mut input = query::to_json(&rest);
            // Older clients post to the queue URL instead of passing QueueUrl.
            if let serde_json::Value::Object(m) = &mut input {
                let path = parts.uri.path().trim_matches('/');
                if !m.contains_key("QueueUrl") && path.split('/').count() == 2 {
                    m.insert(
                        "QueueUrl".into(),
                        format!("{}/{}", ctx.base_url, path).into(),
                    );
                }
                if op == "CreateQueue" {
                    // Query says Tag.N, the JSON model says `tags`.
                    if let Some(t) = m.remove("Tags") {
                        m.insert("tags".into(), t);
                    }
                }
            }
            (op, input)
        }
    };
    let request = SqsRequest::decode(&op, input)
        .unwrap_or_else(|| unreachable!("{op} is in OPERATIONS"))
        .map_err(|e| input_error(&e))?;
    validate(&request)?;
    Ok(request)
}

fn not_json(e: &serde_json::Error) -> AwsError {
    AwsError::serialization(format!("Request body is not valid JSON: {e}"))
}

/// A well-formed input of the wrong shape: a missing member is AWS's MissingParameter, any
/// other mismatch InvalidParameterValue. The message leaves out serde_json's "at line L column
/// C" (a body decoded from bytes has one, the Query protocol's decoded value has none).
fn input_error(e: &serde_json::Error) -> AwsError {
    let text = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    let msg = text.strip_suffix(position.as_str()).unwrap_or(&text);
    match msg.strip_prefix("missing field `") {
        Some(rest) => AwsError::missing_parameter(format!(
            "The request must contain the parameter {}.",
            rest.split('`').next().unwrap_or(rest)
        )),
        None => AwsError::invalid_parameter_value(msg),
    }
}

/// AWS's answer to an operation it does not know (and to one Wharf does not serve yet).
pub fn unknown_operation(protocol: Protocol, op: &str) -> AwsError {
    match protocol {
        Protocol::Json => AwsError {
            message: String::new(),
            ..AwsError::invalid_action("")
        },
        Protocol::Query => {
            AwsError::invalid_action(format!("The action {op} is not valid for this endpoint."))
        }
    }
}

fn range(name: &str, v: Option<i64>, lo: i64, hi: i64) -> Result<(), AwsError> {
    match v {
        Some(n) if n < lo || n > hi => Err(AwsError::invalid_parameter_value(format!(
            "Value {n} for parameter {name} is invalid. Reason: Must be between {lo} and {hi}, if provided."
        ))),
        _ => Ok(()),
    }
}

/// Stateless checks, before the backend sees a request. Batch entries are checked one by one
/// by [`validate_send`] so that one bad entry fails alone.
pub fn validate(request: &SqsRequest) -> Result<(), AwsError> {
    match request {
        SqsRequest::CreateQueue(i) => validate_queue_name(&i.queue_name),
        SqsRequest::ReceiveMessage(i) => {
            range("MaxNumberOfMessages", i.max_number_of_messages, 1, 10)?;
            range("VisibilityTimeout", i.visibility_timeout, 0, 43_200)?;
            range("WaitTimeSeconds", i.wait_time_seconds, 0, 20)?;
            match &i.receive_request_attempt_id {
                Some(id) if !valid_attempt_id(id) => Err(AwsError::invalid_parameter_value(format!(
                    "Value {id} for parameter ReceiveRequestAttemptId is invalid. Reason: Must be 1 to 128 alphanumeric or punctuation characters."
                ))),
                _ => Ok(()),
            }
        }
        SqsRequest::ChangeMessageVisibility(i) => {
            range("VisibilityTimeout", Some(i.visibility_timeout), 0, 43_200)
        }
        SqsRequest::SendMessageBatch(i) => batch_ids(i.entries.iter().map(|e| e.id.as_str())),
        SqsRequest::DeleteMessageBatch(i) => batch_ids(i.entries.iter().map(|e| e.id.as_str())),
        SqsRequest::ChangeMessageVisibilityBatch(i) => {
            batch_ids(i.entries.iter().map(|e| e.id.as_str()))
        }
        SqsRequest::ListQueues(i) => range("MaxResults", i.max_results, 1, 1000),
        SqsRequest::ListDeadLetterSourceQueues(i) => range("MaxResults", i.max_results, 1, 1000),
        SqsRequest::StartMessageMoveTask(i) => range(
            "MaxNumberOfMessagesPerSecond",
            i.max_number_of_messages_per_second,
            1,
            500,
        ),
        SqsRequest::ListMessageMoveTasks(i) => range("MaxResults", i.max_results, 1, 10),
        SqsRequest::AddPermission(i) => {
            let label_ok = !i.label.is_empty()
                && i.label.len() <= 80
                && i.label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !label_ok {
                return Err(AwsError::invalid_parameter_value(format!(
                    "Value {} for parameter Label is invalid. Reason: Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length.",
                    i.label
                )));
            }
            if i.aws_account_ids.is_empty() || i.actions.is_empty() {
                return Err(AwsError::missing_parameter(
                    "The request must contain the parameters AWSAccountIds and Actions.",
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// ReceiveRequestAttemptId (and deduplication ids): 1–128 ASCII letters, digits and
/// punctuation.
fn valid_attempt_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b.is_ascii_punctuation())
}

/// Queue names: 1–80 characters of letters, digits, `-` and `_`, plus `.fifo` for FIFO queues.
pub fn validate_queue_name(name: &str) -> Result<(), AwsError> {
    let base = name.strip_suffix(".fifo").unwrap_or(name);
    let ok = !base.is_empty()
        && name.len() <= 80
        && base
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(AwsError::invalid_parameter_value(
            "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length",
        ))
    }
}

/// The batch rules: 1–10 entries, distinct ids of at most 80 letters, digits, `-`, `_`.
fn batch_ids<'a>(ids: impl ExactSizeIterator<Item = &'a str>) -> Result<(), AwsError> {
    let n = ids.len();
    if n == 0 {
        return Err(AwsError::empty_batch_request(
            "There should be at least one entry in the request.",
        ));
    }
    if n > 10 {
        return Err(AwsError::too_many_entries_in_batch_request(format!(
            "Maximum number of entries per request are 10. You have sent {n}."
        )));
    }
    let mut seen = HashSet::new();
    for id in ids {
        let valid = !id.is_empty()
            && id.len() <= 80
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(AwsError::invalid_batch_entry_id(
                "A batch entry id can only contain alphanumeric characters, hyphens and underscores. It can be at most 80 letters long.",
            ));
        }
        if !seen.insert(id) {
            return Err(AwsError::batch_entry_ids_not_distinct(format!(
                "Id {id} repeated."
            )));
        }
    }
    Ok(())
}

/// Characters SQS accepts in a body: #x9 #xA #xD #x20–#xD7FF #xE000–#xFFFD #x10000–#x10FFFF.
fn valid_body_char(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// Checks one message to send (SendMessage or a batch entry) against SQS's stateless rules;
/// the size limit is the queue's, checked by the backend with [`message_size`].
pub fn validate_send(i: &SendMessageInput) -> Result<(), AwsError> {
    if i.message_body.is_empty() {
        return Err(AwsError::missing_parameter(
            "The request must contain the parameter MessageBody.",
        ));
    }
    if !i.message_body.chars().all(valid_body_char) {
        return Err(AwsError::invalid_message_contents(
            "Invalid characters found. Valid unicode characters are #x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to #xFFFD | #x10000 to #x10FFFF",
        ));
    }
    range("DelaySeconds", i.delay_seconds, 0, 900)?;
    if i.message_attributes.len() > 10 {
        return Err(AwsError::invalid_parameter_value(format!(
            "Number of message attributes [{}] exceeds the allowed maximum [10].",
            i.message_attributes.len()
        )));
    }
    for (name, v) in &i.message_attributes {
        let ok_name = !name.is_empty()
            && name.len() <= 256
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
            && !name.starts_with('.')
            && !name.ends_with('.')
            && !name.contains("..")
            && !name.to_ascii_lowercase().starts_with("aws.")
            && !name.to_ascii_lowercase().starts_with("amazon.");
        if !ok_name {
            return Err(AwsError::invalid_parameter_value(format!(
                "Message (user) attribute name '{name}' is invalid."
            )));
        }
        v.value(name)?;
    }
    for (name, v) in &i.message_system_attributes {
        if name != "AWSTraceHeader" {
            return Err(AwsError::invalid_parameter_value(format!(
                "Message system attribute name '{name}' is invalid."
            )));
        }
        v.value(name)?;
    }
    Ok(())
}

/// The size SQS counts against MaximumMessageSize: body plus attribute names, types and
/// values.
pub fn message_size(i: &SendMessageInput) -> usize {
    body_and_attributes_size(&i.message_body, &i.message_attributes)
}

/// [`message_size`] of a body and its message attributes.
pub fn body_and_attributes_size(body: &str, attributes: &MessageAttributes) -> usize {
    body.len()
        + attributes
            .iter()
            .map(|(k, v)| {
                k.len()
                    + v.data_type.len()
                    + v.string_value.as_ref().map_or(0, String::len)
                    + v.binary_value.as_ref().map_or(0, |b| b.len() * 3 / 4)
            })
            .sum::<usize>()
}

fn digest(attrs: &MessageAttributes) -> Option<String> {
    let values: Vec<(&str, &str, crate::md5::AttrValue)> = attrs
        .iter()
        .filter_map(|(k, v)| {
            v.value(k)
                .ok()
                .map(|val| (k.as_str(), v.data_type.as_str(), val))
        })
        .collect();
    md5_of_attributes(values.iter().map(|(k, t, v)| (*k, *t, v)))
}

impl SendMessageOutput {
    /// The answer to a sent message: its id and the digests of what was sent.
    pub fn for_input(
        i: &SendMessageInput,
        message_id: String,
        sequence_number: Option<String>,
    ) -> Self {
        SendMessageOutput {
            message_id,
            md5_of_message_body: md5_of_body(&i.message_body),
            md5_of_message_attributes: digest(&i.message_attributes),
            md5_of_message_system_attributes: digest(&i.message_system_attributes),
            sequence_number,
        }
    }
}

/// Keeps the attributes a ReceiveMessage asked for and fills the digests.
fn finish_receive(req: &ReceiveMessageInput, out: &mut ReceiveMessageOutput) {
    let mut system_names = req.attribute_names.clone();
    system_names.extend(req.message_system_attribute_names.iter().cloned());
    for m in &mut out.messages {
        m.attributes = attributes::select_system_attributes(&m.attributes, &system_names);
        m.message_attributes = attributes::select_message_attributes(
            &m.message_attributes,
            &req.message_attribute_names,
        );
        m.md5_of_body = md5_of_body(&m.body);
        m.md5_of_message_attributes = digest(&m.message_attributes);
    }
}

/// Serves one SQS request: decode, call the backend, encode, in the request's protocol.
pub async fn handle<B: SqsBackend>(
    backend: &B,
    ctx: &RequestContext,
    parts: &Parts,
    body: &[u8],
) -> Response<Bytes> {
    let protocol = protocol_of(parts);
    let request = match decode(protocol, parts, body, ctx) {
        Ok(r) => r,
        Err(e) => return error_response(protocol, &e, &ctx.request_id),
    };
    let receive = match &request {
        SqsRequest::ReceiveMessage(r) => Some(r.clone()),
        _ => None,
    };
    match backend.call(ctx, request).await {
        Ok(mut resp) => {
            if let (Some(req), SqsResponse::ReceiveMessage(out)) = (&receive, &mut resp) {
                finish_receive(req, out);
            }
            success_response(protocol, &resp, &ctx.request_id)
        }
        Err(e) => error_response(protocol, &e, &ctx.request_id),
    }
}

/// An error in the request's protocol.
pub fn error_response(protocol: Protocol, e: &AwsError, request_id: &str) -> Response<Bytes> {
    match protocol {
        Protocol::Json => e.to_json_response(request_id),
        Protocol::Query => e.to_xml_response(request_id, SQS_XMLNS),
    }
}

/// A success in the request's protocol.
pub fn success_response(
    protocol: Protocol,
    resp: &SqsResponse,
    request_id: &str,
) -> Response<Bytes> {
    let (body, content_type) = match protocol {
        Protocol::Json => (resp.to_json_vec(), "application/x-amz-json-1.0"),
        Protocol::Query => (
            xml::response(resp.operation(), &resp.to_json(), request_id).into_bytes(),
            "text/xml",
        ),
    };
    let mut r = Response::new(Bytes::from(body));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        r.headers_mut().insert("x-amzn-requestid", v);
    }
    r
}

#[cfg(test)]
mod tests;
