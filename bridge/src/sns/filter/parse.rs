//! From policy JSON to the checked policy tree, with AWS's validation messages and limits.

use std::str::FromStr;

use ipnet::IpNet;
use serde_json::{Map, Value};

use super::{FilterPolicyError, FilterPolicyScope, MAX_COMBINATIONS, MAX_KEYS, MAX_POLICY_BYTES};

/// Keys that must all match.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Conjunction {
    pub(crate) entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Entry {
    /// A key with its alternatives: one of them must match.
    Leaf { key: String, rules: Vec<Rule> },
    /// A key whose value is an object of further keys (MessageBody only).
    Nested { key: String, policy: Conjunction },
    /// `$or`: one branch must match.
    Or(Vec<Conjunction>),
}

/// A scalar of the policy or of the message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NumOp {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Rule {
    Exact(Scalar),
    Prefix(String),
    Suffix(String),
    /// Kept lowercased.
    EqualsIgnoreCase(String),
    AnythingBut(Vec<Scalar>),
    AnythingButPrefix(String),
    AnythingButSuffix(String),
    /// Kept lowercased.
    AnythingButEqualsIgnoreCase(Vec<String>),
    /// One or two comparisons, all of which must hold.
    Numeric(Vec<(NumOp, f64)>),
    Exists(bool),
    Cidr(IpNet),
}

/// The operator names; an object using one of them is a match expression, never a `$or` branch.
const KEYWORDS: &[&str] = &[
    "prefix",
    "suffix",
    "equals-ignore-case",
    "anything-but",
    "numeric",
    "exists",
    "cidr",
];

pub(crate) fn parse_policy(
    json: &str,
    scope: FilterPolicyScope,
) -> Result<Conjunction, FilterPolicyError> {
    if json.len() > MAX_POLICY_BYTES {
        return Err(FilterPolicyError::policy(format!(
            "Filter policy is too large: {} bytes, the limit is {MAX_POLICY_BYTES}",
            json.len()
        )));
    }
    let value: Value = serde_json::from_str(json)
        .map_err(|e| FilterPolicyError::policy(format!("failed to parse JSON. {e}")))?;
    let Value::Object(map) = value else {
        return Err(FilterPolicyError::policy(
            "Filter policy must be a JSON object",
        ));
    };
    let root = parse_conjunction(&map, scope)?;
    if key_count(&root) > MAX_KEYS {
        return Err(FilterPolicyError::policy(format!(
            "Filter policy can not have more than {MAX_KEYS} keys"
        )));
    }
    if combinations(&root, 1) > MAX_COMBINATIONS {
        return Err(FilterPolicyError::policy("Filter policy is too complex"));
    }
    Ok(root)
}

fn parse_conjunction(
    map: &Map<String, Value>,
    scope: FilterPolicyScope,
) -> Result<Conjunction, FilterPolicyError> {
    let mut entries = Vec::with_capacity(map.len());
    for (key, value) in map {
        if key == "$or" {
            if let Some(branches) = or_branches(value) {
                let branches = branches
                    .iter()
                    .map(|b| parse_conjunction(b, scope))
                    .collect::<Result<Vec<_>, _>>()?;
                entries.push(Entry::Or(branches));
                continue;
            }
            // Not a well-formed `$or`: AWS then reads `$or` as an ordinary key.
        }
        match value {
            Value::Array(items) => {
                if items.is_empty() {
                    return Err(FilterPolicyError::policy("Empty arrays are not allowed"));
                }
                let rules = items.iter().map(parse_rule).collect::<Result<_, _>>()?;
                entries.push(Entry::Leaf {
                    key: key.clone(),
                    rules,
                });
            }
            Value::Object(inner) => {
                if scope == FilterPolicyScope::MessageAttributes {
                    return Err(FilterPolicyError::bare(
                        "Filter policy scope MessageAttributes does not support nested filter policy",
                    ));
                }
                entries.push(Entry::Nested {
                    key: key.clone(),
                    policy: parse_conjunction(inner, scope)?,
                });
            }
            _ => {
                return Err(FilterPolicyError::policy(format!(
                    "\"{key}\" must be an object or an array"
                )))
            }
        }
    }
    Ok(Conjunction { entries })
}

/// AWS recognises `$or` only as an array of at least two objects none of which uses an operator
/// name as a key.
fn or_branches(value: &Value) -> Option<Vec<&Map<String, Value>>> {
    let items = value.as_array()?;
    if items.len() < 2 {
        return None;
    }
    items
        .iter()
        .map(|item| {
            let branch = item.as_object()?;
            if branch.keys().any(|k| KEYWORDS.contains(&k.as_str())) {
                return None;
            }
            Some(branch)
        })
        .collect()
}

fn scalar(value: &Value) -> Option<Scalar> {
    match value {
        Value::String(s) => Some(Scalar::Str(s.clone())),
        Value::Number(n) => n.as_f64().map(Scalar::Num),
        Value::Bool(b) => Some(Scalar::Bool(*b)),
        Value::Null => Some(Scalar::Null),
        Value::Array(_) | Value::Object(_) => None,
    }
}

fn not_a_match_value() -> FilterPolicyError {
    FilterPolicyError::policy("Match value must be String, number, true, false, or null")
}

fn parse_rule(value: &Value) -> Result<Rule, FilterPolicyError> {
    if let Some(s) = scalar(value) {
        return Ok(Rule::Exact(s));
    }
    let Value::Object(expr) = value else {
        return Err(not_a_match_value());
    };
    let mut it = expr.iter();
    let (Some((operator, operand)), None) = (it.next(), it.next()) else {
        return Err(FilterPolicyError::policy(
            "Only one key allowed in match expression",
        ));
    };
    match operator.as_str() {
        "prefix" => Ok(Rule::Prefix(pattern_string(operator, operand)?)),
        "suffix" => Ok(Rule::Suffix(pattern_string(operator, operand)?)),
        "equals-ignore-case" => Ok(Rule::EqualsIgnoreCase(
            pattern_string(operator, operand)?.to_lowercase(),
        )),
        "anything-but" => parse_anything_but(operand),
        "exists" => match operand {
            Value::Bool(b) => Ok(Rule::Exists(*b)),
            _ => Err(FilterPolicyError::policy(
                "exists match pattern must be either true or false.",
            )),
        },
        "numeric" => parse_numeric(operand),
        "cidr" => parse_cidr(operand),
        other => Err(FilterPolicyError::policy(format!(
            "Unrecognized match type {other}"
        ))),
    }
}

fn pattern_string(operator: &str, operand: &Value) -> Result<String, FilterPolicyError> {
    match operand {
        Value::String(s) => Ok(s.clone()),
        _ => Err(FilterPolicyError::policy(format!(
            "{operator} match pattern must be a string"
        ))),
    }
}

fn parse_anything_but(operand: &Value) -> Result<Rule, FilterPolicyError> {
    match operand {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(FilterPolicyError::policy("Empty arrays are not allowed"));
            }
            let values = items
                .iter()
                .map(|v| {
                    string_or_number(v).ok_or_else(|| {
                        FilterPolicyError::policy(
                            "Inside anything but list, start|null|boolean is not supported.",
                        )
                    })
                })
                .collect::<Result<_, _>>()?;
            Ok(Rule::AnythingBut(values))
        }
        Value::Object(inner) => {
            let mut it = inner.iter();
            let (Some((operator, pattern)), None) = (it.next(), it.next()) else {
                return Err(FilterPolicyError::policy(
                    "Only one key allowed in match expression",
                ));
            };
            match operator.as_str() {
                "prefix" => Ok(Rule::AnythingButPrefix(pattern_string(operator, pattern)?)),
                "suffix" => Ok(Rule::AnythingButSuffix(pattern_string(operator, pattern)?)),
                "equals-ignore-case" => match pattern {
                    Value::String(s) => {
                        Ok(Rule::AnythingButEqualsIgnoreCase(vec![s.to_lowercase()]))
                    }
                    Value::Array(items) if !items.is_empty() => items
                        .iter()
                        .map(|v| match v {
                            Value::String(s) => Ok(s.to_lowercase()),
                            _ => Err(FilterPolicyError::policy(
                                "equals-ignore-case match pattern must be a string",
                            )),
                        })
                        .collect::<Result<_, _>>()
                        .map(Rule::AnythingButEqualsIgnoreCase),
                    _ => Err(FilterPolicyError::policy(
                        "equals-ignore-case match pattern must be a string",
                    )),
                },
                other => Err(FilterPolicyError::policy(format!(
                    "Unsupported anything-but pattern: {other}"
                ))),
            }
        }
        other => string_or_number(other)
            .map(|v| Rule::AnythingBut(vec![v]))
            .ok_or_else(|| {
                FilterPolicyError::policy(
                    "Value of anything-but must be an array or single string/number value.",
                )
            }),
    }
}

fn string_or_number(value: &Value) -> Option<Scalar> {
    match value {
        Value::String(_) | Value::Number(_) => scalar(value),
        _ => None,
    }
}

fn num_op(s: &str) -> Option<NumOp> {
    Some(match s {
        "=" => NumOp::Eq,
        "<" => NumOp::Lt,
        "<=" => NumOp::Le,
        ">" => NumOp::Gt,
        ">=" => NumOp::Ge,
        _ => return None,
    })
}

fn numeric_operand(op: &str, value: Option<&Value>) -> Result<f64, FilterPolicyError> {
    match value.and_then(Value::as_f64) {
        Some(n) => Ok(n),
        None => {
            let name = if op == "=" { "equals" } else { op };
            Err(FilterPolicyError::policy(format!(
                "Value of {name} must be numeric"
            )))
        }
    }
}

/// `["=", 5]`, `[">", 0]`, or a range `[">", 0, "<=", 150]`.
fn parse_numeric(operand: &Value) -> Result<Rule, FilterPolicyError> {
    let Value::Array(items) = operand else {
        return Err(FilterPolicyError::policy(
            "Value of numeric must be an array.",
        ));
    };
    let Some(first) = items.first() else {
        return Err(FilterPolicyError::policy(
            "Invalid member in numeric match: ]",
        ));
    };
    let Some(first_op) = first.as_str() else {
        return Err(FilterPolicyError::policy(format!(
            "Invalid member in numeric match: {first}"
        )));
    };
    let Some(op) = num_op(first_op) else {
        return Err(FilterPolicyError::policy(format!(
            "Unrecognized numeric range operator: {first_op}"
        )));
    };
    let bottom = numeric_operand(first_op, items.get(1))?;
    let mut comparisons = vec![(op, bottom)];
    if items.len() == 2 {
        return Ok(Rule::Numeric(comparisons));
    }
    if !matches!(op, NumOp::Gt | NumOp::Ge) {
        return Err(FilterPolicyError::policy(
            "Too many elements in numeric expression",
        ));
    }
    let second = &items[2];
    let Some(second_op) = second.as_str() else {
        return Err(FilterPolicyError::policy(format!(
            "Bad value in numeric range: {second}"
        )));
    };
    let top_op = match num_op(second_op) {
        Some(op @ (NumOp::Lt | NumOp::Le)) => op,
        _ => {
            return Err(FilterPolicyError::policy(format!(
                "Bad numeric range operator: {second_op}"
            )))
        }
    };
    let top = numeric_operand(second_op, items.get(3))?;
    if top <= bottom {
        return Err(FilterPolicyError::policy("Bottom must be less than top"));
    }
    if items.len() > 4 {
        return Err(FilterPolicyError::policy(
            "Too many terms in numeric range expression",
        ));
    }
    comparisons.push((top_op, top));
    Ok(Rule::Numeric(comparisons))
}

fn parse_cidr(operand: &Value) -> Result<Rule, FilterPolicyError> {
    let Value::String(text) = operand else {
        return Err(FilterPolicyError::policy(
            "cidr match pattern must be a string",
        ));
    };
    let Some((address, bits)) = text.split_once('/') else {
        return Err(FilterPolicyError::policy(
            "Malformed CIDR, one '/' required",
        ));
    };
    if bits.parse::<u8>().is_err() {
        return Err(FilterPolicyError::policy(
            "Malformed CIDR, mask bits must be an integer",
        ));
    }
    IpNet::from_str(text)
        .map(Rule::Cidr)
        .map_err(|_| FilterPolicyError::policy(format!("Nonstandard IP address: {address}")))
}

/// Keys counted against [`MAX_KEYS`]: the top level; `$or` counts as its largest branch.
fn key_count(policy: &Conjunction) -> usize {
    policy
        .entries
        .iter()
        .map(|entry| match entry {
            Entry::Leaf { .. } | Entry::Nested { .. } => 1,
            Entry::Or(branches) => branches.iter().map(key_count).max().unwrap_or(0),
        })
        .sum()
}

/// Value combinations counted against [`MAX_COMBINATIONS`]: a key's values times its depth,
/// multiplied across keys; `$or` adds its branches.
fn combinations(policy: &Conjunction, depth: u64) -> u64 {
    policy.entries.iter().fold(1u64, |total, entry| {
        let factor = match entry {
            Entry::Leaf { rules, .. } => (rules.len() as u64).saturating_mul(depth),
            Entry::Nested { policy, .. } => combinations(policy, depth + 1),
            Entry::Or(branches) => branches
                .iter()
                .fold(0u64, |sum, b| sum.saturating_add(combinations(b, depth))),
        };
        total.saturating_mul(factor)
    })
}
