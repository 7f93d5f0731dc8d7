//! The Wharf broker: the engine, the protocol sessions, the listeners and the `wharf` binary.
//!
//! Layout (see docs/architecture.md):
//! - [`engine`]: vhosts, exchanges, queues, routing, leases: the one model under every protocol.
//! - [`store`]: the append-only segment log that makes persistent messages durable.
//! - [`protocol`]: one session module per wire protocol, translating frames to engine calls.
//! - [`net`]: listeners, accept loops, graceful shutdown.
//! - [`aws`]: the HTTP listener for the AWS APIs, mounting `bridge/` on the engine.
//! - [`config`]: every option, its default and how it is layered.

pub mod aws;
pub mod config;
pub mod engine;
pub mod net;
pub mod protocol;
pub mod store;
