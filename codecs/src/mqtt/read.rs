// Decoding of MQTT packet bodies (everything after the fixed header).
//
// Written after mqttbytes 0.6 `v4/*.rs` and `v5/*.rs` (Copyright tekjar / Bytebeam, Apache-2.0,
// https://github.com/bytebeamio/rumqtt): the same reader primitives (`read_u16`, `read_mqtt_string`,
// `read_mqtt_bytes`, the property loop), reworked because mqttbytes' readers cannot be fixed
// from the outside. What they get wrong, each pinned by a test in `tests.rs`
// (`mqttbytes_*`), and what this file does instead:
// - the property loop counts bytes itself (`cursor`) instead of bounding a sub-buffer, and
//   counts a Subscription Identifier's id byte twice, so with two identifiers the last
//   property is read as payload; it also never checks that the properties end where their
//   length says. Here a property section is split out by its length and must be consumed
//   exactly;
// - duplicate properties are accepted (the last wins) where MQTT 5 makes them a Protocol
//   Error, and property values are not range-checked (Receive Maximum 0, Maximum Packet Size 0,
//   booleans over 1, Subscription Identifier 0, Topic Alias 0);
// - the password is read as a UTF-8 string (it is binary data), a username flag with an empty
//   user name is read as no login, and the reserved CONNECT flag bit is not checked;
// - `MQIsdp` (MQTT 3.1) is refused;
// - a v5 DISCONNECT or AUTH with remaining length 0 (reason 0x00, allowed by section 3.14.2.1)
//   is refused as `PayloadRequired`, and there is no AUTH packet at all;
// - fixed-header flags are not checked (PUBREL/SUBSCRIBE/UNSUBSCRIBE must be 0b0010, the rest
//   0), nor DUP on QoS 0, nor trailing bytes after acknowledgements;
// - strings are checked for UTF-8 but not for U+0000 (MQTT-1.5.4-2);
// - topic names are not checked for wildcards, topic filters only for `#` placement (`a+/b`
//   passes), subscription option reserved bits and Retain Handling 3 are not checked, and an
//   empty SUBSCRIBE payload is accepted;
// - reason codes are checked against one list per packet, but errors are reported as
//   `InvalidConnectReturnCode` whatever the packet.

use bytes::{Buf, Bytes};

use super::error::ErrorKind::{self, *};
use super::packet::*;
use super::topic::{split_shared, valid_topic_filter, valid_topic_name};

type R<T> = Result<T, ErrorKind>;

/// A cursor over one packet's bytes. Every read is bounds-checked: running out is `Truncated`.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn u8(&mut self) -> R<u8> {
        if self.buf.is_empty() {
            return Err(Truncated);
        }
        Ok(self.buf.get_u8())
    }

    fn u16(&mut self) -> R<u16> {
        if self.buf.len() < 2 {
            return Err(Truncated);
        }
        Ok(self.buf.get_u16())
    }

    fn u32(&mut self) -> R<u32> {
        if self.buf.len() < 4 {
            return Err(Truncated);
        }
        Ok(self.buf.get_u32())
    }

    /// Variable Byte Integer (section 1.5.5): at most 4 bytes. Non-minimal encodings are
    /// accepted, as Mosquitto does.
    fn var_int(&mut self) -> R<u32> {
        let mut value: u32 = 0;
        for i in 0..4 {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(MalformedVarInt)
    }

    /// Two-byte length, then that many bytes, split without a copy.
    fn binary(&mut self) -> R<Bytes> {
        let len = usize::from(self.u16()?);
        if len > self.buf.len() {
            return Err(Truncated);
        }
        Ok(self.buf.split_to(len))
    }

    /// UTF-8 Encoded String: well-formed UTF-8 (no surrogates, no overlong forms: Rust's
    /// check) and no U+0000.
    fn string(&mut self) -> R<String> {
        let bytes = self.binary()?;
        let s = String::from_utf8(bytes.to_vec()).map_err(|_| InvalidUtf8)?;
        if s.contains('\0') {
            return Err(InvalidUtf8);
        }
        Ok(s)
    }

    fn packet_id(&mut self) -> R<u16> {
        match self.u16()? {
            0 => Err(PacketIdZero),
            id => Ok(id),
        }
    }

    fn rest(&mut self) -> Bytes {
        self.buf.split_off(0)
    }

    fn end(&self) -> R<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(TrailingBytes)
        }
    }
}

// Property identifiers (MQTT 5 section 2.2.2.2).
pub(crate) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
pub(crate) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
pub(crate) const CONTENT_TYPE: u8 = 0x03;
pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
pub(crate) const CORRELATION_DATA: u8 = 0x09;
pub(crate) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
pub(crate) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub(crate) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
pub(crate) const SERVER_KEEP_ALIVE: u8 = 0x13;
pub(crate) const AUTHENTICATION_METHOD: u8 = 0x15;
pub(crate) const AUTHENTICATION_DATA: u8 = 0x16;
pub(crate) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
pub(crate) const WILL_DELAY_INTERVAL: u8 = 0x18;
pub(crate) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
pub(crate) const RESPONSE_INFORMATION: u8 = 0x1A;
pub(crate) const SERVER_REFERENCE: u8 = 0x1C;
pub(crate) const REASON_STRING: u8 = 0x1F;
pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub(crate) const TOPIC_ALIAS: u8 = 0x23;
pub(crate) const MAXIMUM_QOS: u8 = 0x24;
pub(crate) const RETAIN_AVAILABLE: u8 = 0x25;
pub(crate) const USER_PROPERTY: u8 = 0x26;
pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub(crate) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
pub(crate) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
pub(crate) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// The largest Variable Byte Integer (and Subscription Identifier).
pub(crate) const VAR_INT_MAX: u32 = 268_435_455;

/// A property value, typed by its identifier.
enum Value {
    Byte(u8),
    U16(u16),
    U32(u32),
    VarInt(u32),
    Str(String),
    Bin(Bytes),
    Pair(String, String),
}

/// Reads a property section: its length, then properties until exactly that many bytes are
/// consumed. `set` stores one property or refuses it (`InvalidProperty` for an identifier the
/// packet does not allow). Properties other than User Property and Subscription Identifier may
/// appear once.
fn properties(r: &mut Reader, mut set: impl FnMut(u8, Value) -> R<()>) -> R<()> {
    let len = r.var_int()? as usize;
    if len > r.buf.len() {
        return Err(Truncated);
    }
    let mut p = Reader::new(r.buf.split_to(len));
    let mut seen: u64 = 0;
    while !p.is_empty() {
        // Identifiers are Variable Byte Integers; every defined one fits in one byte, so a byte
        // with the continuation bit is an unknown identifier.
        let id = p.u8()?;
        let value = match id {
            PAYLOAD_FORMAT_INDICATOR
            | REQUEST_PROBLEM_INFORMATION
            | REQUEST_RESPONSE_INFORMATION
            | MAXIMUM_QOS
            | RETAIN_AVAILABLE
            | WILDCARD_SUBSCRIPTION_AVAILABLE
            | SUBSCRIPTION_IDENTIFIER_AVAILABLE
            | SHARED_SUBSCRIPTION_AVAILABLE => Value::Byte(p.u8()?),
            SERVER_KEEP_ALIVE | RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | TOPIC_ALIAS => {
                Value::U16(p.u16()?)
            }
            MESSAGE_EXPIRY_INTERVAL
            | SESSION_EXPIRY_INTERVAL
            | WILL_DELAY_INTERVAL
            | MAXIMUM_PACKET_SIZE => Value::U32(p.u32()?),
            SUBSCRIPTION_IDENTIFIER => Value::VarInt(p.var_int()?),
            CONTENT_TYPE
            | RESPONSE_TOPIC
            | ASSIGNED_CLIENT_IDENTIFIER
            | AUTHENTICATION_METHOD
            | RESPONSE_INFORMATION
            | SERVER_REFERENCE
            | REASON_STRING => Value::Str(p.string()?),
            CORRELATION_DATA | AUTHENTICATION_DATA => Value::Bin(p.binary()?),
            USER_PROPERTY => Value::Pair(p.string()?, p.string()?),
            _ => return Err(InvalidProperty { id }),
        };
        if id != USER_PROPERTY && id != SUBSCRIPTION_IDENTIFIER {
            let bit = 1u64 << id; // every id above is < 64
            if seen & bit != 0 {
                return Err(DuplicateProperty { id });
            }
            seen |= bit;
        }
        set(id, value)?;
    }
    Ok(())
}

fn flag(id: u8, value: u8) -> R<bool> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(InvalidPropertyValue { id }),
    }
}

fn non_zero_u16(id: u8, value: u16) -> R<u16> {
    if value == 0 {
        Err(InvalidPropertyValue { id })
    } else {
        Ok(value)
    }
}

fn non_zero_u32(id: u8, value: u32) -> R<u32> {
    if value == 0 {
        Err(InvalidPropertyValue { id })
    } else {
        Ok(value)
    }
}

fn connect_properties(r: &mut Reader) -> R<ConnectProperties> {
    let mut p = ConnectProperties::default();
    properties(r, |id, value| {
        match (id, value) {
            (SESSION_EXPIRY_INTERVAL, Value::U32(v)) => p.session_expiry_interval = Some(v),
            (RECEIVE_MAXIMUM, Value::U16(v)) => p.receive_maximum = Some(non_zero_u16(id, v)?),
            (MAXIMUM_PACKET_SIZE, Value::U32(v)) => {
                p.maximum_packet_size = Some(non_zero_u32(id, v)?)
            }
            (TOPIC_ALIAS_MAXIMUM, Value::U16(v)) => p.topic_alias_maximum = Some(v),
            (REQUEST_RESPONSE_INFORMATION, Value::Byte(v)) => {
                p.request_response_information = Some(flag(id, v)?)
            }
            (REQUEST_PROBLEM_INFORMATION, Value::Byte(v)) => {
                p.request_problem_information = Some(flag(id, v)?)
            }
            (USER_PROPERTY, Value::Pair(k, v)) => p.user_properties.push((k, v)),
            (AUTHENTICATION_METHOD, Value::Str(v)) => p.authentication_method = Some(v),
            (AUTHENTICATION_DATA, Value::Bin(v)) => p.authentication_data = Some(v),
            _ => return Err(InvalidProperty { id }),
        }
        Ok(())
    })?;
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(AuthDataWithoutMethod);
    }
    Ok(p)
}

fn will_properties(r: &mut Reader) -> R<WillProperties> {
    let mut p = WillProperties::default();
    properties(r, |id, value| {
        match (id, value) {
            (WILL_DELAY_INTERVAL, Value::U32(v)) => p.will_delay_interval = Some(v),
            (PAYLOAD_FORMAT_INDICATOR, Value::Byte(v)) => {
                p.payload_format_utf8 = Some(flag(id, v)?)
            }
            (MESSAGE_EXPIRY_INTERVAL, Value::U32(v)) => p.message_expiry_interval = Some(v),
            (CONTENT_TYPE, Value::Str(v)) => p.content_type = Some(v),
            (RESPONSE_TOPIC, Value::Str(v)) => p.response_topic = Some(response_topic(v)?),
            (CORRELATION_DATA, Value::Bin(v)) => p.correlation_data = Some(v),
            (USER_PROPERTY, Value::Pair(k, v)) => p.user_properties.push((k, v)),
            _ => return Err(InvalidProperty { id }),
        }
        Ok(())
    })?;
    Ok(p)
}

/// A Response Topic is a topic name: no wildcards (MQTT-3.3.2-14), not empty.
fn response_topic(topic: String) -> R<String> {
    if valid_topic_name(&topic) {
        Ok(topic)
    } else {
        Err(InvalidPropertyValue { id: RESPONSE_TOPIC })
    }
}

fn connack_properties(r: &mut Reader) -> R<ConnAckProperties> {
    let mut p = ConnAckProperties::default();
    properties(r, |id, value| {
        match (id, value) {
            (SESSION_EXPIRY_INTERVAL, Value::U32(v)) => p.session_expiry_interval = Some(v),
            (RECEIVE_MAXIMUM, Value::U16(v)) => p.receive_maximum = Some(non_zero_u16(id, v)?),
            (MAXIMUM_QOS, Value::Byte(v)) => {
                p.maximum_qos = Some(if flag(id, v)? {
                    QoS::AtLeastOnce
                } else {
                    QoS::AtMostOnce
                })
            }
            (RETAIN_AVAILABLE, Value::Byte(v)) => p.retain_available = Some(flag(id, v)?),
            (MAXIMUM_PACKET_SIZE, Value::U32(v)) => {
                p.maximum_packet_size = Some(non_zero_u32(id, v)?)
            }
            (ASSIGNED_CLIENT_IDENTIFIER, Value::Str(v)) => p.assigned_client_identifier = Some(v),
            (TOPIC_ALIAS_MAXIMUM, Value::U16(v)) => p.topic_alias_maximum = Some(v),
            (REASON_STRING, Value::Str(v)) => p.reason_string = Some(v),
            (USER_PROPERTY, Value::Pair(k, v)) => p.user_properties.push((k, v)),
            (WILDCARD_SUBSCRIPTION_AVAILABLE, Value::Byte(v)) => {
                p.wildcard_subscription_available = Some(flag(id, v)?)
            }
            (SUBSCRIPTION_IDENTIFIER_AVAILABLE, Value::Byte(v)) => {
                p.subscription_identifiers_available = Some(flag(id, v)?)
            }
            (SHARED_SUBSCRIPTION_AVAILABLE, Value::Byte(v)) => {
                p.shared_subscription_available = Some(flag(id, v)?)
            }
            (SERVER_KEEP_ALIVE, Value::U16(v)) => p.server_keep_alive = Some(v),
            (RESPONSE_INFORMATION, Value::Str(v)) => p.response_information = Some(v),
            (SERVER_REFERENCE, Value::Str(v)) => p.server_reference = Some(v),
            (AUTHENTICATION_METHOD, Value::Str(v)) => p.authentication_method = Some(v),
            (AUTHENTICATION_DATA, Value::Bin(v)) => p.authentication_data = Some(v),
            _ => return Err(InvalidProperty { id }),
        }
        Ok(())
    })?;
    Ok(p)
}

fn publish_properties(r: &mut Reader) -> R<PublishProperties> {
    let mut p = PublishProperties::default();
    properties(r, |id, value| {
        match (id, value) {
            (PAYLOAD_FORMAT_INDICATOR, Value::Byte(v)) => {
                p.payload_format_utf8 = Some(flag(id, v)?)
            }
            (MESSAGE_EXPIRY_INTERVAL, Value::U32(v)) => p.message_expiry_interval = Some(v),
            (TOPIC_ALIAS, Value::U16(0)) => return Err(TopicAliasZero),
            (TOPIC_ALIAS, Value::U16(v)) => p.topic_alias = Some(v),
            (RESPONSE_TOPIC, Value::Str(v)) => p.response_topic = Some(response_topic(v)?),
            (CORRELATION_DATA, Value::Bin(v)) => p.correlation_data = Some(v),
            (USER_PROPERTY, Value::Pair(k, v)) => p.user_properties.push((k, v)),
            (SUBSCRIPTION_IDENTIFIER, Value::VarInt(v)) => {
                p.subscription_identifiers.push(non_zero_u32(id, v)?)
            }
            (CONTENT_TYPE, Value::Str(v)) => p.content_type = Some(v),
            _ => return Err(InvalidProperty { id }),
        }
        Ok(())
    })?;
    Ok(p)
}

fn ack_properties(r: &mut Reader) -> R<AckProperties> {
    let mut p = AckProperties::default();
    properties(r, |id, value| {
        match (id, value) {
            (REASON_STRING, Value::Str(v)) => p.reason_string = Some(v),
            (USER_PROPERTY, Value::Pair(k, v)) => p.user_properties.push((k, v)),
            _ => return Err(InvalidProperty { id }),
        }
        Ok(())
    })?;
    Ok(p)
}

fn subscribe_properties(r: &mut Reader) -> R<SubscribeProperties> {
    let mut p = SubscribeProperties::default();
    properties(r, |id, value| {
        match (id, value) {
            (SUBSCRIPTION_IDENTIFIER, Value::VarInt(v)) => {
                if p.subscription_identifier.is_some() {
                    return Err(DuplicateProperty { id });
                }
                p.subscription_identifier = Some(non_zero_u32(id, v)?)
            }
            (USER_PROPERTY, Value::Pair(k, v)) => p.user_properties.push((k, v)),
            _ => return Err(InvalidProperty { id }),
        }
        Ok(())
    })?;
    Ok(p)
}

fn user_properties_only(r: &mut Reader) -> R<UserProperties> {
    let mut user = UserProperties::new();
    properties(r, |id, value| {
        match (id, value) {
            (USER_PROPERTY, Value::Pair(k, v)) => user.push((k, v)),
            _ => return Err(InvalidProperty { id }),
        }
        Ok(())
    })?;
    Ok(user)
}

fn disconnect_properties(r: &mut Reader) -> R<DisconnectProperties> {
    let mut p = DisconnectProperties::default();
    properties(r, |id, value| {
        match (id, value) {
            (SESSION_EXPIRY_INTERVAL, Value::U32(v)) => p.session_expiry_interval = Some(v),
            (REASON_STRING, Value::Str(v)) => p.reason_string = Some(v),
            (USER_PROPERTY, Value::Pair(k, v)) => p.user_properties.push((k, v)),
            (SERVER_REFERENCE, Value::Str(v)) => p.server_reference = Some(v),
            _ => return Err(InvalidProperty { id }),
        }
        Ok(())
    })?;
    Ok(p)
}

fn auth_properties(r: &mut Reader) -> R<AuthProperties> {
    let mut p = AuthProperties::default();
    properties(r, |id, value| {
        match (id, value) {
            (AUTHENTICATION_METHOD, Value::Str(v)) => p.authentication_method = Some(v),
            (AUTHENTICATION_DATA, Value::Bin(v)) => p.authentication_data = Some(v),
            (REASON_STRING, Value::Str(v)) => p.reason_string = Some(v),
            (USER_PROPERTY, Value::Pair(k, v)) => p.user_properties.push((k, v)),
            _ => return Err(InvalidProperty { id }),
        }
        Ok(())
    })?;
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(AuthDataWithoutMethod);
    }
    Ok(p)
}

/// Reason codes each MQTT 5 packet may carry (section 2.4 and each packet's table).
fn v5_reason_allowed(packet_type: u8, code: u8) -> bool {
    let allowed: &[u8] = match packet_type {
        CONNACK => &[
            0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90,
            0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
        ],
        PUBACK | PUBREC => &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99],
        PUBREL | PUBCOMP => &[0x00, 0x92],
        SUBACK => &[
            0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
        ],
        UNSUBACK => &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91],
        DISCONNECT => &[
            0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93,
            0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1,
            0xA2,
        ],
        AUTH => &[0x00, 0x18, 0x19],
        _ => &[],
    };
    allowed.contains(&code)
}

fn reason(r: &mut Reader, packet_type: u8) -> R<ReasonCode> {
    let code = r.u8()?;
    if v5_reason_allowed(packet_type, code) {
        Ok(ReasonCode(code))
    } else {
        Err(InvalidReasonCode { code })
    }
}

/// Checks the fixed header's flags for the packet type (section 2.1.3) and whether the packet
/// type exists in the protocol. Done on the first byte, before anything is buffered.
pub(crate) fn check_first_byte(byte1: u8, protocol: Option<Protocol>) -> R<()> {
    let packet_type = byte1 >> 4;
    let flags = byte1 & 0x0F;
    match packet_type {
        0 => Err(UnknownPacketType),
        AUTH if protocol != Some(Protocol::V5) => Err(UnknownPacketType),
        PUBLISH => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                Err(InvalidQoS { qos })
            } else if qos == 0 && flags & 0b1000 != 0 {
                Err(DupOnQoS0)
            } else {
                Ok(())
            }
        }
        PUBREL | SUBSCRIBE | UNSUBSCRIBE if flags != 0b0010 => Err(ReservedFlags { flags }),
        PUBREL | SUBSCRIBE | UNSUBSCRIBE => Ok(()),
        _ if flags != 0 => Err(ReservedFlags { flags }),
        _ => Ok(()),
    }
}

/// Decodes a CONNECT body. On error, also says which protocol the CONNECT named, when it got
/// that far, so the session can answer in that protocol's format.
pub(crate) fn connect(body: Bytes) -> Result<Connect, (ErrorKind, Option<Protocol>)> {
    let mut r = Reader::new(body);
    let name = r.binary().map_err(|e| (e, None))?;
    let level = r.u8().map_err(|e| (e, None))?;
    // mqttbytes 0.6 accepts only "MQTT" 4 and 5; MQTT 3.1 clients send "MQIsdp" 3.
    let protocol = match (&name[..], level) {
        (b"MQTT", 4) => Protocol::V3_1_1,
        (b"MQTT", 5) => Protocol::V5,
        (b"MQIsdp", 3) => Protocol::V3_1,
        (b"MQTT", level) | (b"MQIsdp", level) => {
            return Err((UnsupportedProtocol { level }, None));
        }
        _ => return Err((InvalidProtocolName, None)),
    };
    connect_rest(&mut r, protocol).map_err(|e| (e, Some(protocol)))
}

fn connect_rest(r: &mut Reader, protocol: Protocol) -> R<Connect> {
    let v5 = protocol.is_v5();
    let flags = r.u8()?;
    let will_flag = flags & 0b0000_0100 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0b0010_0000 != 0;
    let password_flag = flags & 0b0100_0000 != 0;
    let username_flag = flags & 0b1000_0000 != 0;
    if flags & 1 != 0 || (!will_flag && (will_qos != 0 || will_retain)) {
        return Err(InvalidConnectFlags { flags });
    }
    if will_qos == 3 {
        return Err(InvalidQoS { qos: will_qos });
    }
    // MQTT-3.1.2-22 (3.1.1); MQTT 5 allows a password without a user name.
    if !v5 && password_flag && !username_flag {
        return Err(PasswordWithoutUsername);
    }
    let keep_alive = r.u16()?;
    let properties = if v5 {
        connect_properties(r)?
    } else {
        ConnectProperties::default()
    };
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = if v5 {
            will_properties(r)?
        } else {
            WillProperties::default()
        };
        let topic = r.string()?;
        if topic.is_empty() {
            return Err(EmptyTopic);
        }
        if !valid_topic_name(&topic) {
            return Err(InvalidTopicName);
        }
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: QoS::from_u8(will_qos).unwrap_or_default(),
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    // MQTT 3.1 clients may set the user name / password flags and leave the field out;
    // Mosquitto ignores the flag then, and so do we (3.1 only).
    let lenient = protocol == Protocol::V3_1;
    let username = if username_flag {
        match r.string() {
            Ok(name) => Some(name),
            Err(Truncated) if lenient && r.is_empty() => None,
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let password = if password_flag {
        match r.binary() {
            Ok(password) => Some(password),
            Err(Truncated) if lenient && r.is_empty() => None,
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    r.end()?;
    Ok(Connect {
        protocol,
        clean_start: flags & 0b10 != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

/// Decodes the body of any packet but CONNECT, on a connection of `protocol`.
pub(crate) fn packet(byte1: u8, body: Bytes, protocol: Protocol) -> R<Packet> {
    let packet_type = byte1 >> 4;
    let v5 = protocol.is_v5();
    let mut r = Reader::new(body);
    let packet = match packet_type {
        CONNACK => Packet::ConnAck(Box::new(connack(&mut r, protocol)?)),
        PUBLISH => Packet::Publish(publish(&mut r, byte1, v5)?),
        PUBACK => Packet::PubAck(ack(&mut r, packet_type, v5)?),
        PUBREC => Packet::PubRec(ack(&mut r, packet_type, v5)?),
        PUBREL => Packet::PubRel(ack(&mut r, packet_type, v5)?),
        PUBCOMP => Packet::PubComp(ack(&mut r, packet_type, v5)?),
        SUBSCRIBE => Packet::Subscribe(subscribe(&mut r, v5)?),
        SUBACK => Packet::SubAck(suback(&mut r, v5)?),
        UNSUBSCRIBE => Packet::Unsubscribe(unsubscribe(&mut r, v5)?),
        UNSUBACK => Packet::UnsubAck(unsuback(&mut r, v5)?),
        PINGREQ => {
            r.end()?;
            Packet::PingReq
        }
        PINGRESP => {
            r.end()?;
            Packet::PingResp
        }
        DISCONNECT => Packet::Disconnect(disconnect(&mut r, v5)?),
        AUTH if v5 => Packet::Auth(auth(&mut r)?),
        // CONNECT is decoded by `connect`; 0 and 15 before v5 are refused by check_first_byte.
        _ => return Err(UnknownPacketType),
    };
    Ok(packet)
}

fn connack(r: &mut Reader, protocol: Protocol) -> R<ConnAck> {
    let flags = r.u8()?;
    // MQTT 3.1 has no session present flag: its first CONNACK byte is reserved, and ignored.
    let flags = if protocol == Protocol::V3_1 { 0 } else { flags };
    if flags & 0xFE != 0 {
        return Err(ReservedFlags { flags });
    }
    let code = r.u8()?;
    let properties = if protocol.is_v5() {
        if !v5_reason_allowed(CONNACK, code) {
            return Err(InvalidReasonCode { code });
        }
        connack_properties(r)?
    } else {
        if code > 5 {
            return Err(InvalidReasonCode { code });
        }
        ConnAckProperties::default()
    };
    r.end()?;
    Ok(ConnAck {
        session_present: flags & 1 != 0,
        code: ReasonCode(code),
        properties,
    })
}

fn publish(r: &mut Reader, byte1: u8, v5: bool) -> R<Publish> {
    let qos = QoS::from_u8((byte1 >> 1) & 0b11).ok_or(InvalidQoS { qos: 3 })?;
    let topic = r.string()?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        r.packet_id()?
    };
    let properties = if v5 {
        publish_properties(r)?
    } else {
        PublishProperties::default()
    };
    if topic.is_empty() {
        // MQTT 5: an empty topic name with a Topic Alias names the aliased topic.
        if properties.topic_alias.is_none() {
            return Err(EmptyTopic);
        }
    } else if !valid_topic_name(&topic) {
        return Err(InvalidTopicName);
    }
    Ok(Publish {
        dup: byte1 & 0b1000 != 0,
        qos,
        retain: byte1 & 1 != 0,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP. On MQTT 5 the reason code may be left out (remaining
/// length 2: success) and so may the properties (remaining length 3).
fn ack(r: &mut Reader, packet_type: u8, v5: bool) -> R<Ack> {
    let packet_id = r.packet_id()?;
    let mut ack = Ack {
        packet_id,
        ..Ack::default()
    };
    if v5 && !r.is_empty() {
        ack.reason = reason(r, packet_type)?;
        if !r.is_empty() {
            ack.properties = ack_properties(r)?;
        }
    }
    r.end()?;
    Ok(ack)
}

fn subscribe(r: &mut Reader, v5: bool) -> R<Subscribe> {
    let packet_id = r.packet_id()?;
    let properties = if v5 {
        subscribe_properties(r)?
    } else {
        SubscribeProperties::default()
    };
    let mut subscriptions = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        let options = r.u8()?;
        let reserved = if v5 { 0b1100_0000 } else { 0b1111_1100 };
        if options & reserved != 0 {
            return Err(InvalidSubscriptionOptions { options });
        }
        let qos = QoS::from_u8(options & 0b11).ok_or(InvalidQoS { qos: 3 })?;
        let retain_handling = match (options >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendAtNewSubscribe,
            2 => RetainHandling::DoNotSend,
            _ => return Err(InvalidRetainHandling),
        };
        if !valid_topic_filter(&filter) {
            return Err(InvalidTopicFilter);
        }
        let no_local = options & 0b0100 != 0;
        if no_local && split_shared(&filter).is_some() {
            return Err(SharedSubscriptionNoLocal);
        }
        subscriptions.push(Subscription {
            filter,
            options: SubscriptionOptions {
                qos,
                no_local,
                retain_as_published: options & 0b1000 != 0,
                retain_handling,
            },
        });
    }
    if subscriptions.is_empty() {
        return Err(NoTopicFilters);
    }
    Ok(Subscribe {
        packet_id,
        subscriptions,
        properties,
    })
}

fn suback(r: &mut Reader, v5: bool) -> R<SubAck> {
    let packet_id = r.packet_id()?;
    let properties = if v5 {
        ack_properties(r)?
    } else {
        AckProperties::default()
    };
    let mut reasons = Vec::new();
    while !r.is_empty() {
        let code = r.u8()?;
        let ok = if v5 {
            v5_reason_allowed(SUBACK, code)
        } else {
            matches!(code, 0 | 1 | 2 | 0x80)
        };
        if !ok {
            return Err(InvalidReasonCode { code });
        }
        reasons.push(ReasonCode(code));
    }
    if reasons.is_empty() {
        return Err(Truncated);
    }
    Ok(SubAck {
        packet_id,
        reasons,
        properties,
    })
}

fn unsubscribe(r: &mut Reader, v5: bool) -> R<Unsubscribe> {
    let packet_id = r.packet_id()?;
    let user_properties = if v5 {
        user_properties_only(r)?
    } else {
        UserProperties::new()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        if !valid_topic_filter(&filter) {
            return Err(InvalidTopicFilter);
        }
        filters.push(filter);
    }
    if filters.is_empty() {
        return Err(NoTopicFilters);
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        user_properties,
    })
}

fn unsuback(r: &mut Reader, v5: bool) -> R<UnsubAck> {
    let packet_id = r.packet_id()?;
    let mut unsuback = UnsubAck {
        packet_id,
        ..UnsubAck::default()
    };
    if v5 {
        unsuback.properties = ack_properties(r)?;
        while !r.is_empty() {
            unsuback.reasons.push(reason(r, UNSUBACK)?);
        }
        if unsuback.reasons.is_empty() {
            return Err(Truncated);
        }
    }
    r.end()?;
    Ok(unsuback)
}

fn disconnect(r: &mut Reader, v5: bool) -> R<Disconnect> {
    let mut disconnect = Disconnect::default();
    if v5 && !r.is_empty() {
        disconnect.reason = reason(r, DISCONNECT)?;
        if !r.is_empty() {
            disconnect.properties = disconnect_properties(r)?;
        }
    }
    r.end()?;
    Ok(disconnect)
}

fn auth(r: &mut Reader) -> R<Auth> {
    let mut auth = Auth::default();
    if !r.is_empty() {
        auth.reason = reason(r, AUTH)?;
        if !r.is_empty() {
            auth.properties = auth_properties(r)?;
        }
    }
    r.end()?;
    Ok(auth)
}
