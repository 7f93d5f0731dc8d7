//! Evaluating a checked policy against a message's attributes or its JSON body.

use serde_json::{Map, Value};

use super::parse::{Conjunction, Entry, NumOp, Rule, Scalar};
use super::AttrValue;

/// A scalar of the message, borrowed from it.
#[derive(Debug, Clone, Copy)]
enum Val<'a> {
    Str(&'a str),
    Num(f64),
    Bool(bool),
    Null,
}

/// Numbers compare at AWS's stated accuracy, five decimal places.
fn fixed(n: f64) -> i64 {
    (n * 100_000.0).round() as i64
}

fn same_number(a: f64, b: f64) -> bool {
    fixed(a) == fixed(b)
}

fn equals(policy: &Scalar, value: Val<'_>) -> bool {
    match (policy, value) {
        (Scalar::Str(p), Val::Str(v)) => p == v,
        (Scalar::Num(p), Val::Num(v)) => same_number(*p, v),
        (Scalar::Bool(p), Val::Bool(v)) => *p == v,
        (Scalar::Null, Val::Null) => true,
        _ => false,
    }
}

fn compare(op: NumOp, bound: f64, value: f64) -> bool {
    let (value, bound) = (fixed(value), fixed(bound));
    match op {
        NumOp::Eq => value == bound,
        NumOp::Lt => value < bound,
        NumOp::Le => value <= bound,
        NumOp::Gt => value > bound,
        NumOp::Ge => value >= bound,
    }
}

/// Whether one rule (not `exists`, which looks at presence) holds for one value.
fn rule_holds(rule: &Rule, value: Val<'_>) -> bool {
    match rule {
        Rule::Exact(p) => equals(p, value),
        Rule::Prefix(p) => matches!(value, Val::Str(v) if v.starts_with(p.as_str())),
        Rule::Suffix(p) => matches!(value, Val::Str(v) if v.ends_with(p.as_str())),
        Rule::EqualsIgnoreCase(p) => {
            matches!(value, Val::Str(v) if v.to_lowercase() == *p)
        }
        Rule::AnythingBut(values) => !values.iter().any(|p| equals(p, value)),
        Rule::AnythingButPrefix(p) => matches!(value, Val::Str(v) if !v.starts_with(p.as_str())),
        Rule::AnythingButSuffix(p) => matches!(value, Val::Str(v) if !v.ends_with(p.as_str())),
        Rule::AnythingButEqualsIgnoreCase(values) => match value {
            Val::Str(v) => {
                let v = v.to_lowercase();
                !values.contains(&v)
            }
            _ => false,
        },
        Rule::Numeric(comparisons) => match value {
            Val::Num(n) => comparisons
                .iter()
                .all(|(op, bound)| compare(*op, *bound, n)),
            _ => false,
        },
        Rule::Cidr(net) => match value {
            Val::Str(v) => v
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| net.contains(&ip)),
            _ => false,
        },
        Rule::Exists(_) => false,
    }
}

/// A key's alternatives against its values: `None` when the key is absent.
fn key_matches(rules: &[Rule], values: Option<&[Val<'_>]>) -> bool {
    match values {
        None => rules.contains(&Rule::Exists(false)),
        Some(values) => rules.iter().any(|rule| match rule {
            Rule::Exists(wanted) => *wanted,
            rule => values.iter().any(|v| rule_holds(rule, *v)),
        }),
    }
}

fn json_scalar(value: &Value) -> Option<Val<'_>> {
    match value {
        Value::String(s) => Some(Val::Str(s)),
        Value::Number(n) => n.as_f64().map(Val::Num),
        Value::Bool(b) => Some(Val::Bool(*b)),
        Value::Null => Some(Val::Null),
        Value::Array(_) | Value::Object(_) => None,
    }
}

/// The scalars of a JSON value, arrays flattened; objects inside arrays are skipped.
fn collect_scalars<'a>(value: &'a Value, out: &mut Vec<Val<'a>>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| collect_scalars(v, out)),
        Value::Object(_) => {}
        scalar => out.extend(json_scalar(scalar)),
    }
}

pub(crate) fn attributes_match(policy: &Conjunction, attributes: &[(&str, AttrValue<'_>)]) -> bool {
    policy.entries.iter().all(|entry| match entry {
        Entry::Leaf { key, rules } => {
            let attribute = attributes
                .iter()
                .find(|(name, _)| *name == key.as_str())
                .map(|(_, value)| *value);
            match attribute {
                None | Some(AttrValue::Binary(_)) => key_matches(rules, None),
                Some(AttrValue::String(s)) => key_matches(rules, Some(&[Val::Str(s)])),
                Some(AttrValue::Number(text)) => {
                    let values: Vec<Val<'_>> = text
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .map(Val::Num)
                        .into_iter()
                        .collect();
                    key_matches(rules, Some(&values))
                }
                Some(AttrValue::StringArray(json)) => {
                    // A String.Array that is not JSON is present but has no values to compare.
                    let parsed: Value = serde_json::from_str(json).unwrap_or(Value::Array(vec![]));
                    let mut values = Vec::new();
                    collect_scalars(&parsed, &mut values);
                    key_matches(rules, Some(&values))
                }
            }
        }
        Entry::Or(branches) => branches.iter().any(|b| attributes_match(b, attributes)),
        // Refused at parse time for this scope; a nested key cannot be an attribute.
        Entry::Nested { .. } => false,
    })
}

pub(crate) fn body_matches(policy: &Conjunction, body: &Value) -> bool {
    match body {
        Value::Object(map) => object_matches(policy, map),
        _ => policy.entries.is_empty(),
    }
}

fn object_matches(policy: &Conjunction, object: &Map<String, Value>) -> bool {
    policy.entries.iter().all(|entry| match entry {
        Entry::Leaf { key, rules } => match object.get(key) {
            // `exists` looks at leaf values: an object here is not one.
            None | Some(Value::Object(_)) => key_matches(rules, None),
            Some(value) => {
                let mut values = Vec::new();
                collect_scalars(value, &mut values);
                key_matches(rules, Some(&values))
            }
        },
        Entry::Nested { key, policy } => nested_matches(policy, object.get(key)),
        Entry::Or(branches) => branches.iter().any(|b| object_matches(b, object)),
    })
}

/// A nested policy against what its key holds: an object, or an array of which one object
/// must match the whole nested policy. Anything else has none of the nested keys.
fn nested_matches(policy: &Conjunction, value: Option<&Value>) -> bool {
    let mut objects = Vec::new();
    if let Some(value) = value {
        collect_objects(value, &mut objects);
    }
    if objects.is_empty() {
        return object_matches(policy, &Map::new());
    }
    objects.into_iter().any(|o| object_matches(policy, o))
}

fn collect_objects<'a>(value: &'a Value, out: &mut Vec<&'a Map<String, Value>>) {
    match value {
        Value::Object(map) => out.push(map),
        Value::Array(items) => items.iter().for_each(|v| collect_objects(v, out)),
        _ => {}
    }
}
