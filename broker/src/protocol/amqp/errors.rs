//! AMQP exceptions: reply codes, their names, hard or soft, and the one table from engine
//! error kinds to reply codes.

use amq_protocol_types::ShortString;

use super::mapping::short_lossy;
use crate::engine::{EngineError, ErrorKind};

/// AMQP 0-9-1 reply codes (section 1.3 of the spec, as RabbitMQ uses them).
pub(crate) mod code {
    pub const CONNECTION_FORCED: u16 = 320;
    pub const NO_ROUTE: u16 = 312;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const FRAME_ERROR: u16 = 501;
    pub const SYNTAX_ERROR: u16 = 502;
    pub const COMMAND_INVALID: u16 = 503;
    pub const CHANNEL_ERROR: u16 = 504;
    pub const UNEXPECTED_FRAME: u16 = 505;
    pub const RESOURCE_ERROR: u16 = 506;
    pub const NOT_ALLOWED: u16 = 530;
    pub const NOT_IMPLEMENTED: u16 = 540;
    pub const INTERNAL_ERROR: u16 = 541;
}

/// The name RabbitMQ puts before the explanation in reply texts.
pub(crate) fn code_name(code: u16) -> &'static str {
    match code {
        200 => "OK",
        311 => "CONTENT_TOO_LARGE",
        312 => "NO_ROUTE",
        313 => "NO_CONSUMERS",
        320 => "CONNECTION_FORCED",
        402 => "INVALID_PATH",
        403 => "ACCESS_REFUSED",
        404 => "NOT_FOUND",
        405 => "RESOURCE_LOCKED",
        406 => "PRECONDITION_FAILED",
        501 => "FRAME_ERROR",
        502 => "SYNTAX_ERROR",
        503 => "COMMAND_INVALID",
        504 => "CHANNEL_ERROR",
        505 => "UNEXPECTED_FRAME",
        506 => "RESOURCE_ERROR",
        530 => "NOT_ALLOWED",
        540 => "NOT_IMPLEMENTED",
        541 => "INTERNAL_ERROR",
        _ => "UNKNOWN",
    }
}

/// Hard errors close the connection; soft ones (the 3xx and 4xx "channel" codes) only the
/// channel. 320 and 402 are connection codes in the spec.
pub(crate) fn is_hard(code: u16) -> bool {
    !matches!(code, 311..=313 | 403..=406)
}

/// The engine error kinds and the reply code each becomes. Every kind appears once; a test
/// walks it.
pub(crate) const ENGINE_CODES: [(ErrorKind, u16); 8] = [
    (ErrorKind::NotFound, code::NOT_FOUND),
    (ErrorKind::AccessRefused, code::ACCESS_REFUSED),
    (ErrorKind::ResourceLocked, code::RESOURCE_LOCKED),
    (ErrorKind::PreconditionFailed, code::PRECONDITION_FAILED),
    (ErrorKind::NotAllowed, code::NOT_ALLOWED),
    (ErrorKind::ResourceError, code::RESOURCE_ERROR),
    (ErrorKind::InvalidArgument, code::PRECONDITION_FAILED),
    (ErrorKind::Internal, code::INTERNAL_ERROR),
];

fn engine_code(kind: ErrorKind) -> u16 {
    ENGINE_CODES
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or(code::INTERNAL_ERROR, |(_, c)| *c)
}

/// An AMQP exception: what channel.close or connection.close will carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AmqpError {
    pub code: u16,
    /// The explanation, without the code name (added by [`AmqpError::reply_text`]).
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

pub(crate) type AmqpResult<T> = Result<T, AmqpError>;

impl AmqpError {
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        AmqpError {
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
        }
    }

    pub fn precondition(text: impl Into<String>) -> Self {
        Self::new(code::PRECONDITION_FAILED, text)
    }

    pub fn not_found(text: impl Into<String>) -> Self {
        Self::new(code::NOT_FOUND, text)
    }

    /// Names the method that failed, unless one is already named.
    pub fn during(mut self, class_id: u16, method_id: u16) -> Self {
        if self.class_id == 0 && self.method_id == 0 {
            self.class_id = class_id;
            self.method_id = method_id;
        }
        self
    }

    pub fn is_hard(&self) -> bool {
        is_hard(self.code)
    }

    /// "NOT_FOUND - no queue 'q' in vhost '/'", cut to a short string.
    pub fn reply_text(&self) -> ShortString {
        short_lossy(&format!("{} - {}", code_name(self.code), self.text))
    }
}

impl From<EngineError> for AmqpError {
    fn from(e: EngineError) -> Self {
        AmqpError::new(engine_code(e.kind), e.text)
    }
}

impl From<&codecs::amqp::Error> for AmqpError {
    fn from(e: &codecs::amqp::Error) -> Self {
        let (class_id, method_id) = e.class_method();
        AmqpError::new(e.reply_code(), e.to_string()).during(class_id, method_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_engine_kind_has_one_code() {
        let kinds = [
            ErrorKind::NotFound,
            ErrorKind::AccessRefused,
            ErrorKind::ResourceLocked,
            ErrorKind::PreconditionFailed,
            ErrorKind::NotAllowed,
            ErrorKind::ResourceError,
            ErrorKind::InvalidArgument,
            ErrorKind::Internal,
        ];
        for kind in kinds {
            let n = ENGINE_CODES.iter().filter(|(k, _)| *k == kind).count();
            assert_eq!(n, 1, "{kind:?}");
        }
        for (kind, code) in ENGINE_CODES {
            let e = AmqpError::from(EngineError::new(kind, "why"));
            assert_eq!(e.code, code);
            assert_ne!(code_name(code), "UNKNOWN");
            assert_eq!(
                e.reply_text().as_str(),
                format!("{} - why", code_name(code))
            );
        }
    }

    #[test]
    fn hard_and_soft() {
        for soft in [311, 312, 313, 403, 404, 405, 406] {
            assert!(!is_hard(soft));
        }
        for hard in [320, 402, 501, 502, 503, 504, 505, 506, 530, 540, 541] {
            assert!(is_hard(hard));
        }
    }

    #[test]
    fn codec_errors_keep_their_code_and_method() {
        let e = codecs::amqp::Error::UnknownMethod {
            channel: 1,
            class_id: 60,
            method_id: 99,
        };
        let a = AmqpError::from(&e);
        assert_eq!((a.code, a.class_id, a.method_id), (540, 60, 99));
        let long = AmqpError::new(404, "x".repeat(400));
        assert_eq!(long.reply_text().as_str().len(), 255);
    }
}
