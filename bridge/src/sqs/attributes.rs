//! Queue attributes: AWS's names, defaults and validation ranges, and the typed
//! [`QueueConfig`] a backend keeps. Also the selection of received-message attributes
//! (`All`, names, `prefix.*`).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::types::{Attributes, MessageAttributes};
use crate::error::AwsError;

/// Largest message AWS accepts today (1 MiB); also the upper bound of MaximumMessageSize.
pub const MAX_MESSAGE_BYTES_CEILING: u32 = 1024 * 1024;

/// Attributes a backend computes; read-only for clients.
pub const COMPUTED: &[&str] = &[
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
    "CreatedTimestamp",
    "LastModifiedTimestamp",
    "QueueArn",
];

/// `RedrivePolicy`, as JSON inside the attribute string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedrivePolicy {
    pub dead_letter_target_arn: String,
    pub max_receive_count: u32,
}

/// The settable attributes of a queue, typed, with AWS's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    pub delay_secs: u32,
    pub maximum_message_bytes: u32,
    pub retention_secs: u32,
    pub receive_wait_secs: u32,
    pub visibility_timeout_secs: u32,
    pub redrive_policy: Option<RedrivePolicy>,
    /// Kept as given (JSON): only reported back.
    pub redrive_allow_policy: Option<String>,
    pub policy: Option<String>,
    pub kms_master_key_id: Option<String>,
    pub kms_data_key_reuse_secs: u32,
    pub sqs_managed_sse: bool,
    pub fifo: bool,
    pub content_based_deduplication: bool,
    pub deduplication_scope: String,
    pub fifo_throughput_limit: String,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            delay_secs: 0,
            maximum_message_bytes: 262_144,
            retention_secs: 345_600,
            receive_wait_secs: 0,
            visibility_timeout_secs: 30,
            redrive_policy: None,
            redrive_allow_policy: None,
            policy: None,
            kms_master_key_id: None,
            kms_data_key_reuse_secs: 300,
            // New queues get SSE-SQS by default since 2022.
            sqs_managed_sse: true,
            fifo: false,
            content_based_deduplication: false,
            deduplication_scope: "queue".into(),
            fifo_throughput_limit: "perQueue".into(),
        }
    }
}

fn invalid(name: &str) -> AwsError {
    AwsError::invalid_attribute_value(format!("Invalid value for the parameter {name}."))
}

fn int_in(name: &str, v: &str, lo: u32, hi: u32) -> Result<u32, AwsError> {
    v.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (lo..=hi).contains(n))
        .ok_or_else(|| invalid(name))
}

fn boolean(name: &str, v: &str) -> Result<bool, AwsError> {
    match v.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(name)),
    }
}

impl QueueConfig {
    /// Applies attributes as CreateQueue (`creating`) or SetQueueAttributes does, validating
    /// each against AWS's ranges. `FifoQueue` may only be given at creation.
    pub fn apply(&mut self, attrs: &Attributes, creating: bool) -> Result<(), AwsError> {
        let mut next = self.clone();
        for (name, v) in attrs {
            match name.as_str() {
                "DelaySeconds" => next.delay_secs = int_in(name, v, 0, 900)?,
                "MaximumMessageSize" => {
                    next.maximum_message_bytes = int_in(name, v, 1024, MAX_MESSAGE_BYTES_CEILING)?
                }
                "MessageRetentionPeriod" => next.retention_secs = int_in(name, v, 60, 1_209_600)?,
                "ReceiveMessageWaitTimeSeconds" => next.receive_wait_secs = int_in(name, v, 0, 20)?,
                "VisibilityTimeout" => next.visibility_timeout_secs = int_in(name, v, 0, 43_200)?,
                "RedrivePolicy" => {
                    next.redrive_policy = if v.is_empty() {
                        None
                    } else {
                        Some(parse_redrive_policy(v)?)
                    }
                }
                "RedriveAllowPolicy" => {
                    next.redrive_allow_policy = if v.is_empty() {
                        None
                    } else {
                        validate_redrive_allow_policy(v)?;
                        Some(v.clone())
                    }
                }
                "Policy" => {
                    next.policy = if v.is_empty() {
                        None
                    } else {
                        serde_json::from_str::<serde_json::Value>(v).map_err(|_| invalid(name))?;
                        Some(v.clone())
                    }
                }
                "KmsMasterKeyId" => {
                    next.kms_master_key_id = (!v.is_empty()).then(|| v.clone());
                    if next.kms_master_key_id.is_some() {
                        next.sqs_managed_sse = false;
                    }
                }
                "KmsDataKeyReusePeriodSeconds" => {
                    next.kms_data_key_reuse_secs = int_in(name, v, 60, 86_400)?
                }
                "SqsManagedSseEnabled" => next.sqs_managed_sse = boolean(name, v)?,
                "FifoQueue" if creating => next.fifo = boolean(name, v)?,
                "ContentBasedDeduplication" if next.fifo || attrs_say_fifo(attrs) => {
                    next.content_based_deduplication = boolean(name, v)?
                }
                "DeduplicationScope" if next.fifo || attrs_say_fifo(attrs) => {
                    if v != "messageGroup" && v != "queue" {
                        return Err(invalid(name));
                    }
                    next.deduplication_scope = v.clone();
                }
                "FifoThroughputLimit" if next.fifo || attrs_say_fifo(attrs) => {
                    if v != "perQueue" && v != "perMessageGroupId" {
                        return Err(invalid(name));
                    }
                    next.fifo_throughput_limit = v.clone();
                }
                _ => {
                    return Err(AwsError::invalid_attribute_name(format!(
                        "Unknown Attribute {name}."
                    )))
                }
            }
        }
        *self = next;
        Ok(())
    }

    /// The settable attributes as GetQueueAttributes reports them.
    pub fn to_attributes(&self) -> Attributes {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            m.insert(k.to_string(), v);
        };
        put("DelaySeconds", self.delay_secs.to_string());
        put("MaximumMessageSize", self.maximum_message_bytes.to_string());
        put("MessageRetentionPeriod", self.retention_secs.to_string());
        put(
            "ReceiveMessageWaitTimeSeconds",
            self.receive_wait_secs.to_string(),
        );
        put(
            "VisibilityTimeout",
            self.visibility_timeout_secs.to_string(),
        );
        put("SqsManagedSseEnabled", self.sqs_managed_sse.to_string());
        if let Some(r) = &self.redrive_policy {
            put(
                "RedrivePolicy",
                serde_json::json!({
                    "deadLetterTargetArn": r.dead_letter_target_arn,
                    "maxReceiveCount": r.max_receive_count,
                })
                .to_string(),
            );
        }
        if let Some(p) = &self.redrive_allow_policy {
            put("RedriveAllowPolicy", p.clone());
        }
        if let Some(p) = &self.policy {
            put("Policy", p.clone());
        }
        if let Some(k) = &self.kms_master_key_id {
            put("KmsMasterKeyId", k.clone());
            put(
                "KmsDataKeyReusePeriodSeconds",
                self.kms_data_key_reuse_secs.to_string(),
            );
        }
        if self.fifo {
            put("FifoQueue", "true".into());
            put(
                "ContentBasedDeduplication",
                self.content_based_deduplication.to_string(),
            );
            put("DeduplicationScope", self.deduplication_scope.clone());
            put("FifoThroughputLimit", self.fifo_throughput_limit.clone());
        }
        m
    }
}

fn attrs_say_fifo(attrs: &Attributes) -> bool {
    attrs
        .get("FifoQueue")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// `{"deadLetterTargetArn": "...", "maxReceiveCount": N}`; the count may be a number or text,
/// 1 to 1000.
pub fn parse_redrive_policy(v: &str) -> Result<RedrivePolicy, AwsError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Raw {
        dead_letter_target_arn: Option<String>,
        max_receive_count: Option<serde_json::Value>,
    }
    let bad = |why: &str| {
        AwsError::invalid_parameter_value(format!(
            "Value {v} for parameter RedrivePolicy is invalid. Reason: {why}"
        ))
    };
    let raw: Raw = serde_json::from_str(v).map_err(|_| bad("Invalid JSON."))?;
    let arn = raw.dead_letter_target_arn.ok_or_else(|| {
        bad("Redrive policy does not contain mandatory attribute: deadLetterTargetArn.")
    })?;
    let count = match raw.max_receive_count {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| bad("Redrive policy does not contain mandatory attribute: maxReceiveCount."))?;
    if !(1..=1000).contains(&count) {
        return Err(bad(
            "Invalid value for maxReceiveCount: must be between 1 and 1000.",
        ));
    }
    Ok(RedrivePolicy {
        dead_letter_target_arn: arn,
        max_receive_count: count as u32,
    })
}

fn validate_redrive_allow_policy(v: &str) -> Result<(), AwsError> {
    let bad = || {
        AwsError::invalid_parameter_value(format!(
            "Value {v} for parameter RedriveAllowPolicy is invalid."
        ))
    };
    let j: serde_json::Value = serde_json::from_str(v).map_err(|_| bad())?;
    match j.get("redrivePermission").and_then(|p| p.as_str()) {
        Some("allowAll" | "denyAll") => Ok(()),
        Some("byQueue") => match j.get("sourceQueueArns").and_then(|a| a.as_array()) {
            Some(a) if !a.is_empty() && a.len() <= 10 => Ok(()),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// Every attribute name GetQueueAttributes knows, settable or computed.
pub fn is_known_attribute(name: &str) -> bool {
    COMPUTED.contains(&name)
        || matches!(
            name,
            "All"
                | "DelaySeconds"
                | "MaximumMessageSize"
                | "MessageRetentionPeriod"
                | "ReceiveMessageWaitTimeSeconds"
                | "VisibilityTimeout"
                | "RedrivePolicy"
                | "RedriveAllowPolicy"
                | "Policy"
                | "KmsMasterKeyId"
                | "KmsDataKeyReusePeriodSeconds"
                | "SqsManagedSseEnabled"
                | "FifoQueue"
                | "ContentBasedDeduplication"
                | "DeduplicationScope"
                | "FifoThroughputLimit"
        )
}

/// Keeps the queue attributes GetQueueAttributes asked for (none when no names were given,
/// as AWS does).
pub fn select_queue_attributes(all: Attributes, names: &[String]) -> Result<Attributes, AwsError> {
    for n in names {
        if !is_known_attribute(n) {
            return Err(AwsError::invalid_attribute_name(format!(
                "Unknown Attribute {n}."
            )));
        }
    }
    if names.iter().any(|n| n == "All") {
        return Ok(all);
    }
    Ok(all
        .into_iter()
        .filter(|(k, _)| names.iter().any(|n| n == k))
        .collect())
}

/// Keeps the system attributes ReceiveMessage asked for (`All` or names).
pub fn select_system_attributes(all: &Attributes, names: &[String]) -> Attributes {
    if names.iter().any(|n| n == "All") {
        return all.clone();
    }
    all.iter()
        .filter(|(k, _)| names.iter().any(|n| n == *k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Keeps the message attributes ReceiveMessage asked for: `All`, `.*`, exact names or
/// `prefix.*`.
pub fn select_message_attributes(all: &MessageAttributes, names: &[String]) -> MessageAttributes {
    let wanted = |k: &str| {
        names.iter().any(|n| {
            n == "All"
                || n == ".*"
                || n == k
                || n.strip_suffix(".*")
                    .is_some_and(|prefix| k.starts_with(&format!("{prefix}.")))
        })
    };
    all.iter()
        .filter(|(k, _)| wanted(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqs::types::MessageAttributeValue;

    fn attrs(pairs: &[(&str, &str)]) -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ranges_are_aws_ranges() {
        let mut c = QueueConfig::default();
        for (name, ok, bad) in [
            ("DelaySeconds", "900", "901"),
            ("MaximumMessageSize", "1024", "1023"),
            ("MaximumMessageSize", "1048576", "1048577"),
            ("MessageRetentionPeriod", "60", "59"),
            ("MessageRetentionPeriod", "1209600", "1209601"),
            ("ReceiveMessageWaitTimeSeconds", "20", "21"),
            ("VisibilityTimeout", "43200", "43201"),
            ("VisibilityTimeout", "0", "-1"),
        ] {
            c.apply(&attrs(&[(name, ok)]), false).unwrap();
            let e = c.apply(&attrs(&[(name, bad)]), false).unwrap_err();
            assert_eq!(e.code, "InvalidAttributeValue", "{name}={bad}");
        }
        assert_eq!(c.visibility_timeout_secs, 0);
    }

    #[test]
    fn failed_apply_changes_nothing() {
        let mut c = QueueConfig::default();
        let e = c
            .apply(
                &attrs(&[("DelaySeconds", "5"), ("VisibilityTimeout", "x")]),
                false,
            )
            .unwrap_err();
        assert_eq!(e.code, "InvalidAttributeValue");
        assert_eq!(c, QueueConfig::default());
    }

    #[test]
    fn unknown_and_late_fifo_attributes() {
        let mut c = QueueConfig::default();
        assert_eq!(
            c.apply(&attrs(&[("Colour", "red")]), true)
                .unwrap_err()
                .code,
            "InvalidAttributeName"
        );
        assert_eq!(
            c.apply(&attrs(&[("FifoQueue", "true")]), false)
                .unwrap_err()
                .code,
            "InvalidAttributeName"
        );
        assert_eq!(
            c.apply(&attrs(&[("ContentBasedDeduplication", "true")]), true)
                .unwrap_err()
                .code,
            "InvalidAttributeName"
        );
    }

    #[test]
    fn redrive_policy() {
        let p = parse_redrive_policy(
            r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:000000000000:dlq","maxReceiveCount":"3"}"#,
        )
        .unwrap();
        assert_eq!(p.max_receive_count, 3);
        assert!(
            parse_redrive_policy(r#"{"deadLetterTargetArn":"a","maxReceiveCount":0}"#).is_err()
        );
        assert!(parse_redrive_policy(r#"{"maxReceiveCount":2}"#).is_err());
        let mut c = QueueConfig::default();
        c.apply(
            &attrs(&[(
                "RedrivePolicy",
                r#"{"deadLetterTargetArn":"a","maxReceiveCount":2}"#,
            )]),
            false,
        )
        .unwrap();
        assert!(c.to_attributes()["RedrivePolicy"].contains("\"maxReceiveCount\":2"));
    }

    #[test]
    fn attribute_selection() {
        let all = attrs(&[("DelaySeconds", "0"), ("QueueArn", "arn")]);
        assert!(select_queue_attributes(all.clone(), &[])
            .unwrap()
            .is_empty());
        assert_eq!(
            select_queue_attributes(all.clone(), &["QueueArn".into()])
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            select_queue_attributes(all.clone(), &["All".into()]).unwrap(),
            all
        );
        assert!(select_queue_attributes(all, &["Nope".into()]).is_err());

        let mut m = MessageAttributes::new();
        for k in ["a.x", "a.y", "b", "ab"] {
            m.insert(k.into(), MessageAttributeValue::string("String", "v"));
        }
        let keys = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            select_message_attributes(&m, &names)
                .into_keys()
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&["a.*"]), ["a.x", "a.y"]);
        assert_eq!(keys(&["b"]), ["b"]);
        assert_eq!(keys(&["All"]).len(), 4);
        assert!(keys(&[]).is_empty());
    }
}
