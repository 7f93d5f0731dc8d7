//! What an SNS subscriber receives: the JSON notification envelope SNS delivers to SQS (and,
//! later, HTTP) subscribers, in AWS's member order, and the per-protocol message of a
//! `MessageStructure=json` publish.

use std::collections::BTreeMap;

use serde::Serialize;

/// One message attribute as the envelope carries it: `{"Type": ..., "Value": ...}`, binary
/// values in base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvelopeAttribute {
    #[serde(rename = "Type")]
    pub data_type: String,
    #[serde(rename = "Value")]
    pub value: String,
}

/// A `Notification` envelope. `signature` and `signing_cert_url` are left out of the JSON when
/// absent: an envelope is never given a signature it does not have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Notification {
    #[serde(rename = "Type")]
    pub kind: &'static str,
    pub message_id: String,
    /// FIFO topics only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence_number: Option<String>,
    pub topic_arn: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub message: String,
    /// ISO 8601 with milliseconds, UTC (`2026-11-26T12:00:00.000Z`).
    pub timestamp: String,
    pub signature_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    #[serde(rename = "SigningCertURL", skip_serializing_if = "Option::is_none")]
    pub signing_cert_url: Option<String>,
    #[serde(rename = "UnsubscribeURL")]
    pub unsubscribe_url: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub message_attributes: BTreeMap<String, EnvelopeAttribute>,
}

impl Notification {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// `ms` since the epoch as SNS writes its Timestamp.
pub fn iso8601_ms(ms: u64) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_default()
}

/// The message a subscriber of `protocol` gets: with `MessageStructure=json`, the protocol's
/// own key or else `default` (validated on publish); otherwise the message itself.
pub fn message_for(message: &str, structure_json: bool, protocol: &str) -> String {
    if !structure_json {
        return message.to_string();
    }
    let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(message)
    else {
        return message.to_string();
    };
    m.get(protocol)
        .or_else(|| m.get("default"))
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_in_aws_order_and_absent_ones_left_out() {
        let mut attrs = BTreeMap::new();
        attrs.insert(
            "n".to_string(),
            EnvelopeAttribute {
                data_type: "Number".into(),
                value: "7".into(),
            },
        );
        let n = Notification {
            kind: "Notification",
            message_id: "m".into(),
            sequence_number: None,
            topic_arn: "t".into(),
            subject: Some("s".into()),
            message: "hello \"x\"".into(),
            timestamp: iso8601_ms(1_700_000_000_123),
            signature_version: "1".into(),
            signature: None,
            signing_cert_url: None,
            unsubscribe_url: "u".into(),
            message_attributes: attrs,
        };
        assert_eq!(
            n.to_json(),
            "{\"Type\":\"Notification\",\"MessageId\":\"m\",\"TopicArn\":\"t\",\"Subject\":\"s\",\
             \"Message\":\"hello \\\"x\\\"\",\"Timestamp\":\"2023-11-14T22:13:20.123Z\",\
             \"SignatureVersion\":\"1\",\"UnsubscribeURL\":\"u\",\
             \"MessageAttributes\":{\"n\":{\"Type\":\"Number\",\"Value\":\"7\"}}}"
        );
    }

    #[test]
    fn json_structure_picks_the_protocol_key_or_default() {
        let m = r#"{"default": "d", "sqs": "for sqs"}"#;
        assert_eq!(message_for(m, true, "sqs"), "for sqs");
        assert_eq!(message_for(m, true, "http"), "d");
        assert_eq!(message_for(m, false, "sqs"), m);
    }
}
