//! AMQP 0-9-1 framing.
//!
//! The 7-byte frame header and the frame end are handled here, so that:
//! - the declared payload size is checked against [`Limits::frame_bytes_max`] before a single
//!   payload byte is awaited (a hostile peer cannot make us buffer a 4 GiB frame);
//! - body frames are split out of the read buffer as [`Bytes`] without copying;
//! - field-table nesting is bounded before amq-protocol's recursive parser sees it.
//!
//! Method and content-header payloads are parsed by amq-protocol. Errors are structured so the
//! session can pick the AMQP close code with [`Error::reply_code`].

mod nesting;

#[cfg(test)]
mod tests;

use std::fmt;

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::{basic, parse_class, AMQPClass};
use bytes::{Buf, BufMut, Bytes, BytesMut};

pub use amq_protocol::frame::AMQPContentHeader as ContentHeader;
pub use amq_protocol::protocol::BasicProperties;

/// Frame type octets (AMQP 0-9-1 section 4.2.3).
pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
/// Every frame ends with this octet.
pub const FRAME_END: u8 = 0xCE;
/// Frame header (type, channel, size) plus the frame end: what a frame costs beyond its payload.
pub const FRAME_OVERHEAD: usize = 8;
const FRAME_HEADER_LEN: usize = 7;
/// The smallest frame_max a peer may negotiate (spec: frame-min-size is 4096 in 0-9-1 as
/// RabbitMQ implements it).
pub const FRAME_MIN_SIZE: u32 = 4096;
/// Field tables and arrays nested deeper than this are refused. Real clients nest two or three
/// levels (client capabilities, x-death); the bound keeps the recursive parser's stack small.
pub const NESTING_MAX: usize = 32;

/// The most [`decode`] reserves ahead of the bytes received.
const RESERVE_MAX: usize = 1 << 20;

/// Decoder limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame accepted, header and frame end included (the negotiated frame_max).
    /// 0 means no limit other than the 32-bit size field, as in connection.tune.
    pub frame_bytes_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_bytes_max: 131_072,
        }
    }
}

/// The 8 bytes a client opens with: `AMQP` 0 0 9 1, or whatever the peer sent instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolHeader(pub [u8; 8]);

impl ProtocolHeader {
    pub const AMQP_0_9_1: ProtocolHeader = ProtocolHeader(*b"AMQP\x00\x00\x09\x01");
    /// The AMQP 0-9 header, which RabbitMQ serves as 0-9-1 (the two are wire-compatible for
    /// everything a 0-9 client sends).
    pub const AMQP_0_9: ProtocolHeader = ProtocolHeader(*b"AMQP\x01\x01\x00\x09");

    pub fn is_supported(&self) -> bool {
        *self == Self::AMQP_0_9_1 || *self == Self::AMQP_0_9
    }
}

/// One AMQP frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    ProtocolHeader(ProtocolHeader),
    Method(u16, AMQPClass),
    Header(u16, ContentHeader),
    /// Body payload, split from the read buffer without a copy.
    Body(u16, Bytes),
    /// Channel id as sent (the spec says 0; the session decides what else means).
    Heartbeat(u16),
}

impl Frame {
    pub fn channel(&self) -> u16 {
        match self {
            Frame::ProtocolHeader(_) => 0,
            Frame::Method(ch, _) | Frame::Header(ch, _) | Frame::Body(ch, _) => *ch,
            Frame::Heartbeat(ch) => *ch,
        }
    }
}

/// Why bytes could not be decoded. Each variant maps to one AMQP reply code
/// ([`Error::reply_code`]); all of them are connection errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Declared payload over the limit (501 FRAME_ERROR).
    FrameTooLarge {
        frame_type: u8,
        channel: u16,
        size: u32,
        max: u32,
    },
    /// The octet after the payload is not 0xCE (501 FRAME_ERROR).
    BadFrameEnd {
        frame_type: u8,
        channel: u16,
        found: u8,
    },
    /// A frame type octet outside 1, 2, 3, 8 (501 FRAME_ERROR, as RabbitMQ's `unknown_frame`).
    UnknownFrameType { frame_type: u8, channel: u16 },
    /// A heartbeat frame with a payload (501 FRAME_ERROR).
    BadHeartbeat { channel: u16, size: u32 },
    /// A class or method id that AMQP 0-9-1 does not define (540 NOT_IMPLEMENTED).
    UnknownMethod {
        channel: u16,
        class_id: u16,
        method_id: u16,
    },
    /// A known method whose fields do not decode (501 FRAME_ERROR, RabbitMQ's "cannot decode").
    MalformedMethod {
        channel: u16,
        class_id: u16,
        method_id: u16,
    },
    /// A content header that does not decode (501 FRAME_ERROR).
    MalformedHeader { channel: u16 },
}

impl Error {
    /// The AMQP reply code for the connection.close this error calls for.
    pub fn reply_code(&self) -> u16 {
        match self {
            Error::UnknownMethod { .. } => 540,
            _ => 501,
        }
    }

    /// The channel the offending frame arrived on.
    pub fn channel(&self) -> u16 {
        match *self {
            Error::FrameTooLarge { channel, .. }
            | Error::BadFrameEnd { channel, .. }
            | Error::UnknownFrameType { channel, .. }
            | Error::BadHeartbeat { channel, .. }
            | Error::UnknownMethod { channel, .. }
            | Error::MalformedMethod { channel, .. }
            | Error::MalformedHeader { channel } => channel,
        }
    }

    /// Class and method ids for connection.close (0, 0 when no method was involved).
    pub fn class_method(&self) -> (u16, u16) {
        match *self {
            Error::UnknownMethod {
                class_id,
                method_id,
                ..
            }
            | Error::MalformedMethod {
                class_id,
                method_id,
                ..
            } => (class_id, method_id),
            _ => (0, 0),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::FrameTooLarge {
                frame_type,
                size,
                max,
                ..
            } => write!(
                f,
                "type {frame_type}: frame_too_large, payload of {size} bytes over frame_max {max}"
            ),
            Error::BadFrameEnd {
                frame_type, found, ..
            } => write!(
                f,
                "type {frame_type}: invalid_frame_end_marker {found:#04x}"
            ),
            Error::UnknownFrameType { frame_type, .. } => {
                write!(f, "type {frame_type}: unknown_frame")
            }
            Error::BadHeartbeat { size, .. } => {
                write!(f, "type 8: heartbeat frame with {size} bytes of payload")
            }
            Error::UnknownMethod {
                class_id,
                method_id,
                ..
            } => write!(f, "unknown method {class_id}/{method_id}"),
            Error::MalformedMethod {
                class_id,
                method_id,
                ..
            } => write!(f, "cannot decode method {class_id}/{method_id}"),
            Error::MalformedHeader { .. } => write!(f, "cannot decode content header"),
        }
    }
}

impl std::error::Error for Error {}

/// Decodes one frame from the front of `buf`.
///
/// - `Ok(Some(frame))`: the frame's bytes were removed from `buf`.
/// - `Ok(None)`: more bytes are needed; `buf` is unchanged, with capacity reserved for the
///   rest of the frame when its size is known.
/// - `Err(e)`: the stream is unusable (the peer has lost frame sync); close the connection
///   with `e.reply_code()`.
///
/// A buffer starting with `A` holds a protocol header: 8 bytes are taken as they are.
pub fn decode(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Frame>, Error> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first == b'A' {
        return Ok(decode_protocol_header(buf).map(Frame::ProtocolHeader));
    }
    let Some(header) = buf.get(..FRAME_HEADER_LEN) else {
        return Ok(None);
    };
    let frame_type = header[0];
    let channel = u16::from_be_bytes([header[1], header[2]]);
    let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]);
    if !matches!(
        frame_type,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(Error::UnknownFrameType {
            frame_type,
            channel,
        });
    }
    // RabbitMQ lets the payload reach frame_max itself (not frame_max - 8): "quite a few clients
    // get it wrong - off-by 1 or 8". We allow the same.
    if limits.frame_bytes_max != 0 && size > limits.frame_bytes_max {
        return Err(Error::FrameTooLarge {
            frame_type,
            channel,
            size,
            max: limits.frame_bytes_max,
        });
    }
    if frame_type == FRAME_HEARTBEAT && size != 0 {
        return Err(Error::BadHeartbeat { channel, size });
    }
    let payload_len = size as usize;
    let total = FRAME_HEADER_LEN + payload_len + 1;
    if buf.len() < total {
        // Reserve for the rest of the frame once, but never more than RESERVE_MAX ahead of the
        // bytes that actually arrived: a peer declaring a huge frame (possible when the limit is
        // off) must send it before it costs us memory.
        buf.reserve((total - buf.len()).min(RESERVE_MAX));
        return Ok(None);
    }
    let end = buf.get(total - 1).copied().unwrap_or(0);
    if end != FRAME_END {
        return Err(Error::BadFrameEnd {
            frame_type,
            channel,
            found: end,
        });
    }
    let mut frame = buf.split_to(total);
    frame.advance(FRAME_HEADER_LEN);
    frame.truncate(payload_len);
    let payload = frame.freeze();
    match frame_type {
        FRAME_METHOD => decode_method(channel, &payload).map(Some),
        FRAME_HEADER => decode_content_header(channel, &payload).map(Some),
        FRAME_BODY => Ok(Some(Frame::Body(channel, payload))),
        _ => Ok(Some(Frame::Heartbeat(channel))),
    }
}

/// Takes the 8 bytes a connection starts with, whatever they are, so the session can answer a
/// wrong header with the one it speaks. `None` until 8 bytes are there.
pub fn decode_protocol_header(buf: &mut BytesMut) -> Option<ProtocolHeader> {
    let bytes: [u8; 8] = buf.get(..8)?.try_into().ok()?;
    buf.advance(8);
    Some(ProtocolHeader(bytes))
}

fn decode_method(channel: u16, payload: &[u8]) -> Result<Frame, Error> {
    let (class_id, method_id) = match payload {
        [a, b, c, d, ..] => (u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d])),
        _ => {
            return Err(Error::MalformedMethod {
                channel,
                class_id: 0,
                method_id: 0,
            })
        }
    };
    if !method_known(class_id, method_id) {
        return Err(Error::UnknownMethod {
            channel,
            class_id,
            method_id,
        });
    }
    let malformed = Error::MalformedMethod {
        channel,
        class_id,
        method_id,
    };
    if !nesting::method_within(class_id, method_id, payload, NESTING_MAX) {
        return Err(malformed);
    }
    match parse_class(payload) {
        Ok(([], class)) => Ok(Frame::Method(channel, class)),
        _ => Err(malformed),
    }
}

fn decode_content_header(channel: u16, payload: &[u8]) -> Result<Frame, Error> {
    let malformed = Error::MalformedHeader { channel };
    if !nesting::header_within(payload, NESTING_MAX) {
        return Err(malformed);
    }
    match amq_protocol::frame::parsing::parse_content_header(payload) {
        Ok(([], header)) => Ok(Frame::Header(channel, header)),
        _ => Err(malformed),
    }
}

/// Whether AMQP 0-9-1 (with RabbitMQ's extensions) defines this method.
pub fn method_known(class_id: u16, method_id: u16) -> bool {
    let methods: &[u16] = match class_id {
        10 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51, 60, 61, 70, 71],
        20 => &[10, 11, 20, 21, 40, 41],
        30 => &[10, 11],
        40 => &[10, 11, 20, 21, 30, 31, 40, 51],
        50 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51],
        60 => &[
            10, 11, 20, 21, 30, 31, 40, 50, 60, 70, 71, 72, 80, 90, 100, 110, 111, 120,
        ],
        85 => &[10, 11],
        90 => &[10, 11, 20, 21, 30, 31],
        _ => &[],
    };
    methods.contains(&method_id)
}

/// Appends the wire form of `frame` to `out`.
///
/// A body longer than a frame can carry (4 GiB) is cut to that size; sessions split bodies by
/// frame_max long before, with [`encode_content`].
pub fn encode(frame: &Frame, out: &mut BytesMut) {
    match frame {
        Frame::ProtocolHeader(h) => out.extend_from_slice(&h.0),
        Frame::Method(channel, class) => encode_method(*channel, class, out),
        Frame::Header(channel, h) => {
            encode_header(*channel, h.class_id, h.body_size, &h.properties, out)
        }
        Frame::Body(channel, body) => encode_body(*channel, body, out),
        Frame::Heartbeat(channel) => {
            out.reserve(FRAME_OVERHEAD);
            out.put_u8(FRAME_HEARTBEAT);
            out.put_u16(*channel);
            out.put_u32(0);
            out.put_u8(FRAME_END);
        }
    }
}

/// Writes a frame of `frame_type` whose payload `fill` produces, patching the size in after.
fn framed(out: &mut BytesMut, frame_type: u8, channel: u16, fill: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u8(frame_type);
    out.put_u16(channel);
    out.put_u32(0);
    fill(out);
    let size = u32::try_from(out.len() - start - FRAME_HEADER_LEN).unwrap_or(u32::MAX);
    if let Some(slot) = out.get_mut(start + 3..start + FRAME_HEADER_LEN) {
        slot.copy_from_slice(&size.to_be_bytes());
    }
    out.put_u8(FRAME_END);
}

/// Runs an amq-protocol generator into a scratch vector and appends what it wrote. Writing into
/// a growable vector cannot fail; if it ever did, the partial output is dropped, not sent.
fn generate<F>(out: &mut BytesMut, gen: F)
where
    F: Fn(WriteContext<Vec<u8>>) -> Result<WriteContext<Vec<u8>>, amq_protocol::frame::GenError>,
{
    if let Ok(ctx) = gen(WriteContext::from(Vec::with_capacity(64))) {
        out.extend_from_slice(&ctx.write);
    }
}

fn encode_method(channel: u16, class: &AMQPClass, out: &mut BytesMut) {
    framed(out, FRAME_METHOD, channel, |out| {
        generate(out, |ctx| amq_protocol::protocol::gen_class(class)(ctx))
    });
}

fn encode_header(
    channel: u16,
    class_id: u16,
    body_size: u64,
    properties: &BasicProperties,
    out: &mut BytesMut,
) {
    framed(out, FRAME_HEADER, channel, |out| {
        out.put_u16(class_id);
        out.put_u16(0); // weight, always 0
        out.put_u64(body_size);
        generate(out, |ctx| basic::gen_properties(properties)(ctx));
    });
}

fn encode_body(channel: u16, body: &[u8], out: &mut BytesMut) {
    let len = body.len().min(u32::MAX as usize - FRAME_OVERHEAD);
    let body = body.get(..len).unwrap_or_default();
    out.reserve(len + FRAME_OVERHEAD);
    out.put_u8(FRAME_BODY);
    out.put_u16(channel);
    out.put_u32(len as u32);
    out.extend_from_slice(body);
    out.put_u8(FRAME_END);
}

/// Appends a content-bearing method (basic.deliver, basic.get-ok, basic.return...) with its
/// content header and the body split into frames of at most `frame_max` bytes (0 = no limit).
pub fn encode_content(
    channel: u16,
    method: &AMQPClass,
    properties: &BasicProperties,
    body: &[u8],
    frame_max: u32,
    out: &mut BytesMut,
) {
    encode_method(channel, method, out);
    let class_id = method.get_amqp_class_id();
    encode_header(channel, class_id, body.len() as u64, properties, out);
    let chunk = if frame_max == 0 {
        u32::MAX as usize - FRAME_OVERHEAD
    } else {
        (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1)
    };
    for part in body.chunks(chunk) {
        encode_body(channel, part, out);
    }
}

/// The property the fuzz target (codecs/fuzz) and the seed-corpus replay test assert. Public
/// only so both run the very same check; not part of the codec's API.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// What decoding a byte stream produced: each frame re-encoded, then how it ended.
    #[derive(Debug, PartialEq)]
    struct Outcome {
        frames: Vec<Vec<u8>>,
        error: Option<Error>,
    }

    /// The fuzz target's input: two control bytes (split point, limit choice), then the stream.
    /// Seed files are in this form too.
    pub fn check_input(data: &[u8]) {
        let (control, stream) = data.split_at(data.len().min(2));
        let split = control.first().copied().unwrap_or(0) as usize * 7;
        let limit = match control.get(1).copied().unwrap_or(0) % 3 {
            0 => 0,
            1 => 4096,
            _ => 131_072,
        };
        check(stream, split, limit);
    }

    /// Decodes `data` whole and split in two at `split` (taken modulo the length) with the
    /// given limit, and panics when a property fails:
    /// - decode never panics;
    /// - each call makes progress (consumes bytes), asks for more (leaves the buffer as it
    ///   was), or errors;
    /// - every decoded frame encodes to bytes that decode to the same frame;
    /// - both deliveries give the same frames and the same error.
    pub fn check(data: &[u8], split: usize, frame_bytes_max: u32) {
        let limits = Limits { frame_bytes_max };
        let whole = run(&[data], &limits);
        let at = if data.is_empty() {
            0
        } else {
            split % data.len()
        };
        let (a, b) = data.split_at(at);
        let parts = run(&[a, b], &limits);
        assert_eq!(whole, parts, "split at {at} changed the outcome");
    }

    fn run(parts: &[&[u8]], limits: &Limits) -> Outcome {
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for part in parts {
            buf.extend_from_slice(part);
            loop {
                let before = buf.clone();
                match decode(&mut buf, limits) {
                    Ok(Some(frame)) => {
                        assert!(buf.len() < before.len(), "a frame consumed nothing");
                        assert_eq!(
                            &before[before.len() - buf.len()..],
                            &buf[..],
                            "decode touched bytes past the frame"
                        );
                        frames.push(round_trip(&frame, limits));
                    }
                    Ok(None) => {
                        assert_eq!(before, buf, "asking for more bytes changed the buffer");
                        break;
                    }
                    Err(error) => {
                        return Outcome {
                            frames,
                            error: Some(error),
                        }
                    }
                }
            }
        }
        Outcome {
            frames,
            error: None,
        }
    }

    fn round_trip(frame: &Frame, limits: &Limits) -> Vec<u8> {
        let mut enc = BytesMut::new();
        encode(frame, &mut enc);
        let bytes = enc.to_vec();
        // Re-encoding may be larger than the limit (e.g. RabbitMQ-style 'S' read back as a
        // long string is the same size, but be safe): decode without a limit.
        let unlimited = Limits {
            frame_bytes_max: limits.frame_bytes_max.max(bytes.len() as u32),
        };
        let again = decode(&mut enc, &unlimited)
            .unwrap_or_else(|e| panic!("re-encoded frame does not decode: {e}"))
            .expect("re-encoded frame is complete");
        assert!(enc.is_empty(), "re-encoded frame left bytes behind");
        let mut enc2 = BytesMut::new();
        encode(&again, &mut enc2);
        assert_eq!(bytes, enc2.to_vec(), "encode/decode/encode is not stable");
        bytes
    }
}
