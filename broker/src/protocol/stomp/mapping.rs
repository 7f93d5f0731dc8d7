//! STOMP headers <-> engine message properties and headers (docs/mapping/stomp.md), after
//! RabbitMQ's STOMP plugin (`rabbit_stomp_util:message_properties/1` and
//! `message_headers/3`).

use codecs::stomp::Frame;

use crate::engine::{Message, Properties, Table, Value};

/// SEND headers that steer the frame; with [`PROPERTY_HEADERS`], none is copied into the
/// message's header table.
const NOT_USER_HEADERS: &[&str] = &["destination", "receipt", "transaction"];

/// MESSAGE headers the broker writes itself, besides [`PROPERTY_HEADERS`]: a message header of
/// the same name is not sent (it would come after ours and confuse clients that keep the last of
/// repeated headers).
const BROKER_HEADERS: &[&str] = &[
    "subscription",
    "destination",
    "message-id",
    "ack",
    "redelivered",
];

/// Headers that map to message properties both ways: never copied into the header table on
/// SEND, always written from the properties on MESSAGE.
const PROPERTY_HEADERS: &[&str] = &[
    "content-length",
    "content-type",
    "content-encoding",
    "persistent",
    "priority",
    "correlation-id",
    "reply-to",
    "expiration",
    "amqp-message-id",
    "type",
    "user-id",
    "app-id",
    "timestamp",
];

/// A SEND frame as an engine message for `exchange`/`routing_key`. `reply_to` is the
/// reply-to header as the session resolved it (temp queues rewritten). `user` is the
/// authenticated user: a `user-id` header must name it, as RabbitMQ checks.
pub fn to_message(
    frame: &Frame,
    exchange: &str,
    routing_key: &str,
    reply_to: Option<String>,
    user: &str,
) -> Result<Message, String> {
    let h = |name| frame.header(name).map(str::to_string);
    let mut p = Properties {
        content_type: h("content-type"),
        content_encoding: h("content-encoding"),
        correlation_id: h("correlation-id"),
        reply_to,
        message_id: h("amqp-message-id"),
        kind: h("type"),
        app_id: h("app-id"),
        ..Default::default()
    };
    p.delivery_mode = match frame.header("persistent") {
        Some("true") => Some(2),
        Some("false") => Some(1),
        _ => None,
    };
    // A priority that is not 0-255 is dropped, as RabbitMQ ignores a header it cannot read.
    p.priority = frame.header("priority").and_then(|v| v.trim().parse().ok());
    if let Some(e) = frame.header("expiration") {
        if e.parse::<u64>().is_err() {
            return Err(format!("invalid expiration '{e}': milliseconds expected"));
        }
        p.expiration = Some(e.to_string());
    }
    if let Some(t) = frame.header("timestamp") {
        p.timestamp = Some(
            t.parse()
                .map_err(|_| format!("invalid timestamp '{t}': seconds expected"))?,
        );
    }
    if let Some(u) = frame.header("user-id") {
        if u != user {
            return Err(format!(
                "user-id header '{u}' does not match the authenticated user '{user}'"
            ));
        }
        p.user_id = Some(u.to_string());
    }
    let mut headers = Table::new();
    for (k, v) in &frame.headers {
        if NOT_USER_HEADERS.contains(&k.as_str())
            || PROPERTY_HEADERS.contains(&k.as_str())
            || headers.contains_key(k)
        {
            // Repeated headers: the first wins, as STOMP says.
            continue;
        }
        headers.insert(k.clone(), Value::long_string(v.clone()));
    }
    if !headers.is_empty() {
        p.headers = Some(headers);
    }
    let mut msg = Message::new(exchange, routing_key, frame.body.clone());
    msg.properties = p;
    Ok(msg)
}

/// A header value as STOMP text; tables, arrays, byte arrays and void have no text form and
/// are dropped.
fn text(v: &Value) -> Option<String> {
    Some(match v {
        Value::ShortString(s) => s.clone(),
        Value::LongString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Bool(b) => b.to_string(),
        Value::F32(f) => f.to_string(),
        Value::F64(f) => f.to_string(),
        Value::Timestamp(t) => t.to_string(),
        Value::Decimal { scale, value } => {
            let s = format!("{value:0>width$}", width = usize::from(*scale) + 1);
            let (int, frac) = s.split_at(s.len() - usize::from(*scale));
            if frac.is_empty() {
                int.to_string()
            } else {
                format!("{int}.{frac}")
            }
        }
        Value::Void | Value::Array(_) | Value::Table(_) | Value::ByteArray(_) => return None,
        other => other.as_i64()?.to_string(),
    })
}

/// The MESSAGE headers that carry `msg`'s properties and header table (after the broker's own
/// `subscription`, `destination`, `message-id`, `ack` and `redelivered`).
pub fn message_headers(msg: &Message, out: &mut Vec<(String, String)>) {
    let p = &msg.properties;
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            out.push((k.to_string(), v));
        }
    };
    put("content-type", p.content_type.clone());
    put("content-encoding", p.content_encoding.clone());
    put("persistent", p.persistent().then(|| "true".to_string()));
    put("priority", p.priority.map(|v| v.to_string()));
    put("correlation-id", p.correlation_id.clone());
    put("reply-to", p.reply_to.clone());
    put("amqp-message-id", p.message_id.clone());
    put("expiration", p.expiration.clone());
    put("type", p.kind.clone());
    put("user-id", p.user_id.clone());
    put("app-id", p.app_id.clone());
    put("timestamp", p.timestamp.map(|v| v.to_string()));
    if let Some(h) = &p.headers {
        for (k, v) in h {
            if BROKER_HEADERS.contains(&k.as_str()) || PROPERTY_HEADERS.contains(&k.as_str()) {
                continue;
            }
            if let Some(t) = text(v) {
                out.push((k.clone(), t));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use codecs::stomp::Command;

    fn send() -> Frame {
        Frame::new(Command::Send)
            .with("destination", "/queue/a")
            .with("content-type", "text/plain")
            .with("content-encoding", "gzip")
            .with("persistent", "true")
            .with("priority", "5")
            .with("correlation-id", "c1")
            .with("expiration", "60000")
            .with("amqp-message-id", "m1")
            .with("type", "greeting")
            .with("user-id", "guest")
            .with("app-id", "app")
            .with("timestamp", "1700000000")
            .with("receipt", "r")
            .with("x-custom", "one")
            .with("x-custom", "two")
            .with_body(&b"hi"[..])
    }

    #[test]
    fn send_headers_become_properties() {
        let m = to_message(&send(), "", "a", Some("/reply-queue/q".into()), "guest").unwrap();
        let p = &m.properties;
        assert_eq!(p.content_type.as_deref(), Some("text/plain"));
        assert_eq!(p.content_encoding.as_deref(), Some("gzip"));
        assert_eq!(p.delivery_mode, Some(2));
        assert_eq!(p.priority, Some(5));
        assert_eq!(p.correlation_id.as_deref(), Some("c1"));
        assert_eq!(p.reply_to.as_deref(), Some("/reply-queue/q"));
        assert_eq!(p.expiration.as_deref(), Some("60000"));
        assert_eq!(p.message_id.as_deref(), Some("m1"));
        assert_eq!(p.kind.as_deref(), Some("greeting"));
        assert_eq!(p.user_id.as_deref(), Some("guest"));
        assert_eq!(p.app_id.as_deref(), Some("app"));
        assert_eq!(p.timestamp, Some(1_700_000_000));
        let h = p.headers.as_ref().unwrap();
        // Only the custom header, its first value.
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-custom"], Value::long_string("one"));
        assert_eq!(&m.body[..], b"hi");
    }

    #[test]
    fn refusals() {
        let bad_user = Frame::new(Command::Send).with("user-id", "mallory");
        assert!(to_message(&bad_user, "", "a", None, "guest").is_err());
        let bad_exp = Frame::new(Command::Send).with("expiration", "soon");
        assert!(to_message(&bad_exp, "", "a", None, "guest").is_err());
        let bad_prio = Frame::new(Command::Send).with("priority", "high");
        let m = to_message(&bad_prio, "", "a", None, "guest").unwrap();
        assert_eq!(m.properties.priority, None);
    }

    #[test]
    fn round_trip_through_message_headers() {
        let m = to_message(&send(), "", "a", None, "guest").unwrap();
        let mut out = Vec::new();
        message_headers(&m, &mut out);
        let get = |k: &str| out.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        for (k, v) in [
            ("content-type", "text/plain"),
            ("content-encoding", "gzip"),
            ("persistent", "true"),
            ("priority", "5"),
            ("correlation-id", "c1"),
            ("expiration", "60000"),
            ("amqp-message-id", "m1"),
            ("type", "greeting"),
            ("user-id", "guest"),
            ("app-id", "app"),
            ("timestamp", "1700000000"),
            ("x-custom", "one"),
        ] {
            assert_eq!(get(k), Some(v), "{k}");
        }
        assert_eq!(get("receipt"), None);
    }

    #[test]
    fn amqp_values_as_text_and_dropped() {
        let mut m = Message::new("", "q", Bytes::new());
        let mut h = Table::new();
        h.insert("i".into(), Value::I32(-7));
        h.insert("b".into(), Value::Bool(true));
        h.insert("d".into(), Value::Decimal { scale: 2, value: 5 });
        h.insert("t".into(), Value::Table(Table::new()));
        h.insert("x".into(), Value::ByteArray(Bytes::from_static(b"\0")));
        h.insert("message-id".into(), Value::long_string("spoof"));
        m.properties.headers = Some(h);
        let mut out = Vec::new();
        message_headers(&m, &mut out);
        assert_eq!(
            out,
            vec![
                ("b".to_string(), "true".to_string()),
                ("d".to_string(), "0.05".to_string()),
                ("i".to_string(), "-7".to_string()),
            ]
        );
    }
}
