//! Codec errors. Every decode error is fatal for the connection: the session answers with an
//! ERROR frame whose `message` header is [`Error`]'s text (STOMP has no error codes), then closes.

use thiserror::Error;

/// Why bytes could not be decoded, or a frame encoded.
///
/// Decode errors carry only what is certain from the bytes up to the point of failure, so the
/// same stream gives the same error however it is split across reads (the fuzz property).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Error {
    /// The command line is not a STOMP command (or is empty where a frame starts).
    #[error("unknown STOMP command")]
    UnknownCommand,
    /// A command or header line longer than `Limits::header_line_bytes_max`.
    #[error("header line longer than {max} bytes")]
    LineTooLong { max: usize },
    /// More headers than `Limits::header_count_max`.
    #[error("more than {max} headers")]
    TooManyHeaders { max: usize },
    /// The frame (command line to NUL) is larger than `Limits::frame_bytes_max`; refused as soon
    /// as that is certain (a content-length too large, or that many bytes without the end).
    #[error("frame larger than {max} bytes")]
    FrameTooLarge { max: usize },
    /// A header line without `:`.
    #[error("header line without ':'")]
    MalformedHeader,
    /// A `\` not followed by a character the version defines (1.1: `n c \`; 1.2 adds `r`).
    #[error("invalid escape sequence in a header")]
    InvalidEscape,
    /// A command or header line that is not UTF-8.
    #[error("header is not UTF-8")]
    InvalidUtf8,
    /// The first content-length header is not a decimal number of bytes.
    #[error("invalid content-length header")]
    InvalidContentLength,
    /// The content-length bytes of the body are not followed by NUL.
    #[error("frame body not terminated by NUL after content-length bytes")]
    BodyNotTerminated,
    /// Encoding only: a header the frame's version cannot carry (a line break or, in a name,
    /// `:` where there is no escaping; a value ending in CR before 1.2).
    #[error("header cannot be represented without escaping")]
    Unrepresentable,
}
