//! SNS subscription filter policies: parsed and checked once, when a subscription gets its
//! `FilterPolicy`, then matched against every message published to the topic.
//!
//! API:
//! - [`FilterPolicyScope::parse`] reads the `FilterPolicyScope` attribute (`MessageAttributes`,
//!   the default, or `MessageBody`).
//! - [`FilterPolicy::parse`]`(json, scope)` gives the policy or a [`FilterPolicyError`] whose
//!   `Display` is the InvalidParameter message AWS answers with (`Invalid parameter:
//!   FilterPolicy: ...`; [`FilterPolicyError::subscribe_message`] is Subscribe's wording). It
//!   enforces AWS's limits: 256 KiB of JSON, 5 keys, 150 combinations, no nesting for
//!   MessageAttributes.
//! - [`FilterPolicy::matches_attributes`] with the message's attributes as
//!   `(name, `[`AttrValue`]`)` pairs (scope MessageAttributes);
//!   [`FilterPolicy::matches_body`] with the body parsed as JSON (scope MessageBody);
//!   [`FilterPolicy::matches`] picks by the policy's scope from the raw message.
//!
//! Operators: exact strings, numbers, `true`/`false`/`null`; `prefix`, `suffix`,
//! `equals-ignore-case`; `anything-but` (values, or `prefix`/`suffix`/`equals-ignore-case`);
//! `numeric` (`=`, `<`, `<=`, `>`, `>=`, and a `>`/`>=` lower bound with a `<`/`<=` upper bound);
//! `exists`; `cidr` (IPv4 and IPv6); `$or` between sets of keys. Values in a key's array are
//! alternatives, keys must all match. A String.Array attribute or a JSON array in the body
//! matches when any element does; in the body, an array of objects matches a nested policy when
//! one element matches all of it.
//!
//! Rules where AWS's documentation says nothing, chosen and tested here:
//! - Binary attributes are ignored, as AWS documents: for the policy they are absent.
//! - `anything-but` needs the attribute present (an absent key matches only `exists: false`).
//! - Numbers compare to five decimal places (AWS's stated accuracy).
//! - In the body, `exists` looks at leaf values: a key holding an object counts as absent.
//! - A body that is not a JSON object matches no policy but the empty one.
//! - Keys counted for the 5-key limit: the top-level keys (MessageBody: nested keys do not
//!   count), where `$or` counts as its largest branch. Combinations: each key's number of
//!   values times its nesting depth (AWS's nested example: 3 x 4 x 2 x 3 = 72), multiplied
//!   across keys; `$or` adds its branches.

mod error;
mod matching;
mod parse;
#[cfg(test)]
mod tests;

use std::fmt;

pub use error::FilterPolicyError;

/// The most keys a policy may have.
pub const MAX_KEYS: usize = 5;
/// The most value combinations a policy may have.
pub const MAX_COMBINATIONS: u64 = 150;
/// The largest policy, in bytes of JSON.
pub const MAX_POLICY_BYTES: usize = 256 * 1024;

/// What a subscription's policy is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FilterPolicyScope {
    #[default]
    MessageAttributes,
    MessageBody,
}

impl FilterPolicyScope {
    /// The `FilterPolicyScope` attribute value.
    pub fn parse(value: &str) -> Result<FilterPolicyScope, FilterPolicyError> {
        match value {
            "MessageAttributes" => Ok(FilterPolicyScope::MessageAttributes),
            "MessageBody" => Ok(FilterPolicyScope::MessageBody),
            other => Err(FilterPolicyError::bare(format!(
                "FilterPolicyScope: Invalid value [{other}]. Please use either MessageBody or \
                 MessageAttributes"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FilterPolicyScope::MessageAttributes => "MessageAttributes",
            FilterPolicyScope::MessageBody => "MessageBody",
        }
    }
}

impl fmt::Display for FilterPolicyScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message attribute as the policy sees it: SNS's data types, with the value as sent
/// (`StringValue` for String, Number and String.Array; `BinaryValue` for Binary).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttrValue<'a> {
    String(&'a str),
    /// The number's text, e.g. `210.75` or `2.1075E2`.
    Number(&'a str),
    /// A JSON array, e.g. `["soccer", "rugby", 10, true, null]`.
    StringArray(&'a str),
    Binary(&'a [u8]),
}

impl<'a> AttrValue<'a> {
    /// The value of an attribute whose `DataType` may carry a custom label (`Number.float`,
    /// `String.Array` is exact): SNS types by the part before the first `.`.
    pub fn typed(data_type: &str, string_value: &'a str, binary_value: &'a [u8]) -> AttrValue<'a> {
        if data_type == "String.Array" {
            AttrValue::StringArray(string_value)
        } else if data_type.starts_with("Number") {
            AttrValue::Number(string_value)
        } else if data_type.starts_with("Binary") {
            AttrValue::Binary(binary_value)
        } else {
            AttrValue::String(string_value)
        }
    }
}

/// A checked filter policy.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterPolicy {
    scope: FilterPolicyScope,
    root: parse::Conjunction,
}

impl FilterPolicy {
    /// Parses and checks `json` for `scope`.
    pub fn parse(json: &str, scope: FilterPolicyScope) -> Result<FilterPolicy, FilterPolicyError> {
        let root = parse::parse_policy(json, scope)?;
        Ok(FilterPolicy { scope, root })
    }

    pub fn scope(&self) -> FilterPolicyScope {
        self.scope
    }

    /// Whether a message with these attributes passes (scope MessageAttributes). With several
    /// attributes of one name, the first counts.
    pub fn matches_attributes(&self, attributes: &[(&str, AttrValue<'_>)]) -> bool {
        matching::attributes_match(&self.root, attributes)
    }

    /// Whether a message with this JSON body passes (scope MessageBody).
    pub fn matches_body(&self, body: &serde_json::Value) -> bool {
        matching::body_matches(&self.root, body)
    }

    /// Whether a message passes, looking at what the policy's scope names: the attributes, or
    /// the body parsed as JSON (a body that is not JSON matches no policy but the empty one).
    pub fn matches(&self, attributes: &[(&str, AttrValue<'_>)], body: &str) -> bool {
        match self.scope {
            FilterPolicyScope::MessageAttributes => self.matches_attributes(attributes),
            FilterPolicyScope::MessageBody => {
                if self.root.entries.is_empty() {
                    return true;
                }
                match serde_json::from_str::<serde_json::Value>(body) {
                    Ok(value) => self.matches_body(&value),
                    Err(_) => false,
                }
            }
        }
    }
}
