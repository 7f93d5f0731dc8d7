//! The one message type every protocol maps to and from, and its persistent encoding.
//!
//! Field names follow AMQP's basic properties because AMQP's model is the richest of the open
//! protocols; docs/mapping/ says how each other protocol maps onto them.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// A typed header value. The variants are the union of what AMQP tables, MQTT user
/// properties, STOMP headers and SQS/SNS message attributes can carry.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Value {
    Void,
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
    Decimal {
        scale: u8,
        value: u32,
    },
    /// AMQP short string (at most 255 bytes on the wire).
    ShortString(String),
    /// AMQP long string: arbitrary bytes, usually UTF-8 text.
    LongString(Bytes),
    /// Seconds since the Unix epoch.
    Timestamp(u64),
    Array(Vec<Value>),
    Table(Table),
    ByteArray(Bytes),
}

/// Header table, ordered by key as AMQP field tables are encoded by RabbitMQ.
pub type Table = BTreeMap<String, Value>;

impl Value {
    /// The value as text, for routing on headers and for protocols whose headers are strings.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::ShortString(s) => Some(s),
            Value::LongString(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
    /// The value as an integer, for x-arguments that RabbitMQ accepts in any integer type.
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            Value::I8(v) => v.into(),
            Value::U8(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I64(v) => v,
            Value::Timestamp(v) => i64::try_from(v).ok()?,
            _ => return None,
        })
    }
    pub fn long_string(s: impl Into<String>) -> Value {
        Value::LongString(Bytes::from(s.into()))
    }
}

/// Message properties (AMQP basic properties; other protocols map onto them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub headers: Option<Table>,
    /// 1 = transient, 2 = persistent.
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    /// Per-message TTL in milliseconds, as a decimal string (AMQP's representation).
    pub expiration: Option<String>,
    pub message_id: Option<String>,
    pub timestamp: Option<u64>,
    pub kind: Option<String>,
    pub user_id: Option<String>,
    pub app_id: Option<String>,
    pub cluster_id: Option<String>,
    /// Text headers in the order they were published, repeated names included (MQTT 5 user
    /// properties, which MQTT-3.3.2-18 says must be forwarded in order). `headers` holds the
    /// same pairs as a table (the last value of a repeated name wins) for the protocols and
    /// the routing that read tables; a protocol that can carry ordered, repeated headers reads
    /// this list first. Empty for messages from other protocols.
    pub user_properties: Vec<(String, String)>,
}

impl Properties {
    pub fn persistent(&self) -> bool {
        self.delivery_mode == Some(2)
    }
    /// The per-message TTL in milliseconds, when `expiration` holds a valid one.
    pub fn expiration_ms(&self) -> Option<u64> {
        self.expiration.as_deref().and_then(|s| s.parse().ok())
    }
}

/// A message as published: where it was published to, its properties and its body.
/// Shared as `Arc<Message>` so fan-out clones a pointer, not the body.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub exchange: String,
    pub routing_key: String,
    pub properties: Properties,
    pub body: Bytes,
}

pub type SharedMessage = Arc<Message>;

impl Message {
    pub fn new(exchange: impl Into<String>, routing_key: impl Into<String>, body: Bytes) -> Self {
        Message {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            properties: Properties::default(),
            body,
        }
    }

    /// Bytes this message holds in memory, for limits and the memory alarm.
    pub fn size_bytes(&self) -> usize {
        let ordered: usize = (self.properties.user_properties.iter())
            .map(|(k, v)| k.len() + v.len() + 48)
            .sum();
        self.body.len() + self.exchange.len() + self.routing_key.len() + 64 + ordered
    }

    /// Encode for the store (docs/storage.md, "Message payload"). Version 1 unless the message
    /// has ordered user properties: version 2 is version 1 followed by that list, so messages
    /// without one are written exactly as before and stores written before version 2 still
    /// decode.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.body.len() + 128);
        let ordered = &self.properties.user_properties;
        out.put_u8(if ordered.is_empty() { 1 } else { 2 });
        put_str(&mut out, &self.exchange);
        put_str(&mut out, &self.routing_key);
        let p = &self.properties;
        for s in [
            &p.content_type,
            &p.content_encoding,
            &p.correlation_id,
            &p.reply_to,
            &p.expiration,
            &p.message_id,
            &p.kind,
            &p.user_id,
            &p.app_id,
            &p.cluster_id,
        ] {
            put_opt_str(&mut out, s.as_deref());
        }
        put_opt_u8(&mut out, p.delivery_mode);
        put_opt_u8(&mut out, p.priority);
        match p.timestamp {
            Some(t) => {
                out.put_u8(1);
                out.put_u64(t);
            }
            None => out.put_u8(0),
        }
        match &p.headers {
            Some(t) => {
                out.put_u8(1);
                put_table(&mut out, t);
            }
            None => out.put_u8(0),
        }
        out.put_u32(self.body.len() as u32);
        out.extend_from_slice(&self.body);
        if !ordered.is_empty() {
            out.put_u32(ordered.len() as u32);
            for (k, v) in ordered {
                put_str(&mut out, k);
                put_str(&mut out, v);
            }
        }
        out.freeze()
    }

    /// Decode what [`Message::encode`] wrote. `None` when the bytes are not a message.
    pub fn decode(mut b: Bytes) -> Option<Message> {
        let version = get_u8(&mut b)?;
        if version != 1 && version != 2 {
            return None;
        }
        let exchange = get_str(&mut b)?;
        let routing_key = get_str(&mut b)?;
        let mut strs: [Option<String>; 10] = Default::default();
        for s in strs.iter_mut() {
            *s = get_opt_str(&mut b)?;
        }
        let [content_type, content_encoding, correlation_id, reply_to, expiration, message_id, kind, user_id, app_id, cluster_id] =
            strs;
        let delivery_mode = get_opt_u8(&mut b)?;
        let priority = get_opt_u8(&mut b)?;
        let timestamp = match get_u8(&mut b)? {
            0 => None,
            _ => Some(get_u64(&mut b)?),
        };
        let headers = match get_u8(&mut b)? {
            0 => None,
            _ => Some(get_table(&mut b, 0)?),
        };
        let len = get_u32(&mut b)? as usize;
        if b.remaining() < len {
            return None;
        }
        let body = b.split_to(len);
        let mut user_properties = Vec::new();
        if version == 2 {
            let n = get_u32(&mut b)?;
            // Not trusted for an allocation size: each pair takes at least 8 bytes.
            if (n as usize).saturating_mul(8) > b.remaining() {
                return None;
            }
            user_properties.reserve(n as usize);
            for _ in 0..n {
                user_properties.push((get_str(&mut b)?, get_str(&mut b)?));
            }
        }
        Some(Message {
            exchange,
            routing_key,
            properties: Properties {
                content_type,
                content_encoding,
                headers,
                delivery_mode,
                priority,
                correlation_id,
                reply_to,
                expiration,
                message_id,
                timestamp,
                kind,
                user_id,
                app_id,
                cluster_id,
                user_properties,
            },
            body,
        })
    }
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u32(s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}
fn put_opt_str(out: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => {
            out.put_u8(1);
            put_str(out, s);
        }
        None => out.put_u8(0),
    }
}
fn put_opt_u8(out: &mut BytesMut, v: Option<u8>) {
    match v {
        Some(v) => {
            out.put_u8(1);
            out.put_u8(v);
        }
        None => out.put_u8(0),
    }
}
fn put_table(out: &mut BytesMut, t: &Table) {
    out.put_u32(t.len() as u32);
    for (k, v) in t {
        put_str(out, k);
        put_value(out, v);
    }
}
fn put_value(out: &mut BytesMut, v: &Value) {
    match v {
        Value::Void => out.put_u8(b'V'),
        Value::Bool(b) => {
            out.put_u8(b't');
            out.put_u8(*b as u8);
        }
        Value::I8(x) => {
            out.put_u8(b'b');
            out.put_i8(*x);
        }
        Value::U8(x) => {
            out.put_u8(b'B');
            out.put_u8(*x);
        }
        Value::I16(x) => {
            out.put_u8(b's');
            out.put_i16(*x);
        }
        Value::U16(x) => {
            out.put_u8(b'u');
            out.put_u16(*x);
        }
        Value::I32(x) => {
            out.put_u8(b'I');
            out.put_i32(*x);
        }
        Value::U32(x) => {
            out.put_u8(b'i');
            out.put_u32(*x);
        }
        Value::I64(x) => {
            out.put_u8(b'l');
            out.put_i64(*x);
        }
        Value::F32(x) => {
            out.put_u8(b'f');
            out.put_f32(*x);
        }
        Value::F64(x) => {
            out.put_u8(b'd');
            out.put_f64(*x);
        }
        Value::Decimal { scale, value } => {
            out.put_u8(b'D');
            out.put_u8(*scale);
            out.put_u32(*value);
        }
        Value::ShortString(s) => {
            out.put_u8(b'S');
            put_str(out, s);
        }
        Value::LongString(b) => {
            out.put_u8(b'L');
            out.put_u32(b.len() as u32);
            out.extend_from_slice(b);
        }
        Value::Timestamp(t) => {
            out.put_u8(b'T');
            out.put_u64(*t);
        }
        Value::Array(a) => {
            out.put_u8(b'A');
            out.put_u32(a.len() as u32);
            for v in a {
                put_value(out, v);
            }
        }
        Value::Table(t) => {
            out.put_u8(b'F');
            put_table(out, t);
        }
        Value::ByteArray(b) => {
            out.put_u8(b'x');
            out.put_u32(b.len() as u32);
            out.extend_from_slice(b);
        }
    }
}

fn get_u8(b: &mut Bytes) -> Option<u8> {
    (b.remaining() >= 1).then(|| b.get_u8())
}
fn get_u32(b: &mut Bytes) -> Option<u32> {
    (b.remaining() >= 4).then(|| b.get_u32())
}
fn get_u64(b: &mut Bytes) -> Option<u64> {
    (b.remaining() >= 8).then(|| b.get_u64())
}
fn get_bytes(b: &mut Bytes) -> Option<Bytes> {
    let len = get_u32(b)? as usize;
    (b.remaining() >= len).then(|| b.split_to(len))
}
fn get_str(b: &mut Bytes) -> Option<String> {
    String::from_utf8(get_bytes(b)?.to_vec()).ok()
}
fn get_opt_str(b: &mut Bytes) -> Option<Option<String>> {
    match get_u8(b)? {
        0 => Some(None),
        _ => Some(Some(get_str(b)?)),
    }
}
fn get_opt_u8(b: &mut Bytes) -> Option<Option<u8>> {
    match get_u8(b)? {
        0 => Some(None),
        _ => Some(Some(get_u8(b)?)),
    }
}

/// Nesting deeper than this is refused: a stored record must never exhaust the stack.
const TABLE_DEPTH_MAX: usize = 64;

fn get_table(b: &mut Bytes, depth: usize) -> Option<Table> {
    if depth > TABLE_DEPTH_MAX {
        return None;
    }
    let n = get_u32(b)?;
    let mut t = Table::new();
    for _ in 0..n {
        let k = get_str(b)?;
        let v = get_value(b, depth + 1)?;
        t.insert(k, v);
    }
    Some(t)
}
fn get_value(b: &mut Bytes, depth: usize) -> Option<Value> {
    if depth > TABLE_DEPTH_MAX {
        return None;
    }
    let need = |b: &Bytes, n: usize| (b.remaining() >= n).then_some(());
    Some(match get_u8(b)? {
        b'V' => Value::Void,
        b't' => Value::Bool(get_u8(b)? != 0),
        b'b' => Value::I8(get_u8(b)? as i8),
        b'B' => Value::U8(get_u8(b)?),
        b's' => {
            need(b, 2)?;
            Value::I16(b.get_i16())
        }
        b'u' => {
            need(b, 2)?;
            Value::U16(b.get_u16())
        }
        b'I' => Value::I32(get_u32(b)? as i32),
        b'i' => Value::U32(get_u32(b)?),
        b'l' => Value::I64(get_u64(b)? as i64),
        b'f' => Value::F32(f32::from_bits(get_u32(b)?)),
        b'd' => Value::F64(f64::from_bits(get_u64(b)?)),
        b'D' => Value::Decimal {
            scale: get_u8(b)?,
            value: get_u32(b)?,
        },
        b'S' => Value::ShortString(get_str(b)?),
        b'L' => Value::LongString(get_bytes(b)?),
        b'T' => Value::Timestamp(get_u64(b)?),
        b'A' => {
            let n = get_u32(b)?;
            let mut a = Vec::new();
            for _ in 0..n {
                a.push(get_value(b, depth + 1)?);
            }
            Value::Array(a)
        }
        b'F' => Value::Table(get_table(b, depth + 1)?),
        b'x' => Value::ByteArray(get_bytes(b)?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let mut headers = Table::new();
        headers.insert("s".into(), Value::long_string("text"));
        headers.insert(
            "nested".into(),
            Value::Table(Table::from([("n".to_string(), Value::I64(-5))])),
        );
        headers.insert(
            "arr".into(),
            Value::Array(vec![Value::Bool(true), Value::F64(1.5), Value::Void]),
        );
        headers.insert(
            "dec".into(),
            Value::Decimal {
                scale: 2,
                value: 314,
            },
        );
        let msg = Message {
            exchange: "ex".into(),
            routing_key: "a.b".into(),
            properties: Properties {
                content_type: Some("text/plain".into()),
                headers: Some(headers),
                delivery_mode: Some(2),
                priority: Some(7),
                expiration: Some("1000".into()),
                timestamp: Some(1_700_000_000),
                ..Default::default()
            },
            body: Bytes::from_static(b"hello\0world"),
        };
        assert_eq!(Message::decode(msg.encode()), Some(msg));
    }

    #[test]
    fn ordered_user_properties_round_trip_as_version_2() {
        let mut msg = Message::new("e", "k", Bytes::from_static(b"body"));
        assert_eq!(msg.encode()[0], 1, "no list: the version 1 bytes as before");
        msg.properties.user_properties = vec![
            ("a".into(), "1".into()),
            ("b".into(), "2".into()),
            ("a".into(), "3".into()),
        ];
        let enc = msg.encode();
        assert_eq!(enc[0], 2);
        assert_eq!(Message::decode(enc.clone()), Some(msg));
        for cut in 0..enc.len() {
            assert_eq!(Message::decode(enc.slice(..cut)), None, "cut at {cut}");
        }
    }

    /// A version 1 record as this format wrote it before version 2 existed (bytes written by
    /// hand, not by today's encoder), so stores from before still recover.
    #[test]
    fn version_1_bytes_still_decode() {
        let mut v1 = vec![1u8];
        for s in ["ex", "a.b"] {
            v1.extend_from_slice(&(s.len() as u32).to_be_bytes());
            v1.extend_from_slice(s.as_bytes());
        }
        v1.extend_from_slice(&[0; 10]); // ten absent strings
        v1.extend_from_slice(&[1, 2, 0, 0]); // delivery mode 2, no priority, no timestamp
        v1.extend_from_slice(&[1, 0, 0, 0, 1]); // headers: one entry
        v1.extend_from_slice(&[0, 0, 0, 1, b'k', b'L', 0, 0, 0, 1, b'v']);
        v1.extend_from_slice(&[0, 0, 0, 2, b'h', b'i']);
        let msg = Message::decode(Bytes::from(v1)).expect("version 1 decodes");
        assert_eq!(msg.routing_key, "a.b");
        assert_eq!(msg.properties.delivery_mode, Some(2));
        assert_eq!(&msg.body[..], b"hi");
        assert!(msg.properties.user_properties.is_empty());
        let h = msg.properties.headers.unwrap();
        assert_eq!(h.get("k").and_then(Value::as_str), Some("v"));
    }

    #[test]
    fn decode_rejects_truncated_input() {
        let msg = Message::new("e", "k", Bytes::from_static(b"body"));
        let enc = msg.encode();
        for cut in 0..enc.len() {
            assert_eq!(Message::decode(enc.slice(..cut)), None, "cut at {cut}");
        }
    }
}
