//! Tests of the MQTT codec: captured real packets (fixtures/), round trips, validation, what
//! mqttbytes gets wrong, bad input, and the topic mapping.

use bytes::{Bytes, BytesMut};

use super::topic::*;
use super::*;

// ---------------------------------------------------------------------------------------------
// Helpers

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn unlimited() -> Limits {
    Limits {
        packet_bytes_max: 0,
    }
}

/// Decodes exactly one packet from `bytes` on a connection of `protocol`.
fn decode_one(bytes: &[u8], protocol: Option<Protocol>) -> Result<Packet, Error> {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, protocol, &unlimited())?;
    let packet = packet.expect("a whole packet");
    assert!(buf.is_empty(), "packet left {} bytes", buf.len());
    Ok(packet)
}

fn decode_err(bytes: &[u8], protocol: Option<Protocol>) -> Error {
    match decode_one(bytes, protocol) {
        Err(e) => e,
        Ok(p) => panic!("decoded {p:?}, expected an error"),
    }
}

fn kind(bytes: &[u8], protocol: Protocol) -> ErrorKind {
    decode_err(bytes, Some(protocol)).kind
}

fn encode_vec(packet: &Packet, protocol: Protocol) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(packet, protocol, &mut out).expect("encodes");
    assert_eq!(encoded_size(packet, protocol).ok(), Some(out.len()));
    out.to_vec()
}

/// encode -> decode gives the packet back.
fn assert_round_trip(packet: &Packet, protocol: Protocol) {
    let bytes = encode_vec(packet, protocol);
    let again = decode_one(&bytes, Some(protocol)).expect("re-encoded packet decodes");
    assert_eq!(&again, packet);
}

/// Builds a packet from a first byte and a body, with a minimal remaining length.
fn frame(byte1: u8, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.extend_from_slice(&[byte1]);
    write::put_var_int(&mut out, body.len());
    out.extend_from_slice(body);
    out.to_vec()
}

fn s(x: &str) -> Vec<u8> {
    let mut v = (x.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(x.as_bytes());
    v
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// One captured conversation: (from client, packet bytes).
struct Capture {
    name: &'static str,
    packets: Vec<(bool, Vec<u8>)>,
}

fn capture(name: &'static str, text: &str) -> Capture {
    let packets = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (dir, h) = l.split_once(' ').expect("direction and hex");
            (dir == "C", hex(h))
        })
        .collect();
    Capture { name, packets }
}

fn captures() -> Vec<Capture> {
    vec![
        capture("paho_v311", include_str!("fixtures/paho_v311.txt")),
        capture("paho_v31", include_str!("fixtures/paho_v31.txt")),
        capture("paho_v5", include_str!("fixtures/paho_v5.txt")),
        capture(
            "paho_v5_auth_method",
            include_str!("fixtures/paho_v5_auth_method.txt"),
        ),
        capture(
            "mosquitto_sub_v5",
            include_str!("fixtures/mosquitto_sub_v5.txt"),
        ),
        capture(
            "mosquitto_pub_v5_qos1",
            include_str!("fixtures/mosquitto_pub_v5_qos1.txt"),
        ),
        capture(
            "mosquitto_pub_v5_qos2",
            include_str!("fixtures/mosquitto_pub_v5_qos2.txt"),
        ),
        capture("raw_v5_acks", include_str!("fixtures/raw_v5_acks.txt")),
    ]
}

/// Decodes a capture as the server (client packets, starting before CONNECT) and as the
/// client (server packets), one packet per line, and returns the packets with their bytes.
fn decode_capture(cap: &Capture) -> Vec<(bool, Vec<u8>, Packet, Protocol)> {
    let mut server = Codec::new();
    let mut client: Option<Codec> = None;
    let mut out = Vec::new();
    for (from_client, bytes) in &cap.packets {
        let mut buf = BytesMut::from(&bytes[..]);
        let codec = if *from_client {
            &mut server
        } else {
            client.get_or_insert_with(|| {
                Codec::with_protocol(server.protocol().expect("CONNECT first"))
            })
        };
        let packet = codec
            .decode(&mut buf, &unlimited())
            .unwrap_or_else(|e| panic!("{}: {} does not decode: {e}", cap.name, hexs(bytes)))
            .unwrap_or_else(|| panic!("{}: {} incomplete", cap.name, hexs(bytes)));
        assert!(buf.is_empty(), "{}: bytes left over", cap.name);
        let protocol = codec.protocol().expect("protocol known after CONNECT");
        out.push((*from_client, bytes.clone(), packet, protocol));
    }
    out
}

fn hexs(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// Captured packets

#[test]
fn every_captured_packet_decodes_and_round_trips() {
    let mut count = 0;
    for cap in captures() {
        for (_, bytes, packet, protocol) in decode_capture(&cap) {
            assert_round_trip(&packet, protocol);
            // 3.1.x packets have one canonical form: ours is byte for byte what the real
            // clients and mosquitto sent.
            if !protocol.is_v5() {
                assert_eq!(
                    hexs(&encode_vec(&packet, protocol)),
                    hexs(&bytes),
                    "{}",
                    cap.name
                );
            }
            count += 1;
        }
    }
    assert!(count > 100, "only {count} packets");
}

#[test]
fn captured_streams_decode_the_same_when_concatenated_and_split_anywhere() {
    for cap in captures() {
        let client: Vec<u8> = cap
            .packets
            .iter()
            .filter(|(c, _)| *c)
            .flat_map(|(_, b)| b.clone())
            .collect();
        for split in 0..client.len() {
            fuzzing::check(&client, split, 0, None);
        }
        let protocol = decode_capture(&cap)[0].3;
        let server: Vec<u8> = cap
            .packets
            .iter()
            .filter(|(c, _)| !*c)
            .flat_map(|(_, b)| b.clone())
            .collect();
        for split in 0..server.len() {
            fuzzing::check(&server, split, 0, Some(protocol));
        }
    }
}

#[test]
fn paho_v311_connect_with_will_and_login() {
    let cap = capture("paho_v311", include_str!("fixtures/paho_v311.txt"));
    let packets = decode_capture(&cap);
    let Packet::Connect(c) = &packets[0].2 else {
        panic!("not CONNECT")
    };
    assert_eq!(c.protocol, Protocol::V3_1_1);
    assert_eq!(c.client_id, "wharf-v311");
    assert_eq!(c.keep_alive, 30);
    assert!(c.clean_start);
    assert_eq!(c.username.as_deref(), Some("device-7"));
    assert_eq!(c.password.as_deref(), Some(&b"s3cret"[..]));
    let will = c.will.as_ref().expect("will");
    assert_eq!(
        (
            will.topic.as_str(),
            &will.payload[..],
            will.qos,
            will.retain
        ),
        ("wharf/v311/will", &b"gone"[..], QoS::AtLeastOnce, true)
    );
    let Packet::Subscribe(sub) = &packets[2].2 else {
        panic!("not SUBSCRIBE")
    };
    let filters: Vec<_> = sub
        .subscriptions
        .iter()
        .map(|s| (s.filter.as_str(), s.options.qos))
        .collect();
    assert_eq!(
        filters,
        [
            ("wharf/v311/#", QoS::ExactlyOnce),
            ("wharf/v311/+/x", QoS::AtLeastOnce),
            ("wharf/q0", QoS::AtMostOnce)
        ]
    );
    let Packet::SubAck(suback) = &packets[3].2 else {
        panic!("not SUBACK")
    };
    assert_eq!(
        suback.reasons,
        [ReasonCode(2), ReasonCode(1), ReasonCode(0)]
    );
    assert!(packets.iter().any(|p| p.2 == Packet::PingReq));
    assert!(packets.iter().any(|p| p.2 == Packet::PingResp));
    assert!(matches!(
        packets.last().map(|p| &p.2),
        Some(Packet::Disconnect(_))
    ));
}

#[test]
fn paho_v31_connect_is_mqisdp_level_3() {
    let cap = capture("paho_v31", include_str!("fixtures/paho_v31.txt"));
    let packets = decode_capture(&cap);
    let Packet::Connect(c) = &packets[0].2 else {
        panic!("not CONNECT")
    };
    assert_eq!(c.protocol, Protocol::V3_1);
    assert_eq!(c.client_id, "wharf-v31");
    // Every packet after it was decoded as MQTT 3.1.
    assert!(packets.iter().all(|p| p.3 == Protocol::V3_1));
    // mqttbytes refuses this CONNECT outright.
    let mut raw = BytesMut::from(&cap.packets[0].1[..]);
    assert_eq!(
        mqttbytes::v4::read(&mut raw, 1 << 20).err(),
        Some(mqttbytes::Error::InvalidProtocol)
    );
}

#[test]
fn paho_v5_connect_properties_and_will_properties() {
    let cap = capture("paho_v5", include_str!("fixtures/paho_v5.txt"));
    let packets = decode_capture(&cap);
    let Packet::Connect(c) = &packets[0].2 else {
        panic!("not CONNECT")
    };
    assert_eq!(c.protocol, Protocol::V5);
    let p = &c.properties;
    assert_eq!(p.session_expiry_interval, Some(3600));
    assert_eq!(p.receive_maximum, Some(20));
    assert_eq!(p.maximum_packet_size, Some(65536));
    assert_eq!(p.topic_alias_maximum, Some(10));
    assert_eq!(p.request_problem_information, Some(true));
    assert_eq!(
        p.user_properties,
        [
            ("region".to_string(), "eu-west".to_string()),
            ("fleet".to_string(), "7".to_string())
        ]
    );
    let will = c.will.as_ref().expect("will");
    assert_eq!(will.qos, QoS::ExactlyOnce);
    let wp = &will.properties;
    assert_eq!(wp.will_delay_interval, Some(5));
    assert_eq!(wp.message_expiry_interval, Some(60));
    assert_eq!(wp.payload_format_utf8, Some(true));
    assert_eq!(wp.content_type.as_deref(), Some("text/plain"));
    assert_eq!(wp.response_topic.as_deref(), Some("wharf/v5/replies"));
    assert_eq!(wp.correlation_data.as_deref(), Some(&[1u8, 2, 3][..]));
    assert_eq!(wp.user_properties.len(), 1);

    let Packet::ConnAck(ack) = &packets[1].2 else {
        panic!("not CONNACK")
    };
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    assert_eq!(ack.properties.topic_alias_maximum, Some(10));
    assert_eq!(ack.properties.receive_maximum, Some(20));
}

#[test]
fn paho_v5_subscribe_options_publish_properties_and_disconnect() {
    let cap = capture("paho_v5", include_str!("fixtures/paho_v5.txt"));
    let packets: Vec<Packet> = decode_capture(&cap).into_iter().map(|p| p.2).collect();
    let subs: Vec<&Subscribe> = packets
        .iter()
        .filter_map(|p| match p {
            Packet::Subscribe(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(subs[0].properties.subscription_identifier, Some(42));
    let o = subs[0].subscriptions[0].options;
    assert_eq!(
        (o.qos, o.no_local, o.retain_as_published, o.retain_handling),
        (
            QoS::ExactlyOnce,
            false,
            true,
            RetainHandling::SendAtNewSubscribe
        )
    );
    assert_eq!(subs[1].properties.subscription_identifier, Some(200_000));
    assert_eq!(
        subs[1].subscriptions[0].options.retain_handling,
        RetainHandling::DoNotSend
    );
    assert!(subs[1].subscriptions[1].options.no_local);

    let client_publish = packets
        .iter()
        .find_map(|p| match p {
            Packet::Publish(p) if p.properties.topic_alias.is_some() => Some(p),
            _ => None,
        })
        .expect("publish with alias");
    let pp = &client_publish.properties;
    assert_eq!(client_publish.topic, "wharf/v5/a");
    assert_eq!(client_publish.qos, QoS::AtLeastOnce);
    assert_eq!(pp.payload_format_utf8, Some(true));
    assert_eq!(pp.message_expiry_interval, Some(120));
    assert_eq!(pp.topic_alias, Some(3));
    assert_eq!(pp.response_topic.as_deref(), Some("wharf/v5/replies"));
    assert_eq!(pp.correlation_data.as_deref(), Some(&b"req-0001"[..]));
    assert_eq!(pp.content_type.as_deref(), Some("application/json"));
    // Repeated keys stay, in order.
    assert_eq!(
        pp.user_properties,
        [
            ("k1".to_string(), "v1".to_string()),
            ("k1".to_string(), "v2".to_string())
        ]
    );
    assert_eq!(&client_publish.payload[..], br#"{"t":21.5}"#);

    // mosquitto's deliveries carry the subscription identifiers.
    let ids: Vec<Vec<u32>> = packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) if !p.properties.subscription_identifiers.is_empty() => {
                Some(p.properties.subscription_identifiers.clone())
            }
            _ => None,
        })
        .collect();
    assert!(
        ids.contains(&vec![42]) && ids.contains(&vec![200_000]),
        "{ids:?}"
    );

    let unsuback = packets
        .iter()
        .find_map(|p| match p {
            Packet::UnsubAck(u) => Some(u),
            _ => None,
        })
        .expect("UNSUBACK");
    assert_eq!(
        unsuback.reasons,
        [ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
    );

    let Some(Packet::Disconnect(d)) = packets.last() else {
        panic!("last is not DISCONNECT")
    };
    assert_eq!(d.reason, ReasonCode::DISCONNECT_WITH_WILL_MESSAGE);
    assert_eq!(d.properties.session_expiry_interval, Some(0));
    assert_eq!(
        d.properties.reason_string.as_deref(),
        Some("shutting down sensor")
    );
    assert_eq!(d.properties.user_properties.len(), 1);
}

#[test]
fn auth_method_refused_by_mosquitto_with_0x8c() {
    let cap = capture(
        "paho_v5_auth_method",
        include_str!("fixtures/paho_v5_auth_method.txt"),
    );
    let packets = decode_capture(&cap);
    let Packet::Connect(c) = &packets[0].2 else {
        panic!("not CONNECT")
    };
    assert_eq!(
        c.properties.authentication_method.as_deref(),
        Some("SCRAM-SHA-256")
    );
    assert_eq!(
        c.properties.authentication_data.as_deref(),
        Some(&b"n,,n=device,r=abc123"[..])
    );
    let Packet::ConnAck(ack) = &packets[1].2 else {
        panic!("not CONNACK")
    };
    assert_eq!(ack.code, ReasonCode::BAD_AUTHENTICATION_METHOD);
}

#[test]
fn mosquitto_clients_properties() {
    let cap = capture(
        "mosquitto_pub_v5_qos1",
        include_str!("fixtures/mosquitto_pub_v5_qos1.txt"),
    );
    let packets = decode_capture(&cap);
    let Packet::Publish(p) = &packets[2].2 else {
        panic!("not PUBLISH")
    };
    assert_eq!(p.properties.topic_alias, Some(1));
    assert_eq!(p.properties.payload_format_utf8, Some(true));
    assert_eq!(p.properties.correlation_data.as_deref(), Some(&b"abc"[..]));
    let cap = capture(
        "mosquitto_sub_v5",
        include_str!("fixtures/mosquitto_sub_v5.txt"),
    );
    let packets = decode_capture(&cap);
    let Packet::Subscribe(sub) = &packets[2].2 else {
        panic!("not SUBSCRIBE")
    };
    assert_eq!(sub.properties.subscription_identifier, Some(9));
    let cap = capture(
        "mosquitto_pub_v5_qos2",
        include_str!("fixtures/mosquitto_pub_v5_qos2.txt"),
    );
    let packets = decode_capture(&cap);
    let Some((_, bytes, Packet::Disconnect(d), _)) = packets.last() else {
        panic!("last is not DISCONNECT")
    };
    assert_eq!(d.reason, ReasonCode::NORMAL_DISCONNECTION);
    assert_eq!(d.properties.reason_string.as_deref(), Some("done"));
    // Reason 0x00 written explicitly because there are properties: so do we (the properties
    // come in another order, which MQTT leaves free).
    let ours = encode_vec(&packets.last().unwrap().2, Protocol::V5);
    assert_eq!((ours.len(), ours[2]), (bytes.len(), 0x00));
}

#[test]
fn acknowledgements_with_reason_codes_and_reason_strings() {
    let cap = capture("raw_v5_acks", include_str!("fixtures/raw_v5_acks.txt"));
    let packets: Vec<(bool, Packet)> = decode_capture(&cap)
        .into_iter()
        .map(|p| (p.0, p.2))
        .collect();
    let has = |from_client: bool, f: &dyn Fn(&Packet) -> bool| {
        packets.iter().any(|(c, p)| *c == from_client && f(p))
    };
    // Client PUBACK 0x80 with a reason string and a user property.
    assert!(has(true, &|p| matches!(p, Packet::PubAck(a)
        if a.reason == ReasonCode::UNSPECIFIED_ERROR
            && a.properties.reason_string.as_deref() == Some("rejected by device")
            && a.properties.user_properties == [("code".to_string(), "E42".to_string())])));
    // PUBREL 0x00 with a reason string (reason code written although it is success).
    assert!(has(true, &|p| matches!(p, Packet::PubRel(a)
        if a.packet_id == 11 && a.properties.reason_string.as_deref() == Some("go on"))));
    // PUBREC 0x83 with a reason string.
    assert!(has(true, &|p| matches!(p, Packet::PubRec(a)
        if a.reason == ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR)));
    // mosquitto: PUBCOMP for an unknown packet id (success: mosquitto 2.0.11 does not send
    // 0x92 Packet Identifier not found), PUBACK 0x10 (reason, no properties: remaining length
    // 3), UNSUBACK 0x11.
    assert!(has(false, &|p| matches!(p, Packet::PubComp(a)
        if a.packet_id == 99 && a.reason == ReasonCode::SUCCESS)));
    assert!(has(false, &|p| matches!(p, Packet::PubAck(a)
        if a.reason == ReasonCode::NO_MATCHING_SUBSCRIBERS && a.properties.is_empty())));
    assert!(has(false, &|p| matches!(p, Packet::UnsubAck(u)
        if u.reasons == [ReasonCode::NO_SUBSCRIPTION_EXISTED])));
    // An alias-only PUBLISH: empty topic, topic alias 2.
    assert!(has(true, &|p| matches!(p, Packet::Publish(p)
        if p.topic.is_empty() && p.properties.topic_alias == Some(2))));
    // AUTH 0x19 with method and data.
    assert!(has(true, &|p| matches!(p, Packet::Auth(a)
        if a.reason == ReasonCode::RE_AUTHENTICATE
            && a.properties.authentication_method.as_deref() == Some("SCRAM-SHA-256")
            && a.properties.authentication_data.as_deref() == Some(&b"r=xyz"[..]))));
}

/// The violations mosquitto was sent, with its answers; ours agree except where the
/// specification names a code and mosquitto does not follow it.
#[test]
fn violations_answered_like_mosquitto_or_the_specification() {
    let text = include_str!("fixtures/mosquitto_v5_violations.txt");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut f = line.split(' ');
        let (name, answer, bad) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        let error = decode_err(&hex(bad), Some(Protocol::V5));
        let Reply::Disconnect { reason } = error.reply() else {
            panic!("{name}: {:?}", error.reply())
        };
        let ours = format!("e001{:02x}", reason.0);
        match name {
            // Spec 3.8.3.1: "It is a Protocol Error if the Retain Handling field has the value
            // 3"; mosquitto says malformed.
            "rh3" => assert_eq!((answer, reason), ("e00181", ReasonCode::PROTOCOL_ERROR)),
            // Spec 3.3.2.3: a property included twice is a Protocol Error; mosquitto accepts it.
            "dupprop" => assert_eq!((answer, reason), ("-", ReasonCode::PROTOCOL_ERROR)),
            // Spec 3.3.2.3.4: Topic Alias 0 -> DISCONNECT 0x94; mosquitto says malformed.
            "alias0" => assert_eq!(
                (answer, reason),
                ("e00181", ReasonCode::TOPIC_ALIAS_INVALID)
            ),
            _ => assert_eq!(ours, answer, "{name}: {error}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// mqttbytes 0.6, where it is wrong (each reason for read.rs / write.rs not using it)

#[test]
fn mqttbytes_refuses_v5_disconnect_and_auth_without_payload() {
    let mut b = BytesMut::from(&[0xE0u8, 0x00][..]);
    assert_eq!(
        mqttbytes::v5::read(&mut b, 1024).err(),
        Some(mqttbytes::Error::PayloadRequired)
    );
    let mut b = BytesMut::from(&[0xF0u8, 0x00][..]);
    assert_eq!(
        mqttbytes::v5::read(&mut b, 1024).err(),
        Some(mqttbytes::Error::InvalidPacketType(15))
    );
    assert_eq!(
        decode_one(&[0xE0, 0x00], Some(Protocol::V5)).ok(),
        Some(Packet::Disconnect(Disconnect::default()))
    );
    assert_eq!(
        decode_one(&[0xF0, 0x00], Some(Protocol::V5)).ok(),
        Some(Packet::Auth(Auth::default()))
    );
}

#[test]
fn mqttbytes_misreads_two_subscription_identifiers() {
    // Server PUBLISH (QoS 0) with subscription identifiers 1 and 2, then payload format 1.
    let body = cat(&[&s("a/b"), &[6, 0x0B, 1, 0x0B, 2, 0x01, 1], b"payload"]);
    let bytes = frame(0x30, &body);
    let mut b = BytesMut::from(&bytes[..]);
    let Ok(mqttbytes::v5::Packet::Publish(p)) = mqttbytes::v5::read(&mut b, 1024) else {
        panic!("mqttbytes failed outright")
    };
    // It stops reading properties one byte early per identifier: the payload format
    // indicator ends up in the payload.
    assert_eq!(&p.payload[..], b"\x01\x01payload");
    let Packet::Publish(ours) = decode_one(&bytes, Some(Protocol::V5)).unwrap() else {
        panic!()
    };
    assert_eq!(ours.properties.subscription_identifiers, [1, 2]);
    assert_eq!(ours.properties.payload_format_utf8, Some(true));
    assert_eq!(&ours.payload[..], b"payload");
}

#[test]
fn mqttbytes_accepts_what_mqtt_forbids() {
    let v5 = |bytes: &[u8]| {
        let mut b = BytesMut::from(bytes);
        mqttbytes::v5::read(&mut b, 1 << 20).is_ok()
    };
    let v4 = |bytes: &[u8]| {
        let mut b = BytesMut::from(bytes);
        mqttbytes::v4::read(&mut b, 1 << 20).is_ok()
    };
    // Duplicate Message Expiry Interval.
    let dup = frame(
        0x30,
        &cat(&[&s("a"), &[10, 2, 0, 0, 0, 5, 2, 0, 0, 0, 6], b"p"]),
    );
    assert!(v5(&dup));
    assert_eq!(
        kind(&dup, Protocol::V5),
        ErrorKind::DuplicateProperty { id: 2 }
    );
    // Receive Maximum 0 in CONNECT.
    let connect = frame(
        0x10,
        &cat(&[&s("MQTT"), &[5, 2, 0, 10, 3, 0x21, 0, 0], &s("id")]),
    );
    assert!(v5(&connect));
    assert_eq!(
        decode_err(&connect, None).kind,
        ErrorKind::InvalidPropertyValue { id: 0x21 }
    );
    // Wildcards in a PUBLISH topic.
    let wild = frame(0x30, &cat(&[&s("a/+"), b"p"]));
    assert!(v4(&wild));
    assert_eq!(kind(&wild, Protocol::V3_1_1), ErrorKind::InvalidTopicName);
    // SUBSCRIBE with flags 0 instead of 0b0010.
    let sub = frame(0x80, &cat(&[&[0, 1], &s("a"), &[0]]));
    assert!(v4(&sub));
    assert_eq!(
        kind(&sub, Protocol::V3_1_1),
        ErrorKind::ReservedFlags { flags: 0 }
    );
    // '+' inside a level of a filter.
    assert!(mqttbytes::valid_filter("a+/b"));
    assert!(!valid_topic_filter("a+/b"));
    // U+0000 in a topic.
    let nul = frame(0x30, &cat(&[&s("a\0b"), b"p"]));
    assert!(v4(&nul));
    assert_eq!(kind(&nul, Protocol::V3_1_1), ErrorKind::InvalidUtf8);
    // Bytes after a PUBACK's packet id on 3.1.1.
    let puback = [0x40, 0x03, 0, 1, 0];
    assert!(v4(&puback));
    assert_eq!(kind(&puback, Protocol::V3_1_1), ErrorKind::TrailingBytes);
}

#[test]
fn mqttbytes_reads_a_binary_password_as_utf8() {
    let connect = frame(
        0x10,
        &cat(&[
            &s("MQTT"),
            &[4, 0b1100_0010, 0, 10],
            &s("id"),
            &s("user"),
            &[0, 2, 0xFF, 0xFE],
        ]),
    );
    let mut b = BytesMut::from(&connect[..]);
    assert_eq!(
        mqttbytes::v4::read(&mut b, 1024).err(),
        Some(mqttbytes::Error::TopicNotUtf8)
    );
    let Packet::Connect(c) = decode_one(&connect, None).unwrap() else {
        panic!()
    };
    assert_eq!(c.password.as_deref(), Some(&[0xFF, 0xFE][..]));
    assert_round_trip(&Packet::Connect(c), Protocol::V3_1_1);
}

#[test]
fn mqttbytes_truncates_long_strings_on_encode() {
    let topic = "t".repeat(70_000);
    let publish = mqttbytes::v4::Publish::new(topic.clone(), mqttbytes::QoS::AtMostOnce, "x");
    let mut out = BytesMut::new();
    assert!(publish.write(&mut out).is_ok());
    // The topic length field says 70000 mod 65536: the packet reads back wrong.
    let mut back = out.clone();
    match mqttbytes::v4::read(&mut back, 1 << 20) {
        Ok(mqttbytes::v4::Packet::Publish(p)) => assert_ne!(p.topic, topic),
        other => assert!(other.is_err()),
    }
    let ours = Packet::Publish(Publish {
        topic,
        ..Publish::default()
    });
    let mut out = BytesMut::new();
    assert_eq!(
        encode(&ours, Protocol::V3_1_1, &mut out).map_err(|e| e.kind),
        Err(ErrorKind::FieldTooLong)
    );
    assert!(out.is_empty());
}

/// Where mqttbytes agrees (3.1.1 and 5 packets it supports), it is an oracle for ours.
#[test]
fn mqttbytes_agrees_on_the_captured_publishes() {
    for cap in captures() {
        for (_, bytes, packet, protocol) in decode_capture(&cap) {
            let Packet::Publish(ours) = packet else {
                continue;
            };
            let mut b = BytesMut::from(&bytes[..]);
            let (topic, payload, pkid) = match protocol {
                Protocol::V5 => match mqttbytes::v5::read(&mut b, 1 << 20) {
                    Ok(mqttbytes::v5::Packet::Publish(p)) => (p.topic, p.payload, p.pkid),
                    other => panic!("{}: mqttbytes: {other:?}", cap.name),
                },
                _ => match mqttbytes::v4::read(&mut b, 1 << 20) {
                    Ok(mqttbytes::v4::Packet::Publish(p)) => (p.topic, p.payload, p.pkid),
                    other => panic!("{}: mqttbytes: {other:?}", cap.name),
                },
            };
            assert_eq!(
                (topic, payload, pkid),
                (ours.topic, ours.payload, ours.packet_id),
                "{}",
                cap.name
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Protocol level and CONNECT

#[test]
fn codec_learns_the_level_from_connect() {
    for (name, level, protocol) in [
        ("MQIsdp", 3, Protocol::V3_1),
        ("MQTT", 4, Protocol::V3_1_1),
        ("MQTT", 5, Protocol::V5),
    ] {
        let props: &[u8] = if level == 5 { &[0] } else { &[] };
        let bytes = frame(0x10, &cat(&[&s(name), &[level, 2, 0, 60], props, &s("c")]));
        let mut codec = Codec::new();
        assert_eq!(codec.protocol(), None);
        let mut buf = BytesMut::from(&bytes[..]);
        let Some(Packet::Connect(c)) = codec.decode(&mut buf, &unlimited()).unwrap() else {
            panic!()
        };
        assert_eq!(c.protocol, protocol);
        assert_eq!(codec.protocol(), Some(protocol));
        assert_round_trip(&Packet::Connect(c), protocol);
    }
}

#[test]
fn first_packet_must_be_connect() {
    for bytes in [&[0xC0u8, 0][..], &[0x30, 3, 0, 1, b'a'], &[0x20, 2, 0, 0]] {
        let e = decode_err(bytes, None);
        assert_eq!(e.kind, ErrorKind::FirstPacketNotConnect);
        assert_eq!(e.reply(), Reply::Close);
    }
    // Refused on the first byte, before the length arrives.
    let mut buf = BytesMut::from(&[0x30u8][..]);
    assert!(decode(&mut buf, None, &unlimited()).is_err());
    // And nothing can be encoded but CONNECT before the level is known.
    let mut out = BytesMut::new();
    assert!(Codec::new().encode(&Packet::PingResp, &mut out).is_err());
}

#[test]
fn unsupported_levels_and_names() {
    let connect =
        |name: &str, level: u8| frame(0x10, &cat(&[&s(name), &[level, 2, 0, 60], &s("c")]));
    for (name, level) in [("MQTT", 3), ("MQTT", 6), ("MQIsdp", 4), ("MQTT", 0x84)] {
        let e = decode_err(&connect(name, level), None);
        assert_eq!(e.kind, ErrorKind::UnsupportedProtocol { level });
        assert_eq!(
            e.reply(),
            Reply::ConnAck {
                protocol: Protocol::V3_1_1,
                code: ReasonCode::V3_UNACCEPTABLE_PROTOCOL_VERSION
            }
        );
        // That CONNACK: 20 02 00 01.
        let mut out = BytesMut::new();
        encode(
            &Packet::ConnAck(Box::new(ConnAck {
                code: ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                ..ConnAck::default()
            })),
            Protocol::V3_1_1,
            &mut out,
        )
        .unwrap();
        assert_eq!(&out[..], [0x20, 2, 0, 1]);
    }
    let e = decode_err(&connect("MQTX", 4), None);
    assert_eq!(e.kind, ErrorKind::InvalidProtocolName);
    assert_eq!(e.reply(), Reply::Close);
}

#[test]
fn connect_flags_are_validated() {
    let with_flags = |level: u8, flags: u8, tail: &[u8]| {
        let name = if level == 3 { "MQIsdp" } else { "MQTT" };
        let props: &[u8] = if level == 5 { &[0] } else { &[] };
        frame(
            0x10,
            &cat(&[&s(name), &[level, flags, 0, 60], props, &s("c"), tail]),
        )
    };
    // Reserved bit.
    assert_eq!(
        decode_err(&with_flags(4, 0b11, &[]), None).kind,
        ErrorKind::InvalidConnectFlags { flags: 0b11 }
    );
    // Will QoS / retain without the will flag.
    assert!(matches!(
        decode_err(&with_flags(4, 0b0000_1010, &[]), None).kind,
        ErrorKind::InvalidConnectFlags { .. }
    ));
    assert!(matches!(
        decode_err(&with_flags(4, 0b0010_0010, &[]), None).kind,
        ErrorKind::InvalidConnectFlags { .. }
    ));
    // Will QoS 3.
    let will = cat(&[&s("w"), &s("p")]);
    assert_eq!(
        decode_err(&with_flags(4, 0b0001_1110, &will), None).kind,
        ErrorKind::InvalidQoS { qos: 3 }
    );
    // Will topic with a wildcard.
    let bad_will = cat(&[&s("w/#"), &s("p")]);
    assert_eq!(
        decode_err(&with_flags(4, 0b0000_0110, &bad_will), None).kind,
        ErrorKind::InvalidTopicName
    );
    // Password without user name: refused on 3.1.1, allowed on 5.
    let e = decode_err(&with_flags(4, 0b0100_0010, &s("pw")), None);
    assert_eq!(e.kind, ErrorKind::PasswordWithoutUsername);
    assert_eq!(e.protocol, Some(Protocol::V3_1_1));
    assert_eq!(e.reply(), Reply::Close);
    let Packet::Connect(c) = decode_one(&with_flags(5, 0b0100_0010, &s("pw")), None).unwrap()
    else {
        panic!()
    };
    assert_eq!((c.username, c.password), (None, Some(Bytes::from("pw"))));
    // An empty user name is a user name.
    let Packet::Connect(c) = decode_one(&with_flags(4, 0b1000_0010, &s("")), None).unwrap() else {
        panic!()
    };
    assert_eq!(c.username.as_deref(), Some(""));
    // MQTT 3.1 may set the flags and leave the fields out (Mosquitto tolerates it).
    let Packet::Connect(c) = decode_one(&with_flags(3, 0b1100_0010, &[]), None).unwrap() else {
        panic!()
    };
    assert_eq!((c.username, c.password), (None, None));
    assert_eq!(
        decode_err(&with_flags(4, 0b1100_0010, &[]), None).kind,
        ErrorKind::Truncated
    );
    // Trailing bytes after the last field.
    assert_eq!(
        decode_err(&with_flags(4, 0b10, &[0]), None).kind,
        ErrorKind::TrailingBytes
    );
}

#[test]
fn bad_v5_connect_gets_a_v5_connack() {
    // Authentication Data without a method.
    let bytes = frame(
        0x10,
        &cat(&[&s("MQTT"), &[5, 2, 0, 60, 4, 0x16, 0, 1, 9], &s("c")]),
    );
    let e = decode_err(&bytes, None);
    assert_eq!(e.kind, ErrorKind::AuthDataWithoutMethod);
    assert_eq!(
        e.reply(),
        Reply::ConnAck {
            protocol: Protocol::V5,
            code: ReasonCode::PROTOCOL_ERROR
        }
    );
    // A property CONNECT may not carry (Topic Alias).
    let bytes = frame(
        0x10,
        &cat(&[&s("MQTT"), &[5, 2, 0, 60, 3, 0x23, 0, 1], &s("c")]),
    );
    let e = decode_err(&bytes, None);
    assert_eq!(e.kind, ErrorKind::InvalidProperty { id: 0x23 });
    assert_eq!(
        e.reply(),
        Reply::ConnAck {
            protocol: Protocol::V5,
            code: ReasonCode::MALFORMED_PACKET
        }
    );
    // Properties longer than the packet.
    let bytes = frame(
        0x10,
        &cat(&[&s("MQTT"), &[5, 2, 0, 60, 100, 0x11, 0, 0, 0, 1], &s("c")]),
    );
    assert_eq!(decode_err(&bytes, None).kind, ErrorKind::Truncated);
}

// ---------------------------------------------------------------------------------------------
// Fixed header, packet ids, QoS, UTF-8

#[test]
fn reserved_flag_bits_of_every_packet_type() {
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        for packet_type in 2..=15u8 {
            if packet_type == PUBLISH || (packet_type == AUTH && !protocol.is_v5()) {
                continue;
            }
            let required = match packet_type {
                PUBREL | SUBSCRIBE | UNSUBSCRIBE => 0b0010,
                _ => 0,
            };
            for flags in 0..16u8 {
                if flags == required {
                    continue;
                }
                let e = decode_err(&[packet_type << 4 | flags, 0], Some(protocol));
                assert_eq!(e.kind, ErrorKind::ReservedFlags { flags }, "{packet_type}");
            }
        }
    }
    // Packet type 0 and, before MQTT 5, 15.
    assert_eq!(kind(&[0x00, 0], Protocol::V5), ErrorKind::UnknownPacketType);
    assert_eq!(
        kind(&[0xF0, 0], Protocol::V3_1_1),
        ErrorKind::UnknownPacketType
    );
}

#[test]
fn publish_qos_3_and_dup_on_qos_0() {
    let body = cat(&[&s("a"), &[0, 1], b"p"]);
    assert_eq!(
        kind(&frame(0x36, &body), Protocol::V3_1_1),
        ErrorKind::InvalidQoS { qos: 3 }
    );
    assert_eq!(
        kind(&frame(0x38, &cat(&[&s("a"), b"p"])), Protocol::V3_1_1),
        ErrorKind::DupOnQoS0
    );
    // DUP on QoS 1 is fine.
    let Packet::Publish(p) = decode_one(&frame(0x3A, &body), Some(Protocol::V3_1_1)).unwrap()
    else {
        panic!()
    };
    assert!(p.dup && p.qos == QoS::AtLeastOnce);
}

#[test]
fn packet_id_zero_is_refused_where_one_is_required() {
    let p = Protocol::V5;
    let cases: Vec<Vec<u8>> = vec![
        frame(0x32, &cat(&[&s("a"), &[0, 0, 0]])),
        frame(0x40, &[0, 0]),
        frame(0x50, &[0, 0]),
        frame(0x62, &[0, 0]),
        frame(0x70, &[0, 0]),
        frame(0x82, &cat(&[&[0, 0, 0], &s("a"), &[0]])),
        frame(0x90, &[0, 0, 0, 0]),
        frame(0xA2, &cat(&[&[0, 0, 0], &s("a")])),
        frame(0xB0, &[0, 0, 0, 0]),
    ];
    for bytes in cases {
        let e = decode_err(&bytes, Some(p));
        assert_eq!(e.kind, ErrorKind::PacketIdZero, "{}", hexs(&bytes));
        assert_eq!(
            e.reply(),
            Reply::Disconnect {
                reason: ReasonCode::PROTOCOL_ERROR
            }
        );
    }
    // And on encode.
    let mut out = BytesMut::new();
    let publish = Packet::Publish(Publish {
        topic: "a".into(),
        qos: QoS::AtLeastOnce,
        ..Publish::default()
    });
    assert_eq!(
        encode(&publish, p, &mut out).map_err(|e| e.kind),
        Err(ErrorKind::PacketIdZero)
    );
    assert!(out.is_empty(), "a failed encode leaves nothing behind");
}

#[test]
fn strings_must_be_well_formed_utf8_without_nul() {
    for bad in [
        &[0xC0u8, 0xAF][..],       // overlong '/'
        &[0xED, 0xA0, 0x80],       // UTF-16 surrogate U+D800
        &[0xFF],                   // never valid
        &[b'a', 0xE2, 0x82],       // truncated sequence
        &[b'a', 0x00, b'b'],       // U+0000
        &[0xF4, 0x90, 0x80, 0x80], // over U+10FFFF
    ] {
        let mut topic = (bad.len() as u16).to_be_bytes().to_vec();
        topic.extend_from_slice(bad);
        let bytes = frame(0x30, &cat(&[&topic, &[0], b"p"]));
        let e = decode_err(&bytes, Some(Protocol::V5));
        assert_eq!(e.kind, ErrorKind::InvalidUtf8, "{}", hexs(bad));
        assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
    }
    // Also in a user property, a client id, a filter.
    let user = frame(
        0x30,
        &cat(&[&s("a"), &[7, 0x26, 0, 1, 0xFF, 0, 1, b'v'], b"p"]),
    );
    assert_eq!(kind(&user, Protocol::V5), ErrorKind::InvalidUtf8);
    let filter = frame(0x82, &[0, 1, 0, 1, 0xFF, 0]);
    assert_eq!(kind(&filter, Protocol::V3_1_1), ErrorKind::InvalidUtf8);
    // Non-ASCII that is valid passes.
    let ok = frame(0x30, &cat(&[&s("капуста/温度"), &[0], b"p"]));
    assert!(decode_one(&ok, Some(Protocol::V5)).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Topics in packets

#[test]
fn publish_topics_are_validated() {
    for topic in ["a/+", "#", "a/#", "+", "a/b+"] {
        let bytes = frame(0x30, &cat(&[&s(topic), &[0], b"p"]));
        let e = decode_err(&bytes, Some(Protocol::V5));
        assert_eq!(e.kind, ErrorKind::InvalidTopicName, "{topic}");
    }
    // Empty topic: a protocol error without an alias on v5, malformed on 3.1.1; fine with one.
    let e = decode_err(
        &frame(0x30, &cat(&[&s(""), &[0], b"p"])),
        Some(Protocol::V5),
    );
    assert_eq!(
        (e.kind, e.reason_code()),
        (ErrorKind::EmptyTopic, ReasonCode::PROTOCOL_ERROR)
    );
    assert_eq!(
        kind(&frame(0x30, &cat(&[&s(""), b"p"])), Protocol::V3_1_1),
        ErrorKind::EmptyTopic
    );
    let aliased = frame(0x30, &cat(&[&s(""), &[3, 0x23, 0, 7], b"p"]));
    let Packet::Publish(p) = decode_one(&aliased, Some(Protocol::V5)).unwrap() else {
        panic!()
    };
    assert_eq!((p.topic.as_str(), p.properties.topic_alias), ("", Some(7)));
    // Topic alias 0 -> 0x94.
    let zero = frame(0x30, &cat(&[&s("a"), &[3, 0x23, 0, 0], b"p"]));
    assert_eq!(
        decode_err(&zero, Some(Protocol::V5)).reason_code(),
        ReasonCode::TOPIC_ALIAS_INVALID
    );
    // A response topic with a wildcard.
    let rt = frame(0x30, &cat(&[&s("a"), &[6, 0x08, 0, 3], b"r/#", b"p"]));
    assert_eq!(
        kind(&rt, Protocol::V5),
        ErrorKind::InvalidPropertyValue { id: 0x08 }
    );
    // Subscription identifier 0.
    let sid = frame(0x30, &cat(&[&s("a"), &[2, 0x0B, 0], b"p"]));
    assert_eq!(
        kind(&sid, Protocol::V5),
        ErrorKind::InvalidPropertyValue { id: 0x0B }
    );
}

#[test]
fn subscribe_filters_and_options_are_validated() {
    let sub = |protocol: Protocol, filter: &str, options: u8| {
        let props: &[u8] = if protocol.is_v5() { &[0] } else { &[] };
        let bytes = frame(0x82, &cat(&[&[0, 1], props, &s(filter), &[options]]));
        decode_one(&bytes, Some(protocol))
    };
    for filter in [
        "a/#/b",
        "a#",
        "a/b#",
        "+a",
        "a/+b/c",
        "",
        "$share/g",
        "$share//a",
        "$share/g+/a",
        "$share/g/",
    ] {
        assert_eq!(
            sub(Protocol::V5, filter, 0).err().map(|e| e.kind),
            Some(ErrorKind::InvalidTopicFilter),
            "{filter:?}"
        );
    }
    for filter in [
        "#",
        "+",
        "a/+/b/#",
        "/",
        "//",
        "+/+",
        "$SYS/#",
        "$share/g/a/#",
        "a b/ c",
    ] {
        assert!(sub(Protocol::V5, filter, 1).is_ok(), "{filter:?}");
    }
    // Reserved option bits.
    assert_eq!(
        sub(Protocol::V5, "a", 0b0100_0000).err().map(|e| e.kind),
        Some(ErrorKind::InvalidSubscriptionOptions {
            options: 0b0100_0000
        })
    );
    assert_eq!(
        sub(Protocol::V3_1_1, "a", 0b0000_0100)
            .err()
            .map(|e| e.kind),
        Some(ErrorKind::InvalidSubscriptionOptions { options: 4 })
    );
    assert_eq!(
        sub(Protocol::V5, "a", 3).err().map(|e| e.kind),
        Some(ErrorKind::InvalidQoS { qos: 3 })
    );
    assert_eq!(
        sub(Protocol::V5, "a", 0b0011_0000).err().map(|e| e.kind),
        Some(ErrorKind::InvalidRetainHandling)
    );
    // No Local on a shared subscription.
    assert_eq!(
        sub(Protocol::V5, "$share/g/a", 0b0100)
            .err()
            .map(|e| e.kind),
        Some(ErrorKind::SharedSubscriptionNoLocal)
    );
    // No filter at all.
    let empty = frame(0x82, &[0, 1, 0]);
    assert_eq!(kind(&empty, Protocol::V5), ErrorKind::NoTopicFilters);
    let empty = frame(0xA2, &[0, 1]);
    assert_eq!(kind(&empty, Protocol::V3_1_1), ErrorKind::NoTopicFilters);
    // Two subscription identifiers in a SUBSCRIBE.
    let two = frame(0x82, &cat(&[&[0, 1, 4, 0x0B, 1, 0x0B, 2], &s("a"), &[0]]));
    assert_eq!(
        kind(&two, Protocol::V5),
        ErrorKind::DuplicateProperty { id: 0x0B }
    );
}

// ---------------------------------------------------------------------------------------------
// Acknowledgements, DISCONNECT, AUTH

#[test]
fn v5_acks_in_their_three_lengths() {
    for (bytes, reason, props) in [
        (vec![0x40, 2, 0, 1], 0x00, false),
        (vec![0x40, 3, 0, 1, 0x10], 0x10, false),
        (vec![0x40, 4, 0, 1, 0x10, 0], 0x10, false),
        (cat(&[&[0x40, 8, 0, 1, 0x80, 4, 0x1F], &s("x")]), 0x80, true),
    ] {
        let Packet::PubAck(a) = decode_one(&bytes, Some(Protocol::V5)).unwrap() else {
            panic!()
        };
        assert_eq!((a.reason.0, !a.properties.is_empty()), (reason, props));
        assert_round_trip(&Packet::PubAck(a), Protocol::V5);
    }
    // Canonical forms: success without properties is 2 bytes, a reason without properties 3.
    let ack = |reason| {
        Packet::PubAck(Ack {
            packet_id: 1,
            reason: ReasonCode(reason),
            properties: AckProperties::default(),
        })
    };
    assert_eq!(encode_vec(&ack(0), Protocol::V5), [0x40, 2, 0, 1]);
    assert_eq!(encode_vec(&ack(0x10), Protocol::V5), [0x40, 3, 0, 1, 0x10]);
    // 3.1.1 drops the reason code.
    assert_eq!(encode_vec(&ack(0x10), Protocol::V3_1_1), [0x40, 2, 0, 1]);
    // Reason codes each packet may not carry.
    assert_eq!(
        kind(&[0x40, 3, 0, 1, 0x92], Protocol::V5),
        ErrorKind::InvalidReasonCode { code: 0x92 }
    );
    assert_eq!(
        kind(&[0x62, 3, 0, 1, 0x10], Protocol::V5),
        ErrorKind::InvalidReasonCode { code: 0x10 }
    );
    assert_eq!(
        kind(&[0xE0, 1, 0x10], Protocol::V5),
        ErrorKind::InvalidReasonCode { code: 0x10 }
    );
    assert_eq!(
        kind(&[0xF0, 1, 0x80], Protocol::V5),
        ErrorKind::InvalidReasonCode { code: 0x80 }
    );
    // A property an ack may not carry.
    assert_eq!(
        kind(&[0x40, 6, 0, 1, 0, 2, 0x23, 1], Protocol::V5),
        ErrorKind::Truncated
    );
    assert_eq!(
        kind(&[0x40, 7, 0, 1, 0, 3, 0x23, 0, 1], Protocol::V5),
        ErrorKind::InvalidProperty { id: 0x23 }
    );
}

#[test]
fn disconnect_and_auth_encode_minimally() {
    let normal = Packet::Disconnect(Disconnect::default());
    assert_eq!(encode_vec(&normal, Protocol::V5), [0xE0, 0]);
    assert_eq!(encode_vec(&normal, Protocol::V3_1_1), [0xE0, 0]);
    let taken = Packet::Disconnect(Disconnect {
        reason: ReasonCode::SESSION_TAKEN_OVER,
        ..Disconnect::default()
    });
    assert_eq!(encode_vec(&taken, Protocol::V5), [0xE0, 1, 0x8E]);
    assert_eq!(encode_vec(&taken, Protocol::V3_1_1), [0xE0, 0]);
    // 3.1.1 DISCONNECT has no payload.
    assert_eq!(
        kind(&[0xE0, 1, 0], Protocol::V3_1_1),
        ErrorKind::TrailingBytes
    );
    let auth = Packet::Auth(Auth {
        reason: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: AuthProperties {
            authentication_method: Some("SCRAM-SHA-256".into()),
            authentication_data: Some(Bytes::from_static(b"c=biws")),
            reason_string: None,
            user_properties: vec![("a".into(), "b".into())],
        },
    });
    assert_round_trip(&auth, Protocol::V5);
    let mut out = BytesMut::new();
    assert_eq!(
        encode(&auth, Protocol::V3_1_1, &mut out).map_err(|e| e.kind),
        Err(ErrorKind::NotInProtocol)
    );
}

#[test]
fn v3_encoding_drops_what_it_cannot_carry() {
    let connack = |code: ReasonCode| {
        Packet::ConnAck(Box::new(ConnAck {
            session_present: true,
            code,
            properties: ConnAckProperties {
                assigned_client_identifier: Some("x".into()),
                ..ConnAckProperties::default()
            },
        }))
    };
    for (code, v3) in [
        (ReasonCode::SUCCESS, 0),
        (ReasonCode::UNSUPPORTED_PROTOCOL_VERSION, 1),
        (ReasonCode::CLIENT_IDENTIFIER_NOT_VALID, 2),
        (ReasonCode::SERVER_UNAVAILABLE, 3),
        (ReasonCode::SERVER_BUSY, 3),
        (ReasonCode::BAD_USER_NAME_OR_PASSWORD, 4),
        (ReasonCode::NOT_AUTHORIZED, 5),
        (ReasonCode::BANNED, 5),
        (ReasonCode::V3_NOT_AUTHORIZED, 5),
    ] {
        assert_eq!(
            encode_vec(&connack(code), Protocol::V3_1_1),
            [0x20, 2, 1, v3]
        );
        // MQTT 3.1 has no session present flag.
        assert_eq!(encode_vec(&connack(code), Protocol::V3_1), [0x20, 2, 0, v3]);
    }
    // v3 return codes given to a v5 connection become their v5 codes.
    let Packet::ConnAck(back) = decode_one(
        &encode_vec(
            &connack(ReasonCode::V3_BAD_USER_NAME_OR_PASSWORD),
            Protocol::V5,
        ),
        Some(Protocol::V5),
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(back.code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    let suback = Packet::SubAck(SubAck {
        packet_id: 9,
        reasons: vec![
            ReasonCode::GRANTED_QOS_1,
            ReasonCode::NOT_AUTHORIZED,
            ReasonCode::TOPIC_FILTER_INVALID,
        ],
        properties: AckProperties {
            reason_string: Some("no".into()),
            user_properties: vec![],
        },
    });
    assert_eq!(
        encode_vec(&suback, Protocol::V3_1_1),
        [0x90, 5, 0, 9, 1, 0x80, 0x80]
    );
    assert_round_trip(&suback, Protocol::V5);
    let unsuback = Packet::UnsubAck(UnsubAck {
        packet_id: 3,
        reasons: vec![ReasonCode::SUCCESS],
        properties: AckProperties::default(),
    });
    assert_eq!(encode_vec(&unsuback, Protocol::V3_1_1), [0xB0, 2, 0, 3]);
    assert_eq!(encode_vec(&unsuback, Protocol::V5), [0xB0, 4, 0, 3, 0, 0]);
}

#[test]
fn full_v5_packets_round_trip() {
    let packets = vec![
        Packet::Connect(Box::new(Connect {
            protocol: Protocol::V5,
            clean_start: false,
            keep_alive: 0,
            client_id: String::new(),
            will: Some(Will {
                topic: "w".into(),
                payload: Bytes::from_static(&[0, 1, 2]),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: WillProperties {
                    will_delay_interval: Some(0),
                    payload_format_utf8: Some(false),
                    message_expiry_interval: Some(u32::MAX),
                    content_type: Some("c".into()),
                    response_topic: Some("r".into()),
                    correlation_data: Some(Bytes::new()),
                    user_properties: vec![("".into(), "".into())],
                },
            }),
            username: Some(String::new()),
            password: Some(Bytes::new()),
            properties: ConnectProperties {
                session_expiry_interval: Some(u32::MAX),
                receive_maximum: Some(1),
                maximum_packet_size: Some(1),
                topic_alias_maximum: Some(0),
                request_response_information: Some(true),
                request_problem_information: Some(false),
                user_properties: vec![("k".into(), "v".into())],
                authentication_method: Some("m".into()),
                authentication_data: Some(Bytes::from_static(b"d")),
            },
        })),
        Packet::ConnAck(Box::new(ConnAck {
            session_present: true,
            code: ReasonCode::SUCCESS,
            properties: ConnAckProperties {
                session_expiry_interval: Some(1),
                receive_maximum: Some(2),
                maximum_qos: Some(QoS::AtLeastOnce),
                retain_available: Some(false),
                maximum_packet_size: Some(3),
                assigned_client_identifier: Some("auto-1".into()),
                topic_alias_maximum: Some(4),
                reason_string: Some("r".into()),
                user_properties: vec![("a".into(), "b".into())],
                wildcard_subscription_available: Some(true),
                subscription_identifiers_available: Some(true),
                shared_subscription_available: Some(true),
                server_keep_alive: Some(5),
                response_information: Some("ri".into()),
                server_reference: Some("sr".into()),
                authentication_method: Some("am".into()),
                authentication_data: Some(Bytes::from_static(b"ad")),
            },
        })),
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: "a/b".into(),
            packet_id: 65535,
            properties: PublishProperties {
                subscription_identifiers: vec![1, 127, 128, 16_383, 16_384, 268_435_455],
                ..PublishProperties::default()
            },
            payload: Bytes::from(vec![7u8; 300]),
        }),
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            subscriptions: vec![Subscription {
                filter: "$share/g/a/+".into(),
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: false,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            }],
            properties: SubscribeProperties {
                subscription_identifier: Some(268_435_455),
                user_properties: vec![],
            },
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            filters: vec!["a/#".into(), "b".into()],
            user_properties: vec![("x".into(), "y".into())],
        }),
        Packet::Disconnect(Disconnect {
            reason: ReasonCode::SERVER_MOVED,
            properties: DisconnectProperties {
                session_expiry_interval: Some(9),
                reason_string: Some("moved".into()),
                user_properties: vec![],
                server_reference: Some("other:1883".into()),
            },
        }),
        Packet::PingReq,
        Packet::PingResp,
    ];
    for packet in &packets {
        assert_round_trip(packet, Protocol::V5);
    }
}

// ---------------------------------------------------------------------------------------------
// Sizes and never panicking

#[test]
fn oversized_remaining_length_is_refused_before_the_payload() {
    let limits = Limits {
        packet_bytes_max: 1024,
    };
    // Only the fixed header has arrived: refused already.
    let mut buf = BytesMut::from(&[0x30u8, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    let e = decode(&mut buf, Some(Protocol::V5), &limits).unwrap_err();
    assert_eq!(
        e.kind,
        ErrorKind::PacketTooLarge {
            size: 268_435_455,
            max: 1024
        }
    );
    assert_eq!(
        e.reply(),
        Reply::Disconnect {
            reason: ReasonCode::PACKET_TOO_LARGE
        }
    );
    // The limit counts the fixed header: 1022 bytes of remaining length make 1025.
    let big = frame(0x30, &cat(&[&s("a"), &vec![0u8; 1019]]));
    assert_eq!(big.len(), 1025);
    let mut buf = BytesMut::from(&big[..]);
    assert!(matches!(
        decode(&mut buf, Some(Protocol::V3_1_1), &limits).map_err(|e| e.kind),
        Err(ErrorKind::PacketTooLarge { size: 1025, .. })
    ));
    let mut buf = BytesMut::from(&big[..1024 - 1]);
    let fits = frame(0x30, &cat(&[&s("a"), &vec![0u8; 1018]]));
    assert_eq!(fits.len(), 1024);
    let mut ok = BytesMut::from(&fits[..]);
    assert!(decode(&mut ok, Some(Protocol::V3_1_1), &limits)
        .unwrap()
        .is_some());
    // A remaining length of 5 bytes is malformed.
    buf.clear();
    buf.extend_from_slice(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
    assert_eq!(
        decode(&mut buf, Some(Protocol::V5), &unlimited()).map_err(|e| e.kind),
        Err(ErrorKind::MalformedRemainingLength)
    );
    // Waiting for a big packet reserves at most 1 MiB.
    let mut buf = BytesMut::from(&[0x30u8, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    assert!(decode(&mut buf, Some(Protocol::V5), &unlimited())
        .unwrap()
        .is_none());
    assert!(buf.capacity() <= (1 << 20) + 5);
}

#[test]
fn every_truncation_of_every_captured_packet_asks_for_more() {
    for cap in captures() {
        for (_, bytes, packet, protocol) in decode_capture(&cap) {
            let start = match packet {
                Packet::Connect(_) => None,
                _ => Some(protocol),
            };
            for cut in 0..bytes.len() {
                let mut buf = BytesMut::from(&bytes[..cut]);
                assert_eq!(
                    decode(&mut buf, start, &unlimited()).ok(),
                    Some(None),
                    "{}: cut at {cut} of {}",
                    cap.name,
                    hexs(&bytes)
                );
                assert_eq!(buf.len(), cut);
            }
        }
    }
}

/// Cuts each captured packet's body at every point and fixes up the remaining length, so the
/// frame is whole but its content ends early: an error or a shorter packet, never a panic.
#[test]
fn every_body_truncation_inside_a_whole_frame_is_safe() {
    for cap in captures() {
        for (_, bytes, packet, protocol) in decode_capture(&cap) {
            let start = match packet {
                Packet::Connect(_) => None,
                _ => Some(protocol),
            };
            let header_len = 1 + bytes[1..].iter().position(|b| b & 0x80 == 0).unwrap() + 1;
            let body = &bytes[header_len..];
            for cut in 0..body.len() {
                let short = frame(bytes[0], &body[..cut]);
                fuzzing::check(&short, 0, 0, start);
            }
        }
    }
}

/// A small deterministic generator (xorshift), so the garbage tests are repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn random_garbage_never_panics() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..20_000 {
        let len = rng.below(64);
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        fuzzing::check_input(&data);
    }
}

#[test]
fn mutated_captured_packets_never_panic() {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let packets: Vec<(Vec<u8>, Option<Protocol>)> = captures()
        .iter()
        .flat_map(|cap| {
            decode_capture(cap)
                .into_iter()
                .map(|(_, bytes, packet, protocol)| match packet {
                    Packet::Connect(_) => (bytes, None),
                    _ => (bytes, Some(protocol)),
                })
        })
        .collect();
    for _ in 0..30_000 {
        let (bytes, protocol) = &packets[rng.below(packets.len())];
        let mut data = bytes.clone();
        for _ in 0..1 + rng.below(3) {
            let i = rng.below(data.len());
            match rng.below(3) {
                0 => data[i] = rng.next() as u8,
                1 => data[i] ^= 1 << rng.below(8),
                _ => {
                    data.remove(i);
                }
            }
            if data.is_empty() {
                break;
            }
        }
        let split = rng.below(data.len() + 1);
        let limit = [0, 64, 65_536][rng.below(3)];
        fuzzing::check(&data, split, limit, *protocol);
    }
}

// ---------------------------------------------------------------------------------------------
// Error -> reply table (STYLE 2.11: the mapping is a table a test walks)

#[test]
fn error_reply_table() {
    use ErrorKind::*;
    let table: &[(ErrorKind, u8)] = &[
        (PacketTooLarge { size: 2, max: 1 }, 0x95),
        (MalformedRemainingLength, 0x81),
        (MalformedVarInt, 0x81),
        (UnknownPacketType, 0x81),
        (ReservedFlags { flags: 1 }, 0x81),
        (FirstPacketNotConnect, 0x82),
        (UnsupportedProtocol { level: 6 }, 0x84),
        (InvalidProtocolName, 0x84),
        (InvalidConnectFlags { flags: 1 }, 0x81),
        (PasswordWithoutUsername, 0x81),
        (Truncated, 0x81),
        (TrailingBytes, 0x81),
        (InvalidUtf8, 0x81),
        (InvalidQoS { qos: 3 }, 0x81),
        (DupOnQoS0, 0x81),
        (PacketIdZero, 0x82),
        (InvalidReasonCode { code: 0x42 }, 0x82),
        (InvalidProperty { id: 0x42 }, 0x81),
        (DuplicateProperty { id: 1 }, 0x82),
        (InvalidPropertyValue { id: 1 }, 0x82),
        (AuthDataWithoutMethod, 0x82),
        (TopicAliasZero, 0x94),
        (InvalidTopicName, 0x82),
        (EmptyTopic, 0x82),
        (InvalidTopicFilter, 0x81),
        (NoTopicFilters, 0x82),
        (InvalidSubscriptionOptions { options: 0xC0 }, 0x81),
        (InvalidRetainHandling, 0x82),
        (SharedSubscriptionNoLocal, 0x82),
        (FieldTooLong, 0x83),
        (NotInProtocol, 0x83),
    ];
    for &(kind, code) in table {
        let v5 = Error::new(kind, PUBLISH, Some(Protocol::V5));
        assert_eq!(v5.reason_code(), ReasonCode(code), "{kind:?}");
        let expected = if kind == FirstPacketNotConnect {
            Reply::Close
        } else {
            Reply::Disconnect {
                reason: ReasonCode(code),
            }
        };
        assert_eq!(v5.reply(), expected, "{kind:?}");
        assert!(!v5.to_string().is_empty());
        // 3.1.x after CONNECT: always a plain close.
        let v3 = Error::new(kind, PUBLISH, Some(Protocol::V3_1_1));
        assert_eq!(v3.reply(), Reply::Close, "{kind:?}");
        // During a v5 CONNECT: a v5 CONNACK, but unsupported levels and names are answered
        // in a form any level can read (or not at all).
        let connect = Error::new(kind, CONNECT, Some(Protocol::V5));
        let expected = match kind {
            FirstPacketNotConnect | InvalidProtocolName => Reply::Close,
            UnsupportedProtocol { .. } => Reply::ConnAck {
                protocol: Protocol::V3_1_1,
                code: ReasonCode(1),
            },
            _ => Reply::ConnAck {
                protocol: Protocol::V5,
                code: ReasonCode(code),
            },
        };
        assert_eq!(connect.reply(), expected, "{kind:?}");
    }
    // The v5 empty topic is a protocol error; on 3.1.x it is malformed.
    assert_eq!(
        Error::new(EmptyTopic, PUBLISH, Some(Protocol::V3_1_1)).reason_code(),
        ReasonCode::MALFORMED_PACKET
    );
}

// ---------------------------------------------------------------------------------------------
// Topic validation and mapping

#[test]
fn topic_name_and_filter_validation_table() {
    for (topic, ok) in [
        ("a", true),
        ("a/b", true),
        ("/", true),
        ("//a//", true),
        ("$SYS/broker", true),
        ("a b", true),
        ("", false),
        ("a/+", false),
        ("#", false),
        ("a\0", false),
    ] {
        assert_eq!(valid_topic_name(topic), ok, "{topic:?}");
    }
    for (filter, ok) in [
        ("#", true),
        ("+", true),
        ("a/#", true),
        ("a/+/b", true),
        ("+/+/#", true),
        ("/#", true),
        ("$share/g/#", true),
        ("$share/g/a/+/b", true),
        ("", false),
        ("a#", false),
        ("a/#/b", false),
        ("#/a", false),
        ("a/b+", false),
        ("++", false),
        ("$share/g", false),
        ("$share/", false),
        ("$share//a", false),
        ("$share/#/a", false),
        ("$share/g/", false),
        ("$share/g/a#", false),
    ] {
        assert_eq!(valid_topic_filter(filter), ok, "{filter:?}");
    }
    assert_eq!(split_shared("$share/g/a/b"), Some(("g", "a/b")));
    assert_eq!(split_shared("a/b"), None);
    assert!(is_dollar_topic("$SYS/x") && !is_dollar_topic("a/$x"));
    assert!(starts_with_wildcard("#") && starts_with_wildcard("+/a"));
    assert!(!starts_with_wildcard("a/#") && !starts_with_wildcard("$SYS/#"));
}

#[test]
fn topic_and_routing_key_mapping_both_ways() {
    // (MQTT topic, AMQP routing key), both directions.
    for (topic, key) in [
        ("a", "a"),
        ("a/b", "a.b"),
        ("a/b/c", "a.b.c"),
        ("/a", ".a"),
        ("a/", "a."),
        ("a//b", "a..b"),
        ("/", "."),
        ("spBv1.0/group/NBIRTH/node", "spBv1/0.group.NBIRTH.node"),
        ("v1.2/data", "v1/2.data"),
        ("a.b", "a/b"),
        ("$SYS/broker/uptime", "$SYS.broker.uptime"),
        ("a/*/b", "a.*.b"),
        ("temp °C/x", "temp °C.x"),
    ] {
        assert_eq!(topic_to_routing_key(topic), key, "{topic}");
        assert_eq!(routing_key_to_topic(key).as_deref(), Some(topic), "{key}");
    }
    // Nothing to swap: borrowed, not allocated.
    assert!(matches!(
        topic_to_routing_key("plain"),
        std::borrow::Cow::Borrowed(_)
    ));
    // AMQP keys that are no MQTT topic are not delivered to MQTT.
    for key in ["", "a.#", "a.+.b", "#", "a\0"] {
        assert_eq!(routing_key_to_topic(key), None, "{key:?}");
    }
}

#[test]
fn filter_and_binding_key_mapping_both_ways() {
    // (MQTT filter, AMQP binding key), both directions.
    for (filter, key) in [
        ("a/b", "a.b"),
        ("a/+", "a.*"),
        ("+/+", "*.*"),
        ("a/#", "a.#"),
        ("#", "#"),
        ("+", "*"),
        ("+/a/#", "*.a.#"),
        ("/+", ".*"),
        ("spBv1.0/+/NBIRTH/#", "spBv1/0.*.NBIRTH.#"),
        ("$SYS/#", "$SYS.#"),
    ] {
        assert_eq!(filter_to_binding_key(filter), key, "{filter}");
        assert_eq!(binding_key_to_filter(key).as_deref(), Some(filter), "{key}");
    }
    // A literal '*' level in an MQTT filter becomes the AMQP wildcard (documented).
    assert_eq!(filter_to_binding_key("a/*"), "a.*");
    // AMQP binding keys that are no MQTT filter; a `*` inside a word is a literal in both.
    for key in ["a#", "a.#.b", "a+.b", ""] {
        assert_eq!(binding_key_to_filter(key), None, "{key:?}");
    }
    assert_eq!(binding_key_to_filter("a.b*").as_deref(), Some("a/b*"));
}
