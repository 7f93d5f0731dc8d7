//! Protocol sessions.
pub mod amqp;
