// Encoding of MQTT packets.
//
// Written after mqttbytes 0.6 `v4/*.rs` and `v5/*.rs` (Copyright tekjar / Bytebeam, Apache-2.0,
// https://github.com/bytebeamio/rumqtt), reworked because its writers:
// - compute the remaining length and the bytes written in two separate places that can
//   disagree, and write a string or binary field over 65,535 bytes with a truncated length
//   (`len as u16`), which desynchronises the stream; a failure half-way (packet id 0) leaves a
//   partial packet in the output buffer;
// - cannot write AUTH, MQTT 3.1 CONNECT, a binary password, or an empty user name.
// Here a packet's variable header and properties are written to a scratch buffer first, so the
// remaining length is the length of what was written, every field is length-checked, and
// nothing reaches `out` unless the whole packet is good.

use bytes::{BufMut, BytesMut};

use super::error::ErrorKind::{self, *};
use super::packet::*;
use super::read::*;

type R<T> = Result<T, ErrorKind>;

struct W {
    buf: BytesMut,
}

impl W {
    fn new() -> W {
        W {
            buf: BytesMut::new(),
        }
    }

    fn u8(&mut self, v: u8) {
        self.buf.put_u8(v);
    }

    fn u16(&mut self, v: u16) {
        self.buf.put_u16(v);
    }

    fn u32(&mut self, v: u32) {
        self.buf.put_u32(v);
    }

    fn var_int(&mut self, v: usize) -> R<()> {
        if v > VAR_INT_MAX as usize {
            return Err(PacketTooLarge {
                size: v,
                max: VAR_INT_MAX as usize,
            });
        }
        put_var_int(&mut self.buf, v);
        Ok(())
    }

    fn binary(&mut self, b: &[u8]) -> R<()> {
        let len = u16::try_from(b.len()).map_err(|_| FieldTooLong)?;
        self.buf.put_u16(len);
        self.buf.extend_from_slice(b);
        Ok(())
    }

    fn string(&mut self, s: &str) -> R<()> {
        self.binary(s.as_bytes())
    }

    fn packet_id(&mut self, id: u16) -> R<()> {
        if id == 0 {
            return Err(PacketIdZero);
        }
        self.u16(id);
        Ok(())
    }

    /// A property section: written to its own buffer, then prefixed with its length.
    fn properties(&mut self, fill: impl FnOnce(&mut W) -> R<()>) -> R<()> {
        let mut p = W::new();
        fill(&mut p)?;
        self.var_int(p.buf.len())?;
        self.buf.extend_from_slice(&p.buf);
        Ok(())
    }

    fn byte_prop(&mut self, id: u8, v: Option<u8>) {
        if let Some(v) = v {
            self.u8(id);
            self.u8(v);
        }
    }

    fn bool_prop(&mut self, id: u8, v: Option<bool>) {
        self.byte_prop(id, v.map(u8::from));
    }

    fn u16_prop(&mut self, id: u8, v: Option<u16>) {
        if let Some(v) = v {
            self.u8(id);
            self.u16(v);
        }
    }

    fn u32_prop(&mut self, id: u8, v: Option<u32>) {
        if let Some(v) = v {
            self.u8(id);
            self.u32(v);
        }
    }

    fn str_prop(&mut self, id: u8, v: &Option<String>) -> R<()> {
        if let Some(v) = v {
            self.u8(id);
            self.string(v)?;
        }
        Ok(())
    }

    fn bin_prop(&mut self, id: u8, v: &Option<bytes::Bytes>) -> R<()> {
        if let Some(v) = v {
            self.u8(id);
            self.binary(v)?;
        }
        Ok(())
    }

    fn user_props(&mut self, user: &UserProperties) -> R<()> {
        for (k, v) in user {
            self.u8(USER_PROPERTY);
            self.string(k)?;
            self.string(v)?;
        }
        Ok(())
    }

    fn var_int_prop(&mut self, id: u8, v: u32) -> R<()> {
        self.u8(id);
        self.var_int(v as usize)
    }
}

pub(crate) fn put_var_int(out: &mut BytesMut, mut v: usize) {
    loop {
        let mut byte = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if v == 0 {
            break;
        }
    }
}

fn var_int_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// A packet ready to be written: first byte, variable header (+ payload for all but PUBLISH)
/// and the PUBLISH payload, kept apart so it is copied once, into `out`.
struct Parts<'a> {
    byte1: u8,
    head: BytesMut,
    payload: &'a [u8],
}

impl Parts<'_> {
    fn remaining(&self) -> R<usize> {
        let remaining = self.head.len() + self.payload.len();
        if remaining > VAR_INT_MAX as usize {
            return Err(PacketTooLarge {
                size: remaining,
                max: VAR_INT_MAX as usize,
            });
        }
        Ok(remaining)
    }
}

pub(crate) fn encode(packet: &Packet, protocol: Protocol, out: &mut BytesMut) -> R<()> {
    let parts = parts(packet, protocol)?;
    let remaining = parts.remaining()?;
    out.reserve(1 + var_int_len(remaining) + remaining);
    out.put_u8(parts.byte1);
    put_var_int(out, remaining);
    out.extend_from_slice(&parts.head);
    out.extend_from_slice(parts.payload);
    Ok(())
}

pub(crate) fn encoded_size(packet: &Packet, protocol: Protocol) -> R<usize> {
    let remaining = parts(packet, protocol)?.remaining()?;
    Ok(1 + var_int_len(remaining) + remaining)
}

fn parts(packet: &Packet, protocol: Protocol) -> R<Parts<'_>> {
    let v5 = protocol.is_v5();
    let mut w = W::new();
    let mut payload: &[u8] = &[];
    let mut flags = 0u8;
    match packet {
        Packet::Connect(c) => connect(&mut w, c)?,
        Packet::ConnAck(c) => connack(&mut w, c, protocol)?,
        Packet::Publish(p) => {
            flags = publish(&mut w, p, v5)?;
            payload = &p.payload;
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubComp(a) => ack(&mut w, a, v5)?,
        Packet::PubRel(a) => {
            flags = 0b0010;
            ack(&mut w, a, v5)?
        }
        Packet::Subscribe(s) => {
            flags = 0b0010;
            subscribe(&mut w, s, v5)?
        }
        Packet::SubAck(s) => suback(&mut w, s, v5)?,
        Packet::Unsubscribe(u) => {
            flags = 0b0010;
            w.packet_id(u.packet_id)?;
            if v5 {
                w.properties(|p| p.user_props(&u.user_properties))?;
            }
            for filter in &u.filters {
                w.string(filter)?;
            }
        }
        Packet::UnsubAck(u) => {
            w.packet_id(u.packet_id)?;
            if v5 {
                w.properties(|p| ack_props(p, &u.properties))?;
                for reason in &u.reasons {
                    w.u8(reason.0);
                }
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => {
            let has_props = d.properties != DisconnectProperties::default();
            if v5 && (d.reason != ReasonCode::SUCCESS || has_props) {
                w.u8(d.reason.0);
                if has_props {
                    w.properties(|p| {
                        let d = &d.properties;
                        p.u32_prop(SESSION_EXPIRY_INTERVAL, d.session_expiry_interval);
                        p.str_prop(REASON_STRING, &d.reason_string)?;
                        p.user_props(&d.user_properties)?;
                        p.str_prop(SERVER_REFERENCE, &d.server_reference)
                    })?;
                }
            }
        }
        Packet::Auth(a) => {
            if !v5 {
                return Err(NotInProtocol);
            }
            let has_props = a.properties != AuthProperties::default();
            if a.reason != ReasonCode::SUCCESS || has_props {
                w.u8(a.reason.0);
                if has_props {
                    w.properties(|p| {
                        let a = &a.properties;
                        p.str_prop(AUTHENTICATION_METHOD, &a.authentication_method)?;
                        p.bin_prop(AUTHENTICATION_DATA, &a.authentication_data)?;
                        p.str_prop(REASON_STRING, &a.reason_string)?;
                        p.user_props(&a.user_properties)
                    })?;
                }
            }
        }
    }
    Ok(Parts {
        byte1: packet.packet_type() << 4 | flags,
        head: w.buf,
        payload,
    })
}

fn connect(w: &mut W, c: &Connect) -> R<()> {
    let v5 = c.protocol.is_v5();
    w.string(c.protocol.name())?;
    w.u8(c.protocol.level());
    let mut flags = 0u8;
    if c.clean_start {
        flags |= 0b10;
    }
    if let Some(will) = &c.will {
        flags |= 0b100 | (will.qos as u8) << 3;
        if will.retain {
            flags |= 0b0010_0000;
        }
    }
    if c.password.is_some() {
        flags |= 0b0100_0000;
    }
    if c.username.is_some() {
        flags |= 0b1000_0000;
    }
    w.u8(flags);
    w.u16(c.keep_alive);
    if v5 {
        w.properties(|p| {
            let c = &c.properties;
            p.u32_prop(SESSION_EXPIRY_INTERVAL, c.session_expiry_interval);
            p.u16_prop(RECEIVE_MAXIMUM, c.receive_maximum);
            p.u32_prop(MAXIMUM_PACKET_SIZE, c.maximum_packet_size);
            p.u16_prop(TOPIC_ALIAS_MAXIMUM, c.topic_alias_maximum);
            p.bool_prop(REQUEST_RESPONSE_INFORMATION, c.request_response_information);
            p.bool_prop(REQUEST_PROBLEM_INFORMATION, c.request_problem_information);
            p.user_props(&c.user_properties)?;
            p.str_prop(AUTHENTICATION_METHOD, &c.authentication_method)?;
            p.bin_prop(AUTHENTICATION_DATA, &c.authentication_data)
        })?;
    }
    w.string(&c.client_id)?;
    if let Some(will) = &c.will {
        if v5 {
            w.properties(|p| {
                let wp = &will.properties;
                p.u32_prop(WILL_DELAY_INTERVAL, wp.will_delay_interval);
                p.bool_prop(PAYLOAD_FORMAT_INDICATOR, wp.payload_format_utf8);
                p.u32_prop(MESSAGE_EXPIRY_INTERVAL, wp.message_expiry_interval);
                p.str_prop(CONTENT_TYPE, &wp.content_type)?;
                p.str_prop(RESPONSE_TOPIC, &wp.response_topic)?;
                p.bin_prop(CORRELATION_DATA, &wp.correlation_data)?;
                p.user_props(&wp.user_properties)
            })?;
        }
        w.string(&will.topic)?;
        w.binary(&will.payload)?;
    }
    if let Some(username) = &c.username {
        w.string(username)?;
    }
    if let Some(password) = &c.password {
        w.binary(password)?;
    }
    Ok(())
}

/// MQTT 5 CONNACK reason code -> 3.1.x return code, so a session can use MQTT 5 codes for
/// every client. Codes 0..=5 pass as they are.
pub(crate) fn v3_connack_code(code: ReasonCode) -> u8 {
    match code.0 {
        c @ 0..=5 => c,
        0x84 => 1,        // unsupported protocol version
        0x85 => 2,        // client identifier not valid
        0x86 | 0x8C => 4, // bad user name or password, bad auth method
        0x87 | 0x8A => 5, // not authorized, banned
        _ => 3,           // server unavailable / busy / anything else
    }
}

/// 3.1.x return code -> MQTT 5 reason code, the inverse for the codes 1..=5.
fn v5_connack_code(code: ReasonCode) -> u8 {
    match code.0 {
        1 => 0x84,
        2 => 0x85,
        3 => 0x88,
        4 => 0x86,
        5 => 0x87,
        c => c,
    }
}

fn connack(w: &mut W, c: &ConnAck, protocol: Protocol) -> R<()> {
    // MQTT 3.1 has no session present flag (the byte is reserved).
    w.u8(u8::from(c.session_present && protocol != Protocol::V3_1));
    if !protocol.is_v5() {
        w.u8(v3_connack_code(c.code));
        return Ok(());
    }
    w.u8(v5_connack_code(c.code));
    w.properties(|p| {
        let c = &c.properties;
        p.u32_prop(SESSION_EXPIRY_INTERVAL, c.session_expiry_interval);
        p.u16_prop(RECEIVE_MAXIMUM, c.receive_maximum);
        p.byte_prop(MAXIMUM_QOS, c.maximum_qos.map(|q| q as u8));
        p.bool_prop(RETAIN_AVAILABLE, c.retain_available);
        p.u32_prop(MAXIMUM_PACKET_SIZE, c.maximum_packet_size);
        p.str_prop(ASSIGNED_CLIENT_IDENTIFIER, &c.assigned_client_identifier)?;
        p.u16_prop(TOPIC_ALIAS_MAXIMUM, c.topic_alias_maximum);
        p.str_prop(REASON_STRING, &c.reason_string)?;
        p.user_props(&c.user_properties)?;
        p.bool_prop(
            WILDCARD_SUBSCRIPTION_AVAILABLE,
            c.wildcard_subscription_available,
        );
        p.bool_prop(
            SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            c.subscription_identifiers_available,
        );
        p.bool_prop(
            SHARED_SUBSCRIPTION_AVAILABLE,
            c.shared_subscription_available,
        );
        p.u16_prop(SERVER_KEEP_ALIVE, c.server_keep_alive);
        p.str_prop(RESPONSE_INFORMATION, &c.response_information)?;
        p.str_prop(SERVER_REFERENCE, &c.server_reference)?;
        p.str_prop(AUTHENTICATION_METHOD, &c.authentication_method)?;
        p.bin_prop(AUTHENTICATION_DATA, &c.authentication_data)
    })
}

/// Returns the fixed-header flags. DUP is written only for QoS 1 and 2.
fn publish(w: &mut W, p: &Publish, v5: bool) -> R<u8> {
    w.string(&p.topic)?;
    if p.qos != QoS::AtMostOnce {
        w.packet_id(p.packet_id)?;
    }
    if v5 {
        w.properties(|w| {
            let p = &p.properties;
            w.bool_prop(PAYLOAD_FORMAT_INDICATOR, p.payload_format_utf8);
            w.u32_prop(MESSAGE_EXPIRY_INTERVAL, p.message_expiry_interval);
            w.u16_prop(TOPIC_ALIAS, p.topic_alias);
            w.str_prop(RESPONSE_TOPIC, &p.response_topic)?;
            w.bin_prop(CORRELATION_DATA, &p.correlation_data)?;
            w.user_props(&p.user_properties)?;
            for id in &p.subscription_identifiers {
                w.var_int_prop(SUBSCRIPTION_IDENTIFIER, *id)?;
            }
            w.str_prop(CONTENT_TYPE, &p.content_type)
        })?;
    }
    let dup = p.dup && p.qos != QoS::AtMostOnce;
    Ok(u8::from(dup) << 3 | (p.qos as u8) << 1 | u8::from(p.retain))
}

fn ack_props(p: &mut W, a: &AckProperties) -> R<()> {
    p.str_prop(REASON_STRING, &a.reason_string)?;
    p.user_props(&a.user_properties)
}

/// MQTT 5: the reason code is left out when it is success and there are no properties, and
/// the property length when there are none (section 3.4.2.1).
fn ack(w: &mut W, a: &Ack, v5: bool) -> R<()> {
    w.packet_id(a.packet_id)?;
    if !v5 {
        return Ok(());
    }
    let has_props = !a.properties.is_empty();
    if a.reason != ReasonCode::SUCCESS || has_props {
        w.u8(a.reason.0);
    }
    if has_props {
        w.properties(|p| ack_props(p, &a.properties))?;
    }
    Ok(())
}

fn subscribe(w: &mut W, s: &Subscribe, v5: bool) -> R<()> {
    w.packet_id(s.packet_id)?;
    if v5 {
        w.properties(|p| {
            if let Some(id) = s.properties.subscription_identifier {
                p.var_int_prop(SUBSCRIPTION_IDENTIFIER, id)?;
            }
            p.user_props(&s.properties.user_properties)
        })?;
    }
    for sub in &s.subscriptions {
        w.string(&sub.filter)?;
        let o = &sub.options;
        let mut options = o.qos as u8;
        if v5 {
            options |= u8::from(o.no_local) << 2
                | u8::from(o.retain_as_published) << 3
                | (o.retain_handling as u8) << 4;
        }
        w.u8(options);
    }
    Ok(())
}

/// On 3.1.x every failure code becomes 0x80, the only one those protocols have.
fn suback(w: &mut W, s: &SubAck, v5: bool) -> R<()> {
    w.packet_id(s.packet_id)?;
    if v5 {
        w.properties(|p| ack_props(p, &s.properties))?;
    }
    for reason in &s.reasons {
        let code = if !v5 && reason.is_error() {
            0x80
        } else {
            reason.0
        };
        w.u8(code);
    }
    Ok(())
}
