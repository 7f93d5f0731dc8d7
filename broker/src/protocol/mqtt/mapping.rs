//! MQTT publishes <-> engine messages (docs/mapping/mqtt.md, "Message properties"), and the
//! MQTT topic-filter matcher the session uses to pick the subscription(s) a delivery is for.

use bytes::Bytes;
use codecs::mqtt::topic::{
    is_dollar_topic, routing_key_to_topic, starts_with_wildcard, topic_to_routing_key,
};
use codecs::mqtt::{PublishProperties, QoS};

use crate::engine::{Message, Properties, Table, Value};

/// The exchange every MQTT publish goes to and every subscription binds on.
pub const EXCHANGE: &str = "amq.topic";
/// Header carrying the QoS a message was published with (as RabbitMQ's MQTT plugin does).
pub const QOS_HEADER: &str = "x-mqtt-publish-qos";
/// Header carrying MQTT 5's Payload Format Indicator (0 or 1).
pub const PAYLOAD_FORMAT_HEADER: &str = "x-mqtt-payload-format";
/// Header carrying a Response Topic, mapped like a topic (`a/b` -> `a.b`).
pub const REPLY_TO_TOPIC_HEADER: &str = "x-reply-to-topic";
/// Header carrying Correlation Data that is not a valid AMQP short string.
pub const CORRELATION_HEADER: &str = "x-correlation-id";
/// Header carrying the client id of the MQTT publisher (for No Local).
pub const CLIENT_ID_HEADER: &str = "x-mqtt-client-id";
/// Header set (to 1) on messages published with the RETAIN flag (for Retain As Published).
pub const RETAIN_HEADER: &str = "x-mqtt-retain";
/// Header on a retained message queued at SUBSCRIBE in a persistent session's own queue: the
/// filter of the subscription it is for. Such a copy is delivered with RETAIN set, for that
/// subscription only, and (being in the durable queue) sent again with its packet id after a
/// reconnect as every other unacknowledged delivery is (MQTT-4.4.0-1).
pub const RETAINED_FOR_HEADER: &str = "x-mqtt-retained-for";
/// Header carrying when a message with a Message Expiry Interval was published (milliseconds
/// since the Unix epoch), so that deliveries send the interval left (MQTT-3.3.2-6).
pub const PUBLISHED_AT_HEADER: &str = "x-mqtt-published-at";

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Where a message stands with its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No expiry.
    Never,
    /// Seconds left (rounded up); the original interval when the publish time is unknown
    /// (messages from AMQP).
    Left(u32),
    /// Expired: not to be delivered.
    Expired,
}

/// The expiry of `msg` as of now: `expiration` minus the time since `x-mqtt-published-at`.
pub fn expiry(msg: &Message) -> Expiry {
    let Some(ms) = msg.properties.expiration_ms() else {
        return Expiry::Never;
    };
    let left = match header(msg, PUBLISHED_AT_HEADER).and_then(Value::as_i64) {
        Some(at) => {
            let elapsed = u64::try_from(now_millis().saturating_sub(at)).unwrap_or(0);
            match ms.checked_sub(elapsed) {
                Some(l) if l > 0 => l,
                _ => return Expiry::Expired,
            }
        }
        None => ms,
    };
    Expiry::Left(u32::try_from(left.div_ceil(1000)).unwrap_or(u32::MAX))
}

/// Tags a message published by an MQTT client: who published it, and whether with RETAIN.
pub fn tag_publisher(msg: &mut Message, client_id: &str, retain: bool) {
    let headers = msg.properties.headers.get_or_insert_with(Table::new);
    headers.insert(CLIENT_ID_HEADER.into(), Value::long_string(client_id));
    if retain {
        headers.insert(RETAIN_HEADER.into(), Value::U8(1));
    }
}

fn header<'a>(msg: &'a Message, name: &str) -> Option<&'a Value> {
    msg.properties.headers.as_ref().and_then(|h| h.get(name))
}

/// The client id of the MQTT client that published `msg`, if one did.
pub fn publisher(msg: &Message) -> Option<&str> {
    header(msg, CLIENT_ID_HEADER).and_then(Value::as_str)
}

/// Whether `msg` was published with the RETAIN flag.
pub fn published_retained(msg: &Message) -> bool {
    header(msg, RETAIN_HEADER)
        .and_then(Value::as_i64)
        .is_some_and(|v| v == 1)
}

/// A copy of the retained `msg` to queue for the subscription `filter` ([`RETAINED_FOR_HEADER`]).
pub fn retained_for(msg: &Message, filter: &str) -> Message {
    let mut copy = msg.clone();
    let headers = copy.properties.headers.get_or_insert_with(Table::new);
    headers.insert(RETAINED_FOR_HEADER.into(), Value::long_string(filter));
    copy
}

/// The subscription filter a queued retained copy is for, if `msg` is one.
pub fn retained_filter(msg: &Message) -> Option<&str> {
    header(msg, RETAINED_FOR_HEADER).and_then(Value::as_str)
}

/// Whether an MQTT topic filter matches a topic name, with MQTT's `$` rule: a filter starting
/// with `+` or `#` does not match a topic starting with `$` (MQTT 5 section 4.7.2).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if is_dollar_topic(topic) && starts_with_wildcard(filter) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// An MQTT PUBLISH (or will) as an engine message on `amq.topic`.
pub fn to_message(topic: &str, payload: Bytes, qos: QoS, props: &PublishProperties) -> Message {
    let mut msg = Message::new(EXCHANGE, topic_to_routing_key(topic).into_owned(), payload);
    let mut headers = Table::new();
    headers.insert(QOS_HEADER.into(), Value::U8(qos as u8));
    let mut p = Properties {
        delivery_mode: Some(if qos == QoS::AtMostOnce { 1 } else { 2 }),
        ..Default::default()
    };
    if let Some(ct) = &props.content_type {
        if ct.len() <= 255 {
            p.content_type = Some(ct.clone());
        }
    }
    if let Some(cd) = &props.correlation_data {
        match std::str::from_utf8(cd) {
            Ok(s) if s.len() <= 255 => p.correlation_id = Some(s.to_string()),
            _ => {
                headers.insert(CORRELATION_HEADER.into(), Value::ByteArray(cd.clone()));
            }
        }
    }
    if let Some(rt) = &props.response_topic {
        headers.insert(
            REPLY_TO_TOPIC_HEADER.into(),
            Value::long_string(topic_to_routing_key(rt).into_owned()),
        );
    }
    if let Some(secs) = props.message_expiry_interval {
        p.expiration = Some((u64::from(secs) * 1000).to_string());
        headers.insert(PUBLISHED_AT_HEADER.into(), Value::I64(now_millis()));
    }
    if let Some(utf8) = props.payload_format_utf8 {
        headers.insert(PAYLOAD_FORMAT_HEADER.into(), Value::U8(u8::from(utf8)));
    }
    // AMQP tables have one value per key: the last of repeated user properties wins. The list
    // as published is kept beside, for MQTT subscribers (MQTT-3.3.2-18: order kept).
    for (k, v) in &props.user_properties {
        headers.insert(k.clone(), Value::long_string(v.clone()));
    }
    p.user_properties = props.user_properties.clone();
    p.headers = Some(headers);
    msg.properties = p;
    msg
}

/// The QoS a message was published with: the MQTT header, else AMQP persistence (persistent =
/// QoS 1, as RabbitMQ counts it).
pub fn message_qos(msg: &Message) -> QoS {
    let from_header = msg
        .properties
        .headers
        .as_ref()
        .and_then(|h| h.get(QOS_HEADER))
        .and_then(Value::as_i64)
        .and_then(|q| u8::try_from(q).ok())
        .and_then(QoS::from_u8);
    from_header.unwrap_or(if msg.properties.persistent() {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    })
}

fn header_text(v: &Value) -> Option<String> {
    if let Some(s) = v.as_str() {
        return Some(s.to_string());
    }
    if let Some(n) = v.as_i64() {
        return Some(n.to_string());
    }
    match v {
        Value::Bool(b) => Some(b.to_string()),
        Value::F32(x) => Some(x.to_string()),
        Value::F64(x) => Some(x.to_string()),
        // Tables, arrays, binary and void are dropped (docs/mapping/mqtt.md).
        _ => None,
    }
}

/// MQTT 5 PUBLISH properties for an engine message.
pub fn to_properties(msg: &Message) -> PublishProperties {
    let p = &msg.properties;
    let mut out = PublishProperties {
        content_type: p.content_type.clone(),
        correlation_data: p.correlation_id.clone().map(Bytes::from),
        message_expiry_interval: match expiry(msg) {
            Expiry::Never => None,
            Expiry::Left(s) => Some(s),
            Expiry::Expired => Some(1),
        },
        ..Default::default()
    };
    // User properties as published (order and repeated names kept), then the other headers
    // (set from AMQP, or by the engine) whose names the list does not have.
    out.user_properties.clone_from(&p.user_properties);
    let in_list = |k: &str| p.user_properties.iter().any(|(n, _)| n == k);
    if let Some(headers) = &p.headers {
        for (k, v) in headers {
            match k.as_str() {
                QOS_HEADER | CLIENT_ID_HEADER | RETAIN_HEADER | PUBLISHED_AT_HEADER
                | RETAINED_FOR_HEADER => {}
                PAYLOAD_FORMAT_HEADER => out.payload_format_utf8 = v.as_i64().map(|x| x == 1),
                REPLY_TO_TOPIC_HEADER => {
                    out.response_topic = v
                        .as_str()
                        .and_then(routing_key_to_topic)
                        .map(|t| t.into_owned());
                }
                CORRELATION_HEADER => {
                    if let Value::ByteArray(b) | Value::LongString(b) = v {
                        out.correlation_data = Some(b.clone());
                    }
                }
                _ if in_list(k) => {}
                _ => {
                    if let Some(text) = header_text(v) {
                        out.user_properties.push((k.clone(), text));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_as_mqtt_says() {
        assert!(filter_matches("a/+", "a/b"));
        assert!(!filter_matches("a/+", "a/b/c"));
        assert!(filter_matches("a/#", "a"));
        assert!(filter_matches("a/#", "a/b/c"));
        assert!(filter_matches("+/a", "/a"));
        assert!(filter_matches("#", "x/y"));
        assert!(!filter_matches("#", "$SYS/x"));
        assert!(!filter_matches("+/x", "$SYS/x"));
        assert!(filter_matches("$SYS/#", "$SYS/x"));
        assert!(
            !filter_matches("a/*", "a/b"),
            "a literal * level is literal in MQTT"
        );
    }

    #[test]
    fn properties_round_trip() {
        let props = PublishProperties {
            content_type: Some("text/plain".into()),
            correlation_data: Some(Bytes::from_static(b"c-1")),
            response_topic: Some("reply/to".into()),
            message_expiry_interval: Some(30),
            payload_format_utf8: Some(true),
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        };
        let msg = to_message("a/b", Bytes::from_static(b"x"), QoS::AtLeastOnce, &props);
        assert_eq!(msg.routing_key, "a.b");
        assert!(msg.properties.persistent());
        assert_eq!(msg.properties.expiration.as_deref(), Some("30000"));
        assert_eq!(message_qos(&msg), QoS::AtLeastOnce);
        let back = to_properties(&msg);
        assert_eq!(back.content_type, props.content_type);
        assert_eq!(back.correlation_data, props.correlation_data);
        assert_eq!(back.response_topic, props.response_topic);
        assert_eq!(back.message_expiry_interval, Some(30));
        assert_eq!(back.payload_format_utf8, Some(true));
        assert_eq!(back.user_properties, props.user_properties);
    }

    #[test]
    fn user_properties_keep_order_and_repeats_to_mqtt_last_wins_to_amqp() {
        let pairs: Vec<(String, String)> = [("b", "2"), ("a", "1"), ("b", "3")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let props = PublishProperties {
            user_properties: pairs.clone(),
            ..Default::default()
        };
        let mut msg = to_message("a", Bytes::from_static(b"x"), QoS::AtLeastOnce, &props);
        let h = msg.properties.headers.clone().unwrap();
        assert_eq!(h.get("a").and_then(Value::as_str), Some("1"));
        assert_eq!(h.get("b").and_then(Value::as_str), Some("3"), "last wins");
        assert_eq!(to_properties(&msg).user_properties, pairs);
        // A header added by the engine or AMQP (not in the list) is sent after the list.
        let hm = msg.properties.headers.as_mut().unwrap();
        hm.insert("extra".into(), Value::I64(7));
        let mut want = pairs.clone();
        want.push(("extra".into(), "7".into()));
        assert_eq!(to_properties(&msg).user_properties, want);
        // Without a list (from AMQP): the table, in key order, as before.
        msg.properties.user_properties.clear();
        let got = to_properties(&msg).user_properties;
        assert_eq!(
            got,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "3".into()),
                ("extra".into(), "7".into())
            ]
        );
    }

    #[test]
    fn expiry_counts_down_from_the_publish_time() {
        let props = PublishProperties {
            message_expiry_interval: Some(10),
            ..Default::default()
        };
        let mut msg = to_message("a", Bytes::from_static(b"x"), QoS::AtLeastOnce, &props);
        assert_eq!(expiry(&msg), Expiry::Left(10));
        let h = msg.properties.headers.as_mut().unwrap();
        h.insert(PUBLISHED_AT_HEADER.into(), Value::I64(now_millis() - 3_500));
        assert_eq!(expiry(&msg), Expiry::Left(7));
        assert_eq!(to_properties(&msg).message_expiry_interval, Some(7));
        let h = msg.properties.headers.as_mut().unwrap();
        h.insert(
            PUBLISHED_AT_HEADER.into(),
            Value::I64(now_millis() - 10_000),
        );
        assert_eq!(expiry(&msg), Expiry::Expired);
        // From AMQP (no publish time): the whole interval.
        let h = msg.properties.headers.as_mut().unwrap();
        h.remove(PUBLISHED_AT_HEADER);
        assert_eq!(expiry(&msg), Expiry::Left(10));
        let plain = to_message("a", Bytes::new(), QoS::AtMostOnce, &Default::default());
        assert_eq!(expiry(&plain), Expiry::Never);
    }

    #[test]
    fn publisher_tags_are_not_user_properties() {
        let mut msg = to_message(
            "a",
            Bytes::from_static(b"x"),
            QoS::AtMostOnce,
            &Default::default(),
        );
        assert_eq!(publisher(&msg), None);
        assert!(!published_retained(&msg));
        tag_publisher(&mut msg, "dev-1", true);
        assert_eq!(publisher(&msg), Some("dev-1"));
        assert!(published_retained(&msg));
        assert!(to_properties(&msg).user_properties.is_empty());
    }
}
