//! AMQP 0-9-1 session: one task per connection, translating frames to engine calls.
//!
//! - `session.rs`: the connection state machine (handshake, tune, close, blocked), no I/O;
//! - `methods.rs`: channel frames: content assembly and every channel-level method;
//! - `delivery.rs`: engine events (deliveries, cancels) to frames, channel release;
//! - `channel.rs`: per-channel state (tags, unacked, confirms, tx);
//! - `mapping.rs`: field tables and properties <-> engine types (docs/mapping/amqp.md);
//! - `errors.rs`: reply codes and the engine-error table.
//!
//! This file owns the socket: one `select!` over reads into an owned buffer (cancel-safe),
//! writes of the batched output, engine events, durability progress for confirms, the memory
//! alarm, the heartbeat timers and shutdown.

mod channel;
mod delivery;
mod errors;
mod mapping;
mod methods;
mod session;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{durable_changed, write_or_flush};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::net::Peer;

use crate::engine::Engine;
use session::{Phase, Session, OUT_HIGH_WATER};

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

/// A client must finish the handshake (header to open-ok) within this, as RabbitMQ's
/// handshake_timeout.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Engine events handled in one go before the loop looks at the socket again.
const OUTBOUND_BATCH: usize = 512;

/// Serves one AMQP connection until the peer closes, a protocol error closes it, or
/// `shutdown` fires (then the peer gets connection.close 320).
pub async fn serve<S>(
    stream: S,
    peer: impl Into<Peer>,
    ctx: Arc<AmqpContext>,
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
    let mut rbuf = BytesMut::with_capacity(8 * 1024);
    let mut alarm = engine.memory_alarm();
    let mut durable = engine.subscribe_durable();
    let started = Instant::now();
    let mut last_recv = started;
    let mut last_send = started;
    let mut shutdown_seen = false;
    let mut alarm_live = true;
    s.on_alarm(*alarm.borrow_and_update());
    // One timer for the connection's life, moved to each turn's deadline: building a new one
    // every turn would register and cancel a timer entry per frame batch.
    let timer = tokio::time::sleep_until(started);
    tokio::pin!(timer);

    loop {
        s.on_bytes(&mut rbuf);
        // Deliveries the frames just caused (a basic.consume dispatching at once, say) go out
        // in the same write as the replies, as RabbitMQ's writer batches them.
        drain_events(&mut s);
        s.flush_gated(engine.durable_lsn());
        if s.phase == Phase::Done {
            if s.out.is_empty() {
                break;
            }
            // What is left to write gets a bounded time: a peer that neither reads nor closes
            // must not keep the task alive.
            s.close_deadline
                .get_or_insert_with(|| std::time::Instant::now() + Duration::from_secs(3));
        }
        let heartbeat = (s.heartbeat != 0 && matches!(s.phase, Phase::Opening | Phase::Open))
            .then(|| Duration::from_secs(u64::from(s.heartbeat)));
        let wants_durable = s.waits_for_durability(engine.durable_lsn());
        let read_enabled = s.wants_input();
        let deadline = next_deadline(&s, started, last_recv, last_send, heartbeat, read_enabled);
        let events_enabled = s.out.len() < OUT_HIGH_WATER && s.phase != Phase::Done;
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
            r = alarm.changed(), if alarm_live => match r {
                Ok(()) => {
                    let on = *alarm.borrow_and_update();
                    s.on_alarm(on);
                }
                // The engine is gone; nothing will raise the alarm again.
                Err(_) => alarm_live = false,
            },
            () = &mut timer => {
                let now = Instant::now();
                if let Some(at) = s.close_deadline {
                    if now >= Instant::from_std(at) {
                        tracing::debug!(peer = %peer, "no connection.close-ok in time");
                        break;
                    }
                }
                if s.handshaking() && now >= started + HANDSHAKE_TIMEOUT {
                    tracing::info!(peer = %peer, "AMQP handshake timed out");
                    break;
                }
                if let Some(h) = heartbeat {
                    // While a publish waits for the memory alarm we do not read, so the peer's
                    // heartbeats cannot be seen: RabbitMQ suspends the check too.
                    if read_enabled && now >= last_recv + 2 * h {
                        tracing::warn!(peer = %peer, timeout_secs = h.as_secs(), "missed heartbeats from client, closing");
                        break;
                    }
                    if now >= last_send + h / 2 && s.out.is_empty() {
                        s.send_heartbeat();
                    }
                }
            }
        }
    }
    s.finish();
    // Best effort: the peer may be gone already.
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
}

/// Handles the engine events already queued, up to a batch and while output has room.
fn drain_events(s: &mut Session) {
    for _ in 0..OUTBOUND_BATCH {
        if s.out.len() >= OUT_HIGH_WATER || s.phase == Phase::Done {
            return;
        }
        match s.rx.try_recv() {
            Ok(ev) => s.on_outbound(ev),
            Err(_) => return,
        }
    }
}

/// The earliest moment a timer needs attention: close-ok wait, handshake timeout, heartbeat
/// send (only while nothing waits to be written: a pending write is traffic already), heartbeat
/// receive check (only while we read: unread bytes are not the peer's silence).
fn next_deadline(
    s: &Session,
    started: Instant,
    last_recv: Instant,
    last_send: Instant,
    heartbeat: Option<Duration>,
    reading: bool,
) -> Instant {
    let mut at = Instant::now() + Duration::from_secs(3600);
    if let Some(close) = s.close_deadline {
        at = at.min(Instant::from_std(close));
    }
    if s.handshaking() {
        at = at.min(started + HANDSHAKE_TIMEOUT);
    }
    if let Some(h) = heartbeat {
        if s.out.is_empty() {
            at = at.min(last_send + h / 2);
        }
        if reading {
            at = at.min(last_recv + 2 * h);
        }
    }
    at
}
