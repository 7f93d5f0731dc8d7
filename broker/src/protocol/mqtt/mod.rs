//! MQTT 3.1, 3.1.1 and 5.0 session: one task per connection, on the codec in `codecs::mqtt`.
//!
//! - `session.rs`: the connection state machine (CONNECT, publish, subscribe, acks), no I/O;
//! - `mapping.rs`: MQTT publishes <-> engine messages, and the topic-filter matcher;
//! - `retained.rs`: retained messages, durable in the data directory;
//! - `alias.rs`: the topic aliases we send to an MQTT 5 client;
//! - `session_store.rs`: packet-id state of persistent sessions, durable in a journal;
//! - `connection.rs`: the socket, timers, engine events, takeover and shutdown (`serve`).
//!
//! Model (docs/mapping/mqtt.md): a PUBLISH goes to `amq.topic` with the mapped routing key;
//! each MQTT session has one engine queue, `mqtt-subscription-<client id>`, bound to
//! `amq.topic` once per subscription, consumed with the client's Receive Maximum as prefetch.
//!
//! This file holds what every session shares ([`MqttContext`]) and the takeover signals.

mod alias;
mod connection;
mod mapping;
mod retained;
mod session;
mod session_store;

#[cfg(test)]
mod tests;

pub use connection::serve;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration as StdDuration;
use std::time::Duration;

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::{ConnectionId, Engine};
use crate::net::park::ParkingLot;

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
    /// A plain TCP connection idle this long parks (gives up its task and its socket
    /// registration until something concerns it; see [`crate::net::park`]); 0: never.
    pub park_after_ms: u64,
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
            park_after_ms: 5000,
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
#[derive(Debug)]
struct Takeover {
    /// Set to make the session close (session taken over).
    kicked: AtomicBool,
    /// The connection's task, woken by [`Takeover::kick`]: a waker slot rather than a waiter on
    /// a `Notify`, which the task would have to keep (64 bytes) for its whole life.
    kick_waker: AtomicWaker,
    /// Set by the keep-alive sweeper: `wake_at_ms` passed (the keep-alive expired, or the
    /// connection has been idle long enough to park).
    due: AtomicBool,
    /// Set when the listeners' shutdown token woke this connection (this struct is the waker
    /// the connection's shutdown waiter is registered with). The connection looks at this flag
    /// each turn instead of polling the waiter, which would lock the token's waiter list, one
    /// lock shared by every connection, every turn.
    shutdown_woken: AtomicBool,
    /// When the connection wants to be woken, in milliseconds since the context started
    /// ([`NEVER`]: not at all): the earlier of its keep-alive expiry and the time it may park.
    /// Set by the connection as it reads, checked by [`sweep_keep_alives`]: one task for all
    /// connections instead of a timer in each (112 bytes in every task).
    wake_at_ms: AtomicU64,
    /// Fired by the session once it has released everything.
    done: Signal,
}

/// No keep-alive expiry.
const NEVER: u64 = u64::MAX;

/// How often the keep-alive sweeper looks: a client is closed at most this long after 1.5
/// times its keep-alive without a packet.
const KEEP_ALIVE_SWEEP: StdDuration = StdDuration::from_millis(250);

impl Takeover {
    fn new() -> Takeover {
        Takeover {
            kicked: AtomicBool::new(false),
            kick_waker: AtomicWaker::new(),
            due: AtomicBool::new(false),
            shutdown_woken: AtomicBool::new(false),
            wake_at_ms: AtomicU64::new(NEVER),
            done: Signal::default(),
        }
    }

    /// The sweeper wakes the connection at `at_ms` ([`NEVER`]: not at all).
    fn wake_at(&self, at_ms: u64) {
        self.wake_at_ms.store(at_ms, Ordering::Relaxed);
    }

    /// Called by the sweeper: marks the wake-up time passed and wakes the connection (a
    /// parked one through the parking lot's waker).
    fn check_due(&self, now_ms: u64) {
        if now_ms >= self.wake_at_ms.load(Ordering::Relaxed)
            && !self.due.swap(true, Ordering::SeqCst)
        {
            self.kick_waker.wake();
        }
    }

    /// Whether the sweeper found the wake-up time passed since the last call.
    fn take_due(&self) -> bool {
        self.due.swap(false, Ordering::SeqCst)
    }

    /// Whether something happened that a connection about to park must handle first (called
    /// after the parking lot's waker was registered, so that a later one resumes it). Not the
    /// shutdown: the lot resumes everything once the token fires, and refuses to park after.
    fn pending(&self) -> bool {
        self.kicked.load(Ordering::SeqCst) || self.due.load(Ordering::SeqCst)
    }

    /// The waker a kick, an expiry or the sweeper's wake-up wakes while the connection is
    /// parked.
    fn register_waker(&self, waker: &std::task::Waker) {
        self.kick_waker.register(waker);
    }

    fn kick(&self) {
        self.kicked.store(true, Ordering::SeqCst);
        self.kick_waker.wake();
    }

    /// The task of `cx` is the one a kick, an expired keep-alive or the shutdown wakes. Called
    /// before the flags are looked at, so that one set in between is not missed.
    fn register(&self, cx: &std::task::Context<'_>) {
        self.kick_waker.register(cx.waker());
    }

    fn kicked(&self) -> bool {
        self.kicked.load(Ordering::SeqCst)
    }

    /// Whether the shutdown waiter woke us since the last call.
    fn take_shutdown_woken(&self) -> bool {
        self.shutdown_woken.swap(false, Ordering::SeqCst)
    }
}

/// The waker of a connection's shutdown waiter: notes the wake-up, then wakes the task.
impl std::task::Wake for Takeover {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.shutdown_woken.store(true, Ordering::SeqCst);
        self.kick_waker.wake();
    }
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
    /// Where idle plain-TCP connections park (see [`MqttContext::enable_parking`]).
    lot: OnceLock<ParkingLot<Box<connection::Parked>>>,
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
            lot: OnceLock::new(),
        }))
        .inspect(start_sys)
        .inspect(start_keep_alive_sweeper)
    }

    /// Lets idle plain-TCP connections park after `park_after_ms` (nothing happens when that
    /// is 0). `tracker` is the one the listeners run connection tasks in (resumed connections
    /// run there too); `shutdown` is the token the listeners give sessions: when it fires,
    /// every parked connection is resumed and closes as the others do. Must run inside the
    /// tokio runtime, once.
    ///
    /// # Errors
    /// The parking lot's epoll instance could not be made.
    pub fn enable_parking(
        &self,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        if self.config.park_after_ms == 0 || self.lot.get().is_some() {
            return Ok(());
        }
        let hold = tracker.token();
        let resume = connection::resumer(tracker, shutdown.clone());
        let lot = ParkingLot::start(resume, shutdown, Some(hold))?;
        let _ = self.lot.set(lot);
        Ok(())
    }

    /// Milliseconds since the context started: the clock of keep-alive expiries.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.stats.started.elapsed().as_millis()).unwrap_or(NEVER - 1)
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
                "$SYS/broker/clients/parked",
                self.lot.get().map_or(0, ParkingLot::parked).to_string(),
            ),
            (
                "$SYS/broker/clients/resumed",
                self.lot.get().map_or(0, ParkingLot::resumed).to_string(),
            ),
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

/// Starts the keep-alive sweeper (every [`KEEP_ALIVE_SWEEP`]); it stops when the context is
/// dropped.
fn start_keep_alive_sweeper(ctx: &Arc<MqttContext>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak = Arc::downgrade(ctx);
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(KEEP_ALIVE_SWEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(ctx) = weak.upgrade() else {
                return;
            };
            sweep_keep_alives(&ctx);
        }
    });
}

/// Wakes every open session whose keep-alive expired or that may park (they are all in the
/// client registry, parked ones too).
fn sweep_keep_alives(ctx: &MqttContext) {
    let now_ms = ctx.now_ms();
    for c in ctx.clients.lock().values() {
        c.signals.check_due(now_ms);
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
