//! Protocol sessions.
pub mod amqp;
pub mod mqtt;
pub mod stomp;
