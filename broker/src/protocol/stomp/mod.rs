//! STOMP 1.0, 1.1 and 1.2 sessions: one task per connection, on the codec in `codecs::stomp`.
//!
//! - `session.rs`: CONNECT, dispatch, receipts, transactions, ERROR-then-close (no I/O);
//! - `subscriptions.rs`: SUBSCRIBE/UNSUBSCRIBE, MESSAGE deliveries, ACK/NACK;
//! - `send.rs`: SEND and temp queues;
//! - `destination.rs`: RabbitMQ's destinations, parsed and formatted;
//! - `mapping.rs`: STOMP headers <-> engine properties (docs/mapping/stomp.md).
//!
//! This file owns the socket: one `select!` over reads, writes, engine deliveries, durability
//! progress (receipts of SENDs wait for the store), heart-beats both ways and shutdown.

mod destination;
mod mapping;
mod send;
mod session;
mod subscriptions;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use codecs::stomp::Limits;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{alarm_changed, durable_changed, write_or_flush};
use crate::engine::Engine;
use crate::net::Peer;
use session::{Phase, Session};

/// STOMP listener settings (see config.rs for defaults and docs).
#[derive(Debug, Clone)]
pub struct StompConfig {
    /// The vhost of a CONNECT without a host header.
    pub vhost: String,
    /// The user a CONNECT without login logs in as; `None` refuses it.
    pub default_user: Option<String>,
    pub limits: Limits,
    /// Offered in CONNECTED as both heart-beat values; 0 = no heart-beats.
    pub heartbeat_ms: u32,
    /// Prefetch of a SUBSCRIBE without a prefetch-count header; 0 = unlimited.
    pub prefetch_count: u32,
}

impl Default for StompConfig {
    fn default() -> Self {
        StompConfig {
            vhost: "/".into(),
            default_user: None,
            limits: Limits::default(),
            heartbeat_ms: 1000,
            prefetch_count: 1000,
        }
    }
}

/// What every STOMP session shares.
#[derive(Debug)]
pub struct StompContext {
    pub engine: Arc<Engine>,
    pub config: StompConfig,
}

/// A client must send CONNECT within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Engine events handled in one go before the loop looks at the socket again.
const OUTBOUND_BATCH: usize = 512;
/// Output above which engine events wait (the socket is slow).
const OUT_HIGH_WATER: usize = 1 << 20;
/// A client that agreed to send heart-beats every N ms is closed after this many N ms of
/// silence (network jitter and a busy client get some slack).
const HEARTBEAT_TOLERANCE: u32 = 2;
/// After an ERROR or DISCONNECT, how long the last bytes get to leave.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// Serves one STOMP connection until the peer closes, an error closes it, or `shutdown`
/// fires (the client then gets an ERROR frame).
pub async fn serve<S>(
    stream: S,
    peer: impl Into<Peer>,
    ctx: Arc<StompContext>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Our own node of the listeners' token: the loop below waits on it anew every turn, and on
    // the shared token every connection would take the same lock to do so.
    let shutdown = shutdown.child_token();
    let engine = ctx.engine.clone();
    let peer: Peer = peer.into();
    let mut s = Session::new(ctx, &peer);
    let peer = peer.addr;
    let (mut reader, mut writer) = tokio::io::split(stream);
    // Bytes handed to the writer since its last flush.
    let mut unflushed = false;
    let mut rbuf = BytesMut::with_capacity(4 * 1024);
    let mut durable = engine.subscribe_durable();
    // Memory alarm: a connection that has sent a SEND is not read from while it is on (as
    // RabbitMQ blocks publishers); its heart-beat check is suspended meanwhile.
    let mut alarm = Some(engine.memory_alarm());
    let mut blocked = false;
    let started = Instant::now();
    let mut last_recv = started;
    let mut last_send = started;
    let mut shutdown_seen = false;
    let mut close_deadline: Option<Instant> = None;
    // One timer for the connection's life, moved to each turn's deadline (as the AMQP and MQTT
    // loops do) rather than a new timer entry per turn.
    let timer = tokio::time::sleep_until(started);
    tokio::pin!(timer);

    loop {
        s.on_bytes(&mut rbuf);
        drain_events(&mut s);
        s.flush_gated(engine.durable_lsn());
        if s.phase == Phase::Done {
            if s.out.is_empty() {
                break;
            }
            close_deadline.get_or_insert_with(|| Instant::now() + CLOSE_GRACE);
        }
        let alarm_on = alarm.as_ref().is_some_and(|a| *a.borrow());
        let now_blocked = alarm_on && s.publisher && s.phase == Phase::Open;
        if now_blocked != blocked {
            tracing::info!(peer = %peer, blocked = now_blocked, "memory alarm: STOMP publisher {}", if now_blocked { "blocked" } else { "unblocked" });
            last_recv = Instant::now();
            blocked = now_blocked;
        }
        let read_enabled = s.phase != Phase::Done && !blocked;
        let events_enabled = s.out.len() < OUT_HIGH_WATER && s.phase == Phase::Open;
        let wants_durable = s.waits_for_durability(engine.durable_lsn());
        let open = s.phase == Phase::Open;
        let recv_limit = s
            .recv_every
            .filter(|_| open && !blocked)
            .map(|d| d * HEARTBEAT_TOLERANCE);
        // Only while nothing is waiting to be written: a pending write is traffic already, and
        // a deadline in the past would spin the loop while a slow reader holds it up.
        let send_every = s.send_every.filter(|_| open && s.out.is_empty());
        let deadline = [
            (s.phase == Phase::Connecting).then(|| started + CONNECT_TIMEOUT),
            recv_limit.map(|r| last_recv + r),
            send_every.map(|e| last_send + e),
            close_deadline,
        ]
        .into_iter()
        .flatten()
        .min();
        // Nothing due: an idle wake-up an hour out, kept while it lies ahead so that the
        // timer is not moved on every turn.
        let now = Instant::now();
        let deadline = deadline.unwrap_or_else(|| {
            Some(timer.deadline())
                .filter(|d| *d > now)
                .unwrap_or(now + Duration::from_secs(3600))
        });
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }

        tokio::select! {
            _ = shutdown.cancelled(), if !shutdown_seen => {
                shutdown_seen = true;
                s.on_shutdown();
            }
            r = reader.read_buf(&mut rbuf), if read_enabled => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => last_recv = Instant::now(),
            },
            // TLS and WebSocket streams may hold written bytes until flushed (a TCP flush is a
            // no-op): once the output is written, flush.
            r = write_or_flush(&mut writer, &mut s.out), if !s.out.is_empty() || unflushed => match r {
                Ok(Some(0)) | Err(_) => break,
                Ok(Some(_)) => {
                    last_send = Instant::now();
                    unflushed = true;
                }
                Ok(None) => unflushed = false,
            },
            Some(ev) = s.rx.recv(), if events_enabled => {
                s.on_outbound(ev);
                drain_events(&mut s);
            }
            () = durable_changed(&mut durable), if wants_durable => {}
            changed = alarm_changed(&mut alarm), if s.publisher => {
                if !changed {
                    alarm = None;
                }
            }
            () = &mut timer => {
                let now = Instant::now();
                if close_deadline.is_some_and(|c| now >= c) {
                    break;
                }
                if s.phase == Phase::Connecting && now >= started + CONNECT_TIMEOUT {
                    tracing::info!(peer = %peer, "no CONNECT in time");
                    break;
                }
                if recv_limit.is_some_and(|r| now >= last_recv + r) {
                    s.on_heartbeat_timeout();
                } else if send_every.is_some_and(|e| now >= last_send + e) {
                    // A heart-beat: one EOL.
                    s.out.extend_from_slice(b"\n");
                }
            }
        }
    }
    s.finish();
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
    // Lingering close: bytes the client sent after what we refused are read and dropped until
    // it closes too (up to a second), so the kernel does not answer them with a reset that
    // could destroy the ERROR frame before the client reads it.
    let _ = tokio::time::timeout(CLOSE_GRACE / 3, async {
        let mut sink = [0u8; 8192];
        while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

fn drain_events(s: &mut Session) {
    for _ in 0..OUTBOUND_BATCH {
        if s.out.len() >= OUT_HIGH_WATER || s.phase != Phase::Open {
            return;
        }
        match s.rx.try_recv() {
            Ok(ev) => s.on_outbound(ev),
            Err(_) => return,
        }
    }
}
