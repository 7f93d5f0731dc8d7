//! The engine: one model under every protocol (see docs/architecture.md).
//!
//! Sessions hold an `Arc<Engine>`, look up a [`Vhost`], and call it to declare, bind, publish
//! and consume. Deliveries come back to a session as [`Outbound`] events on the sender it
//! registered in a [`ChannelHandle`]. The engine knows no wire format.

pub mod definitions;
pub mod error;
pub mod exchange;
pub mod mailbox;
pub mod message;
pub mod queue;
pub mod sns;
pub mod topic;
pub mod vhost;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

pub use error::{EngineError, EngineResult, ErrorKind};
pub use exchange::{Binding, Destination, Exchange, ExchangeKind, ExchangeSettings};
pub use message::{Message, Properties, SharedMessage, Table, Value};
pub use queue::{
    ConsumerSpec, Enqueued, GetMode, Queue, QueueArgs, QueueSettings, Received, Redrive, Settle,
    GROUP_ID_HEADER, VISIBLE_AT_HEADER,
};
pub use sns::SnsFanout;
pub use vhost::{PublishOutcome, Vhost};

pub use crate::store::Lsn;
use crate::store::{Store, StoreOptions};

/// Identifies a client connection across protocols (exclusive queues, leases).
pub type ConnectionId = u64;
/// Queue-local id of an in-flight message; sessions map their delivery tags to it.
pub type DeliveryId = u64;

/// What the engine sends to a session.
#[derive(Debug)]
pub enum Outbound {
    /// A message for a consumer of `channel`.
    Deliver {
        channel: u16,
        consumer_tag: Arc<str>,
        delivery: Delivery,
    },
    /// The queue of this consumer is gone (AMQP server-sent basic.cancel).
    Cancel {
        channel: u16,
        consumer_tag: Arc<str>,
    },
}

/// A message handed to a session.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The queue it came from; `None` for direct reply-to.
    pub queue: Option<Arc<Queue>>,
    /// In-flight id to settle it with; 0 when delivered without acknowledgement.
    pub id: DeliveryId,
    pub message: SharedMessage,
    /// The message's id in the store, the same across restarts; 0 when it is not stored
    /// (transient, or a non-durable queue). MQTT resends in-flight messages by it.
    pub msg_id: u64,
    pub redelivered: bool,
    /// How many times it was delivered, this time included.
    pub delivery_count: u32,
    /// Ready messages left in the queue after this one (AMQP get-ok message-count).
    pub message_count: u32,
}

/// Prefetch and flow state of one session channel, shared by its consumers on every queue.
#[derive(Debug, Default)]
pub struct ChannelCredit {
    /// Channel-wide prefetch (AMQP basic.qos global=true); 0 = unlimited.
    pub global_prefetch: AtomicU32,
    /// Messages delivered to this channel's consumers and not yet settled.
    pub unacked: AtomicU32,
    /// False while the peer paused delivery (AMQP channel.flow active=false).
    pub paused: AtomicBool,
}

impl ChannelCredit {
    pub fn has_credit(&self, no_ack: bool) -> bool {
        if self.paused.load(Ordering::Acquire) {
            return false;
        }
        if no_ack {
            return true;
        }
        let limit = self.global_prefetch.load(Ordering::Acquire);
        limit == 0 || self.unacked.load(Ordering::Acquire) < limit
    }
    pub fn release(&self, n: u32) {
        let _ = self
            .unacked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(n))
            });
    }
}

/// A session channel as consumers see it: where deliveries go and the credit that gates them.
#[derive(Debug, Clone)]
pub struct ChannelHandle {
    pub conn: ConnectionId,
    pub channel: u16,
    pub tx: mailbox::MailboxSender<Outbound>,
    pub credit: Arc<ChannelCredit>,
}

/// A user as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub password: String,
    /// Allowed to connect from loopback addresses only (RabbitMQ's rule for guest).
    pub loopback_only: bool,
    /// Vhosts this user may open; empty = all.
    pub vhosts: Vec<String>,
    /// AWS access key for the HTTP APIs (SigV4); empty = none.
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Unknown user or wrong password.
    BadCredentials,
    /// The user may connect from loopback only.
    LoopbackOnly,
}

/// Engine settings, filled from the broker configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    pub vhosts: Vec<String>,
    pub users: Vec<User>,
    /// Above this many bytes of messages in memory, publishers are blocked.
    pub memory_high_watermark_bytes: u64,
    /// fsync the message store before confirming (off only for tests and benchmarks).
    pub fsync: bool,
    pub segment_bytes_max: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            data_dir: PathBuf::from("wharf-data"),
            vhosts: vec!["/".into()],
            users: vec![User {
                name: "guest".into(),
                password: "guest".into(),
                loopback_only: true,
                vhosts: Vec::new(),
                access_key_id: "guest".into(),
                secret_access_key: "guest".into(),
            }],
            memory_high_watermark_bytes: 1 << 30,
            fsync: true,
            segment_bytes_max: 64 << 20,
        }
    }
}

/// State every part of the engine reaches: the store, id counters, the memory alarm, and the
/// vhosts (for dead-lettering across queues).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: Option<Store>,
    pub(crate) next_msg_id: AtomicU64,
    pub(crate) next_queue_id: AtomicU64,
    memory_used: AtomicI64,
    memory_limit: i64,
    alarm: watch::Sender<bool>,
    vhosts: RwLock<HashMap<String, Arc<Vhost>>>,
    definitions: definitions::DefinitionsFile,
    /// What each subscription of an SNS topic receives (set once by the AWS listener's setup).
    pub(crate) sns_fanout: OnceLock<Arc<dyn SnsFanout>>,
}

impl Shared {
    pub(crate) fn vhost(&self, name: &str) -> Option<Arc<Vhost>> {
        self.vhosts.read().get(name).cloned()
    }

    /// Accounts message bytes held in memory and raises or clears the memory alarm when the
    /// total crosses the high-water mark.
    pub(crate) fn memory_add(&self, delta: i64) {
        let before = self.memory_used.fetch_add(delta, Ordering::Relaxed);
        let after = before + delta;
        let limit = self.memory_limit;
        if (before <= limit) != (after <= limit) {
            self.alarm.send_replace(after > limit);
        }
    }

    /// Rewrites the durable definitions after a change to a durable entity.
    pub(crate) fn save_definitions(&self) -> EngineResult<()> {
        let vhosts: Vec<Arc<Vhost>> = self.vhosts.read().values().cloned().collect();
        self.definitions
            .save(&vhosts)
            .map_err(|e| EngineError::internal(format!("cannot write definitions: {e}")))
    }
}

/// The engine. Cheap to share as `Arc<Engine>`.
#[derive(Debug)]
pub struct Engine {
    shared: Arc<Shared>,
    users: HashMap<String, User>,
    next_connection_id: AtomicU64,
    closed: AtomicBool,
    ticker: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Holds the data directory's lock for the engine's lifetime.
    _lock: std::fs::File,
}

impl Engine {
    /// Opens the data directory (created if missing), recovers durable definitions and
    /// persistent messages, and starts the timer that drives TTLs, delays and leases.
    /// Must be called inside a tokio runtime.
    pub fn open(config: EngineConfig) -> anyhow::Result<Arc<Engine>> {
        std::fs::create_dir_all(&config.data_dir)?;
        // Two brokers on one data directory would interleave their logs and lose messages.
        let lock = std::fs::File::create(config.data_dir.join("LOCK"))?;
        if let Err(e) = lock.try_lock() {
            anyhow::bail!(
                "data directory {} is in use by another wharf ({e})",
                config.data_dir.display()
            );
        }
        let (store, recovery) = Store::open(StoreOptions {
            dir: config.data_dir.join("msgs"),
            segment_bytes_max: config.segment_bytes_max,
            fsync: config.fsync,
        })?;
        let (alarm, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            store: Some(store.clone()),
            next_msg_id: AtomicU64::new(recovery.max_msg_id + 1),
            next_queue_id: AtomicU64::new(1),
            memory_used: AtomicI64::new(0),
            memory_limit: i64::try_from(config.memory_high_watermark_bytes).unwrap_or(i64::MAX),
            alarm,
            vhosts: RwLock::new(HashMap::new()),
            definitions: definitions::DefinitionsFile::new(
                config.data_dir.join("definitions.json"),
            ),
            sns_fanout: OnceLock::new(),
        });
        let defs = shared.definitions.load()?;
        let mut names: Vec<String> = config.vhosts.clone();
        names.extend(defs.vhosts.iter().cloned());
        for name in names {
            let mut map = shared.vhosts.write();
            map.entry(name.clone())
                .or_insert_with(|| Vhost::new(name, shared.clone()));
        }
        let max_queue_id = defs.queues.iter().map(|q| q.id).max().unwrap_or(0);
        shared
            .next_queue_id
            .store(max_queue_id + 1, Ordering::Relaxed);
        definitions::restore(&shared, &defs)?;
        // Messages back into their queues; records of queues that no longer exist are dropped.
        let mut by_id: HashMap<u64, Arc<Queue>> = HashMap::new();
        for vhost in shared.vhosts.read().values() {
            for q in vhost.queues() {
                by_id.insert(q.id, q);
            }
        }
        let mut restored = 0usize;
        let mut orphans = std::collections::HashSet::new();
        for rec in recovery.messages {
            let Some(msg) = Message::decode(rec.payload) else {
                tracing::warn!(msg_id = rec.msg_id, "undecodable message record dropped");
                for q in rec.queues {
                    store.ack(q, rec.msg_id);
                }
                continue;
            };
            let msg = Arc::new(msg);
            for qid in rec.queues {
                match by_id.get(&qid) {
                    Some(q) => {
                        q.restore(msg.clone(), rec.msg_id);
                        restored += 1;
                    }
                    None => {
                        orphans.insert(qid);
                    }
                }
            }
        }
        for qid in orphans {
            store.drop_queue(qid);
        }
        tracing::info!(
            messages = restored,
            segments = recovery.segments,
            truncated_bytes = recovery.truncated_bytes,
            "recovered message store"
        );
        let engine = Arc::new(Engine {
            shared,
            users: config
                .users
                .iter()
                .map(|u| (u.name.clone(), u.clone()))
                .collect(),
            next_connection_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            ticker: Mutex::new(None),
            _lock: lock,
        });
        let weak = Arc::downgrade(&engine);
        *engine.ticker.lock() = Some(tokio::spawn(tick_loop(weak)));
        Ok(engine)
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<Vhost>> {
        self.shared.vhost(name)
    }

    pub fn vhosts(&self) -> Vec<Arc<Vhost>> {
        self.shared.vhosts.read().values().cloned().collect()
    }

    /// Checks a login. `peer` decides for loopback-only users.
    pub fn authenticate(
        &self,
        user: &str,
        password: &str,
        peer: SocketAddr,
    ) -> Result<User, AuthError> {
        let Some(u) = self.users.get(user) else {
            return Err(AuthError::BadCredentials);
        };
        if u.password != password {
            return Err(AuthError::BadCredentials);
        }
        if u.loopback_only && !peer.ip().is_loopback() {
            return Err(AuthError::LoopbackOnly);
        }
        Ok(u.clone())
    }

    /// Checks a login vouched for by a verified client certificate: the user must exist and
    /// the loopback rule still applies.
    pub fn authenticate_certificate(
        &self,
        user: &str,
        peer: SocketAddr,
    ) -> Result<User, AuthError> {
        let Some(u) = self.users.get(user) else {
            return Err(AuthError::BadCredentials);
        };
        if u.loopback_only && !peer.ip().is_loopback() {
            return Err(AuthError::LoopbackOnly);
        }
        Ok(u.clone())
    }

    /// The user holding an AWS access key id (SigV4).
    pub fn user_by_access_key(&self, access_key_id: &str) -> Option<User> {
        self.users
            .values()
            .find(|u| !u.access_key_id.is_empty() && u.access_key_id == access_key_id)
            .cloned()
    }

    /// The vhost `name`, created (and made durable) when missing: AWS accounts and regions
    /// get theirs on first use.
    pub fn ensure_vhost(&self, name: &str) -> EngineResult<Arc<Vhost>> {
        if let Some(v) = self.shared.vhost(name) {
            return Ok(v);
        }
        let v = self
            .shared
            .vhosts
            .write()
            .entry(name.to_string())
            .or_insert_with(|| Vhost::new(name.to_string(), self.shared.clone()))
            .clone();
        self.shared.save_definitions()?;
        Ok(v)
    }

    /// Installs the SNS fan-out hook (once; later calls are ignored).
    pub fn set_sns_fanout(&self, fanout: Arc<dyn SnsFanout>) {
        let _ = self.shared.sns_fanout.set(fanout);
    }

    /// Looks a user up without a password (MQTT's anonymous user).
    pub fn user(&self, name: &str) -> Option<User> {
        self.users.get(name).cloned()
    }

    /// Whether `user` may open `vhost`.
    pub fn may_access(&self, user: &User, vhost: &str) -> bool {
        user.vhosts.is_empty() || user.vhosts.iter().any(|v| v == vhost)
    }

    pub fn next_connection_id(&self) -> ConnectionId {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// True while message memory is over the high-water mark: publishers must be blocked.
    pub fn memory_alarm(&self) -> watch::Receiver<bool> {
        self.shared.alarm.subscribe()
    }

    /// Whether the memory alarm is on now.
    pub fn memory_alarm_on(&self) -> bool {
        *self.shared.alarm.borrow()
    }

    /// Resolves once everything up to `lsn` is on disk. Lsn 0 is always durable.
    pub async fn wait_durable(&self, lsn: Lsn) {
        if lsn == 0 {
            return;
        }
        if let Some(store) = &self.shared.store {
            store.wait_durable(lsn).await;
        }
    }

    /// Resolves once every store record submitted before the call is on disk (SQS
    /// DeleteMessage answers only once its ack record is durable, as SendMessage does).
    pub async fn wait_submitted_durable(&self) {
        if let Some(store) = &self.shared.store {
            store.wait_durable(store.submitted_lsn()).await;
        }
    }

    /// Highest Lsn handed out so far: waiting for it covers every record submitted before.
    pub fn submitted_lsn(&self) -> Lsn {
        self.shared.store.as_ref().map_or(0, |s| s.submitted_lsn())
    }

    /// Highest Lsn on disk now.
    pub fn durable_lsn(&self) -> Lsn {
        self.shared.store.as_ref().map_or(0, |s| s.durable_lsn())
    }

    /// A receiver of the durable Lsn, for sessions that confirm many publishes at once.
    pub fn subscribe_durable(&self) -> Option<watch::Receiver<Lsn>> {
        self.shared.store.as_ref().map(|s| s.subscribe_durable())
    }

    /// A connection closed: its exclusive queues are deleted.
    pub fn connection_closed(&self, conn: ConnectionId) {
        for vhost in self.vhosts() {
            vhost.connection_closed(conn);
        }
    }

    /// Flushes and closes the store. Idempotent.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(t) = self.ticker.lock().take() {
            t.abort();
        }
        if let Some(store) = &self.shared.store {
            store.close();
        }
    }
}

/// How often time-driven queue work runs (TTL, delays, deadline leases, x-expires). RabbitMQ's
/// own expiry timers are no finer than this.
const TICK_INTERVAL: Duration = Duration::from_millis(50);

async fn tick_loop(engine: Weak<Engine>) {
    let mut interval = tokio::time::interval(TICK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(engine) = engine.upgrade() else {
            return;
        };
        let now = Instant::now();
        for vhost in engine.vhosts() {
            for q in vhost.queues() {
                if q.needs_tick() && q.tick(now) {
                    tracing::info!(queue = %q.name, vhost = %vhost.name, "queue expired (x-expires)");
                    let _ = vhost.delete_queue_unchecked(&q);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_data_directory_serves_one_engine_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let config = EngineConfig {
            data_dir: dir.path().to_path_buf(),
            fsync: false,
            ..Default::default()
        };
        let first = Engine::open(config.clone()).unwrap();
        let err = Engine::open(config.clone()).unwrap_err();
        assert!(err.to_string().contains("in use by another wharf"), "{err}");
        first.close();
        drop(first);
        Engine::open(config).expect("lock released with the engine");
    }
}
