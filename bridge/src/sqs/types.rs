//! The SQS operations we serve, their inputs and outputs. Member names are the JSON protocol's
//! (PascalCase, plus the few camelCase ones AWS's model has); the Query protocol is turned into
//! the same shape by [`super::query`] before deserializing, so one type serves both.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::AwsError;
use crate::md5::AttrValue;

/// Integers arrive as JSON numbers (JSON protocol) or as text (Query protocol).
fn lenient_int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum IntOrText {
        Int(i64),
        Text(String),
    }
    match Option::<IntOrText>::deserialize(d)? {
        None => Ok(None),
        Some(IntOrText::Int(i)) => Ok(Some(i)),
        Some(IntOrText::Text(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("invalid integer {s:?}"))),
    }
}

fn required_int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    lenient_int(d)?.ok_or_else(|| serde::de::Error::custom("integer expected"))
}

/// A message (or message system) attribute, as both protocols carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MessageAttributeValue {
    pub data_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_value: Option<String>,
    /// Base64 on the wire in both protocols.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_value: Option<String>,
}

impl MessageAttributeValue {
    pub fn string(data_type: impl Into<String>, v: impl Into<String>) -> Self {
        MessageAttributeValue {
            data_type: data_type.into(),
            string_value: Some(v.into()),
            binary_value: None,
        }
    }
    pub fn binary(data_type: impl Into<String>, v: &[u8]) -> Self {
        use base64::Engine as _;
        MessageAttributeValue {
            data_type: data_type.into(),
            string_value: None,
            binary_value: Some(base64::engine::general_purpose::STANDARD.encode(v)),
        }
    }

    /// The value as the MD5 digest and the engine see it. Checks what SQS checks: a known base
    /// type and a value of the matching kind.
    pub fn value(&self, name: &str) -> Result<AttrValue, AwsError> {
        use base64::Engine as _;
        let base = self.data_type.split('.').next().unwrap_or("");
        match base {
            "String" | "Number" => match &self.string_value {
                Some(s) if !s.is_empty() => {
                    if base == "Number" && s.parse::<f64>().is_err() {
                        return Err(AwsError::invalid_parameter_value(format!(
                            "Can't cast the value of message (user) attribute '{name}' to a number."
                        )));
                    }
                    Ok(AttrValue::String(s.clone()))
                }
                _ => Err(AwsError::invalid_parameter_value(format!(
                    "Message (user) attribute '{name}' must contain a non-empty value of type '{}'.",
                    self.data_type
                ))),
            },
            "Binary" => match &self.binary_value {
                Some(b) => base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .ok()
                    .filter(|b| !b.is_empty())
                    .map(AttrValue::Binary)
                    .ok_or_else(|| {
                        AwsError::invalid_parameter_value(format!(
                            "Message (user) attribute '{name}' must contain a non-empty value of type 'Binary'."
                        ))
                    }),
                None => Err(AwsError::invalid_parameter_value(format!(
                    "Message (user) attribute '{name}' must contain a non-empty value of type 'Binary'."
                ))),
            },
            _ => Err(AwsError::invalid_parameter_value(format!(
                "The type of message (user) attribute '{name}' is invalid. You must use only the following supported type prefixes: Binary, Number, String."
            ))),
        }
    }
}

pub type Attributes = BTreeMap<String, String>;
pub type MessageAttributes = BTreeMap<String, MessageAttributeValue>;

/// Declares every operation: its name, input type and output type. The request and response
/// enums and the decoder by name are generated from this one list, so an operation is either
/// fully wired or absent (and then answered as AWS answers an unknown operation).
macro_rules! operations {
    ($($op:ident($input:ty) -> $output:ty;)*) => {
        /// A decoded SQS request.
        #[derive(Debug, Clone, PartialEq)]
        pub enum SqsRequest { $($op($input),)* }

        /// A backend's answer to an [`SqsRequest`].
        #[derive(Debug, Clone, PartialEq)]
        pub enum SqsResponse { $($op($output),)* }

        impl SqsRequest {
            /// Decodes the JSON-shaped input of operation `op`; `None` for an operation we do
            /// not serve.
            pub(crate) fn decode(
                op: &str,
                input: serde_json::Value,
            ) -> Option<Result<SqsRequest, serde_json::Error>> {
                match op {
                    $(stringify!($op) => Some(
                        serde_json::from_value::<$input>(input).map(SqsRequest::$op)
                    ),)*
                    _ => None,
                }
            }

            /// [`SqsRequest::decode`] straight from a JSON body, without building a
            /// `serde_json::Value` first (the JSON protocol's hot path).
            pub(crate) fn decode_json(
                op: &str,
                body: &[u8],
            ) -> Option<Result<SqsRequest, serde_json::Error>> {
                match op {
                    $(stringify!($op) => Some(
                        serde_json::from_slice::<$input>(body).map(SqsRequest::$op)
                    ),)*
                    _ => None,
                }
            }

            pub fn operation(&self) -> &'static str {
                match self { $(SqsRequest::$op(_) => stringify!($op),)* }
            }
        }

        impl SqsResponse {
            pub fn operation(&self) -> &'static str {
                match self { $(SqsResponse::$op(_) => stringify!($op),)* }
            }

            /// The JSON protocol's body, serialized straight from the output.
            pub fn to_json_vec(&self) -> Vec<u8> {
                match self {
                    $(SqsResponse::$op(o) => serde_json::to_vec(o)
                        .unwrap_or_else(|_| b"null".to_vec()),)*
                }
            }

            /// The output as a JSON value (the Query protocol builds its XML from it).
            pub fn to_json(&self) -> serde_json::Value {
                match self {
                    $(SqsResponse::$op(o) => serde_json::to_value(o)
                        .unwrap_or(serde_json::Value::Null),)*
                }
            }
        }

        /// Every operation this bridge serves, by name.
        pub const OPERATIONS: &[&str] = &[$(stringify!($op),)*];
    };
}

operations! {
    CreateQueue(CreateQueueInput) -> QueueUrlOutput;
    GetQueueUrl(GetQueueUrlInput) -> QueueUrlOutput;
    ListQueues(ListQueuesInput) -> ListQueuesOutput;
    DeleteQueue(QueueUrlInput) -> Empty;
    PurgeQueue(QueueUrlInput) -> Empty;
    GetQueueAttributes(GetQueueAttributesInput) -> AttributesOutput;
    SetQueueAttributes(SetQueueAttributesInput) -> Empty;
    SendMessage(SendMessageInput) -> SendMessageOutput;
    SendMessageBatch(SendMessageBatchInput) -> SendMessageBatchOutput;
    ReceiveMessage(ReceiveMessageInput) -> ReceiveMessageOutput;
    DeleteMessage(DeleteMessageInput) -> Empty;
    DeleteMessageBatch(DeleteMessageBatchInput) -> BatchOutput;
    ChangeMessageVisibility(ChangeMessageVisibilityInput) -> Empty;
    ChangeMessageVisibilityBatch(ChangeMessageVisibilityBatchInput) -> BatchOutput;
    TagQueue(TagQueueInput) -> Empty;
    UntagQueue(UntagQueueInput) -> Empty;
    ListQueueTags(QueueUrlInput) -> TagsOutput;
    ListDeadLetterSourceQueues(ListDeadLetterSourceQueuesInput) -> ListDeadLetterSourceQueuesOutput;
    StartMessageMoveTask(StartMessageMoveTaskInput) -> StartMessageMoveTaskOutput;
    ListMessageMoveTasks(ListMessageMoveTasksInput) -> ListMessageMoveTasksOutput;
    CancelMessageMoveTask(CancelMessageMoveTaskInput) -> CancelMessageMoveTaskOutput;
    AddPermission(AddPermissionInput) -> Empty;
    RemovePermission(RemovePermissionInput) -> Empty;
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Empty {}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateQueueInput {
    pub queue_name: String,
    #[serde(default)]
    pub attributes: Attributes,
    /// camelCase in AWS's model.
    #[serde(default, rename = "tags")]
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetQueueUrlInput {
    pub queue_name: String,
    #[serde(default, rename = "QueueOwnerAWSAccountId")]
    pub queue_owner_aws_account_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct QueueUrlOutput {
    pub queue_url: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListQueuesInput {
    #[serde(default)]
    pub queue_name_prefix: Option<String>,
    #[serde(default)]
    pub next_token: Option<String>,
    #[serde(default, deserialize_with = "lenient_int")]
    pub max_results: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListQueuesOutput {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub queue_urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct QueueUrlInput {
    pub queue_url: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetQueueAttributesInput {
    pub queue_url: String,
    #[serde(default)]
    pub attribute_names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AttributesOutput {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: Attributes,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SetQueueAttributesInput {
    pub queue_url: String,
    pub attributes: Attributes,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SendMessageInput {
    pub queue_url: String,
    pub message_body: String,
    #[serde(default, deserialize_with = "lenient_int")]
    pub delay_seconds: Option<i64>,
    #[serde(default)]
    pub message_attributes: MessageAttributes,
    #[serde(default)]
    pub message_system_attributes: MessageAttributes,
    #[serde(default)]
    pub message_deduplication_id: Option<String>,
    #[serde(default)]
    pub message_group_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SendMessageOutput {
    #[serde(rename = "MessageId")]
    pub message_id: String,
    #[serde(rename = "MD5OfMessageBody")]
    pub md5_of_message_body: String,
    #[serde(
        rename = "MD5OfMessageAttributes",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub md5_of_message_attributes: Option<String>,
    #[serde(
        rename = "MD5OfMessageSystemAttributes",
        skip_serializing_if = "Option::is_none"
    )]
    pub md5_of_message_system_attributes: Option<String>,
    #[serde(rename = "SequenceNumber", skip_serializing_if = "Option::is_none")]
    pub sequence_number: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SendMessageBatchEntry {
    pub id: String,
    pub message_body: String,
    #[serde(default, deserialize_with = "lenient_int")]
    pub delay_seconds: Option<i64>,
    #[serde(default)]
    pub message_attributes: MessageAttributes,
    #[serde(default)]
    pub message_system_attributes: MessageAttributes,
    #[serde(default)]
    pub message_deduplication_id: Option<String>,
    #[serde(default)]
    pub message_group_id: Option<String>,
}

impl SendMessageBatchEntry {
    /// The entry as a single SendMessage, so one code path validates and sends both. Moves
    /// the body and attributes (no copy); `queue_url` is left empty: the batch's queue was
    /// found already.
    pub fn into_send(self) -> (String, SendMessageInput) {
        (
            self.id,
            SendMessageInput {
                queue_url: String::new(),
                message_body: self.message_body,
                delay_seconds: self.delay_seconds,
                message_attributes: self.message_attributes,
                message_system_attributes: self.message_system_attributes,
                message_deduplication_id: self.message_deduplication_id,
                message_group_id: self.message_group_id,
            },
        )
    }

    /// What the entry counts toward a batch's total size (see [`crate::sqs::message_size`]).
    pub fn size(&self) -> usize {
        crate::sqs::body_and_attributes_size(&self.message_body, &self.message_attributes)
    }

    /// The entry as a single SendMessage, so one code path validates and sends both.
    pub fn to_send(&self, queue_url: &str) -> SendMessageInput {
        SendMessageInput {
            queue_url: queue_url.to_string(),
            message_body: self.message_body.clone(),
            delay_seconds: self.delay_seconds,
            message_attributes: self.message_attributes.clone(),
            message_system_attributes: self.message_system_attributes.clone(),
            message_deduplication_id: self.message_deduplication_id.clone(),
            message_group_id: self.message_group_id.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SendMessageBatchInput {
    pub queue_url: String,
    pub entries: Vec<SendMessageBatchEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SendMessageBatchResultEntry {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(flatten)]
    pub result: SendMessageOutput,
}

/// A failed batch entry, as every batch operation reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct BatchResultErrorEntry {
    pub id: String,
    pub sender_fault: bool,
    pub code: String,
    pub message: String,
}

impl BatchResultErrorEntry {
    pub fn from_error(id: &str, e: &AwsError) -> Self {
        BatchResultErrorEntry {
            id: id.to_string(),
            sender_fault: e.fault == crate::error::Fault::Sender,
            code: e.code.to_string(),
            message: e.message.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SendMessageBatchOutput {
    pub successful: Vec<SendMessageBatchResultEntry>,
    pub failed: Vec<BatchResultErrorEntry>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReceiveMessageInput {
    pub queue_url: String,
    /// Deprecated by AWS in favour of `MessageSystemAttributeNames`; both are honoured.
    #[serde(default)]
    pub attribute_names: Vec<String>,
    #[serde(default)]
    pub message_system_attribute_names: Vec<String>,
    #[serde(default)]
    pub message_attribute_names: Vec<String>,
    #[serde(default, deserialize_with = "lenient_int")]
    pub max_number_of_messages: Option<i64>,
    #[serde(default, deserialize_with = "lenient_int")]
    pub visibility_timeout: Option<i64>,
    #[serde(default, deserialize_with = "lenient_int")]
    pub wait_time_seconds: Option<i64>,
    #[serde(default)]
    pub receive_request_attempt_id: Option<String>,
}

/// A received message. Backends fill every system and message attribute; the bridge keeps the
/// ones the request named and computes the digests. Deserialize: the broker journals the
/// answers of FIFO receive attempts so they replay after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    #[serde(rename = "MessageId")]
    pub message_id: String,
    #[serde(rename = "ReceiptHandle")]
    pub receipt_handle: String,
    #[serde(rename = "MD5OfBody")]
    pub md5_of_body: String,
    #[serde(rename = "Body")]
    pub body: String,
    #[serde(
        rename = "Attributes",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub attributes: Attributes,
    #[serde(
        rename = "MD5OfMessageAttributes",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub md5_of_message_attributes: Option<String>,
    #[serde(
        rename = "MessageAttributes",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub message_attributes: MessageAttributes,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReceiveMessageOutput {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<Message>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeleteMessageInput {
    pub queue_url: String,
    pub receipt_handle: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeleteMessageBatchEntry {
    pub id: String,
    pub receipt_handle: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeleteMessageBatchInput {
    pub queue_url: String,
    pub entries: Vec<DeleteMessageBatchEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct BatchResultEntry {
    pub id: String,
}

/// The output of DeleteMessageBatch and ChangeMessageVisibilityBatch.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct BatchOutput {
    pub successful: Vec<BatchResultEntry>,
    pub failed: Vec<BatchResultErrorEntry>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ChangeMessageVisibilityInput {
    pub queue_url: String,
    pub receipt_handle: String,
    #[serde(deserialize_with = "required_int")]
    pub visibility_timeout: i64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ChangeMessageVisibilityBatchEntry {
    pub id: String,
    pub receipt_handle: String,
    #[serde(deserialize_with = "required_int")]
    pub visibility_timeout: i64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ChangeMessageVisibilityBatchInput {
    pub queue_url: String,
    pub entries: Vec<ChangeMessageVisibilityBatchEntry>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TagQueueInput {
    pub queue_url: String,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UntagQueueInput {
    pub queue_url: String,
    pub tag_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TagsOutput {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListDeadLetterSourceQueuesInput {
    pub queue_url: String,
    #[serde(default)]
    pub next_token: Option<String>,
    #[serde(default, deserialize_with = "lenient_int")]
    pub max_results: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListDeadLetterSourceQueuesOutput {
    /// camelCase in AWS's model.
    #[serde(rename = "queueUrls")]
    pub queue_urls: Vec<String>,
    #[serde(rename = "NextToken", skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StartMessageMoveTaskInput {
    pub source_arn: String,
    #[serde(default)]
    pub destination_arn: Option<String>,
    #[serde(default, deserialize_with = "lenient_int")]
    pub max_number_of_messages_per_second: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StartMessageMoveTaskOutput {
    pub task_handle: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListMessageMoveTasksInput {
    pub source_arn: String,
    #[serde(default, deserialize_with = "lenient_int")]
    pub max_results: Option<i64>,
}

/// One message move task as ListMessageMoveTasks reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MessageMoveTask {
    /// Only while the task is RUNNING, as AWS reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_handle: Option<String>,
    /// RUNNING, COMPLETED, CANCELLING, CANCELLED or FAILED.
    pub status: String,
    pub source_arn: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_number_of_messages_per_second: Option<i64>,
    pub approximate_number_of_messages_moved: i64,
    pub approximate_number_of_messages_to_move: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// Milliseconds since the epoch.
    pub started_timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListMessageMoveTasksOutput {
    pub results: Vec<MessageMoveTask>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CancelMessageMoveTaskInput {
    pub task_handle: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CancelMessageMoveTaskOutput {
    pub approximate_number_of_messages_moved: i64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AddPermissionInput {
    pub queue_url: String,
    pub label: String,
    #[serde(rename = "AWSAccountIds")]
    pub aws_account_ids: Vec<String>,
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RemovePermissionInput {
    pub queue_url: String,
    pub label: String,
}
