//! STOMP 1.0, 1.1 and 1.2 frames, parsed with nom from a streaming buffer.
//!
//! - [`decode`] takes one [`Item`] from the front of a `BytesMut`: a whole frame, or one
//!   heart-beat EOL (`\n` or `\r\n`) between frames. On partial input it returns `Ok(None)` and
//!   leaves the buffer as it was.
//! - Bodies: exactly `content-length` bytes (NUL allowed) then a NUL, or, without that header,
//!   everything up to the first NUL. The body is split from the read buffer without a copy.
//! - Headers keep their order and repetitions; [`Frame::header`] returns the first (the
//!   specification: the first one wins). Escaping per version: 1.0 none; 1.1 `\n \c \\`; 1.2
//!   also `\r`; CONNECT, STOMP and CONNECTED are never escaped. Any other escape is an error.
//! - Lines end in LF or CRLF in every version (1.2 defines CRLF; RabbitMQ accepts it always).
//! - [`Limits`] bound the frame, the header count and one line's length, each with its own
//!   [`Error`], checked as the bytes arrive (never buffer more than the limit for one frame).
//! - [`encode`] writes a frame in a version; [`representable`] says whether a header can be.

mod decode;
mod encode;
mod error;
mod frame;

#[cfg(test)]
mod fuzz_seeds_test;
#[cfg(test)]
mod tests;

use bytes::BytesMut;

pub use encode::representable;
pub use error::Error;
pub use frame::{Command, Frame, Item, Version};

/// Decoder limits; 0 means no limit. Defaults are RabbitMQ's STOMP plugin's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of one frame, command line to NUL (RabbitMQ `stomp.max_frame_size`, 4 MiB).
    pub frame_bytes_max: usize,
    /// Headers in one frame (RabbitMQ `max_headers`, 1000).
    pub header_count_max: usize,
    /// Bytes of the command line or of one header line, without its LF (RabbitMQ
    /// `max_header_length`, 100 KiB).
    pub header_line_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_bytes_max: 4 << 20,
            header_count_max: 1000,
            header_line_bytes_max: 100 << 10,
        }
    }
}

/// Decodes one item from the front of `buf`, unescaping headers as `version` says.
///
/// - `Ok(Some(item))`: its bytes were removed from `buf`.
/// - `Ok(None)`: more bytes are needed; `buf`'s content is unchanged (capacity may be reserved
///   for a declared body, at most 1 MiB ahead).
/// - `Err(e)`: the stream is unusable; answer with an ERROR frame (`message` = `e`) and close.
pub fn decode(
    buf: &mut BytesMut,
    version: Version,
    limits: &Limits,
) -> Result<Option<Item>, Error> {
    decode::decode(buf, version, limits)
}

/// Appends the wire form of `frame` in `version` to `out`; on error `out` is unchanged.
/// Errors: a header [`representable`] refuses, or a body/content-length mismatch.
pub fn encode(frame: &Frame, version: Version, out: &mut BytesMut) -> Result<(), Error> {
    encode::encode(frame, version, out)
}

/// The property the fuzz target and the tests assert. Public only so both run the very same
/// check; not part of the codec's API.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Outcome {
        items: Vec<Item>,
        error: Option<Error>,
    }

    pub const VERSIONS: [Version; 3] = [Version::V1_0, Version::V1_1, Version::V1_2];

    /// Limit sets the fuzzer picks from: none, tiny (every limit reachable), RabbitMQ's.
    pub fn limits(choice: u8) -> Limits {
        match choice % 3 {
            0 => Limits {
                frame_bytes_max: 0,
                header_count_max: 0,
                header_line_bytes_max: 0,
            },
            1 => Limits {
                frame_bytes_max: 64,
                header_count_max: 3,
                header_line_bytes_max: 24,
            },
            _ => Limits::default(),
        }
    }

    /// The fuzz target's input: two control bytes (split point; limits and version), then the
    /// stream.
    pub fn check_input(data: &[u8]) {
        let (control, stream) = data.split_at(data.len().min(2));
        let split = control.first().copied().unwrap_or(0) as usize * 7;
        let c = control.get(1).copied().unwrap_or(0);
        check(stream, split, &limits(c), VERSIONS[(c / 3 % 3) as usize]);
    }

    /// Decodes `data` whole and split in two at `split` (modulo its length), and panics when a
    /// property fails:
    /// - decode never panics;
    /// - each call consumes bytes, asks for more leaving the buffer as it was, or errors;
    /// - every decoded frame encodes, and decodes back to the same frame;
    /// - both deliveries give the same items and the same error.
    pub fn check(data: &[u8], split: usize, limits: &Limits, version: Version) {
        let whole = run(&[data], limits, version);
        let at = if data.is_empty() {
            0
        } else {
            split % data.len()
        };
        let (a, b) = data.split_at(at);
        let parts = run(&[a, b], limits, version);
        assert_eq!(whole, parts, "split at {at} changed the outcome");
    }

    fn run(parts: &[&[u8]], limits: &Limits, version: Version) -> Outcome {
        let mut buf = BytesMut::new();
        let mut items = Vec::new();
        for part in parts {
            buf.extend_from_slice(part);
            loop {
                let before = buf.clone();
                match decode(&mut buf, version, limits) {
                    Ok(Some(item)) => {
                        assert!(buf.len() < before.len(), "an item consumed nothing");
                        if let Item::Frame(f) = &item {
                            round_trip(f, version);
                        }
                        items.push(item);
                    }
                    Ok(None) => {
                        assert_eq!(before, buf, "asking for more bytes changed the buffer");
                        break;
                    }
                    Err(error) => {
                        let _ = error.to_string();
                        return Outcome {
                            items,
                            error: Some(error),
                        };
                    }
                }
            }
        }
        Outcome { items, error: None }
    }

    fn round_trip(frame: &Frame, version: Version) {
        let mut enc = BytesMut::new();
        encode(frame, version, &mut enc)
            .unwrap_or_else(|e| panic!("decoded frame does not encode: {e}"));
        let none = limits(0);
        let again = decode(&mut enc, version, &none)
            .unwrap_or_else(|e| panic!("re-encoded frame does not decode: {e}"));
        assert!(enc.is_empty(), "re-encoded frame left bytes behind");
        assert_eq!(
            again,
            Some(Item::Frame(frame.clone())),
            "encode/decode changed the frame"
        );
    }
}
