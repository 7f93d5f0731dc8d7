//! Engine errors: what went wrong, named by cause. Each protocol maps a kind to its own wire
//! error once (AMQP reply codes, MQTT reason codes, STOMP ERROR frames, AWS error shapes).

use std::fmt;

/// The cause of a refused engine operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The entity does not exist (AMQP 404).
    NotFound,
    /// The caller may not do this (AMQP 403): reserved names, internal exchanges, permissions.
    AccessRefused,
    /// Another connection owns an exclusive queue or consumer (AMQP 405).
    ResourceLocked,
    /// The entity exists with other settings, or a condition (if-unused...) failed (AMQP 406).
    PreconditionFailed,
    /// The operation is not allowed in this state (AMQP 530).
    NotAllowed,
    /// A limit was hit (AMQP 506).
    ResourceError,
    /// An invalid argument or name (AMQP 406 for arguments, 402 for invalid paths).
    InvalidArgument,
    /// Storage or another internal failure (AMQP 541).
    Internal,
}

/// A refused engine operation: its kind and a message for the peer, as RabbitMQ words them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineError {
    pub kind: ErrorKind,
    pub text: String,
}

impl EngineError {
    pub fn new(kind: ErrorKind, text: impl Into<String>) -> Self {
        EngineError {
            kind,
            text: text.into(),
        }
    }
    pub fn not_found(text: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, text)
    }
    pub fn access_refused(text: impl Into<String>) -> Self {
        Self::new(ErrorKind::AccessRefused, text)
    }
    pub fn precondition(text: impl Into<String>) -> Self {
        Self::new(ErrorKind::PreconditionFailed, text)
    }
    pub fn locked(text: impl Into<String>) -> Self {
        Self::new(ErrorKind::ResourceLocked, text)
    }
    pub fn invalid(text: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, text)
    }
    pub fn internal(text: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, text)
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.text)
    }
}

impl std::error::Error for EngineError {}

pub type EngineResult<T> = Result<T, EngineError>;
