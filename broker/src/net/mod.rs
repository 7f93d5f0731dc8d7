//! TCP listeners: bind, accept, hand each socket to its protocol's session, shut down politely.
//!
//! Transports on top of TCP: [`tls`] (the rustls handshake, in the connection's task) and [`ws`]
//! (the WebSocket upgrade and a byte-stream adapter). Sessions take any
//! `AsyncRead + AsyncWrite` stream, so `serve` is the same over TCP, TLS, WebSocket and WSS.
//!
//! Binding is separate from serving so that the binary can fail fast on an address in use before
//! it opens the data directory, and log `listening protocol=<name> addr=<ip:port>` only once the
//! accept loop runs (tests wait for that line, so it must mean "connect now").
//!
//! Shutdown: the caller cancels the token. Accept loops stop and drop their sockets (new
//! connections are refused); every session sees the token fire and closes politely (AMQP
//! connection.close 320); [`Listeners::shutdown`] waits for them up to a deadline. Sessions get
//! the listeners' token itself, not a child each: a child token is a tree node of about 110
//! bytes per connection, which an idle MQTT connection that waits on the token once for its
//! whole life does not need. A session that waits on it anew every turn takes its own child
//! (`shutdown.child_token()`), so that its waiter does not contend on the shared token's lock.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub mod park;
pub mod tls;
pub mod ws;

/// Pending connections the kernel queues while we are busy (the usual somaxconn default).
const LISTEN_BACKLOG: u32 = 1024;
/// First pause after an accept error that would repeat at once (EMFILE, ENFILE, ENOBUFS...).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause: long enough not to spin and flood the log, short enough to recover quickly
/// once file descriptors are free again.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Who is on the other end of a connection, as its listener established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The user a verified client certificate logs in as (the certificate's subject CN), set only
    /// by a TLS listener that verified the client's certificate with certificate login on.
    /// Sessions offer certificate login (AMQP EXTERNAL; MQTT and STOMP without credentials) only
    /// then.
    pub cert_login: Option<String>,
}

impl From<SocketAddr> for Peer {
    fn from(addr: SocketAddr) -> Self {
        Peer {
            addr,
            cert_login: None,
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

/// Why a listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for {protocol}: {cause}{hint}")]
pub struct BindError {
    pub protocol: &'static str,
    pub addr: SocketAddr,
    /// Not marked `#[source]`: the message already includes it, and error chains would say it twice.
    pub cause: io::Error,
    hint: String,
}

/// A bound socket not yet accepting.
#[derive(Debug)]
pub struct BoundListener {
    protocol: &'static str,
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl BoundListener {
    /// The address actually bound: the real port when port 0 was asked for.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn protocol(&self) -> &'static str {
        self.protocol
    }
}

/// Binds `addr` for `protocol`. Must run inside a tokio runtime.
///
/// # Errors
/// A [`BindError`] naming the protocol and the address, with a hint when the address is in use.
pub fn bind(protocol: &'static str, addr: SocketAddr) -> Result<BoundListener, BindError> {
    let fail = |source: io::Error| {
        let hint = match source.kind() {
            io::ErrorKind::AddrInUse => format!(
                " (is another broker running? pick another address with --{protocol}-listen, or off)"
            ),
            io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges)".to_string(),
            io::ErrorKind::AddrNotAvailable => " (no local interface has that address)".to_string(),
            _ => String::new(),
        };
        BindError {
            protocol,
            addr,
            cause: source,
            hint,
        }
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(fail)?;
    // Lets a restarted broker bind while old connections sit in TIME_WAIT; it does not let two
    // live listeners share the port on Linux.
    socket.set_reuseaddr(true).map_err(fail)?;
    socket.bind(addr).map_err(fail)?;
    let listener = socket.listen(LISTEN_BACKLOG).map_err(fail)?;
    let local_addr = listener.local_addr().map_err(fail)?;
    Ok(BoundListener {
        protocol,
        listener,
        local_addr,
    })
}

/// The running listeners and every connection task they spawned.
#[derive(Debug)]
pub struct Listeners {
    shutdown: CancellationToken,
    connections: TaskTracker,
    accept_loops: Vec<JoinHandle<()>>,
}

impl Listeners {
    /// `shutdown` stops every accept loop and is the token every session is given.
    pub fn new(shutdown: CancellationToken) -> Self {
        Listeners {
            shutdown,
            connections: TaskTracker::new(),
            accept_loops: Vec::new(),
        }
    }

    /// The tracker of the connection tasks (resumed parked connections run in it too, so that
    /// [`Listeners::shutdown`] waits for them).
    pub fn tracker(&self) -> TaskTracker {
        self.connections.clone()
    }

    /// Starts accepting on `bound`, running `handler(stream, peer, token)` as one task per
    /// connection. Logs `listening protocol=<name> addr=<ip:port>` once accepting.
    pub fn serve<F, Fut>(&mut self, bound: BoundListener, handler: F)
    where
        F: Fn(TcpStream, SocketAddr, CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let BoundListener {
            protocol,
            listener,
            local_addr,
        } = bound;
        let shutdown = self.shutdown.clone();
        let connections = self.connections.clone();
        // The log line tests parse: keep its shape (docs/architecture.md).
        tracing::info!(protocol = %protocol, addr = %local_addr, "listening");
        self.accept_loops.push(tokio::spawn(accept_loop(
            protocol,
            listener,
            handler,
            shutdown,
            connections,
        )));
    }

    /// Stops accepting (if the token was not cancelled yet, cancels it), then waits up to
    /// `timeout` for every connection task to end. Returns how many were still running then;
    /// those are dropped with the runtime.
    pub async fn shutdown(self, timeout: Duration) -> usize {
        self.shutdown.cancel();
        for handle in self.accept_loops {
            // An accept loop only ends by returning; a panic in one is already reported.
            let _ = handle.await;
        }
        self.connections.close();
        let open = self.connections.len();
        if open > 0 {
            tracing::info!(
                connections = open,
                timeout_secs = timeout.as_secs_f64(),
                "waiting for connections to close"
            );
        }
        if tokio::time::timeout(timeout, self.connections.wait())
            .await
            .is_err()
        {
            let left = self.connections.len();
            tracing::warn!(
                connections = left,
                "connections still open after the shutdown timeout; dropping them"
            );
            return left;
        }
        0
    }
}

async fn accept_loop<F, Fut>(
    protocol: &'static str,
    listener: TcpListener,
    handler: F,
    shutdown: CancellationToken,
    connections: TaskTracker,
) where
    F: Fn(TcpStream, SocketAddr, CancellationToken) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                // Frames are written whole and batched by the session; Nagle would only add
                // latency to small replies (confirms, heartbeats).
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(protocol = %protocol, %peer, error = %e, "cannot set TCP_NODELAY");
                }
                tracing::debug!(protocol = %protocol, %peer, "connection accepted");
                // Debug level: disabled under the default `info` filter, so it costs nothing (an
                // enabled span keeps its fields in the subscriber's registry for the
                // connection's life: about 0.5 KB per idle connection). Log lines at info and
                // above name the peer themselves.
                let span = tracing::debug_span!("conn", protocol = %protocol, %peer);
                let session = handler(stream, peer, shutdown.clone());
                // Not instrumented when disabled: even a disabled span is 40 bytes in the task.
                if span.is_disabled() {
                    connections.spawn(session);
                } else {
                    connections.spawn(session.instrument(span));
                }
            }
            // The peer gave up between SYN and accept: nothing wrong with us, go on.
            Err(e) if is_per_connection(&e) => {
                tracing::debug!(protocol = %protocol, error = %e, "accept: connection dropped before accept");
            }
            Err(e) => {
                // Out of descriptors or buffers: retrying at once would spin. Existing
                // connections keep running; new ones wait in the backlog.
                tracing::warn!(
                    protocol = %protocol,
                    error = %e,
                    retry_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                    "accept failed; retrying"
                );
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
    // Dropping the listener here closes the socket: further connects are refused.
    drop(listener);
    tracing::debug!(protocol = %protocol, "stopped accepting");
}

/// Accept errors about one connection, not about the listener.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn loopback() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    #[tokio::test]
    async fn port_zero_reports_the_real_port() {
        let bound = bind("test", loopback()).unwrap();
        assert_ne!(bound.local_addr().port(), 0);
    }

    #[tokio::test]
    async fn address_in_use_is_a_clear_error() {
        let first = bind("test", loopback()).unwrap();
        let err = bind("test", first.local_addr()).unwrap_err();
        assert_eq!(err.cause.kind(), io::ErrorKind::AddrInUse);
        let msg = err.to_string();
        assert!(msg.contains(&first.local_addr().to_string()), "{msg}");
        assert!(msg.contains("another broker"), "{msg}");
    }

    /// Sessions get the shutdown through their token, and shutdown waits for them.
    #[tokio::test]
    async fn serves_and_shuts_down_gracefully() {
        let token = CancellationToken::new();
        let mut listeners = Listeners::new(token.clone());
        let bound = bind("test", loopback()).unwrap();
        let addr = bound.local_addr();
        let closed_politely = Arc::new(AtomicUsize::new(0));
        let counter = closed_politely.clone();
        listeners.serve(bound, move |mut stream, _peer, token| {
            let counter = counter.clone();
            async move {
                assert!(stream.nodelay().unwrap());
                let mut buf = [0u8; 4];
                tokio::select! {
                    _ = stream.read_exact(&mut buf) => {}
                    () = token.cancelled() => {
                        stream.write_all(b"bye!").await.unwrap();
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        });
        let mut client = TcpStream::connect(addr).await.unwrap();
        // Make sure the connection was accepted before shutting down.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let left = listeners.shutdown(Duration::from_secs(5)).await;
        assert_eq!(left, 0);
        assert_eq!(closed_politely.load(Ordering::SeqCst), 1);
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"bye!");
        // The listener is closed: new connections are refused.
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn shutdown_gives_up_after_the_timeout() {
        let mut listeners = Listeners::new(CancellationToken::new());
        let bound = bind("test", loopback()).unwrap();
        let addr = bound.local_addr();
        // A session that ignores its token.
        listeners.serve(bound, |_stream, _peer, _token| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        let _client = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let left = listeners.shutdown(Duration::from_millis(100)).await;
        assert_eq!(left, 1);
    }
}
