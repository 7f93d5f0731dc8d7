//! The SNS operations we serve, their inputs (decoded from Query parameters) and outputs.

use std::collections::BTreeMap;

use crate::error::AwsError;
use crate::sqs::MessageAttributes;

use super::params::Params;

/// Declares every operation by name; an operation is either in this list and fully wired, or
/// answered as AWS answers an unknown action.
pub const OPERATIONS: &[&str] = &[
    "CreateTopic",
    "DeleteTopic",
    "ListTopics",
    "GetTopicAttributes",
    "SetTopicAttributes",
    "Subscribe",
    "ConfirmSubscription",
    "Unsubscribe",
    "ListSubscriptions",
    "ListSubscriptionsByTopic",
    "GetSubscriptionAttributes",
    "SetSubscriptionAttributes",
    "Publish",
    "PublishBatch",
    "TagResource",
    "UntagResource",
    "ListTagsForResource",
    "AddPermission",
    "RemovePermission",
];

/// One message to publish: Publish, or one PublishBatch entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishInput {
    pub message: String,
    pub subject: Option<String>,
    /// `json`: `message` is a JSON object of per-protocol messages with a `default`.
    pub message_structure: Option<String>,
    pub message_attributes: MessageAttributes,
    pub message_deduplication_id: Option<String>,
    pub message_group_id: Option<String>,
}

impl PublishInput {
    fn decode(p: &Params) -> Result<Self, AwsError> {
        Ok(PublishInput {
            message: p.string("Message").unwrap_or_default(),
            subject: p.string("Subject"),
            message_structure: p.string("MessageStructure"),
            message_attributes: p.message_attributes("MessageAttributes")?,
            message_deduplication_id: p.string("MessageDeduplicationId"),
            message_group_id: p.string("MessageGroupId"),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishBatchEntry {
    pub id: String,
    pub input: PublishInput,
}

/// A decoded SNS request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnsRequest {
    CreateTopic {
        name: String,
        attributes: BTreeMap<String, String>,
        tags: BTreeMap<String, String>,
    },
    DeleteTopic {
        topic_arn: String,
    },
    ListTopics {
        next_token: Option<String>,
    },
    GetTopicAttributes {
        topic_arn: String,
    },
    SetTopicAttributes {
        topic_arn: String,
        name: String,
        value: String,
    },
    Subscribe {
        topic_arn: String,
        protocol: String,
        endpoint: Option<String>,
        attributes: BTreeMap<String, String>,
        return_subscription_arn: bool,
    },
    ConfirmSubscription {
        topic_arn: String,
        token: String,
    },
    Unsubscribe {
        subscription_arn: String,
    },
    ListSubscriptions {
        next_token: Option<String>,
    },
    ListSubscriptionsByTopic {
        topic_arn: String,
        next_token: Option<String>,
    },
    GetSubscriptionAttributes {
        subscription_arn: String,
    },
    SetSubscriptionAttributes {
        subscription_arn: String,
        name: String,
        value: String,
    },
    Publish {
        /// TopicArn, or TargetArn naming a topic.
        topic_arn: String,
        input: PublishInput,
    },
    PublishBatch {
        topic_arn: String,
        entries: Vec<PublishBatchEntry>,
    },
    TagResource {
        resource_arn: String,
        tags: BTreeMap<String, String>,
    },
    UntagResource {
        resource_arn: String,
        tag_keys: Vec<String>,
    },
    ListTagsForResource {
        resource_arn: String,
    },
    AddPermission {
        topic_arn: String,
        label: String,
        account_ids: Vec<String>,
        actions: Vec<String>,
    },
    RemovePermission {
        topic_arn: String,
        label: String,
    },
}

impl SnsRequest {
    /// Decodes operation `op` (one of [`OPERATIONS`]) from its parameters.
    pub fn decode(op: &str, p: &Params) -> Result<SnsRequest, AwsError> {
        use SnsRequest as R;
        Ok(match op {
            "CreateTopic" => R::CreateTopic {
                name: p.required("Name")?,
                attributes: p.string_map("Attributes"),
                tags: p.tags("Tags")?,
            },
            "DeleteTopic" => R::DeleteTopic {
                topic_arn: p.required("TopicArn")?,
            },
            "ListTopics" => R::ListTopics {
                next_token: p.string("NextToken"),
            },
            "GetTopicAttributes" => R::GetTopicAttributes {
                topic_arn: p.required("TopicArn")?,
            },
            "SetTopicAttributes" => R::SetTopicAttributes {
                topic_arn: p.required("TopicArn")?,
                name: p.required("AttributeName")?,
                value: p.string("AttributeValue").unwrap_or_default(),
            },
            "Subscribe" => R::Subscribe {
                topic_arn: p.required("TopicArn")?,
                protocol: p.required("Protocol")?,
                endpoint: p.string("Endpoint"),
                attributes: p.string_map("Attributes"),
                return_subscription_arn: p.bool("ReturnSubscriptionArn")?.unwrap_or(false),
            },
            "ConfirmSubscription" => R::ConfirmSubscription {
                topic_arn: p.required("TopicArn")?,
                token: p.required("Token")?,
            },
            "Unsubscribe" => R::Unsubscribe {
                subscription_arn: p.required("SubscriptionArn")?,
            },
            "ListSubscriptions" => R::ListSubscriptions {
                next_token: p.string("NextToken"),
            },
            "ListSubscriptionsByTopic" => R::ListSubscriptionsByTopic {
                topic_arn: p.required("TopicArn")?,
                next_token: p.string("NextToken"),
            },
            "GetSubscriptionAttributes" => R::GetSubscriptionAttributes {
                subscription_arn: p.required("SubscriptionArn")?,
            },
            "SetSubscriptionAttributes" => R::SetSubscriptionAttributes {
                subscription_arn: p.required("SubscriptionArn")?,
                name: p.required("AttributeName")?,
                value: p.string("AttributeValue").unwrap_or_default(),
            },
            "Publish" => {
                if p.get("PhoneNumber").is_some() {
                    return Err(AwsError::sns_invalid_parameter(
                        "Invalid parameter: PhoneNumber Reason: Wharf does not deliver SMS",
                    ));
                }
                let topic_arn = match (p.string("TopicArn"), p.string("TargetArn")) {
                    (Some(_), Some(_)) => {
                        return Err(AwsError::sns_invalid_parameter(
                            "Invalid parameter: TopicArn or TargetArn Reason: Only one of them may be specified",
                        ))
                    }
                    (Some(t), None) | (None, Some(t)) => t,
                    (None, None) => {
                        return Err(AwsError::sns_invalid_parameter(
                            "Invalid parameter: TopicArn or TargetArn Reason: no value for required parameter",
                        ))
                    }
                };
                R::Publish {
                    topic_arn,
                    input: PublishInput::decode(p)?,
                }
            }
            "PublishBatch" => R::PublishBatch {
                topic_arn: p.required("TopicArn")?,
                entries: p
                    .members("PublishBatchRequestEntries")
                    .iter()
                    .map(|m| {
                        Ok(PublishBatchEntry {
                            id: m.string("Id").unwrap_or_default(),
                            input: PublishInput::decode(m)?,
                        })
                    })
                    .collect::<Result<_, AwsError>>()?,
            },
            "TagResource" => R::TagResource {
                resource_arn: p.required("ResourceArn")?,
                tags: p.tags("Tags")?,
            },
            "UntagResource" => R::UntagResource {
                resource_arn: p.required("ResourceArn")?,
                tag_keys: p.list("TagKeys"),
            },
            "ListTagsForResource" => R::ListTagsForResource {
                resource_arn: p.required("ResourceArn")?,
            },
            "AddPermission" => R::AddPermission {
                topic_arn: p.required("TopicArn")?,
                label: p.required("Label")?,
                account_ids: p.list("AWSAccountId"),
                actions: p.list("ActionName"),
            },
            "RemovePermission" => R::RemovePermission {
                topic_arn: p.required("TopicArn")?,
                label: p.required("Label")?,
            },
            other => unreachable!("{other} is not in OPERATIONS"),
        })
    }
}

/// One subscription as the List operations show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSummary {
    pub subscription_arn: String,
    pub owner: String,
    pub protocol: String,
    pub endpoint: String,
    pub topic_arn: String,
}

/// One failed PublishBatch entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchResultErrorEntry {
    pub id: String,
    pub code: String,
    pub message: String,
    pub sender_fault: bool,
}

impl BatchResultErrorEntry {
    pub fn from_error(id: &str, e: &AwsError) -> Self {
        BatchResultErrorEntry {
            id: id.to_string(),
            code: e.code.to_string(),
            message: e.message.clone(),
            sender_fault: e.fault == crate::error::Fault::Sender,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishResult {
    pub message_id: String,
    /// FIFO topics only.
    pub sequence_number: Option<String>,
}

/// A backend's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnsResponse {
    /// Operations whose result is empty.
    Empty,
    TopicArn(String),
    SubscriptionArn(String),
    Topics {
        topic_arns: Vec<String>,
        next_token: Option<String>,
    },
    Attributes(BTreeMap<String, String>),
    Subscriptions {
        subscriptions: Vec<SubscriptionSummary>,
        next_token: Option<String>,
    },
    Published(PublishResult),
    PublishedBatch {
        successful: Vec<(String, PublishResult)>,
        failed: Vec<BatchResultErrorEntry>,
    },
    Tags(BTreeMap<String, String>),
}
