//! The few MQTT 3.1.1 packets the load generator needs, written and parsed by hand.
//!
//! A bench client must cost much less than the broker it measures. `codecs::mqtt` decodes
//! every PUBLISH into an owned packet (topic `String`, payload `Bytes`, properties); here a
//! read buffer is walked in place and a PUBLISH yields a borrowed payload, so a subscriber
//! reads its 16-byte stamp without copying or allocating. The tests check these bytes
//! against `codecs::mqtt`, so both sides agree on the wire format.

use anyhow::{anyhow, bail};
use bytes::{BufMut, BytesMut};

pub(crate) const CONNACK: u8 = 2;
pub(crate) const PUBLISH: u8 = 3;
pub(crate) const PUBACK: u8 = 4;
pub(crate) const SUBACK: u8 = 9;
pub(crate) const PINGRESP: u8 = 13;

/// A packet from the broker, borrowed from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming<'a> {
    /// CONNACK: session present flag, return code (0 = accepted).
    ConnAck {
        session_present: bool,
        code: u8,
    },
    /// SUBACK: packet id, one return code per filter (0x80 = refused).
    SubAck {
        packet_id: u16,
        codes: &'a [u8],
    },
    /// PUBLISH: packet id is 0 at QoS 0.
    Publish {
        qos: u8,
        packet_id: u16,
        topic: &'a [u8],
        payload: &'a [u8],
    },
    PubAck {
        packet_id: u16,
    },
    PingResp,
    /// Anything else: the packet type.
    Other(u8),
}

/// The remaining length's variable-byte encoding.
fn put_len(out: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            break;
        }
    }
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u16(s.len() as u16);
    out.put_slice(s);
}

/// CONNECT, MQTT 3.1.1 (level 4).
pub(crate) fn connect(
    out: &mut BytesMut,
    client_id: &str,
    keep_alive: u16,
    clean_session: bool,
    user: Option<(&str, &str)>,
) {
    let mut flags = 0u8;
    if clean_session {
        flags |= 0x02;
    }
    let mut len = 10 + 2 + client_id.len();
    if let Some((u, p)) = user {
        flags |= 0xC0;
        len += 2 + u.len() + 2 + p.len();
    }
    out.put_u8(0x10);
    put_len(out, len);
    put_str(out, b"MQTT");
    out.put_u8(4);
    out.put_u8(flags);
    out.put_u16(keep_alive);
    put_str(out, client_id.as_bytes());
    if let Some((u, p)) = user {
        put_str(out, u.as_bytes());
        put_str(out, p.as_bytes());
    }
}

/// SUBSCRIBE to one filter.
pub(crate) fn subscribe(out: &mut BytesMut, packet_id: u16, filter: &str, qos: u8) {
    out.put_u8(0x82);
    put_len(out, 2 + 2 + filter.len() + 1);
    out.put_u16(packet_id);
    put_str(out, filter.as_bytes());
    out.put_u8(qos);
}

/// PUBLISH; `packet_id` is ignored at QoS 0.
pub(crate) fn publish(out: &mut BytesMut, topic: &str, qos: u8, packet_id: u16, payload: &[u8]) {
    let id_len = if qos > 0 { 2 } else { 0 };
    out.put_u8(0x30 | (qos << 1));
    put_len(out, 2 + topic.len() + id_len + payload.len());
    put_str(out, topic.as_bytes());
    if qos > 0 {
        out.put_u16(packet_id);
    }
    out.put_slice(payload);
}

pub(crate) fn puback(out: &mut BytesMut, packet_id: u16) {
    out.put_slice(&[0x40, 0x02]);
    out.put_u16(packet_id);
}

pub(crate) fn disconnect(out: &mut BytesMut) {
    out.put_slice(&[0xE0, 0x00]);
}

fn u16_at(b: &[u8], at: usize) -> anyhow::Result<u16> {
    match b.get(at..at + 2) {
        Some(s) => Ok(u16::from_be_bytes([s[0], s[1]])),
        None => bail!("truncated packet"),
    }
}

/// Parses the packet at the front of `buf`: `Ok(None)` if it is not all there yet, else the
/// packet and how many bytes it took.
pub(crate) fn parse(buf: &[u8]) -> anyhow::Result<Option<(Incoming<'_>, usize)>> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7F) << (7 * (i - 1));
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            bail!("malformed remaining length");
        }
    }
    let total = i + len;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[i..total];
    let packet = match first >> 4 {
        CONNACK => {
            if body.len() != 2 {
                bail!("CONNACK of {} bytes", body.len());
            }
            Incoming::ConnAck {
                session_present: body[0] & 1 == 1,
                code: body[1],
            }
        }
        SUBACK => Incoming::SubAck {
            packet_id: u16_at(body, 0)?,
            codes: &body[2..],
        },
        PUBLISH => {
            let qos = (first >> 1) & 3;
            let topic_len = usize::from(u16_at(body, 0)?);
            let mut at = 2 + topic_len;
            let topic = body
                .get(2..at)
                .ok_or_else(|| anyhow!("truncated PUBLISH"))?;
            let mut packet_id = 0;
            if qos > 0 {
                packet_id = u16_at(body, at)?;
                at += 2;
            }
            Incoming::Publish {
                qos,
                packet_id,
                topic,
                payload: &body[at..],
            }
        }
        PUBACK => Incoming::PubAck {
            packet_id: u16_at(body, 0)?,
        },
        PINGRESP => Incoming::PingResp,
        other => Incoming::Other(other),
    };
    Ok(Some((packet, total)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use codecs::mqtt::{Codec, Limits, Packet, Protocol, QoS};

    fn server_decode(bytes: &mut BytesMut, codec: &mut Codec) -> Packet {
        codec
            .decode(bytes, &Limits::default())
            .expect("valid")
            .expect("complete")
    }

    #[test]
    fn client_packets_decode_with_the_codec() {
        let mut codec = Codec::new();
        let mut buf = BytesMut::new();
        connect(&mut buf, "c-1", 60, true, Some(("guest", "guest")));
        subscribe(&mut buf, 7, "bench/0", 1);
        let payload = vec![0xAB; 1024];
        publish(&mut buf, "bench/0", 1, 9, &payload);
        publish(&mut buf, "bench/0", 0, 0, &payload[..16]);
        puback(&mut buf, 300);
        disconnect(&mut buf);

        match server_decode(&mut buf, &mut codec) {
            Packet::Connect(c) => {
                assert_eq!(c.protocol, Protocol::V3_1_1);
                assert_eq!(c.client_id, "c-1");
                assert_eq!(c.keep_alive, 60);
                assert!(c.clean_start);
                assert_eq!(c.username.as_deref(), Some("guest"));
                assert_eq!(c.password.as_deref(), Some(&b"guest"[..]));
            }
            other => panic!("{other:?}"),
        }
        match server_decode(&mut buf, &mut codec) {
            Packet::Subscribe(s) => {
                assert_eq!(s.packet_id, 7);
                assert_eq!(s.subscriptions[0].filter, "bench/0");
                assert_eq!(s.subscriptions[0].options.qos, QoS::AtLeastOnce);
            }
            other => panic!("{other:?}"),
        }
        match server_decode(&mut buf, &mut codec) {
            Packet::Publish(p) => {
                assert_eq!((p.qos, p.packet_id), (QoS::AtLeastOnce, 9));
                assert_eq!(p.topic, "bench/0");
                assert_eq!(p.payload.len(), 1024);
            }
            other => panic!("{other:?}"),
        }
        match server_decode(&mut buf, &mut codec) {
            Packet::Publish(p) => {
                assert_eq!(p.qos, QoS::AtMostOnce);
                assert_eq!(p.payload.len(), 16);
            }
            other => panic!("{other:?}"),
        }
        match server_decode(&mut buf, &mut codec) {
            Packet::PubAck(a) => assert_eq!(a.packet_id, 300),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            server_decode(&mut buf, &mut codec),
            Packet::Disconnect(_)
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn server_packets_parse() {
        let codec = Codec::with_protocol(Protocol::V3_1_1);
        let mut buf = BytesMut::new();
        let publish = codecs::mqtt::Publish {
            qos: QoS::AtLeastOnce,
            packet_id: 513,
            topic: "t/x".into(),
            payload: vec![1u8; 300].into(),
            ..Default::default()
        };
        codec.encode(&Packet::Publish(publish), &mut buf).unwrap();
        codec
            .encode(
                &Packet::PubAck(codecs::mqtt::Ack {
                    packet_id: 77,
                    ..Default::default()
                }),
                &mut buf,
            )
            .unwrap();
        codec.encode(&Packet::PingResp, &mut buf).unwrap();

        let (p, n) = parse(&buf).unwrap().unwrap();
        assert_eq!(
            p,
            Incoming::Publish {
                qos: 1,
                packet_id: 513,
                topic: b"t/x",
                payload: &[1u8; 300][..],
            }
        );
        // A partial packet waits for more bytes.
        assert!(parse(&buf[..n - 1]).unwrap().is_none());
        assert!(parse(&buf[..1]).unwrap().is_none());
        let rest = &buf[n..];
        let (p, m) = parse(rest).unwrap().unwrap();
        assert_eq!(p, Incoming::PubAck { packet_id: 77 });
        let (p, k) = parse(&rest[m..]).unwrap().unwrap();
        assert_eq!(p, Incoming::PingResp);
        assert_eq!(n + m + k, buf.len());
    }

    #[test]
    fn long_remaining_length() {
        let mut buf = BytesMut::new();
        let payload = vec![0u8; 200_000];
        publish(&mut buf, "a", 0, 0, &payload);
        // 3 bytes of remaining length.
        assert_eq!(buf.len(), 1 + 3 + 3 + 200_000);
        match parse(&buf).unwrap().unwrap() {
            (Incoming::Publish { payload, .. }, n) => {
                assert_eq!(payload.len(), 200_000);
                assert_eq!(n, buf.len());
            }
            other => panic!("{other:?}"),
        }
    }
}
