//! MQTT 3.1, 3.1.1 and 5.0.
//!
//! - Framing is mqttbytes' [`mqttbytes::check`]: it reads the fixed header and refuses a
//!   remaining length over our maximum before a payload byte is awaited; we then also check
//!   the whole packet size (fixed header included, the MQTT 5 "Maximum Packet Size").
//! - The first byte is checked (packet type, reserved flag bits, PUBLISH QoS 3) before the
//!   length, so garbage is refused at once.
//! - Packet bodies are decoded and encoded by `read.rs` and `write.rs`, written after
//!   mqttbytes 0.6's `v4`/`v5` modules but reworked: mqttbytes gets too much of MQTT 5 wrong to
//!   be patched from outside (the list is at the top of `read.rs`; each item has a test).
//! - The protocol level is learned from the first CONNECT ([`Codec`]); 3.1 (`MQIsdp`, level 3)
//!   is accepted.
//! - Errors say which MQTT 5 reason code applies, or whether a 3.1.x client gets a CONNACK
//!   return code or just a close ([`Error::reply`]).
//! - [`topic`] validates topic names and filters and maps them to AMQP routing and binding
//!   keys on `amq.topic` (docs/mapping/mqtt.md).

mod error;
mod packet;
mod read;
pub mod topic;
mod write;

#[cfg(test)]
mod fuzz_seeds_test;
#[cfg(test)]
mod tests;

use bytes::{Buf, BytesMut};

pub use error::{Error, ErrorKind, Reply};
pub use packet::*;

/// The largest packet MQTT can frame: a 4-byte remaining length of 268,435,455, plus the 5
/// bytes of fixed header.
pub const PACKET_BYTES_MAX: u32 = 268_435_455 + 5;

/// The most [`decode`] reserves ahead of the bytes received.
const RESERVE_MAX: usize = 1 << 20;

/// Decoder limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest packet accepted, fixed header included (what an MQTT 5 server announces as
    /// Maximum Packet Size). 0 means the protocol's own maximum, [`PACKET_BYTES_MAX`].
    /// The remaining length is held against it as soon as the fixed header is in, so at most
    /// this many bytes plus the 5 of a fixed header are ever buffered for one packet.
    pub packet_bytes_max: u32,
}

impl Limits {
    fn max(&self) -> usize {
        match self.packet_bytes_max {
            0 => PACKET_BYTES_MAX as usize,
            max => max.min(PACKET_BYTES_MAX) as usize,
        }
    }
}

impl Default for Limits {
    /// 16 MiB, RabbitMQ's `mqtt.max_packet_size_authenticated` default.
    fn default() -> Self {
        Limits {
            packet_bytes_max: 16 * 1024 * 1024,
        }
    }
}

/// One connection's codec: expects CONNECT first, then speaks the level it named.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Codec {
    protocol: Option<Protocol>,
}

impl Codec {
    /// A server-side codec: the first packet must be CONNECT.
    pub fn new() -> Codec {
        Codec { protocol: None }
    }

    /// A codec for a connection whose level is already known (a client after its CONNECT).
    pub fn with_protocol(protocol: Protocol) -> Codec {
        Codec {
            protocol: Some(protocol),
        }
    }

    /// The level negotiated by the first CONNECT; `None` before it.
    pub fn protocol(&self) -> Option<Protocol> {
        self.protocol
    }

    /// Decodes one packet (see [`decode`]). The first CONNECT fixes the protocol level; a
    /// second CONNECT is decoded like any packet, and the session treats it as the Protocol
    /// Error it is (MQTT-3.1.0-2).
    pub fn decode(&mut self, buf: &mut BytesMut, limits: &Limits) -> Result<Option<Packet>, Error> {
        let packet = decode(buf, self.protocol, limits)?;
        if let (None, Some(Packet::Connect(connect))) = (self.protocol, &packet) {
            self.protocol = Some(connect.protocol);
        }
        Ok(packet)
    }

    /// Encodes one packet in the negotiated level (see [`encode`]). Before CONNECT only a
    /// CONNECT can be encoded (it names its own level).
    pub fn encode(&self, packet: &Packet, out: &mut BytesMut) -> Result<(), Error> {
        encode(packet, self.encoding_protocol(packet)?, out)
    }

    /// The encoded size of `packet`, to hold it against the peer's Maximum Packet Size.
    pub fn encoded_size(&self, packet: &Packet) -> Result<usize, Error> {
        encoded_size(packet, self.encoding_protocol(packet)?)
    }

    fn encoding_protocol(&self, packet: &Packet) -> Result<Protocol, Error> {
        match (self.protocol, packet) {
            (Some(protocol), _) => Ok(protocol),
            (None, Packet::Connect(c)) => Ok(c.protocol),
            (None, _) => Err(Error::new(
                ErrorKind::NotInProtocol,
                packet.packet_type(),
                None,
            )),
        }
    }
}

/// Decodes one packet from the front of `buf`.
///
/// - `protocol` is the connection's level, `None` before CONNECT: then anything but CONNECT is
///   [`ErrorKind::FirstPacketNotConnect`], refused on its first byte.
/// - `Ok(Some(packet))`: the packet's bytes were removed from `buf`; a PUBLISH payload is split
///   out of it without a copy.
/// - `Ok(None)`: more bytes are needed; `buf` is unchanged, with capacity reserved for the rest
///   of the packet when its size is known (at most 1 MiB ahead).
/// - `Err(e)`: the connection is unusable; answer with [`Error::reply`] and close.
pub fn decode(
    buf: &mut BytesMut,
    protocol: Option<Protocol>,
    limits: &Limits,
) -> Result<Option<Packet>, Error> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    let packet_type = byte1 >> 4;
    let err = |kind| Error::new(kind, packet_type, protocol);
    if protocol.is_none() && packet_type != CONNECT {
        return Err(err(ErrorKind::FirstPacketNotConnect));
    }
    read::check_first_byte(byte1, protocol).map_err(err)?;
    let max = limits.max();
    // mqttbytes compares the remaining length with the limit; the fixed header (2 to 5 bytes)
    // is checked below once the packet is complete.
    let header = match mqttbytes::check(buf.iter(), max) {
        Ok(header) => header,
        Err(mqttbytes::Error::InsufficientBytes(missing)) => {
            buf.reserve(missing.min(RESERVE_MAX));
            return Ok(None);
        }
        Err(mqttbytes::Error::PayloadSizeLimitExceeded(size)) => {
            return Err(err(ErrorKind::PacketTooLarge { size, max }));
        }
        Err(_) => return Err(err(ErrorKind::MalformedRemainingLength)),
    };
    let total = header.frame_length();
    if total > max {
        return Err(err(ErrorKind::PacketTooLarge { size: total, max }));
    }
    // The remaining length took the bytes after the first up to one without the continuation
    // bit (check() has verified there is one within 4 bytes).
    let header_len = 1 + buf
        .iter()
        .skip(1)
        .take(4)
        .position(|b| b & 0x80 == 0)
        .map_or(4, |p| p + 1);
    let mut body = buf.split_to(total).freeze();
    body.advance(header_len.min(body.len()));
    match protocol {
        _ if packet_type == CONNECT => read::connect(body)
            .map(|c| Some(Packet::Connect(Box::new(c))))
            .map_err(|(kind, named)| Error::new(kind, CONNECT, named.or(protocol))),
        Some(protocol) => read::packet(byte1, body, protocol).map(Some).map_err(err),
        None => Err(err(ErrorKind::FirstPacketNotConnect)),
    }
}

/// Appends the wire form of `packet` in `protocol` to `out`; on error `out` is unchanged.
///
/// What an older protocol cannot carry is dropped by rule: on 3.1.x, properties, reason
/// strings and user properties are not written, PUBACK/PUBREC/PUBREL/PUBCOMP/UNSUBACK/
/// DISCONNECT lose their reason codes, SUBACK failure codes become 0x80 and CONNACK MQTT 5
/// reason codes become the nearest 3.1.x return code (0x84 -> 1, 0x85 -> 2, 0x86/0x8C -> 4,
/// 0x87/0x8A -> 5, any other failure -> 3); MQTT 3.1 CONNACK has no session present flag.
/// DUP is written only on QoS 1 and 2. A CONNECT is written in its own `protocol` field's
/// level. Errors: a packet identifier of 0 where one is required, a string or binary field
/// over 65,535 bytes, a packet over 268,435,455 bytes of remaining length, AUTH before v5.
pub fn encode(packet: &Packet, protocol: Protocol, out: &mut BytesMut) -> Result<(), Error> {
    let protocol = match packet {
        Packet::Connect(c) => c.protocol,
        _ => protocol,
    };
    write::encode(packet, protocol, out)
        .map_err(|kind| Error::new(kind, packet.packet_type(), Some(protocol)))
}

/// The number of bytes [`encode`] would append.
pub fn encoded_size(packet: &Packet, protocol: Protocol) -> Result<usize, Error> {
    let protocol = match packet {
        Packet::Connect(c) => c.protocol,
        _ => protocol,
    };
    write::encoded_size(packet, protocol)
        .map_err(|kind| Error::new(kind, packet.packet_type(), Some(protocol)))
}

/// The property the fuzz target and the tests assert. Public only so both run the very same
/// check; not part of the codec's API.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Outcome {
        packets: Vec<Packet>,
        error: Option<Error>,
    }

    /// The fuzz target's input: two control bytes (split point, limit and starting level),
    /// then the stream.
    pub fn check_input(data: &[u8]) {
        let (control, stream) = data.split_at(data.len().min(2));
        let split = control.first().copied().unwrap_or(0) as usize * 7;
        let c = control.get(1).copied().unwrap_or(0);
        let limit = match c % 3 {
            0 => 0,
            1 => 64,
            _ => 65_536,
        };
        let protocol = match (c / 3) % 4 {
            0 => None,
            1 => Some(Protocol::V3_1),
            2 => Some(Protocol::V3_1_1),
            _ => Some(Protocol::V5),
        };
        check(stream, split, limit, protocol);
    }

    /// Decodes `data` whole and split in two at `split` (modulo its length), and panics when a
    /// property fails:
    /// - decode never panics;
    /// - each call consumes bytes, asks for more leaving the buffer as it was, or errors;
    /// - every decoded packet encodes, and decodes back to the same packet;
    /// - both deliveries give the same packets and the same error.
    pub fn check(data: &[u8], split: usize, packet_bytes_max: u32, protocol: Option<Protocol>) {
        let limits = Limits { packet_bytes_max };
        let whole = run(&[data], &limits, protocol);
        let at = if data.is_empty() {
            0
        } else {
            split % data.len()
        };
        let (a, b) = data.split_at(at);
        let parts = run(&[a, b], &limits, protocol);
        assert_eq!(whole, parts, "split at {at} changed the outcome");
    }

    fn run(parts: &[&[u8]], limits: &Limits, protocol: Option<Protocol>) -> Outcome {
        let mut codec = Codec { protocol };
        let mut buf = BytesMut::new();
        let mut packets = Vec::new();
        for part in parts {
            buf.extend_from_slice(part);
            loop {
                let before = buf.clone();
                match codec.decode(&mut buf, limits) {
                    Ok(Some(packet)) => {
                        assert!(buf.len() < before.len(), "a packet consumed nothing");
                        round_trip(&packet, &codec);
                        packets.push(packet);
                    }
                    Ok(None) => {
                        assert_eq!(before, buf, "asking for more bytes changed the buffer");
                        break;
                    }
                    Err(error) => {
                        let _ = error.reply();
                        return Outcome {
                            packets,
                            error: Some(error),
                        };
                    }
                }
            }
        }
        Outcome {
            packets,
            error: None,
        }
    }

    fn round_trip(packet: &Packet, codec: &Codec) {
        let mut enc = BytesMut::new();
        codec
            .encode(packet, &mut enc)
            .unwrap_or_else(|e| panic!("decoded packet does not encode: {e}"));
        assert_eq!(codec.encoded_size(packet).ok(), Some(enc.len()));
        let protocol = match packet {
            Packet::Connect(c) => Some(c.protocol),
            _ => codec.protocol,
        };
        let again = decode(
            &mut enc,
            protocol,
            &Limits {
                packet_bytes_max: 0,
            },
        )
        .unwrap_or_else(|e| panic!("re-encoded packet does not decode: {e}"))
        .expect("re-encoded packet is complete");
        assert!(enc.is_empty(), "re-encoded packet left bytes behind");
        assert_eq!(&again, packet, "encode/decode changed the packet");
    }
}
