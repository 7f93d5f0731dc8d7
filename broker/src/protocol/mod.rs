//! Protocol sessions.

use std::future::Future;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::net::Peer;

pub mod amqp;
pub mod mqtt;
pub mod stomp;

/// A protocol whose sessions can run over any byte stream: plain TCP, TLS, WebSocket or WSS.
/// Lets the binary start every listener, with or without TLS, through one function.
pub trait Service: Send + Sync + 'static {
    /// Serves one connection until it ends; `shutdown` asks it to close politely.
    fn serve<S>(
        self: Arc<Self>,
        stream: S,
        peer: Peer,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static;
}

/// Implements [`Service`] for a context whose module has the usual `serve` function.
macro_rules! service_by_serve_fn {
    ($($context:ty => $serve:path),* $(,)?) => {$(
        impl Service for $context {
            fn serve<S>(
                self: Arc<Self>,
                stream: S,
                peer: Peer,
                shutdown: CancellationToken,
            ) -> impl Future<Output = ()> + Send
            where
                S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
            {
                $serve(stream, peer, self, shutdown)
            }
        }
    )*};
}

service_by_serve_fn! {
    amqp::AmqpContext => amqp::serve,
    mqtt::MqttContext => mqtt::serve,
    stomp::StompContext => stomp::serve,
    crate::aws::AwsContext => crate::aws::serve,
}

/// One step of a session's output: writes some of `out` (`Some(bytes written)`), or, when `out`
/// is empty, flushes the stream (`None`). TLS and WebSocket streams may hold written bytes until
/// flushed; over TCP the flush is a no-op. Cancel-safe as `write_buf` and `flush` are.
pub(crate) async fn write_or_flush<W>(
    writer: &mut W,
    out: &mut bytes::BytesMut,
) -> std::io::Result<Option<usize>>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    if out.is_empty() {
        writer.flush().await.map(|()| None)
    } else {
        writer.write_buf(out).await.map(Some)
    }
}

/// Resolves when the memory alarm changes; false once the engine is gone.
pub(crate) async fn alarm_changed(rx: &mut Option<watch::Receiver<bool>>) -> bool {
    match rx {
        Some(r) => r.changed().await.is_ok(),
        None => std::future::pending::<bool>().await,
    }
}

/// Resolves when the durable Lsn moves (never without a store, or once it is gone).
pub(crate) async fn durable_changed(rx: &mut Option<watch::Receiver<u64>>) {
    match rx {
        Some(r) => {
            if r.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}
