//! MQTT 3.1, 3.1.1 and 5.0 session: one task per connection, on the codec in `codecs::mqtt`.
//!
//! - `session.rs`: the connection state machine (CONNECT, publish, subscribe, acks), no I/O;
//! - `mapping.rs`: MQTT publishes <-> engine messages, and the topic-filter matcher;
//! - `retained.rs`: retained messages, durable in the data directory;
//! - `alias.rs`: the topic aliases we send to an MQTT 5 client;
//! - `session_store.rs`: packet-id state of persistent sessions, durable in a journal.
//!
//! Model (docs/mapping/mqtt.md): a PUBLISH goes to `amq.topic` with the mapped routing key;
//! each MQTT session has one engine queue, `mqtt-subscription-<client id>`, bound to
//! `amq.topic` once per subscription, consumed with the client's Receive Maximum as prefetch.
//!
//! This file owns the socket: one `select!` over reads, writes, engine events, durability
//! progress (PUBACK/PUBREC wait for the store), the keep-alive timer, takeover and shutdown.

mod alias;
mod mapping;
mod retained;
mod session;
mod session_store;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{alarm_changed, durable_changed, write_or_flush};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::net::Peer;

use crate::engine::{ConnectionId, Engine, Outbound};
use session::{Phase, Session};

/// MQTT listener settings (see config.rs for defaults and docs).
#[derive(Debug, Clone)]
pub struct MqttConfig {
    pub vhost: String,
    /// The user a CONNECT without user name logs in as; `None` refuses it.
    pub anonymous_user: Option<String>,
    pub packet_bytes_max: u32,
    pub receive_maximum: u16,
    /// Where retained messages are kept.
    pub data_dir: PathBuf,
    /// Seconds between `$SYS/` statistics publishes; 0 = none.
    pub sys_interval_secs: u64,
    /// fdatasync the session journal (`mqtt-sessions.log`) before what waits for it (the
    /// engine's `fsync` setting).
    pub fsync: bool,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            vhost: "/".into(),
            anonymous_user: None,
            packet_bytes_max: 16 << 20,
            receive_maximum: 100,
            data_dir: PathBuf::from("wharf-data"),
            sys_interval_secs: 10,
            fsync: true,
        }
    }
}

/// The shared subscriptions (full filter, options) of a persistent session offline, and when
/// the session expires (`None`: never).
type OfflineShared = (Vec<(String, session::Sub)>, Option<std::time::Instant>);

/// A connected client, for takeover.
#[derive(Debug)]
struct Connected {
    conn: ConnectionId,
    signals: Arc<Takeover>,
}

/// The takeover signals of a connection, in one allocation (two `CancellationToken`s were two
/// tree nodes of about 120 bytes each, for every connection).
#[derive(Debug, Default)]
struct Takeover {
    /// Fired to make the session close (session taken over).
    kick: Signal,
    /// Fired by the session once it has released everything.
    done: Signal,
}

/// A one-shot signal: once fired, it stays fired.
#[derive(Debug, Default)]
struct Signal {
    fired: AtomicBool,
    notify: Notify,
}

impl Signal {
    fn fire(&self) {
        self.fired.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Resolves once fired.
    async fn fired(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the flag is looked at, so a fire in between is not missed.
            notified.as_mut().enable();
            if self.fired.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

/// What every MQTT session shares.
#[derive(Debug)]
pub struct MqttContext {
    pub engine: Arc<Engine>,
    pub config: MqttConfig,
    clients: Mutex<HashMap<String, Connected>>,
    /// Delayed wills (MQTT 5 Will Delay Interval) by client id.
    wills: Mutex<HashMap<String, CancellationToken>>,
    /// Packet-id state of persistent sessions (QoS 2 inbound, outbound in flight), durable.
    sessions: session_store::SessionStore,
    /// Members of each shared subscription queue (`mqtt-shared-<group>-<hash>`); the last one
    /// to leave deletes the queue. Declaring, joining and leaving happen under this lock.
    shared_members: Mutex<HashMap<String, usize>>,
    /// Shared subscriptions of persistent sessions offline, by client id.
    shared_offline: Mutex<HashMap<String, OfflineShared>>,
    retained: retained::Retained,
    stats: Stats,
}

/// Counters for `$SYS/` (as Mosquitto names them).
#[derive(Debug)]
struct Stats {
    started: Instant,
    /// MQTT packets of any type received / sent.
    packets_received: AtomicU64,
    packets_sent: AtomicU64,
    publish_received: AtomicU64,
    publish_sent: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    /// Subscriptions of connected sessions (shared ones included).
    subscriptions: AtomicI64,
}

fn count(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl MqttContext {
    /// Loads the retained messages from the data directory.
    pub fn new(engine: Arc<Engine>, config: MqttConfig) -> anyhow::Result<Arc<MqttContext>> {
        std::fs::create_dir_all(&config.data_dir)?;
        let retained = retained::Retained::open(config.data_dir.clone())?;
        let sessions = session_store::SessionStore::open(&config.data_dir, config.fsync)?;
        tracing::info!(retained = retained.len(), "MQTT retained messages loaded");
        Ok(Arc::new(MqttContext {
            engine,
            config,
            clients: Mutex::new(HashMap::new()),
            wills: Mutex::new(HashMap::new()),
            sessions,
            shared_members: Mutex::new(HashMap::new()),
            shared_offline: Mutex::new(HashMap::new()),
            retained,
            stats: Stats {
                started: Instant::now(),
                packets_received: AtomicU64::new(0),
                packets_sent: AtomicU64::new(0),
                publish_received: AtomicU64::new(0),
                publish_sent: AtomicU64::new(0),
                bytes_received: AtomicU64::new(0),
                bytes_sent: AtomicU64::new(0),
                subscriptions: AtomicI64::new(0),
            },
        }))
        .inspect(start_sys)
    }

    /// The `$SYS/` topics and their values now.
    fn sys_values(&self) -> Vec<(&'static str, String)> {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed).to_string();
        vec![
            (
                "$SYS/broker/version",
                format!("wharf version {}", env!("CARGO_PKG_VERSION")),
            ),
            (
                "$SYS/broker/uptime",
                format!("{} seconds", s.started.elapsed().as_secs()),
            ),
            (
                "$SYS/broker/clients/connected",
                self.clients.lock().len().to_string(),
            ),
            ("$SYS/broker/messages/received", get(&s.packets_received)),
            ("$SYS/broker/messages/sent", get(&s.packets_sent)),
            (
                "$SYS/broker/publish/messages/received",
                get(&s.publish_received),
            ),
            ("$SYS/broker/publish/messages/sent", get(&s.publish_sent)),
            ("$SYS/broker/load/bytes/received", get(&s.bytes_received)),
            ("$SYS/broker/load/bytes/sent", get(&s.bytes_sent)),
            (
                "$SYS/broker/subscriptions/count",
                s.subscriptions.load(Ordering::Relaxed).max(0).to_string(),
            ),
            (
                "$SYS/broker/retained messages/count",
                self.retained.count().to_string(),
            ),
        ]
    }

    /// Publishes the `$SYS/` values that changed since `last` as retained messages.
    fn publish_sys(&self, last: &mut HashMap<&'static str, String>) {
        let Some(vhost) = self.engine.vhost(&self.config.vhost) else {
            return;
        };
        for (topic, value) in self.sys_values() {
            if last.get(topic) == Some(&value) {
                continue;
            }
            let mut msg = mapping::to_message(
                topic,
                value.clone().into(),
                codecs::mqtt::QoS::AtMostOnce,
                &Default::default(),
            );
            if let Some(h) = msg.properties.headers.as_mut() {
                h.insert(mapping::RETAIN_HEADER.into(), crate::engine::Value::U8(1));
            }
            self.retained.set_volatile(topic, msg.clone());
            if let Err(e) = vhost.publish(mapping::EXCHANGE, msg) {
                tracing::warn!(error = %e, topic, "cannot publish $SYS statistics");
            }
            last.insert(topic, value);
        }
    }
}

/// Starts the `$SYS/` publisher (every `sys_interval_secs`, the first at once); it stops when
/// the context is dropped.
fn start_sys(ctx: &Arc<MqttContext>) {
    let secs = ctx.config.sys_interval_secs;
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if secs == 0 {
        return;
    }
    let weak = Arc::downgrade(ctx);
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(secs));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = HashMap::new();
        loop {
            tick.tick().await;
            let Some(ctx) = weak.upgrade() else {
                return;
            };
            ctx.publish_sys(&mut last);
        }
    });
}

/// A client must send CONNECT within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Engine events handled in one go before the loop looks at the socket again.
const OUTBOUND_BATCH: usize = 512;
/// Output above which engine events wait (the socket is slow).
const OUT_HIGH_WATER: usize = 1 << 20;
/// Bounds of what one read asks for: small for an idle client (a PINGREQ is 2 bytes a
/// minute), large for a busy publisher (big batches, few syscalls).
const READ_MIN: usize = 64;
const READ_MAX: usize = 64 * 1024;

/// The read buffer, sized to the traffic: a read that fills what it was offered doubles the
/// next offer (up to [`READ_MAX`]), one that uses less than a quarter halves it (down to
/// [`READ_MIN`]). Drained, a buffer much bigger than the reads need is given back, so an idle
/// connection waits with a [`READ_MIN`] buffer (it was 4 KiB whatever the traffic).
struct ReadBuf {
    buf: BytesMut,
    /// What the next read is offered at least.
    want: usize,
    /// What the last read was offered.
    offered: usize,
}

impl ReadBuf {
    fn new() -> ReadBuf {
        ReadBuf {
            buf: BytesMut::new(),
            want: READ_MIN,
            offered: 0,
        }
    }

    /// Room for the next read.
    fn prepare(&mut self) {
        if self.buf.capacity() - self.buf.len() < self.want {
            self.buf.reserve(self.want);
        }
        self.offered = self.buf.capacity() - self.buf.len();
    }

    /// A read returned `n` bytes.
    fn read(&mut self, n: usize) {
        if n >= self.offered {
            self.want = (self.want * 2).min(READ_MAX);
        } else if n < self.want / 4 {
            self.want = (self.want / 2).max(READ_MIN);
        }
    }

    /// Everything readable was decoded: give a big buffer back once the reads are small.
    fn drained(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 2 * self.want {
            self.buf = BytesMut::new();
        }
    }
}

/// Serves one MQTT connection until the peer closes, a protocol error closes it, the session is
/// taken over, or `shutdown` fires (MQTT 5 clients then get DISCONNECT 0x8B).
pub async fn serve<S>(
    stream: S,
    peer: impl Into<Peer>,
    ctx: Arc<MqttContext>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let engine = ctx.engine.clone();
    let stats_ctx = ctx.clone();
    let stats = &stats_ctx.stats;
    let peer: Peer = peer.into();
    let mut s = Session::new(ctx, &peer);
    let peer = peer.addr;
    let (mut reader, mut writer) = tokio::io::split(stream);
    // Bytes handed to the writer since its last flush.
    let mut unflushed = false;
    let mut rbuf = ReadBuf::new();
    let mut durable = engine.subscribe_durable();
    let mut journal = Some(stats_ctx.sessions.subscribe_durable());
    // Memory alarm: a connection that has published is not read from while it is on (as
    // RabbitMQ's MQTT plugin blocks publishers); its keep-alive is suspended meanwhile.
    let mut alarm = Some(engine.memory_alarm());
    let mut blocked = false;
    let started = Instant::now();
    let mut last_recv = started;
    let mut shutdown_seen = false;
    let mut close_deadline: Option<Instant> = None;
    // One timer and one shutdown waiter for the connection's life: building them every turn
    // would register and drop a timer entry and a waiter per batch.
    let timer = tokio::time::sleep_until(started + CONNECT_TIMEOUT);
    tokio::pin!(timer);
    let shutdown = shutdown.cancelled_owned();
    tokio::pin!(shutdown);

    loop {
        while let Some(connect) = s.on_bytes(&mut rbuf.buf) {
            // Boxed: CONNECT happens once, and its future would otherwise make every
            // connection's task bigger for its whole life.
            Box::pin(s.on_connect(*connect)).await;
        }
        rbuf.drained();
        drain_events(&mut s);
        s.flush_gated(engine.durable_lsn(), stats_ctx.sessions.durable_seq());
        if s.phase == Phase::Done {
            if s.out.is_empty() {
                break;
            }
            close_deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(3));
        }
        let alarm_on = alarm.as_ref().is_some_and(|a| *a.borrow());
        let now_blocked = alarm_on && s.publisher && s.phase == Phase::Open;
        if now_blocked != blocked {
            tracing::info!(peer = %peer, client_id = %s.client_id, blocked = now_blocked, "memory alarm: MQTT publisher {}", if now_blocked { "blocked" } else { "unblocked" });
            // The keep-alive starts again when reading resumes.
            last_recv = Instant::now();
            blocked = now_blocked;
        }
        let read_enabled = s.phase != Phase::Done && !blocked;
        let events_enabled = s.out.len() < OUT_HIGH_WATER && s.phase == Phase::Open;
        let (wants_durable, wants_journal) =
            s.waits_for_durability(engine.durable_lsn(), stats_ctx.sessions.durable_seq());
        let keep_alive = (s.phase == Phase::Open && s.keep_alive > 0 && !blocked)
            .then(|| Duration::from_millis(u64::from(s.keep_alive) * 1500));
        let mut deadline = Instant::now() + Duration::from_secs(3600);
        if s.phase == Phase::Connecting {
            deadline = deadline.min(started + CONNECT_TIMEOUT);
        }
        if let Some(k) = keep_alive {
            deadline = deadline.min(last_recv + k);
        }
        if let Some(c) = close_deadline {
            deadline = deadline.min(c);
        }
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        let signals = s.signals.clone();
        if read_enabled {
            rbuf.prepare();
        }

        tokio::select! {
            () = &mut shutdown, if !shutdown_seen => {
                shutdown_seen = true;
                s.on_shutdown();
            }
            () = signals.kick.fired(), if s.phase == Phase::Open => s.on_taken_over(),
            r = reader.read_buf(&mut rbuf.buf), if read_enabled => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    rbuf.read(n);
                    last_recv = Instant::now();
                    count(&stats.bytes_received, n as u64);
                }
            },
            // TLS and WebSocket streams may hold written bytes until flushed (a TCP flush is a
            // no-op): once the output is written, flush.
            r = write_or_flush(&mut writer, &mut s.out), if !s.out.is_empty() || unflushed => match r {
                Ok(Some(0)) | Err(_) => break,
                Ok(Some(n)) => {
                    count(&stats.bytes_sent, n as u64);
                    unflushed = true;
                }
                Ok(None) => unflushed = false,
            },
            Some(ev) = recv(&mut s.rx), if events_enabled => {
                s.on_outbound(ev);
                drain_events(&mut s);
            }
            // Boxed while enabled: a watch wait is 136 bytes, and the task would carry three of
            // them for its whole life (select! holds every branch's future, enabled or not).
            () = boxed(wants_durable.then(|| Box::pin(durable_changed(&mut durable)))), if wants_durable => {}
            () = boxed(wants_journal.then(|| Box::pin(durable_changed(&mut journal)))), if wants_journal => {}
            changed = boxed(s.publisher.then(|| Box::pin(alarm_changed(&mut alarm)))), if s.publisher => {
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
                if keep_alive.is_some_and(|k| now >= last_recv + k) {
                    tracing::info!(peer = %peer, client_id = %s.client_id, "keep-alive timeout, closing");
                    s.on_keep_alive_timeout();
                }
            }
        }
    }
    s.finish();
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
}

fn drain_events(s: &mut Session) {
    for _ in 0..OUTBOUND_BATCH {
        if s.out.len() >= OUT_HIGH_WATER || s.phase != Phase::Open {
            return;
        }
        match s.rx.as_mut().map(mpsc::UnboundedReceiver::try_recv) {
            Some(Ok(ev)) => s.on_outbound(ev),
            _ => return,
        }
    }
}

/// Awaits `f`, or never when there is none.
async fn boxed<F: std::future::Future>(f: Option<std::pin::Pin<Box<F>>>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// The next engine event (never while the session has no engine channel).
async fn recv(rx: &mut Option<mpsc::UnboundedReceiver<Outbound>>) -> Option<Outbound> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}
