//! SNS's stateless rules: names, ARNs, tags, messages and batches, with AWS's error codes.

use std::collections::{BTreeMap, HashSet};

use crate::error::AwsError;

use super::types::{PublishBatchEntry, PublishInput};

/// Largest message SNS takes: message plus attribute names, types and values (256 KiB).
pub const MESSAGE_BYTES_MAX: usize = 262_144;
/// Tags per topic.
pub const TAGS_MAX: usize = 50;
/// Message attributes per message.
pub const MESSAGE_ATTRIBUTES_MAX: usize = 10;

fn invalid(what: &str) -> AwsError {
    AwsError::sns_invalid_parameter(format!("Invalid parameter: {what}"))
}

/// Topic names: 1–256 letters, digits, `-` and `_`, plus `.fifo` for FIFO topics.
pub fn topic_name_ok(name: &str) -> bool {
    let base = name.strip_suffix(".fifo").unwrap_or(name);
    !base.is_empty()
        && name.len() <= 256
        && base
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub fn validate_topic_name(name: &str) -> Result<(), AwsError> {
    if topic_name_ok(name) {
        Ok(())
    } else {
        Err(invalid("Topic Name"))
    }
}

/// A parsed topic ARN `arn:aws:sns:<region>:<account>:<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicArn {
    pub region: String,
    pub account: String,
    pub name: String,
}

impl TopicArn {
    pub fn parse(arn: &str, param: &str) -> Result<TopicArn, AwsError> {
        let f: Vec<&str> = arn.split(':').collect();
        match f.as_slice() {
            ["arn", "aws", "sns", region, account, name]
                if !region.is_empty()
                    && account.len() == 12
                    && account.bytes().all(|b| b.is_ascii_digit())
                    && topic_name_ok(name) =>
            {
                Ok(TopicArn {
                    region: region.to_string(),
                    account: account.to_string(),
                    name: name.to_string(),
                })
            }
            _ => Err(invalid(param)),
        }
    }

    pub fn format(region: &str, account: &str, name: &str) -> String {
        format!("arn:aws:sns:{region}:{account}:{name}")
    }
}

/// A parsed subscription ARN: the topic's ARN and a UUID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionArn {
    pub topic: TopicArn,
    pub id: String,
}

impl SubscriptionArn {
    pub fn parse(arn: &str) -> Result<SubscriptionArn, AwsError> {
        let (topic, id) = arn
            .rsplit_once(':')
            .ok_or_else(|| invalid("SubscriptionArn"))?;
        let topic = TopicArn::parse(topic, "SubscriptionArn")?;
        let id_ok = id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        if !id_ok {
            return Err(invalid("SubscriptionArn"));
        }
        Ok(SubscriptionArn {
            topic,
            id: id.to_string(),
        })
    }
}

/// Tag keys 1–128 and values 0–256 characters.
pub fn validate_tags(tags: &BTreeMap<String, String>) -> Result<(), AwsError> {
    for (k, v) in tags {
        if k.is_empty() || k.chars().count() > 128 {
            return Err(invalid(
                "Tags Reason: Tag keys must be 1 to 128 characters long",
            ));
        }
        if v.chars().count() > 256 {
            return Err(invalid(
                "Tags Reason: Tag values must be at most 256 characters long",
            ));
        }
    }
    if tags.len() > TAGS_MAX {
        return Err(AwsError::sns_tag_limit_exceeded(
            "Could not complete request: tag quota of per resource exceeded",
        ));
    }
    Ok(())
}

/// The size SNS counts against [`MESSAGE_BYTES_MAX`].
pub fn message_size(i: &PublishInput) -> usize {
    i.message.len()
        + i.message_attributes
            .iter()
            .map(|(k, v)| {
                k.len()
                    + v.data_type.len()
                    + v.string_value.as_ref().map_or(0, String::len)
                    + v.binary_value.as_ref().map_or(0, |b| b.len() * 3 / 4)
            })
            .sum::<usize>()
}

/// Whether a message structure asks for per-protocol messages (`json`).
pub fn is_json_structure(i: &PublishInput) -> bool {
    i.message_structure.as_deref() == Some("json")
}

/// Checks one message to publish (Publish or one batch entry).
pub fn validate_publish(i: &PublishInput) -> Result<(), AwsError> {
    if i.message.is_empty() {
        return Err(invalid("Empty message"));
    }
    if message_size(i) > MESSAGE_BYTES_MAX {
        return Err(invalid("Message too long"));
    }
    if let Some(s) = &i.subject {
        let ok = !s.is_empty()
            && s.chars().count() <= 100
            && s.chars().all(|c| c.is_ascii() && !c.is_ascii_control());
        if !ok {
            return Err(invalid("Subject"));
        }
    }
    match i.message_structure.as_deref() {
        None => {}
        Some("json") => {
            let v: serde_json::Value = serde_json::from_str(&i.message)
                .map_err(|_| invalid("Message Structure - JSON message body failed to parse"))?;
            let Some(m) = v.as_object() else {
                return Err(invalid(
                    "Message Structure - JSON message body failed to parse",
                ));
            };
            if !m.get("default").is_some_and(|d| d.is_string()) {
                return Err(invalid(
                    "Message Structure - No default entry in JSON message body",
                ));
            }
            if m.values().any(|v| !v.is_string()) {
                return Err(invalid(
                    "Message Structure - JSON message body values must be strings",
                ));
            }
        }
        Some(_) => return Err(invalid("MessageStructure")),
    }
    if i.message_attributes.len() > MESSAGE_ATTRIBUTES_MAX {
        return Err(AwsError::sns_invalid_parameter_value(format!(
            "Number of message attributes [{}] exceeds the allowed maximum [{MESSAGE_ATTRIBUTES_MAX}].",
            i.message_attributes.len()
        )));
    }
    for (name, v) in &i.message_attributes {
        let lower = name.to_ascii_lowercase();
        let name_ok = !name.is_empty()
            && name.len() <= 256
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
            && !name.starts_with('.')
            && !name.ends_with('.')
            && !name.contains("..")
            && !lower.starts_with("aws.")
            && !lower.starts_with("amazon.");
        if !name_ok {
            return Err(AwsError::sns_invalid_parameter_value(format!(
                "The message attribute name '{name}' is invalid."
            )));
        }
        v.value(name)
            .map_err(|e| AwsError::sns_invalid_parameter_value(e.message))?;
        if v.data_type == "String.Array" {
            let arr = v
                .string_value
                .as_deref()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok());
            if !arr.is_some_and(|a| a.is_array()) {
                return Err(AwsError::sns_invalid_parameter_value(format!(
                    "The message attribute '{name}' with type 'String.Array' must be a JSON array."
                )));
            }
        }
    }
    Ok(())
}

/// The batch rules: 1–10 entries, distinct ids of at most 80 letters, digits, `-`, `_`, and
/// all messages together within [`MESSAGE_BYTES_MAX`]. Entries are then checked one by one.
pub fn validate_batch(entries: &[PublishBatchEntry]) -> Result<(), AwsError> {
    if entries.is_empty() {
        return Err(AwsError::sns_empty_batch_request(
            "The batch request doesn't contain any entries.",
        ));
    }
    if entries.len() > 10 {
        return Err(AwsError::sns_too_many_entries_in_batch_request(
            "The batch request contains more entries than permissible.",
        ));
    }
    let mut seen = HashSet::new();
    for e in entries {
        let ok = !e.id.is_empty()
            && e.id.len() <= 80
            && e.id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(AwsError::sns_invalid_batch_entry_id(
                "The Id of a batch entry in a batch request doesn't abide by the specification.",
            ));
        }
        if !seen.insert(e.id.as_str()) {
            return Err(AwsError::sns_batch_entry_ids_not_distinct(
                "Two or more batch entries in the request have the same Id.",
            ));
        }
    }
    let total: usize = entries.iter().map(|e| message_size(&e.input)).sum();
    if total > MESSAGE_BYTES_MAX {
        return Err(AwsError::sns_batch_request_too_long(
            "The length of all the messages put together is more than the limit.",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqs::MessageAttributeValue;

    fn msg(m: &str) -> PublishInput {
        PublishInput {
            message: m.into(),
            ..Default::default()
        }
    }

    #[test]
    fn arns_parse_or_fail_with_invalid_parameter() {
        let t =
            TopicArn::parse("arn:aws:sns:us-east-1:000000000000:orders.fifo", "TopicArn").unwrap();
        assert_eq!(t.name, "orders.fifo");
        for bad in [
            "",
            "orders",
            "arn:aws:sqs:us-east-1:000000000000:q",
            "arn:aws:sns:us-east-1:123:t",
            "arn:aws:sns:us-east-1:000000000000:bad name",
            "arn:aws:sns::000000000000:t",
        ] {
            assert_eq!(
                TopicArn::parse(bad, "TopicArn").unwrap_err().code,
                "InvalidParameter",
                "{bad}"
            );
        }
        let s = SubscriptionArn::parse(
            "arn:aws:sns:us-east-1:000000000000:t:0f8c3a52-4c4b-4f8e-9a59-8f0c1e2d3b4a",
        )
        .unwrap();
        assert_eq!(s.topic.name, "t");
        assert!(SubscriptionArn::parse("arn:aws:sns:us-east-1:000000000000:t").is_err());
    }

    #[test]
    fn messages_follow_sns_rules() {
        assert!(validate_publish(&msg("hi")).is_ok());
        assert_eq!(
            validate_publish(&msg("")).unwrap_err().message,
            "Invalid parameter: Empty message"
        );
        let big = "x".repeat(MESSAGE_BYTES_MAX + 1);
        assert_eq!(
            validate_publish(&msg(&big)).unwrap_err().message,
            "Invalid parameter: Message too long"
        );
        assert!(validate_publish(&msg(&"x".repeat(MESSAGE_BYTES_MAX))).is_ok());
        let mut j = msg(r#"{"sqs": "x"}"#);
        j.message_structure = Some("json".into());
        assert_eq!(
            validate_publish(&j).unwrap_err().message,
            "Invalid parameter: Message Structure - No default entry in JSON message body"
        );
        j.message = r#"{"default": "d"}"#.into();
        assert!(validate_publish(&j).is_ok());
        let mut s = msg("x");
        s.subject = Some("line\nbreak".into());
        assert_eq!(validate_publish(&s).unwrap_err().code, "InvalidParameter");
        let mut a = msg("x");
        a.message_attributes
            .insert("n".into(), MessageAttributeValue::string("Number", "abc"));
        assert_eq!(
            validate_publish(&a).unwrap_err().code,
            "ParameterValueInvalid"
        );
        let mut a = msg("x");
        a.message_attributes.insert(
            "l".into(),
            MessageAttributeValue::string("String.Array", "[\"a\", 1]"),
        );
        assert!(validate_publish(&a).is_ok());
    }

    #[test]
    fn batch_shape() {
        let e = |id: &str| PublishBatchEntry {
            id: id.into(),
            input: msg("m"),
        };
        assert_eq!(validate_batch(&[]).unwrap_err().code, "EmptyBatchRequest");
        let eleven: Vec<_> = (0..11).map(|i| e(&i.to_string())).collect();
        assert_eq!(
            validate_batch(&eleven).unwrap_err().code,
            "TooManyEntriesInBatchRequest"
        );
        assert_eq!(
            validate_batch(&[e("a"), e("a")]).unwrap_err().code,
            "BatchEntryIdsNotDistinct"
        );
        assert_eq!(
            validate_batch(&[e("a b")]).unwrap_err().code,
            "InvalidBatchEntryId"
        );
        let mut big = e("b");
        big.input.message = "x".repeat(MESSAGE_BYTES_MAX);
        assert_eq!(
            validate_batch(&[e("a"), big]).unwrap_err().code,
            "BatchRequestTooLong"
        );
    }
}
