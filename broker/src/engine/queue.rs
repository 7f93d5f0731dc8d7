//! Queues: messages ready, delayed and in flight, the consumers they are pushed to, and the
//! leases that bring them back.
//!
//! ### Invariants
//! - A message is in exactly one of `ready`, `delayed` or `in_flight`, or gone.
//! - Every in-flight message holds a lease: a consumer lease (returns to ready when its channel
//!   closes or it is nacked with requeue) or a deadline lease (returns to ready at the deadline).
//! - A persistent message of a durable queue has a `msg_id` in the store; it is acked in the store
//!   exactly when it leaves the queue for good.
//! - `Outbound` events are sent while the state lock is held, so a consumer sees deliveries of one
//!   queue in dispatch order; senders are unbounded and never block.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;

use super::error::{EngineError, EngineResult};
use super::message::{Message, SharedMessage, Table, Value};
use super::{ChannelCredit, ChannelHandle, ConnectionId, Delivery, DeliveryId, Outbound, Shared};
use crate::store::{Lsn, QueueId};

/// What to do when a queue is full (`x-overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    DropHead,
    RejectPublish,
    RejectPublishDlx,
}

/// The queue settings the engine acts on, parsed once from the declare arguments (AMQP
/// x-arguments; SQS attributes map onto the same fields).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueArgs {
    pub message_ttl_ms: Option<u64>,
    pub expires_ms: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
    pub max_priority: Option<u8>,
    pub single_active_consumer: bool,
    /// `x-delivery-limit` (RabbitMQ's quorum-queue argument; SQS's maxReceiveCount): a message
    /// already delivered this many times is dead-lettered (reason `delivery_limit`) instead of
    /// being received again.
    pub delivery_limit: Option<u32>,
}

impl QueueArgs {
    /// Parses and validates x-arguments as RabbitMQ does (406 with its wording when invalid).
    pub fn parse(queue: &str, vhost: &str, args: &Table) -> EngineResult<QueueArgs> {
        let invalid = |arg: &str, why: &str| {
            EngineError::precondition(format!(
                "invalid arg '{arg}' for queue '{queue}' in vhost '{vhost}': {why}"
            ))
        };
        let non_neg = |arg: &str| -> EngineResult<Option<u64>> {
            match args.get(arg) {
                None => Ok(None),
                Some(v) => match v.as_i64() {
                    Some(n) if n >= 0 => Ok(Some(n as u64)),
                    Some(n) => Err(invalid(arg, &format!("{{value_negative,{n}}}"))),
                    None => Err(invalid(arg, "{unacceptable_type}")),
                },
            }
        };
        let string = |arg: &str| -> EngineResult<Option<String>> {
            match args.get(arg) {
                None => Ok(None),
                Some(v) => v
                    .as_str()
                    .map(|s| Some(s.to_string()))
                    .ok_or_else(|| invalid(arg, "{unacceptable_type}")),
            }
        };
        let expires_ms = non_neg("x-expires")?;
        if expires_ms == Some(0) {
            return Err(invalid("x-expires", "{value_zero}"));
        }
        let overflow = match string("x-overflow")?.as_deref() {
            None | Some("drop-head") => Overflow::DropHead,
            Some("reject-publish") => Overflow::RejectPublish,
            Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
            Some(other) => {
                return Err(invalid("x-overflow", &format!("{{invalid_value,{other}}}")))
            }
        };
        let max_priority = match non_neg("x-max-priority")? {
            None => None,
            Some(p) if p <= 255 => Some(p as u8),
            Some(p) => {
                return Err(invalid(
                    "x-max-priority",
                    &format!("{{value_too_large,{p}}}"),
                ))
            }
        };
        let single_active_consumer = match args.get("x-single-active-consumer") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(invalid("x-single-active-consumer", "{unacceptable_type}")),
        };
        Ok(QueueArgs {
            message_ttl_ms: non_neg("x-message-ttl")?,
            expires_ms,
            max_length: non_neg("x-max-length")?,
            max_length_bytes: non_neg("x-max-length-bytes")?,
            overflow,
            dead_letter_exchange: string("x-dead-letter-exchange")?,
            dead_letter_routing_key: string("x-dead-letter-routing-key")?,
            max_priority,
            single_active_consumer,
            delivery_limit: non_neg("x-delivery-limit")?.map(|n| n.min(u32::MAX as u64) as u32),
        })
    }
}

/// Declared settings of a queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSettings {
    pub durable: bool,
    /// The connection that owns an exclusive queue.
    pub exclusive_owner: Option<ConnectionId>,
    pub auto_delete: bool,
    pub arguments: Table,
}

/// A consumer registered on a queue by a session.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub tag: Arc<str>,
    pub channel: ChannelHandle,
    pub no_ack: bool,
    pub exclusive: bool,
    /// `x-priority`: higher-priority consumers get messages while they have credit.
    pub priority: i64,
    /// Per-consumer prefetch (AMQP basic.qos with global=false); 0 = unlimited.
    pub prefetch: u32,
}

#[derive(Debug)]
struct Consumer {
    spec: ConsumerSpec,
    unacked: u32,
}

impl Consumer {
    fn has_credit(&self) -> bool {
        (self.spec.no_ack || self.spec.prefetch == 0 || self.unacked < self.spec.prefetch)
            && self.spec.channel.credit.has_credit(self.spec.no_ack)
    }
}

/// How a message is taken from a queue without a consumer (AMQP basic.get).
#[derive(Debug, Clone)]
pub enum GetMode {
    /// Removed at once (no-ack).
    NoAck,
    /// Leased to a channel until acked, or requeued when the channel closes.
    Channel(ChannelHandle),
}

/// How in-flight messages are settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Done with: removed for good.
    Ack,
    /// Back to the head of the queue, marked redelivered.
    Requeue,
    /// Rejected without requeue: dead-lettered (reason `rejected`) or dropped.
    Reject,
}

/// Why a message is dead-lettered; the words are RabbitMQ's x-death reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    Rejected,
    Expired,
    MaxLen,
    DeliveryLimit,
}

impl DeathReason {
    fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::MaxLen => "maxlen",
            DeathReason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// A message held by a queue.
#[derive(Debug, Clone)]
struct Entry {
    msg: SharedMessage,
    /// Store id when the message is persisted in this queue; 0 otherwise.
    msg_id: u64,
    expires_at: Option<Instant>,
    delivery_count: u32,
    redelivered: bool,
    priority: u8,
    /// When the queue accepted it, ms since the epoch (SQS SentTimestamp).
    enqueued_ms: u64,
    /// When it was first delivered, ms since the epoch; 0 = never (SQS
    /// ApproximateFirstReceiveTimestamp).
    first_delivered_ms: u64,
}

#[derive(Debug, Clone)]
enum Lease {
    Consumer {
        conn: ConnectionId,
        channel: u16,
        tag: Arc<str>,
        credit: Arc<ChannelCredit>,
    },
    Get {
        conn: ConnectionId,
        channel: u16,
    },
    Deadline {
        at: Instant,
        /// When the receive took it: SQS caps a message's visibility at 12 hours from there.
        received: Instant,
    },
}

#[derive(Debug)]
struct InFlight {
    entry: Entry,
    lease: Lease,
}

#[derive(Debug)]
struct State {
    /// Ready messages per priority (index = priority); one lane without x-max-priority.
    ready: Vec<VecDeque<Entry>>,
    ready_count: usize,
    ready_bytes: u64,
    delayed: BTreeMap<(Instant, u64), Entry>,
    in_flight: HashMap<DeliveryId, InFlight>,
    next_delivery_id: DeliveryId,
    consumers: Vec<Consumer>,
    /// No deadline lease lapses before this instant (a lower bound; `None`: no deadline
    /// lease).
    next_deadline: Option<Instant>,
    /// Round-robin position among consumers of equal priority.
    next_consumer: usize,
    had_consumer: bool,
    last_used: Instant,
    deleted: bool,
}

/// Messages removed under the lock, to be dead-lettered after it is released (dead-lettering
/// publishes to other queues, possibly this one).
type DeadLetters = Vec<(Entry, DeathReason)>;

#[derive(Debug)]
pub struct Queue {
    pub name: String,
    pub id: QueueId,
    pub vhost_name: String,
    pub settings: QueueSettings,
    pub args: QueueArgs,
    me: Weak<Queue>,
    shared: Arc<Shared>,
    state: Mutex<State>,
    /// Woken whenever a message becomes ready, so that pull receivers (SQS long polling) wait
    /// for an arrival instead of polling.
    arrivals: tokio::sync::Notify,
    /// Pull receivers waiting on `arrivals` ([`ArrivalWait`]s alive): publishes skip the
    /// Notify (a lock) when there are none, which is nearly always for AMQP/MQTT/STOMP queues.
    pull_waiters: std::sync::atomic::AtomicUsize,
    /// FIFO group holding on every delivery path (SQS receives, consumers, basic.get): a group
    /// with a message in flight gets nothing more until it is settled. SQS sets it for its
    /// FIFO queues ([`Queue::set_hold_groups`]).
    hold_groups: AtomicBool,
}

/// A pull receiver's interest in arrivals, from [`Queue::wait_for_arrivals`]: while it lives,
/// publishes to the queue wake [`ArrivalWait::notified`] futures.
pub struct ArrivalWait<'a> {
    queue: &'a Queue,
}

impl<'a> ArrivalWait<'a> {
    /// A future woken by the next arrival. Create it (and `enable` it) before checking the
    /// queue, so that an arrival in between is not missed.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'a> {
        self.queue.arrivals.notified()
    }
}

impl Drop for ArrivalWait<'_> {
    fn drop(&mut self) {
        self.queue.pull_waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Where [`Queue::receive`] moves a message received too often (SQS RedrivePolicy). It
/// overrides the queue's `x-delivery-limit`/DLX because SQS attributes can change after the
/// queue was declared, and x-arguments cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redrive {
    /// Deliveries after which the next receive moves the message (maxReceiveCount).
    pub max_receive_count: u32,
    /// Queue of the same vhost the message moves to, through the default exchange.
    pub dead_letter_queue: String,
}

/// A message taken by [`Queue::receive`], with the times SQS reports.
#[derive(Debug, Clone)]
pub struct Received {
    pub delivery: Delivery,
    /// When the queue accepted it, ms since the epoch.
    pub enqueued_ms: u64,
    /// When it was first delivered, ms since the epoch.
    pub first_delivered_ms: u64,
}

/// What became of a message offered to a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Accepted {
        lsn: Lsn,
    },
    /// The queue is full and its overflow policy refuses publishes.
    Rejected,
}

/// Header naming a message's group (SQS MessageGroupId): FIFO receives hold a group while one
/// of its messages is in flight.
pub const GROUP_ID_HEADER: &str = "x-message-group-id";

/// Header carrying when a delayed message becomes ready (ms since the epoch), written by
/// senders that delay (SQS DelaySeconds). The delay itself lives in memory; this copy travels in
/// the persisted message so a restart can hold it as delayed until then instead of making it
/// ready at once.
pub const VISIBLE_AT_HEADER: &str = "x-sqs-visible-at";

fn visible_at_ms(msg: &Message) -> Option<u64> {
    msg.properties
        .headers
        .as_ref()?
        .get(VISIBLE_AT_HEADER)?
        .as_str()?
        .parse()
        .ok()
}

fn group_of(msg: &Message) -> Option<&str> {
    msg.properties
        .headers
        .as_ref()?
        .get(GROUP_ID_HEADER)?
        .as_str()
}

/// The groups that have a message in flight under any lease: held under FIFO rules.
fn held_groups(st: &State) -> HashSet<Arc<str>> {
    st.in_flight
        .values()
        .filter_map(|f| group_of(&f.entry.msg).map(Arc::from))
        .collect()
}

/// Whether a ready entry may be delivered while `held` groups are held.
fn deliverable(e: &Entry, held: &HashSet<Arc<str>>) -> bool {
    group_of(&e.msg).is_none_or(|g| !held.contains(g))
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Queue {
    pub(crate) fn new(
        name: String,
        id: QueueId,
        vhost_name: String,
        settings: QueueSettings,
        args: QueueArgs,
        shared: Arc<Shared>,
    ) -> Arc<Queue> {
        let lanes = args.max_priority.map_or(1, |p| p as usize + 1);
        Arc::new_cyclic(|me| Queue {
            name,
            id,
            vhost_name,
            settings,
            args,
            me: me.clone(),
            shared,
            arrivals: tokio::sync::Notify::new(),
            pull_waiters: std::sync::atomic::AtomicUsize::new(0),
            hold_groups: AtomicBool::new(false),
            state: Mutex::new(State {
                ready: (0..lanes).map(|_| VecDeque::new()).collect(),
                ready_count: 0,
                ready_bytes: 0,
                delayed: BTreeMap::new(),
                in_flight: HashMap::new(),
                next_delivery_id: 1,
                consumers: Vec::new(),
                next_deadline: None,
                next_consumer: 0,
                had_consumer: false,
                last_used: Instant::now(),
                deleted: false,
            }),
        })
    }

    fn persistent_here(&self, msg: &Message) -> bool {
        self.settings.durable && msg.properties.persistent() && self.shared.store.is_some()
    }

    /// Messages ready for delivery.
    pub fn message_count(&self) -> u32 {
        self.state.lock().ready_count as u32
    }

    /// Messages in flight (delivered, not yet settled).
    pub fn in_flight_count(&self) -> u32 {
        self.state.lock().in_flight.len() as u32
    }

    pub fn delayed_count(&self) -> u32 {
        self.state.lock().delayed.len() as u32
    }

    pub fn consumer_count(&self) -> u32 {
        self.state.lock().consumers.len() as u32
    }

    pub fn is_deleted(&self) -> bool {
        self.state.lock().deleted
    }

    /// Turns FIFO group holding on or off (see the `hold_groups` field). Turning it on
    /// affects what is delivered from then on, not messages already in flight.
    pub fn set_hold_groups(&self, on: bool) {
        self.hold_groups.store(on, Ordering::Relaxed);
    }

    fn holds_groups(&self) -> bool {
        self.hold_groups.load(Ordering::Relaxed)
    }

    /// Marks the queue used now, for `x-expires`.
    pub fn touch(&self) {
        self.state.lock().last_used = Instant::now();
    }

    /// Offers a published message. `encoded` caches the store encoding across the queues of
    /// one publish so a fan-out encodes once.
    pub fn publish(&self, msg: &SharedMessage, encoded: &mut Option<Bytes>) -> Enqueued {
        self.publish_delayed(msg, encoded, Duration::ZERO)
    }

    /// Registers a pull receiver (SQS long polling) that waits for messages to become ready.
    /// Registered before the receiver first checks the queue: that check takes the state lock
    /// a publish holds while it looks for waiters, so an arrival is either seen by the check or
    /// notified.
    pub fn wait_for_arrivals(&self) -> ArrivalWait<'_> {
        self.pull_waiters.fetch_add(1, Ordering::SeqCst);
        ArrivalWait { queue: self }
    }

    /// [`Queue::publish`] with a delay (SQS DelaySeconds): the message is held as delayed and
    /// becomes ready at `now + delay`. A persisted delayed message stays delayed across a
    /// restart only if it carries [`VISIBLE_AT_HEADER`] (SQS sends do); else it is ready at once.
    pub fn publish_delayed(
        &self,
        msg: &SharedMessage,
        encoded: &mut Option<Bytes>,
        delay: Duration,
    ) -> Enqueued {
        let now = Instant::now();
        let mut dead = DeadLetters::new();
        let result = {
            let mut st = self.state.lock();
            if st.deleted {
                return Enqueued::Accepted { lsn: 0 };
            }
            let size = msg.body.len() as u64;
            if self.is_full(&st, size) {
                match self.args.overflow {
                    Overflow::DropHead => {
                        while self.is_full(&st, size) {
                            match self.pop_ready(&mut st) {
                                Some(e) => dead.push((e, DeathReason::MaxLen)),
                                None => break,
                            }
                        }
                        if self.is_full(&st, size) {
                            // Nothing older is left to drop (x-max-length 0, or a message over
                            // x-max-length-bytes alone): the new message is the head that goes.
                            drop(st);
                            self.shared.memory_add(msg.size_bytes() as i64);
                            dead.push((self.entry(msg.clone(), 0, now), DeathReason::MaxLen));
                            self.dead_letter(dead);
                            return Enqueued::Accepted { lsn: 0 };
                        }
                    }
                    Overflow::RejectPublish => return Enqueued::Rejected,
                    Overflow::RejectPublishDlx => {
                        drop(st);
                        let entry = self.entry(msg.clone(), 0, now);
                        self.shared.memory_add(msg.size_bytes() as i64);
                        self.dead_letter(vec![(entry, DeathReason::MaxLen)]);
                        return Enqueued::Rejected;
                    }
                }
            }
            let mut lsn = 0;
            let mut msg_id = 0;
            if self.persistent_here(msg) {
                if let Some(store) = &self.shared.store {
                    msg_id = self.shared.next_msg_id.fetch_add(1, Ordering::Relaxed);
                    let payload = encoded.get_or_insert_with(|| msg.encode()).clone();
                    // Under the queue lock, so the enqueue record precedes any ack record of it.
                    lsn = store.enqueue(msg_id, &[self.id], payload);
                }
            }
            let entry = self.entry(msg.clone(), msg_id, now);
            self.shared.memory_add(msg.size_bytes() as i64);
            if !delay.is_zero() {
                // Keyed by deadline, then by a unique id so equal deadlines keep their order.
                let seq = st.next_delivery_id;
                st.next_delivery_id += 1;
                st.delayed.insert((now + delay, seq), entry);
                return Enqueued::Accepted { lsn };
            }
            self.push_ready(&mut st, entry, false);
            self.dispatch(&mut st, now, &mut dead);
            // A TTL of zero means "deliver now or never": whatever no consumer took expires.
            self.expire_heads(&mut st, Instant::now(), &mut dead);
            Enqueued::Accepted { lsn }
        };
        self.dead_letter(dead);
        result
    }

    /// Puts back a message recovered from the store at startup.
    pub(crate) fn restore(&self, msg: SharedMessage, msg_id: u64) {
        let mut st = self.state.lock();
        let now = Instant::now();
        let wait = visible_at_ms(&msg).map(|at| at.saturating_sub(now_millis()));
        let mut entry = self.entry(msg, msg_id, now);
        self.shared.memory_add(entry.msg.size_bytes() as i64);
        if let Some(ms) = wait.filter(|ms| *ms > 0) {
            // Still delayed (sent with a delay that has not run out): never delivered, so not
            // redelivered either. Recovery order is store order, so `seq` keeps it.
            let seq = st.next_delivery_id;
            st.next_delivery_id += 1;
            st.delayed
                .insert((now + Duration::from_millis(ms), seq), entry);
            return;
        }
        // It may have been delivered before the restart; say so, as RabbitMQ does.
        entry.redelivered = true;
        self.push_ready(&mut st, entry, false);
    }

    fn entry(&self, msg: SharedMessage, msg_id: u64, now: Instant) -> Entry {
        let ttl = match (self.args.message_ttl_ms, msg.properties.expiration_ms()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let priority = match self.args.max_priority {
            Some(max) => msg.properties.priority.unwrap_or(0).min(max),
            None => 0,
        };
        Entry {
            msg,
            msg_id,
            expires_at: ttl.map(|ms| now + Duration::from_millis(ms)),
            delivery_count: 0,
            redelivered: false,
            priority,
            enqueued_ms: now_millis(),
            first_delivered_ms: 0,
        }
    }

    fn is_full(&self, st: &State, incoming_bytes: u64) -> bool {
        self.args
            .max_length
            .is_some_and(|max| st.ready_count as u64 >= max)
            || self
                .args
                .max_length_bytes
                .is_some_and(|max| st.ready_bytes + incoming_bytes > max)
    }

    /// Deadline leases that have lapsed put their messages back at the head. Scans the
    /// in-flight set only once the earliest known deadline has passed, so a receive does not
    /// pay for every in-flight message.
    fn requeue_lapsed(&self, st: &mut State, now: Instant) {
        if st.next_deadline.is_none_or(|d| d > now) {
            return;
        }
        let mut lapsed = Vec::new();
        let mut next: Option<Instant> = None;
        for (id, f) in &st.in_flight {
            if let Lease::Deadline { at, .. } = f.lease {
                if at <= now {
                    lapsed.push(*id);
                } else {
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
        }
        st.next_deadline = next;
        // Oldest delivery first at the head, as settle() requeues.
        lapsed.sort_unstable();
        for id in lapsed.into_iter().rev() {
            if let Some(f) = st.in_flight.remove(&id) {
                let mut entry = f.entry;
                entry.redelivered = true;
                self.push_ready(st, entry, true);
            }
        }
    }

    fn note_deadline(st: &mut State, at: Instant) {
        st.next_deadline = Some(st.next_deadline.map_or(at, |d| d.min(at)));
    }

    fn push_ready(&self, st: &mut State, entry: Entry, front: bool) {
        // Only pull receivers wait (see wait_for_arrivals); a waiter re-checks under the lock.
        if self.pull_waiters.load(Ordering::SeqCst) > 0 {
            self.arrivals.notify_waiters();
        }
        st.ready_count += 1;
        st.ready_bytes += entry.msg.body.len() as u64;
        let lane = &mut st.ready[entry.priority as usize];
        if front {
            lane.push_front(entry);
        } else {
            lane.push_back(entry);
        }
    }

    fn pop_ready(&self, st: &mut State) -> Option<Entry> {
        let entry = st
            .ready
            .iter_mut()
            .rev()
            .find_map(|lane| lane.pop_front())?;
        st.ready_count -= 1;
        st.ready_bytes -= entry.msg.body.len() as u64;
        Some(entry)
    }

    /// The first ready message (highest priority lane first) that `pred` accepts.
    fn pop_ready_where(&self, st: &mut State, pred: impl Fn(&Entry) -> bool) -> Option<Entry> {
        let entry = st.ready.iter_mut().rev().find_map(|lane| {
            let pos = lane.iter().position(&pred)?;
            lane.remove(pos)
        })?;
        st.ready_count -= 1;
        st.ready_bytes -= entry.msg.body.len() as u64;
        Some(entry)
    }

    /// Drops expired messages at the head of each lane (RabbitMQ expires at the head only).
    fn expire_heads(&self, st: &mut State, now: Instant, dead: &mut DeadLetters) {
        for lane in 0..st.ready.len() {
            while st.ready[lane]
                .front()
                .is_some_and(|e| e.expires_at.is_some_and(|t| t < now))
            {
                let Some(e) = st.ready[lane].pop_front() else {
                    break;
                };
                st.ready_count -= 1;
                st.ready_bytes -= e.msg.body.len() as u64;
                dead.push((e, DeathReason::Expired));
            }
        }
    }

    /// Picks the consumer for the next message: the highest priority with credit, round-robin
    /// among equals; only the first consumer when single-active-consumer is on.
    fn pick_consumer(&self, st: &State) -> Option<usize> {
        if self.args.single_active_consumer {
            return st.consumers.first().filter(|c| c.has_credit()).map(|_| 0);
        }
        let n = st.consumers.len();
        let mut best: Option<(i64, usize)> = None;
        for i in 0..n {
            let idx = (st.next_consumer + i) % n;
            let c = &st.consumers[idx];
            if !c.has_credit() {
                continue;
            }
            if best.is_none_or(|(p, _)| c.spec.priority > p) {
                best = Some((c.spec.priority, idx));
            }
        }
        best.map(|(_, idx)| idx)
    }

    /// Pushes ready messages to consumers with credit.
    fn dispatch(&self, st: &mut State, now: Instant, dead: &mut DeadLetters) {
        // FIFO: one message per group in flight, so a consumer never gets a group's next
        // message while another holds (or may requeue) the one before it.
        let mut held = (self.holds_groups() && st.ready_count > 0 && !st.consumers.is_empty())
            .then(|| held_groups(st));
        while st.ready_count > 0 && !st.consumers.is_empty() {
            self.expire_heads(st, now, dead);
            let Some(idx) = self.pick_consumer(st) else {
                return;
            };
            let next = match &held {
                Some(h) => self.pop_ready_where(st, |e| deliverable(e, h)),
                None => self.pop_ready(st),
            };
            let Some(mut entry) = next else {
                return;
            };
            st.next_consumer = idx + 1;
            entry.delivery_count += 1;
            let consumer = &st.consumers[idx];
            let spec = consumer.spec.clone();
            let id = if spec.no_ack {
                0
            } else {
                let id = st.next_delivery_id;
                st.next_delivery_id += 1;
                id
            };
            let delivery = Delivery {
                queue: self.me.upgrade(),
                id,
                message: entry.msg.clone(),
                msg_id: entry.msg_id,
                redelivered: entry.redelivered,
                delivery_count: entry.delivery_count,
                message_count: st.ready_count as u32,
            };
            let sent = spec
                .channel
                .tx
                .send(Outbound::Deliver {
                    channel: spec.channel.channel,
                    consumer_tag: spec.tag.clone(),
                    delivery,
                })
                .is_ok();
            if !sent {
                // The session is gone; its close will release the rest. Keep the message.
                entry.delivery_count -= 1;
                self.push_ready(st, entry, true);
                st.consumers.remove(idx);
                continue;
            }
            if spec.no_ack {
                self.forget(&entry);
            } else {
                if let (Some(h), Some(g)) = (&mut held, group_of(&entry.msg)) {
                    h.insert(Arc::from(g));
                }
                st.consumers[idx].unacked += 1;
                spec.channel.credit.unacked.fetch_add(1, Ordering::AcqRel);
                st.in_flight.insert(
                    id,
                    InFlight {
                        entry,
                        lease: Lease::Consumer {
                            conn: spec.channel.conn,
                            channel: spec.channel.channel,
                            tag: spec.tag.clone(),
                            credit: spec.channel.credit.clone(),
                        },
                    },
                );
            }
        }
    }

    /// The message leaves this queue for good: its store record and memory are released.
    fn forget(&self, entry: &Entry) {
        if entry.msg_id != 0 {
            if let Some(store) = &self.shared.store {
                store.ack(self.id, entry.msg_id);
            }
        }
        self.shared.memory_add(-(entry.msg.size_bytes() as i64));
    }

    /// Registers a consumer. Refused with 403 when an exclusive consumer holds the queue or an
    /// exclusive consumer is asked for a queue that has consumers, as RabbitMQ does.
    pub fn consume(&self, spec: ConsumerSpec) -> EngineResult<()> {
        let mut dead = DeadLetters::new();
        {
            let mut st = self.state.lock();
            if st.deleted {
                return Err(EngineError::not_found(format!(
                    "no queue '{}' in vhost '{}'",
                    self.name, self.vhost_name
                )));
            }
            if st.consumers.iter().any(|c| c.spec.exclusive)
                || (spec.exclusive && !st.consumers.is_empty())
            {
                return Err(EngineError::access_refused(format!(
                    "queue '{}' in vhost '{}' in exclusive use",
                    self.name, self.vhost_name
                )));
            }
            st.had_consumer = true;
            st.last_used = Instant::now();
            // Most queues have one consumer (an MQTT session's, an RPC reply queue's): room
            // for exactly one first, not the 4 a growing Vec starts with (~200 bytes each).
            if st.consumers.capacity() == 0 {
                st.consumers.reserve_exact(1);
            }
            st.consumers.push(Consumer { spec, unacked: 0 });
            self.dispatch(&mut st, Instant::now(), &mut dead);
        }
        self.dead_letter(dead);
        Ok(())
    }

    /// Removes a consumer; its unacked messages stay leased to the channel. Returns whether
    /// the queue should now be auto-deleted.
    pub fn cancel(&self, conn: ConnectionId, channel: u16, tag: &str) -> bool {
        let mut st = self.state.lock();
        let before = st.consumers.len();
        st.consumers.retain(|c| {
            !(c.spec.channel.conn == conn
                && c.spec.channel.channel == channel
                && &*c.spec.tag == tag)
        });
        let removed = st.consumers.len() != before;
        st.last_used = Instant::now();
        let mut dead = DeadLetters::new();
        // Single active consumer: the next one takes over.
        self.dispatch(&mut st, Instant::now(), &mut dead);
        let auto_delete = removed && self.should_auto_delete(&st);
        drop(st);
        self.dead_letter(dead);
        auto_delete
    }

    fn should_auto_delete(&self, st: &State) -> bool {
        self.settings.auto_delete && st.had_consumer && st.consumers.is_empty() && !st.deleted
    }

    /// Takes one message without a consumer. Returns it with the number of messages left.
    pub fn get(&self, mode: GetMode) -> Option<Delivery> {
        let now = Instant::now();
        let mut dead = DeadLetters::new();
        let result = {
            let mut st = self.state.lock();
            st.last_used = now;
            self.expire_heads(&mut st, now, &mut dead);
            let mut entry = if self.holds_groups() {
                let held = held_groups(&st);
                self.pop_ready_where(&mut st, |e| deliverable(e, &held))?
            } else {
                self.pop_ready(&mut st)?
            };
            entry.delivery_count += 1;
            let mut delivery = Delivery {
                queue: self.me.upgrade(),
                id: 0,
                message: entry.msg.clone(),
                msg_id: entry.msg_id,
                redelivered: entry.redelivered,
                delivery_count: entry.delivery_count,
                message_count: st.ready_count as u32,
            };
            match mode {
                GetMode::NoAck => self.forget(&entry),
                GetMode::Channel(ch) => {
                    let id = st.next_delivery_id;
                    st.next_delivery_id += 1;
                    delivery.id = id;
                    st.in_flight.insert(
                        id,
                        InFlight {
                            entry,
                            lease: Lease::Get {
                                conn: ch.conn,
                                channel: ch.channel,
                            },
                        },
                    );
                }
            }
            Some(delivery)
        };
        self.dead_letter(dead);
        result
    }

    /// Takes up to `max` messages under a deadline lease (SQS ReceiveMessage): each becomes
    /// ready again after `visibility` unless settled first. A message already delivered
    /// `x-delivery-limit` times is dead-lettered instead (SQS redrive).
    pub fn receive(
        &self,
        max: usize,
        visibility: Duration,
        redrive: Option<&Redrive>,
        by_group: bool,
    ) -> Vec<Received> {
        let now = Instant::now();
        let mut dead = DeadLetters::new();
        let mut redriven = Vec::new();
        let limit = redrive
            .map(|r| r.max_receive_count)
            .or(self.args.delivery_limit);
        let mut out = Vec::new();
        {
            let mut st = self.state.lock();
            st.last_used = now;
            self.requeue_lapsed(&mut st, now);
            // FIFO: a group with a message in flight is held until that message is settled or
            // visible again, so order within a group is strict. One receive may still take
            // several messages of a group, in order, as SQS does.
            let by_group = by_group || self.holds_groups();
            let held: HashSet<Arc<str>> = if by_group {
                held_groups(&st)
            } else {
                HashSet::new()
            };
            while out.len() < max {
                self.expire_heads(&mut st, now, &mut dead);
                let next = if by_group {
                    self.pop_ready_where(&mut st, |e| deliverable(e, &held))
                } else {
                    self.pop_ready(&mut st)
                };
                let Some(mut entry) = next else {
                    break;
                };
                if limit.is_some_and(|limit| entry.delivery_count >= limit) {
                    match redrive {
                        Some(_) => redriven.push(entry),
                        None => dead.push((entry, DeathReason::DeliveryLimit)),
                    }
                    continue;
                }
                entry.delivery_count += 1;
                if entry.first_delivered_ms == 0 {
                    entry.first_delivered_ms = now_millis();
                }
                let id = st.next_delivery_id;
                st.next_delivery_id += 1;
                out.push(Received {
                    delivery: Delivery {
                        queue: self.me.upgrade(),
                        id,
                        message: entry.msg.clone(),
                        msg_id: entry.msg_id,
                        redelivered: entry.redelivered,
                        delivery_count: entry.delivery_count,
                        message_count: st.ready_count as u32,
                    },
                    enqueued_ms: entry.enqueued_ms,
                    first_delivered_ms: entry.first_delivered_ms,
                });
                Self::note_deadline(&mut st, now + visibility);
                st.in_flight.insert(
                    id,
                    InFlight {
                        entry,
                        lease: Lease::Deadline {
                            at: now + visibility,
                            received: now,
                        },
                    },
                );
            }
        }
        self.dead_letter(dead);
        if let Some(r) = redrive {
            self.redrive(redriven, r);
        }
        out
    }

    /// Moves messages to an SQS dead-letter queue with their history (x-death, receive count
    /// kept in the headers by [`Queue::with_death`]). A missing queue drops them, as SQS does
    /// when the DLQ was deleted.
    fn redrive(&self, entries: Vec<Entry>, r: &Redrive) {
        if entries.is_empty() {
            return;
        }
        let vhost = self.shared.vhost(&self.vhost_name);
        for entry in entries {
            if let Some(v) = &vhost {
                let mut msg = self.with_death(&entry.msg, DeathReason::DeliveryLimit);
                msg.exchange = String::new();
                msg.routing_key = r.dead_letter_queue.clone();
                let _ = v.publish("", msg);
            }
            self.forget(&entry);
        }
    }

    /// Settles in-flight messages by delivery id. Unknown ids are reported back (AMQP: 406
    /// "unknown delivery tag"). Returns the ids that were not in flight.
    pub fn settle(&self, ids: &[DeliveryId], how: Settle) -> Vec<DeliveryId> {
        let mut unknown = Vec::new();
        let mut dead = DeadLetters::new();
        {
            let mut st = self.state.lock();
            // Requeued messages go back to the head in their original order.
            let mut requeue = Vec::new();
            // Acked messages' store ids: one ack record (one submission to the store's writer)
            // for all of them, so a batch is never split across two group commits.
            let mut acked = Vec::new();
            for &id in ids {
                let Some(inflight) = st.in_flight.remove(&id) else {
                    unknown.push(id);
                    continue;
                };
                self.release_credit(&mut st, &inflight.lease);
                match how {
                    Settle::Ack => {
                        if inflight.entry.msg_id != 0 {
                            acked.push(inflight.entry.msg_id);
                        }
                        self.shared
                            .memory_add(-(inflight.entry.msg.size_bytes() as i64));
                    }
                    Settle::Requeue => requeue.push((id, inflight.entry)),
                    Settle::Reject => dead.push((inflight.entry, DeathReason::Rejected)),
                }
            }
            if let Some(store) = self.shared.store.as_ref().filter(|_| !acked.is_empty()) {
                match acked.as_slice() {
                    [one] => {
                        store.ack(self.id, *one);
                    }
                    many => {
                        store.ack_many(self.id, many);
                    }
                }
            }
            requeue.sort_by_key(|(id, _)| *id);
            for (_, mut entry) in requeue.into_iter().rev() {
                entry.redelivered = true;
                self.push_ready(&mut st, entry, true);
            }
            self.dispatch(&mut st, Instant::now(), &mut dead);
        }
        self.dead_letter(dead);
        unknown
    }

    fn release_credit(&self, st: &mut State, lease: &Lease) {
        if let Lease::Consumer {
            conn,
            channel,
            tag,
            credit,
        } = lease
        {
            if let Some(c) = st.consumers.iter_mut().find(|c| {
                c.spec.channel.conn == *conn
                    && c.spec.channel.channel == *channel
                    && c.spec.tag == *tag
            }) {
                c.unacked = c.unacked.saturating_sub(1);
            }
            // The channel's counter holds the message even when its consumer was cancelled.
            credit.release(1);
        }
    }

    /// Removes a message taken by [`Queue::receive`] (SQS DeleteMessage). Returns false when
    /// `id` is not under a deadline lease: already deleted, or back to ready and received
    /// again under another id. Consumer leases cannot be settled this way.
    pub fn delete_received(&self, id: DeliveryId) -> bool {
        self.delete_received_many(&[id]) == 1
    }

    /// [`Queue::delete_received`] for many (SQS DeleteMessageBatch): settled together, so their
    /// acks go to the store as one record. Returns how many were deleted.
    pub fn delete_received_many(&self, ids: &[DeliveryId]) -> usize {
        let leased: Vec<DeliveryId> = {
            let st = self.state.lock();
            ids.iter()
                .copied()
                .filter(|id| {
                    st.in_flight
                        .get(id)
                        .is_some_and(|f| matches!(f.lease, Lease::Deadline { .. }))
                })
                .collect()
        };
        if leased.is_empty() {
            return 0;
        }
        leased.len() - self.settle(&leased, Settle::Ack).len()
    }

    /// Messages held by a deadline lease (SQS ApproximateNumberOfMessagesNotVisible), and by
    /// any lease (AMQP unacked) in [`Queue::in_flight_count`].
    pub fn received_count(&self) -> u32 {
        self.state
            .lock()
            .in_flight
            .values()
            .filter(|f| matches!(f.lease, Lease::Deadline { .. }))
            .count() as u32
    }

    /// The visibility deadline of a message received under a deadline lease (SQS); `None` once
    /// it is not (deleted, purged, lapsed, or never received that way).
    pub fn receipt_deadline(&self, id: DeliveryId) -> Option<Instant> {
        let st = self.state.lock();
        match st.in_flight.get(&id)?.lease {
            Lease::Deadline { at, .. } if at > Instant::now() => Some(at),
            _ => None,
        }
    }

    /// How long ago a message under a deadline lease was received; `None` when it is not
    /// under one.
    pub fn received_ago(&self, id: DeliveryId) -> Option<Duration> {
        let st = self.state.lock();
        match st.in_flight.get(&id)?.lease {
            Lease::Deadline { received, .. } => Some(received.elapsed()),
            _ => None,
        }
    }

    /// Changes the deadline of a message under a deadline lease (SQS ChangeMessageVisibility).
    /// A zero visibility makes it ready at once. Returns false when it is not in flight.
    pub fn change_visibility(&self, id: DeliveryId, visibility: Duration) -> bool {
        let mut st = self.state.lock();
        let now = Instant::now();
        let Some(inflight) = st.in_flight.get_mut(&id) else {
            return false;
        };
        let Lease::Deadline { received, .. } = inflight.lease else {
            return false;
        };
        inflight.lease = Lease::Deadline {
            at: now + visibility,
            received,
        };
        Self::note_deadline(&mut st, now + visibility);
        if visibility.is_zero() {
            drop(st);
            self.settle(&[id], Settle::Requeue);
        }
        true
    }

    /// Puts ready messages back under the deadline leases they had before a restart (SQS
    /// ReceiveRequestAttemptId answers, which must stay replayable): each `(store msg_id,
    /// visible in, received ago)` is taken from the ready messages by its store id. All or
    /// nothing: when one of them is not ready here (acked, purged, expired, taken by a
    /// consumer), none is leased and `None` is returned. Otherwise the new delivery ids, in
    /// the order given.
    pub fn restore_leases(&self, leases: &[(u64, Duration, Duration)]) -> Option<Vec<DeliveryId>> {
        let mut st = self.state.lock();
        let now = Instant::now();
        let ready = |st: &State, id: u64| {
            id != 0
                && st
                    .ready
                    .iter()
                    .any(|lane| lane.iter().any(|e| e.msg_id == id))
        };
        if leases.iter().any(|(id, _, _)| !ready(&st, *id)) {
            return None;
        }
        let mut ids = Vec::with_capacity(leases.len());
        for &(msg_id, visible_in, received_ago) in leases {
            let mut entry = self.pop_ready_where(&mut st, |e| e.msg_id == msg_id)?;
            entry.delivery_count += 1;
            if entry.first_delivered_ms == 0 {
                entry.first_delivered_ms =
                    now_millis().saturating_sub(received_ago.as_millis() as u64);
            }
            let id = st.next_delivery_id;
            st.next_delivery_id += 1;
            let at = now + visible_in;
            Self::note_deadline(&mut st, at);
            st.in_flight.insert(
                id,
                InFlight {
                    entry,
                    lease: Lease::Deadline {
                        at,
                        received: now.checked_sub(received_ago).unwrap_or(now),
                    },
                },
            );
            ids.push(id);
        }
        Some(ids)
    }

    /// Gives the channel's consumers' credit a chance after acks on another queue freed
    /// channel-wide prefetch, or after channel.flow turned delivery back on.
    pub fn kick(&self) {
        let mut dead = DeadLetters::new();
        {
            let mut st = self.state.lock();
            self.dispatch(&mut st, Instant::now(), &mut dead);
        }
        self.dead_letter(dead);
    }

    /// The channel closed: its consumers go, its leased messages return to ready (redelivered).
    /// Returns whether the queue should now be auto-deleted.
    pub fn release_channel(&self, conn: ConnectionId, channel: u16) -> bool {
        let mut dead = DeadLetters::new();
        let auto_delete = {
            let mut st = self.state.lock();
            let before = st.consumers.len();
            st.consumers
                .retain(|c| !(c.spec.channel.conn == conn && c.spec.channel.channel == channel));
            let removed = before != st.consumers.len();
            let mut ids: Vec<DeliveryId> = st
                .in_flight
                .iter()
                .filter(|(_, f)| match &f.lease {
                    Lease::Consumer {
                        conn: c,
                        channel: ch,
                        ..
                    }
                    | Lease::Get {
                        conn: c,
                        channel: ch,
                    } => *c == conn && *ch == channel,
                    Lease::Deadline { .. } => false,
                })
                .map(|(id, _)| *id)
                .collect();
            ids.sort_unstable();
            for id in ids.into_iter().rev() {
                if let Some(f) = st.in_flight.remove(&id) {
                    let mut entry = f.entry;
                    entry.redelivered = true;
                    self.push_ready(&mut st, entry, true);
                }
            }
            self.dispatch(&mut st, Instant::now(), &mut dead);
            removed && self.should_auto_delete(&st)
        };
        self.dead_letter(dead);
        auto_delete
    }

    /// Which of `msg_ids` (store ids) this queue still holds, ready, delayed or in flight. For a
    /// session that recorded the ids of messages it sent (MQTT resends after a reconnect) and
    /// must forget those that left the queue meanwhile; a scan, so not for the hot path.
    pub fn holds(
        &self,
        msg_ids: &std::collections::HashSet<u64>,
    ) -> std::collections::HashSet<u64> {
        let st = self.state.lock();
        let ready = st.ready.iter().flatten();
        let in_flight = st.in_flight.values().map(|f| &f.entry);
        ready
            .chain(st.delayed.values())
            .chain(in_flight)
            .filter(|e| e.msg_id != 0 && msg_ids.contains(&e.msg_id))
            .map(|e| e.msg_id)
            .collect()
    }

    /// Removes all ready messages; returns how many.
    pub fn purge(&self) -> u32 {
        self.purge_where(false)
    }

    /// SQS PurgeQueue: removes ready and delayed messages and those received under a deadline
    /// lease, whose receipt handles then delete nothing. Messages held by a consumer or
    /// basic.get stay in flight: their channel still settles them. Returns how many went.
    pub fn purge_with_receipts(&self) -> u32 {
        self.purge_where(true)
    }

    fn purge_where(&self, with_receipts: bool) -> u32 {
        let mut st = self.state.lock();
        let mut n = 0;
        let mut ids = Vec::new();
        let mut bytes = 0i64;
        if with_receipts {
            let received: Vec<DeliveryId> = st
                .in_flight
                .iter()
                .filter(|(_, f)| matches!(f.lease, Lease::Deadline { .. }))
                .map(|(id, _)| *id)
                .collect();
            for id in received {
                if let Some(f) = st.in_flight.remove(&id) {
                    n += 1;
                    bytes += f.entry.msg.size_bytes() as i64;
                    if f.entry.msg_id != 0 {
                        ids.push(f.entry.msg_id);
                    }
                }
            }
        }
        for lane in st.ready.iter_mut() {
            for e in lane.drain(..) {
                n += 1;
                bytes += e.msg.size_bytes() as i64;
                if e.msg_id != 0 {
                    ids.push(e.msg_id);
                }
            }
        }
        for (_, e) in std::mem::take(&mut st.delayed) {
            n += 1;
            bytes += e.msg.size_bytes() as i64;
            if e.msg_id != 0 {
                ids.push(e.msg_id);
            }
        }
        st.ready_count = 0;
        st.ready_bytes = 0;
        drop(st);
        if !ids.is_empty() {
            if let Some(store) = &self.shared.store {
                store.ack_many(self.id, &ids);
            }
        }
        self.shared.memory_add(-bytes);
        n
    }

    /// Marks the queue deleted: consumers are told (`Outbound::Cancel`), messages dropped.
    /// Returns the number of ready messages it held.
    pub(crate) fn mark_deleted(&self) -> u32 {
        let mut st = self.state.lock();
        if st.deleted {
            return 0;
        }
        st.deleted = true;
        let count = st.ready_count as u32;
        for c in st.consumers.drain(..) {
            let _ = c.spec.channel.tx.send(Outbound::Cancel {
                channel: c.spec.channel.channel,
                consumer_tag: c.spec.tag.clone(),
            });
        }
        let mut bytes = 0i64;
        for lane in st.ready.iter_mut() {
            bytes += lane
                .drain(..)
                .map(|e| e.msg.size_bytes() as i64)
                .sum::<i64>();
        }
        bytes += std::mem::take(&mut st.delayed)
            .into_values()
            .map(|e| e.msg.size_bytes() as i64)
            .sum::<i64>();
        bytes += st
            .in_flight
            .drain()
            .map(|(_, f)| {
                if let Lease::Consumer { credit, .. } = &f.lease {
                    credit.release(1);
                }
                f.entry.msg.size_bytes() as i64
            })
            .sum::<i64>();
        st.ready_count = 0;
        st.ready_bytes = 0;
        drop(st);
        self.shared.memory_add(-bytes);
        if self.settings.durable {
            if let Some(store) = &self.shared.store {
                store.drop_queue(self.id);
            }
        }
        count
    }

    /// Periodic work: delayed messages become ready, TTLs expire, deadline leases lapse.
    /// Returns true when the queue is unused past `x-expires` and should be deleted.
    pub(crate) fn tick(&self, now: Instant) -> bool {
        let mut dead = DeadLetters::new();
        let expired_unused = {
            let mut st = self.state.lock();
            if st.deleted {
                return false;
            }
            while let Some(entry) = st.delayed.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let e = entry.remove();
                self.push_ready(&mut st, e, false);
            }
            self.requeue_lapsed(&mut st, now);
            self.expire_heads(&mut st, now, &mut dead);
            self.dispatch(&mut st, now, &mut dead);
            self.args.expires_ms.is_some_and(|ms| {
                st.consumers.is_empty()
                    && now.duration_since(st.last_used) >= Duration::from_millis(ms)
            })
        };
        self.dead_letter(dead);
        expired_unused
    }

    /// Whether this queue has time-driven work for [`Queue::tick`].
    pub(crate) fn needs_tick(&self) -> bool {
        self.args.message_ttl_ms.is_some() || self.args.expires_ms.is_some() || {
            let st = self.state.lock();
            !st.delayed.is_empty()
                || st
                    .ready
                    .iter()
                    .any(|l| l.iter().any(|e| e.expires_at.is_some()))
                || st
                    .in_flight
                    .values()
                    .any(|f| matches!(f.lease, Lease::Deadline { .. }))
        }
    }

    /// Re-publishes messages to the dead-letter exchange with their x-death history, or drops
    /// them when the queue has none. Called without the state lock.
    fn dead_letter(&self, dead: DeadLetters) {
        if dead.is_empty() {
            return;
        }
        let target = self.args.dead_letter_exchange.as_ref().and_then(|dlx| {
            self.shared
                .vhost(&self.vhost_name)
                .map(|v| (v, dlx.clone()))
        });
        for (entry, reason) in dead {
            if let Some((vhost, dlx)) = &target {
                let mut msg = self.with_death(&entry.msg, reason);
                // Delivered from the dead-letter exchange, as RabbitMQ shows it; x-death keeps
                // the original one.
                msg.exchange = dlx.clone();
                // A missing dead-letter exchange drops the message, as in RabbitMQ.
                let _ = vhost.publish(dlx, msg);
            }
            self.forget(&entry);
        }
    }

    /// The message as dead-lettered: new routing key if configured, `expiration` moved into
    /// x-death's `original-expiration`, and the x-death entry for (queue, reason) counted up
    /// and moved first.
    fn with_death(&self, msg: &Message, reason: DeathReason) -> Message {
        let mut out = msg.clone();
        let mut headers = out.properties.headers.take().unwrap_or_default();
        let mut deaths = match headers.remove("x-death") {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        };
        let same = |t: &Table| {
            t.get("queue").and_then(Value::as_str) == Some(self.name.as_str())
                && t.get("reason").and_then(Value::as_str) == Some(reason.as_str())
        };
        let prior = deaths
            .iter()
            .position(|d| matches!(d, Value::Table(t) if same(t)))
            .map(|i| deaths.remove(i));
        let count = match &prior {
            Some(Value::Table(t)) => t.get("count").and_then(Value::as_i64).unwrap_or(0) + 1,
            _ => 1,
        };
        let mut death = Table::new();
        death.insert("count".into(), Value::I64(count));
        death.insert("reason".into(), Value::long_string(reason.as_str()));
        death.insert("queue".into(), Value::long_string(self.name.clone()));
        death.insert("time".into(), Value::Timestamp(now_millis() / 1000));
        death.insert("exchange".into(), Value::long_string(msg.exchange.clone()));
        death.insert(
            "routing-keys".into(),
            Value::Array(vec![Value::long_string(msg.routing_key.clone())]),
        );
        if let Some(exp) = out.properties.expiration.take() {
            death.insert("original-expiration".into(), Value::long_string(exp));
        }
        deaths.insert(0, Value::Table(death));
        headers.insert("x-death".into(), Value::Array(deaths));
        if !headers.contains_key("x-first-death-reason") {
            headers.insert(
                "x-first-death-reason".into(),
                Value::long_string(reason.as_str()),
            );
            headers.insert(
                "x-first-death-queue".into(),
                Value::long_string(self.name.clone()),
            );
            headers.insert(
                "x-first-death-exchange".into(),
                Value::long_string(msg.exchange.clone()),
            );
        }
        out.properties.headers = Some(headers);
        if let Some(key) = &self.args.dead_letter_routing_key {
            out.routing_key = key.clone();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    //! Pull delivery with deadline leases (SQS): delays, long-poll wake-ups, redrive, and
    //! deleting by receipt.
    use super::*;
    use crate::engine::mailbox::{mailbox, Mailbox};
    use crate::engine::{Engine, EngineConfig};

    fn open() -> (tempfile::TempDir, Arc<Engine>) {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig {
            data_dir: dir.path().to_path_buf(),
            fsync: false,
            ..Default::default()
        })
        .unwrap();
        (dir, engine)
    }

    fn declare(engine: &Engine, name: &str) -> Arc<Queue> {
        let settings = QueueSettings {
            durable: true,
            exclusive_owner: None,
            auto_delete: false,
            arguments: Table::new(),
        };
        engine
            .vhost("/")
            .unwrap()
            .declare_queue(name, settings, false, 0)
            .unwrap()
            .0
    }

    fn msg(body: &'static str) -> SharedMessage {
        Arc::new(Message::new("", "q", Bytes::from_static(body.as_bytes())))
    }

    /// A message of FIFO group `g`.
    fn grouped(g: &str, body: &'static str) -> SharedMessage {
        let mut m = Message::new("", "q", Bytes::from_static(body.as_bytes()));
        let mut h = Table::new();
        h.insert(GROUP_ID_HEADER.into(), Value::long_string(g));
        m.properties.headers = Some(h);
        Arc::new(m)
    }

    fn channel(conn: ConnectionId) -> (ChannelHandle, Mailbox<Outbound>) {
        let (tx, rx) = mailbox();
        let ch = ChannelHandle {
            conn,
            channel: 1,
            tx,
            credit: Arc::new(ChannelCredit::default()),
        };
        (ch, rx)
    }

    /// What a consumer's channel has been pushed so far: (body, delivery id).
    fn pushed(rx: &mut Mailbox<Outbound>) -> Vec<(String, DeliveryId)> {
        let mut out = Vec::new();
        while let Ok(o) = rx.try_recv() {
            if let Outbound::Deliver { delivery, .. } = o {
                out.push((
                    String::from_utf8_lossy(&delivery.message.body).into_owned(),
                    delivery.id,
                ));
            }
        }
        out
    }

    #[tokio::test]
    async fn delayed_message_becomes_ready_after_its_delay() {
        let (_d, engine) = open();
        let q = declare(&engine, "q");
        q.publish_delayed(&msg("a"), &mut None, Duration::from_millis(200));
        assert_eq!(q.delayed_count(), 1);
        assert!(q
            .receive(10, Duration::from_secs(30), None, false)
            .is_empty());
        tokio::time::sleep(Duration::from_millis(400)).await;
        let got = q.receive(10, Duration::from_secs(30), None, false);
        assert_eq!(got.len(), 1);
        assert_eq!(q.delayed_count(), 0);
    }

    #[tokio::test]
    async fn arrivals_wake_a_waiting_receiver() {
        let (_d, engine) = open();
        let q = declare(&engine, "q");
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move {
                let waiting = q.wait_for_arrivals();
                let notified = waiting.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if q.receive(1, Duration::from_secs(30), None, false)
                    .is_empty()
                {
                    notified.await;
                }
                q.receive(1, Duration::from_secs(30), None, false).len()
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        q.publish(&msg("a"), &mut None);
        let n = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("woken by the publish")
            .unwrap();
        assert_eq!(n, 1);
    }

    #[tokio::test]
    async fn visibility_lapses_and_receive_count_grows() {
        let (_d, engine) = open();
        let q = declare(&engine, "q");
        q.publish(&msg("a"), &mut None);
        let first = q.receive(1, Duration::from_millis(100), None, false);
        assert_eq!(first[0].delivery.delivery_count, 1);
        assert!(first[0].first_delivered_ms >= first[0].enqueued_ms);
        assert_eq!(q.received_count(), 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let second = q.receive(1, Duration::from_secs(30), None, false);
        assert_eq!(second[0].delivery.delivery_count, 2);
        assert_eq!(second[0].first_delivered_ms, first[0].first_delivered_ms);
        // The stale receipt no longer deletes; the fresh one does.
        assert!(!q.delete_received(first[0].delivery.id));
        assert!(q.delete_received(second[0].delivery.id));
        assert_eq!(q.received_count(), 0);
    }

    #[tokio::test]
    async fn redrive_moves_after_max_receive_count() {
        let (_d, engine) = open();
        let q = declare(&engine, "q");
        let dlq = declare(&engine, "dlq");
        let redrive = Redrive {
            max_receive_count: 2,
            dead_letter_queue: "dlq".into(),
        };
        q.publish(&msg("a"), &mut None);
        for _ in 0..2 {
            let got = q.receive(1, Duration::ZERO, Some(&redrive), false);
            assert_eq!(got.len(), 1);
            // Visibility 0: back to ready at once.
            q.change_visibility(got[0].delivery.id, Duration::ZERO);
        }
        assert!(q
            .receive(1, Duration::ZERO, Some(&redrive), false)
            .is_empty());
        let moved = dlq.receive(1, Duration::from_secs(30), None, false);
        assert_eq!(moved.len(), 1);
        let headers = moved[0]
            .delivery
            .message
            .properties
            .headers
            .clone()
            .unwrap();
        assert_eq!(
            headers.get("x-first-death-reason").and_then(Value::as_str),
            Some("delivery_limit")
        );
    }

    #[tokio::test]
    async fn fifo_receive_holds_a_group_while_in_flight() {
        let (_d, engine) = open();
        let q = declare(&engine, "q");
        for (g, b) in [("a", "a1"), ("a", "a2"), ("b", "b1"), ("a", "a3")] {
            q.publish(&grouped(g, b), &mut None);
        }
        let vis = Duration::from_secs(30);
        let bodies = |r: &[Received]| -> Vec<String> {
            r.iter()
                .map(|x| String::from_utf8_lossy(&x.delivery.message.body).into_owned())
                .collect()
        };
        let first = q.receive(2, vis, None, true);
        assert_eq!(bodies(&first), ["a1", "a2"]);
        // Group a is held: only b's message is available.
        let second = q.receive(10, vis, None, true);
        assert_eq!(bodies(&second), ["b1"]);
        assert!(q.receive(10, vis, None, true).is_empty());
        for r in &first {
            assert!(q.delete_received(r.delivery.id));
        }
        assert_eq!(bodies(&q.receive(10, vis, None, true)), ["a3"]);
    }

    #[tokio::test]
    async fn delete_received_refuses_consumer_leases() {
        let (_d, engine) = open();
        let q = declare(&engine, "q");
        q.publish(&msg("a"), &mut None);
        let (tx, _rx) = crate::engine::mailbox::mailbox();
        let ch = ChannelHandle {
            conn: 7,
            channel: 1,
            tx,
            credit: Arc::new(ChannelCredit::default()),
        };
        let d = q.get(GetMode::Channel(ch)).unwrap();
        assert!(
            !q.delete_received(d.id),
            "an AMQP lease is not an SQS receipt"
        );
        assert_eq!(q.in_flight_count(), 1);
    }

    #[tokio::test]
    async fn fifo_consumers_get_one_message_per_group_in_flight() {
        let (_d, engine) = open();
        let q = declare(&engine, "q");
        q.set_hold_groups(true);
        for (g, b) in [("a", "a1"), ("a", "a2"), ("b", "b1"), ("b", "b2")] {
            q.publish(&grouped(g, b), &mut None);
        }
        let (ch1, mut rx1) = channel(1);
        let (ch2, mut rx2) = channel(2);
        for (ch, tag) in [(ch1, "c1"), (ch2, "c2")] {
            q.consume(ConsumerSpec {
                tag: Arc::from(tag),
                channel: ch,
                no_ack: false,
                exclusive: false,
                priority: 0,
                prefetch: 10,
            })
            .unwrap();
        }
        // The first consumer takes a1 and b1; a2 and b2 wait for their groups, even though
        // the second consumer has room.
        let first = pushed(&mut rx1);
        assert_eq!(
            first.iter().map(|(b, _)| b.as_str()).collect::<Vec<_>>(),
            ["a1", "b1"]
        );
        assert!(pushed(&mut rx2).is_empty());
        assert!(q
            .receive(10, Duration::from_secs(30), None, false)
            .is_empty());
        // Acking a1 releases group a: a2 goes to the next consumer with credit.
        assert!(q.settle(&[first[0].1], Settle::Ack).is_empty());
        let next: Vec<String> = pushed(&mut rx1)
            .into_iter()
            .chain(pushed(&mut rx2))
            .map(|(b, _)| b)
            .collect();
        assert_eq!(next, ["a2"]);
        // Requeueing b1 puts it back first in its group: b1 again, never b2 before it.
        assert!(q.settle(&[first[1].1], Settle::Requeue).is_empty());
        let again: Vec<String> = pushed(&mut rx1)
            .into_iter()
            .chain(pushed(&mut rx2))
            .map(|(b, _)| b)
            .collect();
        assert_eq!(again, ["b1"]);
    }

    #[tokio::test]
    async fn fifo_basic_get_skips_held_groups() {
        let (_d, engine) = open();
        let q = declare(&engine, "q");
        q.set_hold_groups(true);
        for (g, b) in [("a", "a1"), ("a", "a2"), ("b", "b1")] {
            q.publish(&grouped(g, b), &mut None);
        }
        let (ch, _rx) = channel(1);
        let get = || q.get(GetMode::Channel(ch.clone()));
        let a1 = get().unwrap();
        assert_eq!(&a1.message.body[..], b"a1");
        assert_eq!(&get().unwrap().message.body[..], b"b1");
        assert!(get().is_none(), "a2 is held while a1 is unacked");
        q.settle(&[a1.id], Settle::Ack);
        assert_eq!(&get().unwrap().message.body[..], b"a2");
    }

    #[tokio::test]
    async fn purge_with_receipts_drops_received_messages_but_not_consumer_ones() {
        let (_d, engine) = open();
        let q = declare(&engine, "q");
        for b in ["r1", "r2", "g1", "ready"] {
            q.publish(&msg(b), &mut None);
        }
        let received = q.receive(2, Duration::from_secs(30), None, false);
        let (ch, _rx) = channel(1);
        let got = q.get(GetMode::Channel(ch)).unwrap();
        assert_eq!(q.purge_with_receipts(), 3);
        assert_eq!(q.message_count(), 0);
        // The basic.get lease stays for its channel to settle; the receipts are stale.
        assert_eq!(q.in_flight_count(), 1);
        for r in &received {
            assert!(q.receipt_deadline(r.delivery.id).is_none());
            assert!(!q.delete_received(r.delivery.id));
        }
        assert!(q.settle(&[got.id], Settle::Ack).is_empty());
    }
}
