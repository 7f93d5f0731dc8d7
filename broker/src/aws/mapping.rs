//! SQS messages to and from engine messages (docs/mapping/sqs.md has the table).
//!
//! Message attributes become AMQP headers: `String` -> long string, `Number` -> long string
//! (its decimal text), `Binary` -> byte array. A data type the header's type does not imply
//! (`Number`, any `.custom` suffix) is remembered in the `x-sqs-data-types` header table so an
//! SQS receiver gets it back exactly. Headers of AMQP/MQTT/STOMP publishers map back: strings
//! -> `String`, byte arrays -> `Binary`, integers, floats, decimals and timestamps -> `Number`,
//! booleans -> `String` `true`/`false`; arrays, tables and void have no SQS form and are left
//! out (x-death among them). `AWSTraceHeader` travels as the `x-amzn-trace-id` header.

use bridge::md5::AttrValue;
use bridge::sqs::{MessageAttributeValue, MessageAttributes};
use bytes::Bytes;

use crate::engine::{Table, Value};

/// Header remembering data types not implied by the header's type.
pub const DATA_TYPES_HEADER: &str = "x-sqs-data-types";
/// Header carrying the AWSTraceHeader system attribute.
pub const TRACE_HEADER: &str = "x-amzn-trace-id";

/// Message (and system) attributes as AMQP headers. Attributes were validated by the bridge.
pub fn to_headers(attrs: &MessageAttributes, system: &MessageAttributes) -> Option<Table> {
    let mut headers = Table::new();
    let mut types = Table::new();
    for (name, v) in attrs {
        let Ok(value) = v.value(name) else { continue };
        let (header, implied) = match value {
            AttrValue::String(s) => (Value::long_string(s), "String"),
            AttrValue::Binary(b) => (Value::ByteArray(Bytes::from(b)), "Binary"),
        };
        if v.data_type != implied {
            types.insert(name.clone(), Value::long_string(v.data_type.clone()));
        }
        headers.insert(name.clone(), header);
    }
    if let Some(AttrValue::String(trace)) = system
        .get("AWSTraceHeader")
        .and_then(|v| v.value("AWSTraceHeader").ok())
    {
        headers.insert(TRACE_HEADER.into(), Value::long_string(trace));
    }
    if !types.is_empty() {
        headers.insert(DATA_TYPES_HEADER.into(), Value::Table(types));
    }
    (!headers.is_empty()).then_some(headers)
}

/// AMQP headers as SQS message attributes, by the rules in the module comment.
pub fn from_headers(headers: Option<&Table>) -> MessageAttributes {
    let mut out = MessageAttributes::new();
    let Some(headers) = headers else {
        return out;
    };
    let types = match headers.get(DATA_TYPES_HEADER) {
        Some(Value::Table(t)) => Some(t),
        _ => None,
    };
    for (name, value) in headers {
        if name == DATA_TYPES_HEADER
            || name == TRACE_HEADER
            || name == crate::engine::GROUP_ID_HEADER
            || name == super::sqs::DEDUP_ID_HEADER
            || name == super::sqs::SEQUENCE_HEADER
            || name == crate::engine::VISIBLE_AT_HEADER
            || name.starts_with("x-sns-")
        {
            // System attributes of their own (or SNS's bookkeeping), not message attributes.
            continue;
        }
        let declared = types
            .and_then(|t| t.get(name))
            .and_then(Value::as_str)
            .map(str::to_string);
        let attr = match value {
            Value::LongString(b) => match std::str::from_utf8(b) {
                Ok(s) => {
                    MessageAttributeValue::string(declared.unwrap_or_else(|| "String".into()), s)
                }
                Err(_) => {
                    MessageAttributeValue::binary(declared.unwrap_or_else(|| "Binary".into()), b)
                }
            },
            Value::ShortString(s) => MessageAttributeValue::string(
                declared.unwrap_or_else(|| "String".into()),
                s.clone(),
            ),
            Value::ByteArray(b) => {
                MessageAttributeValue::binary(declared.unwrap_or_else(|| "Binary".into()), b)
            }
            Value::Bool(b) => MessageAttributeValue::string("String", b.to_string()),
            Value::F32(f) => MessageAttributeValue::string("Number", f.to_string()),
            Value::F64(f) => MessageAttributeValue::string("Number", f.to_string()),
            Value::Decimal { scale, value } => {
                let v = *value as f64 / 10f64.powi(*scale as i32);
                MessageAttributeValue::string("Number", v.to_string())
            }
            v => match v.as_i64() {
                Some(n) => MessageAttributeValue::string("Number", n.to_string()),
                None => continue,
            },
        };
        // An empty value has no SQS form (SQS refuses empty attribute values).
        if attr.string_value.as_deref() == Some("") || attr.binary_value.as_deref() == Some("") {
            continue;
        }
        out.insert(name.clone(), attr);
    }
    out
}

/// The AWSTraceHeader system attribute of a message, when it carries one.
pub fn trace_header(headers: Option<&Table>) -> Option<String> {
    headers?.get(TRACE_HEADER)?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_through_headers() {
        let mut attrs = MessageAttributes::new();
        attrs.insert("s".into(), MessageAttributeValue::string("String", "text"));
        attrs.insert("n".into(), MessageAttributeValue::string("Number", "42"));
        attrs.insert(
            "c".into(),
            MessageAttributeValue::string("String.custom", "x"),
        );
        attrs.insert(
            "b".into(),
            MessageAttributeValue::binary("Binary", &[0, 159, 255]),
        );
        let mut system = MessageAttributes::new();
        system.insert(
            "AWSTraceHeader".into(),
            MessageAttributeValue::string("String", "Root=1"),
        );
        let headers = to_headers(&attrs, &system).unwrap();
        assert_eq!(headers["s"], Value::long_string("text"));
        assert_eq!(
            headers["b"],
            Value::ByteArray(Bytes::from_static(&[0, 159, 255]))
        );
        assert_eq!(from_headers(Some(&headers)), attrs);
        assert_eq!(trace_header(Some(&headers)).as_deref(), Some("Root=1"));
    }

    #[test]
    fn amqp_headers_map_by_type() {
        let mut h = Table::new();
        h.insert("i".into(), Value::I32(-5));
        h.insert("f".into(), Value::F64(1.5));
        h.insert("t".into(), Value::Bool(true));
        h.insert("x-death".into(), Value::Array(vec![]));
        h.insert("empty".into(), Value::long_string(""));
        let a = from_headers(Some(&h));
        assert_eq!(a["i"], MessageAttributeValue::string("Number", "-5"));
        assert_eq!(a["f"], MessageAttributeValue::string("Number", "1.5"));
        assert_eq!(a["t"], MessageAttributeValue::string("String", "true"));
        assert!(!a.contains_key("x-death"));
        assert!(!a.contains_key("empty"));
    }
}
