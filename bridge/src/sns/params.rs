//! SNS Query parameters: the flattened forms botocore writes from SNS's API model.
//!
//! - maps of strings: `Attributes.entry.N.key` / `Attributes.entry.N.value`;
//! - message attributes: `MessageAttributes.entry.N.Name` and
//!   `MessageAttributes.entry.N.Value.{DataType,StringValue,BinaryValue}`;
//! - lists: `TagKeys.member.N`, `AWSAccountId.member.N`, `ActionName.member.N`;
//! - lists of structures: `Tags.member.N.Key`, `PublishBatchRequestEntries.member.N.Message`.
//!
//! Numbering is by value, not position (`.10` after `.2`), as the Query protocol defines it.

use std::collections::BTreeMap;

use crate::error::AwsError;
use crate::sqs::{MessageAttributeValue, MessageAttributes};

/// The parameters of one request (or of one `member.N` of a list of structures).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Params(pairs)
    }

    /// The last value given for `name` (a repeated parameter: the last one wins).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn string(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_string)
    }

    /// A parameter the operation requires: AWS answers its absence with InvalidParameter.
    pub fn required(&self, name: &str) -> Result<String, AwsError> {
        self.string(name).ok_or_else(|| {
            AwsError::sns_invalid_parameter(format!(
                "1 validation error detected: Value null at '{}' failed to satisfy constraint: Member must not be null",
                lower_first(name)
            ))
        })
    }

    pub fn bool(&self, name: &str) -> Result<Option<bool>, AwsError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(v) => Err(AwsError::sns_invalid_parameter(format!(
                "Invalid parameter: {name} Reason: {v} is not a boolean"
            ))),
        }
    }

    /// `<prefix>.<n>.<rest>` grouped by `n`, in numeric order, each as its own `Params`.
    fn numbered(&self, prefix: &str) -> Vec<Params> {
        let mut groups: BTreeMap<u64, Vec<(String, String)>> = BTreeMap::new();
        let head = format!("{prefix}.");
        for (k, v) in &self.0 {
            let Some(rest) = k.strip_prefix(&head) else {
                continue;
            };
            let (n, tail) = rest.split_once('.').unwrap_or((rest, ""));
            let Ok(n) = n.parse::<u64>() else { continue };
            groups
                .entry(n)
                .or_default()
                .push((tail.to_string(), v.clone()));
        }
        groups.into_values().map(Params).collect()
    }

    /// `Name.member.N` strings.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.numbered(&format!("{name}.member"))
            .into_iter()
            .filter_map(|p| p.string(""))
            .collect()
    }

    /// `Name.member.N.*` structures.
    pub fn members(&self, name: &str) -> Vec<Params> {
        self.numbered(&format!("{name}.member"))
    }

    /// `Name.entry.N.key/value` as a map.
    pub fn string_map(&self, name: &str) -> BTreeMap<String, String> {
        self.numbered(&format!("{name}.entry"))
            .into_iter()
            .filter_map(|p| Some((p.string("key")?, p.string("value").unwrap_or_default())))
            .collect()
    }

    /// `Tags.member.N.Key/Value` as a map; a tag without a value has the empty value.
    pub fn tags(&self, name: &str) -> Result<BTreeMap<String, String>, AwsError> {
        let mut out = BTreeMap::new();
        for m in self.members(name) {
            let key = m.string("Key").ok_or_else(|| {
                AwsError::sns_invalid_parameter("Invalid parameter: Tags Reason: a tag has no Key")
            })?;
            out.insert(key, m.string("Value").unwrap_or_default());
        }
        Ok(out)
    }

    /// `MessageAttributes.entry.N.Name` + `.Value.DataType/StringValue/BinaryValue`.
    pub fn message_attributes(&self, name: &str) -> Result<MessageAttributes, AwsError> {
        let mut out = MessageAttributes::new();
        for e in self.numbered(&format!("{name}.entry")) {
            let Some(attr) = e.string("Name") else {
                return Err(AwsError::sns_invalid_parameter(
                    "Invalid parameter: MessageAttributes Reason: an attribute has no Name",
                ));
            };
            let data_type = e.string("Value.DataType").ok_or_else(|| {
                AwsError::sns_invalid_parameter_value(format!(
                    "The message attribute '{attr}' must contain non-empty message attribute type."
                ))
            })?;
            out.insert(
                attr,
                MessageAttributeValue {
                    data_type,
                    string_value: e.string("Value.StringValue"),
                    binary_value: e.string("Value.BinaryValue"),
                },
            );
        }
        Ok(out)
    }
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Params {
        Params::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn maps_lists_and_members_in_numeric_order() {
        let q = p(&[
            ("Attributes.entry.2.key", "FifoTopic"),
            ("Attributes.entry.2.value", "true"),
            ("Attributes.entry.1.key", "DisplayName"),
            ("Attributes.entry.1.value", "d"),
            ("Tags.member.1.Key", "team"),
            ("Tags.member.1.Value", "core"),
            ("TagKeys.member.10", "b"),
            ("TagKeys.member.2", "a"),
            ("PublishBatchRequestEntries.member.1.Id", "x"),
            ("PublishBatchRequestEntries.member.1.Message", "m"),
            (
                "PublishBatchRequestEntries.member.1.MessageAttributes.entry.1.Name",
                "n",
            ),
            (
                "PublishBatchRequestEntries.member.1.MessageAttributes.entry.1.Value.DataType",
                "Number",
            ),
            (
                "PublishBatchRequestEntries.member.1.MessageAttributes.entry.1.Value.StringValue",
                "7",
            ),
        ]);
        let attrs = q.string_map("Attributes");
        assert_eq!(attrs["DisplayName"], "d");
        assert_eq!(attrs["FifoTopic"], "true");
        assert_eq!(q.tags("Tags").unwrap()["team"], "core");
        assert_eq!(q.list("TagKeys"), vec!["a", "b"]);
        let entries = q.members("PublishBatchRequestEntries");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].get("Id"), Some("x"));
        let ma = entries[0].message_attributes("MessageAttributes").unwrap();
        assert_eq!(ma["n"], MessageAttributeValue::string("Number", "7"));
    }

    #[test]
    fn missing_required_and_bad_booleans() {
        let q = p(&[("ReturnSubscriptionArn", "maybe")]);
        assert_eq!(q.required("TopicArn").unwrap_err().code, "InvalidParameter");
        assert_eq!(
            q.bool("ReturnSubscriptionArn").unwrap_err().code,
            "InvalidParameter"
        );
        let q = p(&[
            ("MessageAttributes.entry.1.Name", "a"),
            ("MessageAttributes.entry.1.Value.StringValue", "v"),
        ]);
        assert_eq!(
            q.message_attributes("MessageAttributes").unwrap_err().code,
            "ParameterValueInvalid"
        );
    }
}
