//! AMQP field tables and basic properties <-> the engine's `Table`/`Value`/`Properties`.
//!
//! The one place where amq-protocol types meet engine types (docs/mapping/amqp.md has the table).
//! AMQP -> engine -> AMQP is lossless for everything a client can put on the wire. The other
//! direction has two written rules, because engine values can come from other protocols:
//! - `Value::ShortString` goes out as a long string ('S'): AMQP 0-9-1 as RabbitMQ speaks it has no
//!   short-string field type ('s' is a short int there).
//! - A table key, or a property string, longer than 255 bytes (AMQP short strings) is dropped.

use amq_protocol::protocol::BasicProperties;
use amq_protocol_types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use bytes::Bytes;

use crate::engine::{Properties, Table, Value};

pub(crate) fn value_from_amqp(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(x) => Value::I8(*x),
        AMQPValue::ShortShortUInt(x) => Value::U8(*x),
        AMQPValue::ShortInt(x) => Value::I16(*x),
        AMQPValue::ShortUInt(x) => Value::U16(*x),
        AMQPValue::LongInt(x) => Value::I32(*x),
        AMQPValue::LongUInt(x) => Value::U32(*x),
        AMQPValue::LongLongInt(x) => Value::I64(*x),
        AMQPValue::Float(x) => Value::F32(*x),
        AMQPValue::Double(x) => Value::F64(*x),
        AMQPValue::DecimalValue(d) => Value::Decimal {
            scale: d.scale,
            value: d.value,
        },
        AMQPValue::ShortString(s) => Value::ShortString(s.as_str().to_string()),
        AMQPValue::LongString(s) => Value::LongString(Bytes::copy_from_slice(s.as_bytes())),
        AMQPValue::FieldArray(a) => {
            Value::Array(a.as_slice().iter().map(value_from_amqp).collect())
        }
        AMQPValue::Timestamp(t) => Value::Timestamp(*t),
        AMQPValue::FieldTable(t) => Value::Table(table_from_amqp(t)),
        AMQPValue::ByteArray(b) => Value::ByteArray(Bytes::copy_from_slice(b.as_slice())),
        AMQPValue::Void => Value::Void,
    }
}

pub(crate) fn value_to_amqp(v: &Value) -> AMQPValue {
    match v {
        Value::Void => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::I8(x) => AMQPValue::ShortShortInt(*x),
        Value::U8(x) => AMQPValue::ShortShortUInt(*x),
        Value::I16(x) => AMQPValue::ShortInt(*x),
        Value::U16(x) => AMQPValue::ShortUInt(*x),
        Value::I32(x) => AMQPValue::LongInt(*x),
        Value::U32(x) => AMQPValue::LongUInt(*x),
        Value::I64(x) => AMQPValue::LongLongInt(*x),
        Value::F32(x) => AMQPValue::Float(*x),
        Value::F64(x) => AMQPValue::Double(*x),
        Value::Decimal { scale, value } => AMQPValue::DecimalValue(DecimalValue {
            scale: *scale,
            value: *value,
        }),
        Value::ShortString(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        Value::LongString(b) => AMQPValue::LongString(LongString::from(b.to_vec())),
        Value::Timestamp(t) => AMQPValue::Timestamp(*t),
        Value::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.iter().map(value_to_amqp).collect::<Vec<_>>(),
        )),
        Value::Table(t) => AMQPValue::FieldTable(table_to_amqp(t)),
        Value::ByteArray(b) => AMQPValue::ByteArray(ByteArray::from(b.to_vec())),
    }
}

pub(crate) fn table_from_amqp(t: &FieldTable) -> Table {
    t.inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), value_from_amqp(v)))
        .collect()
}

pub(crate) fn table_to_amqp(t: &Table) -> FieldTable {
    let mut out = FieldTable::default();
    for (k, v) in t {
        if let Some(key) = short(k) {
            out.insert(key, value_to_amqp(v));
        }
    }
    out
}

/// A short string, or `None` when `s` does not fit in 255 bytes.
pub(crate) fn short(s: &str) -> Option<ShortString> {
    ShortString::try_new(s).ok()
}

/// A short string cut to 255 bytes at a character boundary, for texts we compose (reply
/// texts, names echoed back).
pub(crate) fn short_lossy(s: &str) -> ShortString {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::try_new(s.get(..end).unwrap_or_default()).unwrap_or_default()
}

pub(crate) fn properties_from_amqp(p: &BasicProperties) -> Properties {
    let s = |v: &Option<ShortString>| v.as_ref().map(|s| s.as_str().to_string());
    Properties {
        content_type: s(p.content_type()),
        content_encoding: s(p.content_encoding()),
        headers: p.headers().as_ref().map(table_from_amqp),
        delivery_mode: *p.delivery_mode(),
        priority: *p.priority(),
        correlation_id: s(p.correlation_id()),
        reply_to: s(p.reply_to()),
        expiration: s(p.expiration()),
        message_id: s(p.message_id()),
        timestamp: *p.timestamp(),
        kind: s(p.kind()),
        user_id: s(p.user_id()),
        app_id: s(p.app_id()),
        cluster_id: s(p.cluster_id()),
        user_properties: Vec::new(),
    }
}

pub(crate) fn properties_to_amqp(p: &Properties) -> BasicProperties {
    let mut out = BasicProperties::default();
    let s = |v: &Option<String>| v.as_deref().and_then(short);
    if let Some(v) = s(&p.content_type) {
        out = out.with_content_type(v);
    }
    if let Some(v) = s(&p.content_encoding) {
        out = out.with_content_encoding(v);
    }
    if let Some(t) = &p.headers {
        out = out.with_headers(table_to_amqp(t));
    }
    if let Some(v) = p.delivery_mode {
        out = out.with_delivery_mode(v);
    }
    if let Some(v) = p.priority {
        out = out.with_priority(v);
    }
    if let Some(v) = s(&p.correlation_id) {
        out = out.with_correlation_id(v);
    }
    if let Some(v) = s(&p.reply_to) {
        out = out.with_reply_to(v);
    }
    if let Some(v) = s(&p.expiration) {
        out = out.with_expiration(v);
    }
    if let Some(v) = s(&p.message_id) {
        out = out.with_message_id(v);
    }
    if let Some(v) = p.timestamp {
        out = out.with_timestamp(v);
    }
    if let Some(v) = s(&p.kind) {
        out = out.with_type(v);
    }
    if let Some(v) = s(&p.user_id) {
        out = out.with_user_id(v);
    }
    if let Some(v) = s(&p.app_id) {
        out = out.with_app_id(v);
    }
    if let Some(v) = s(&p.cluster_id) {
        out = out.with_cluster_id(v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_value() -> FieldTable {
        let mut inner = FieldTable::default();
        inner.insert("n".into(), AMQPValue::LongLongInt(-5));
        let mut t = FieldTable::default();
        let values = [
            AMQPValue::Boolean(true),
            AMQPValue::ShortShortInt(-1),
            AMQPValue::ShortShortUInt(255),
            AMQPValue::ShortInt(-300),
            AMQPValue::ShortUInt(65_000),
            AMQPValue::LongInt(-70_000),
            AMQPValue::LongUInt(4_000_000_000),
            AMQPValue::LongLongInt(i64::MIN),
            AMQPValue::Float(0.5),
            AMQPValue::Double(-1e300),
            AMQPValue::DecimalValue(DecimalValue { scale: 3, value: 7 }),
            AMQPValue::LongString(LongString::from(&b"bytes\xff"[..])),
            AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::Void,
                AMQPValue::FieldTable(inner.clone()),
            ])),
            AMQPValue::Timestamp(1_700_000_000),
            AMQPValue::FieldTable(inner),
            AMQPValue::ByteArray(ByteArray::from(vec![0u8, 1, 2])),
            AMQPValue::Void,
        ];
        for (i, v) in values.into_iter().enumerate() {
            t.insert(format!("k{i:02}").into(), v);
        }
        t
    }

    #[test]
    fn tables_round_trip_losslessly() {
        let t = every_value();
        assert_eq!(table_to_amqp(&table_from_amqp(&t)), t);
    }

    #[test]
    fn properties_round_trip_losslessly() {
        let p = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_headers(every_value())
            .with_delivery_mode(2)
            .with_priority(9)
            .with_correlation_id("c".into())
            .with_reply_to("r".into())
            .with_expiration("1000".into())
            .with_message_id("m".into())
            .with_timestamp(12345)
            .with_type("t".into())
            .with_user_id("guest".into())
            .with_app_id("a".into())
            .with_cluster_id("cl".into());
        assert_eq!(properties_to_amqp(&properties_from_amqp(&p)), p);
        let empty = BasicProperties::default();
        assert_eq!(properties_to_amqp(&properties_from_amqp(&empty)), empty);
    }

    #[test]
    fn engine_only_values_follow_the_written_rules() {
        let mut t = Table::new();
        t.insert("s".into(), Value::ShortString("short".into()));
        t.insert("x".repeat(300), Value::Bool(true));
        let out = table_to_amqp(&t);
        assert_eq!(
            out.inner().get("s"),
            Some(&AMQPValue::LongString("short".into()))
        );
        assert_eq!(out.inner().len(), 1, "over-long key dropped");
        let p = Properties {
            app_id: Some("y".repeat(256)),
            ..Default::default()
        };
        assert_eq!(properties_to_amqp(&p), BasicProperties::default());
    }

    #[test]
    fn short_lossy_cuts_at_char_boundary() {
        let s = "é".repeat(200); // 400 bytes
        let cut = short_lossy(&s);
        assert!(cut.as_str().len() <= 255);
        assert!(cut.as_str().chars().all(|c| c == 'é'));
    }
}
