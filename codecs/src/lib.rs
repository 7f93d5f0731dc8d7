//! Wire formats of the open protocols Wharf speaks. No sockets, no runtime, no engine types:
//! bytes in, frames out, and back. Every decoder is safe on hostile input.

pub mod amqp;
pub mod mqtt;
pub mod stomp;
