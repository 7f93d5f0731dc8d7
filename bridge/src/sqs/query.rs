//! The Query protocol's flattened parameters (`Attribute.1.Name=...`) turned into the JSON
//! protocol's shape (`"Attributes": {...}`), so one set of serde types decodes both.
//!
//! Rules, from the SQS Query API reference:
//! - `Attribute.N.Name/Value` and `Tag.N.Key/Value` become maps (`Attributes`, `Tags`);
//! - `MessageAttribute.N.Name` + `.Value.{DataType,StringValue,BinaryValue}` (and the
//!   `MessageSystemAttribute` form) become maps of attribute values;
//! - `AttributeName.N`, `MessageAttributeName.N`, `MessageSystemAttributeName.N`, `TagKey.N`
//!   become lists named with an `s`;
//! - `<Op>RequestEntry.N.*` (batch entries) become the `Entries` list, each entry converted by
//!   the same rules;
//! - anything else is a string member.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

#[derive(Debug, Default)]
struct Branch(BTreeMap<String, Node>);

#[derive(Debug)]
enum Node {
    Leaf(String),
    Branch(Branch),
}

impl Branch {
    fn insert(&mut self, path: &[&str], value: String) {
        let Some((first, rest)) = path.split_first() else {
            return;
        };
        if rest.is_empty() {
            self.0.insert(first.to_string(), Node::Leaf(value));
            return;
        }
        let node = self
            .0
            .entry(first.to_string())
            .or_insert_with(|| Node::Branch(Branch::default()));
        if let Node::Leaf(_) = node {
            // `A=1&A.1=2`: the deeper parameter wins; AWS ignores such clashes too.
            *node = Node::Branch(Branch::default());
        }
        if let Node::Branch(b) = node {
            b.insert(rest, value);
        }
    }

    /// The numbered children (`.1`, `.2`, ...) in numeric order.
    fn numbered(&self) -> Vec<&Node> {
        let mut v: Vec<(u64, &Node)> = self
            .0
            .iter()
            .filter_map(|(k, n)| k.parse::<u64>().ok().map(|i| (i, n)))
            .collect();
        v.sort_by_key(|(i, _)| *i);
        v.into_iter().map(|(_, n)| n).collect()
    }

    fn leaf(&self, name: &str) -> Option<&str> {
        match self.0.get(name) {
            Some(Node::Leaf(s)) => Some(s),
            _ => None,
        }
    }
}

/// Converts decoded form parameters (without `Action` and `Version`) into a JSON object.
pub fn to_json(params: &[(String, String)]) -> Value {
    let mut root = Branch::default();
    for (k, v) in params {
        let path: Vec<&str> = k.split('.').collect();
        root.insert(&path, v.clone());
    }
    Value::Object(convert(&root))
}

fn convert(branch: &Branch) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, node) in &branch.0 {
        let b = match node {
            Node::Leaf(s) => {
                out.insert(name.clone(), Value::String(s.clone()));
                continue;
            }
            Node::Branch(b) => b,
        };
        match name.as_str() {
            "Attribute" => {
                out.insert("Attributes".into(), pairs(b, "Name", |n| leaf(n, "Value")));
            }
            "Tag" => {
                out.insert("Tags".into(), pairs(b, "Key", |n| leaf(n, "Value")));
            }
            "MessageAttribute" | "MessageSystemAttribute" => {
                let value = |n: &Branch| match n.0.get("Value") {
                    Some(Node::Branch(v)) => Value::Object(convert(v)),
                    _ => Value::Object(Map::new()),
                };
                out.insert(format!("{name}s"), pairs(b, "Name", value));
            }
            "AttributeName"
            | "MessageAttributeName"
            | "MessageSystemAttributeName"
            | "TagKey"
            | "AWSAccountId"
            | "ActionName" => {
                let items = b
                    .numbered()
                    .into_iter()
                    .filter_map(|n| match n {
                        Node::Leaf(s) => Some(Value::String(s.clone())),
                        Node::Branch(_) => None,
                    })
                    .collect();
                // AddPermission's ActionName.N is the `Actions` member.
                let member = if name == "ActionName" {
                    "Actions".to_string()
                } else {
                    format!("{name}s")
                };
                out.insert(member, Value::Array(items));
            }
            n if n.ends_with("RequestEntry") => {
                let items = b
                    .numbered()
                    .into_iter()
                    .map(|n| match n {
                        Node::Branch(e) => Value::Object(convert(e)),
                        Node::Leaf(s) => Value::String(s.clone()),
                    })
                    .collect();
                out.insert("Entries".into(), Value::Array(items));
            }
            _ => {
                out.insert(name.clone(), Value::Object(convert(b)));
            }
        }
    }
    out
}

fn leaf(b: &Branch, name: &str) -> Value {
    b.leaf(name)
        .map(|s| Value::String(s.to_string()))
        .unwrap_or(Value::Null)
}

/// `X.N.<key>` + value entries as a JSON map keyed by `<key>`.
fn pairs(b: &Branch, key: &str, value: impl Fn(&Branch) -> Value) -> Value {
    let mut m = Map::new();
    for n in b.numbered() {
        if let Node::Branch(entry) = n {
            if let Some(k) = entry.leaf(key) {
                m.insert(k.to_string(), value(entry));
            }
        }
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn attributes_and_tags_become_maps() {
        let v = to_json(&p(&[
            ("QueueName", "q"),
            ("Attribute.1.Name", "DelaySeconds"),
            ("Attribute.1.Value", "5"),
            ("Attribute.2.Name", "VisibilityTimeout"),
            ("Attribute.2.Value", "60"),
            ("Tag.1.Key", "team"),
            ("Tag.1.Value", "core"),
        ]));
        assert_eq!(
            v,
            json!({"QueueName": "q",
                   "Attributes": {"DelaySeconds": "5", "VisibilityTimeout": "60"},
                   "Tags": {"team": "core"}})
        );
    }

    #[test]
    fn message_attributes_and_name_lists() {
        let v = to_json(&p(&[
            ("MessageAttribute.1.Name", "color"),
            ("MessageAttribute.1.Value.DataType", "String"),
            ("MessageAttribute.1.Value.StringValue", "red"),
            ("AttributeName.2", "SentTimestamp"),
            ("AttributeName.1", "All"),
            ("MessageAttributeName.1", "color"),
        ]));
        assert_eq!(
            v,
            json!({"MessageAttributes": {"color": {"DataType": "String", "StringValue": "red"}},
                   "AttributeNames": ["All", "SentTimestamp"],
                   "MessageAttributeNames": ["color"]})
        );
    }

    #[test]
    fn batch_entries_in_numeric_order() {
        let v = to_json(&p(&[
            ("SendMessageBatchRequestEntry.10.Id", "ten"),
            ("SendMessageBatchRequestEntry.10.MessageBody", "b10"),
            ("SendMessageBatchRequestEntry.2.Id", "two"),
            ("SendMessageBatchRequestEntry.2.MessageBody", "b2"),
            (
                "SendMessageBatchRequestEntry.2.MessageAttribute.1.Name",
                "n",
            ),
            (
                "SendMessageBatchRequestEntry.2.MessageAttribute.1.Value.DataType",
                "Number",
            ),
            (
                "SendMessageBatchRequestEntry.2.MessageAttribute.1.Value.StringValue",
                "1",
            ),
        ]));
        assert_eq!(
            v,
            json!({"Entries": [
                {"Id": "two", "MessageBody": "b2",
                 "MessageAttributes": {"n": {"DataType": "Number", "StringValue": "1"}}},
                {"Id": "ten", "MessageBody": "b10"}]})
        );
    }
}
