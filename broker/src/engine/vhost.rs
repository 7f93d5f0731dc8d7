//! A virtual host: its exchanges and queues, declarations with RabbitMQ's equivalence rules,
//! and routing of publishes to queues.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use rand::Rng;

use super::error::{EngineError, EngineResult};
use super::exchange::{Binding, Destination, Exchange, ExchangeKind, ExchangeSettings};
use super::message::{Message, SharedMessage, Table};
use super::queue::{Enqueued, Queue, QueueArgs, QueueSettings};
use super::{ChannelHandle, ConnectionId, Delivery, Outbound, Shared};
use crate::store::Lsn;

/// Pseudo-queue name clients consume from for direct reply-to.
pub const REPLY_TO_QUEUE: &str = "amq.rabbitmq.reply-to";

/// Exchanges every vhost has, as RabbitMQ predeclares them.
const PREDECLARED: [(&str, ExchangeKind); 6] = [
    ("", ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

/// What became of a publish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishOutcome {
    /// At least one queue (or a direct reply-to consumer) took the message.
    pub routed: bool,
    /// A queue refused it (x-overflow reject-publish): confirm with a nack.
    pub rejected: bool,
    /// Wait for this Lsn to be durable before confirming; 0 = nothing to wait for.
    pub lsn: Lsn,
    /// Part of the fan-out could not be stored (an SNS topic's HTTP posts): the publish must
    /// not be confirmed. `rejected` is set too, so publisher confirms nack it.
    pub failed: bool,
}

#[derive(Debug)]
pub struct Vhost {
    pub name: String,
    shared: Arc<Shared>,
    exchanges: RwLock<HashMap<String, Arc<Exchange>>>,
    queues: RwLock<HashMap<String, Arc<Queue>>>,
    /// Direct reply-to consumers by their generated reply queue name.
    reply_to: Mutex<HashMap<String, (ChannelHandle, Arc<str>)>>,
}

fn is_predeclared(name: &str) -> bool {
    PREDECLARED.iter().any(|(n, _)| *n == name)
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

impl Vhost {
    pub(crate) fn new(name: String, shared: Arc<Shared>) -> Arc<Vhost> {
        let exchanges = PREDECLARED
            .iter()
            .map(|(n, kind)| {
                let settings = ExchangeSettings {
                    kind: *kind,
                    durable: true,
                    auto_delete: false,
                    internal: false,
                    arguments: Table::new(),
                };
                (n.to_string(), Exchange::new(*n, settings))
            })
            .collect();
        Arc::new(Vhost {
            name,
            shared,
            exchanges: RwLock::new(exchanges),
            queues: RwLock::new(HashMap::new()),
            reply_to: Mutex::new(HashMap::new()),
        })
    }

    fn no_exchange(&self, name: &str) -> EngineError {
        EngineError::not_found(format!("no exchange '{name}' in vhost '{}'", self.name))
    }

    fn no_queue(&self, name: &str) -> EngineError {
        EngineError::not_found(format!("no queue '{name}' in vhost '{}'", self.name))
    }

    fn default_exchange_refused(&self) -> EngineError {
        EngineError::access_refused("operation not permitted on the default exchange")
    }

    pub fn exchange(&self, name: &str) -> Option<Arc<Exchange>> {
        self.exchanges.read().get(name).cloned()
    }

    pub fn exchanges(&self) -> Vec<Arc<Exchange>> {
        self.exchanges.read().values().cloned().collect()
    }

    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues.read().values().cloned().collect()
    }

    fn persist_if(&self, durable: bool) -> EngineResult<()> {
        if durable {
            self.shared.save_definitions()
        } else {
            Ok(())
        }
    }

    /// exchange.declare with RabbitMQ's rules: reserved `amq.` names (403), equivalence of
    /// an existing exchange (406), passive lookup (404).
    pub fn declare_exchange(
        &self,
        name: &str,
        settings: ExchangeSettings,
        passive: bool,
    ) -> EngineResult<Arc<Exchange>> {
        if name.is_empty() {
            // Even a passive declare, as in RabbitMQ.
            return Err(self.default_exchange_refused());
        }
        if let Some(existing) = self.exchange(name) {
            if passive {
                return Ok(existing);
            }
            let cur = &existing.settings;
            let mismatch = |arg: &str, got: &str, have: &str| {
                EngineError::precondition(format!(
                    "inequivalent arg '{arg}' for exchange '{name}' in vhost '{}': received '{got}' but current is '{have}'",
                    self.name
                ))
            };
            if cur.kind != settings.kind {
                return Err(mismatch("type", settings.kind.as_str(), cur.kind.as_str()));
            }
            if cur.durable != settings.durable {
                return Err(mismatch(
                    "durable",
                    yes_no(settings.durable),
                    yes_no(cur.durable),
                ));
            }
            if cur.auto_delete != settings.auto_delete {
                return Err(mismatch(
                    "auto_delete",
                    yes_no(settings.auto_delete),
                    yes_no(cur.auto_delete),
                ));
            }
            if cur.internal != settings.internal {
                return Err(mismatch(
                    "internal",
                    yes_no(settings.internal),
                    yes_no(cur.internal),
                ));
            }
            let ae_now = cur.arguments.get("alternate-exchange");
            let ae_new = settings.arguments.get("alternate-exchange");
            if ae_now != ae_new {
                return Err(EngineError::precondition(format!(
                    "inequivalent arg 'alternate-exchange' for exchange '{name}' in vhost '{}'",
                    self.name
                )));
            }
            return Ok(existing);
        }
        if passive {
            return Err(self.no_exchange(name));
        }
        if name.starts_with("amq.") {
            return Err(EngineError::access_refused(format!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let durable = settings.durable;
        let exchange = {
            let mut map = self.exchanges.write();
            map.entry(name.to_string())
                .or_insert_with(|| Exchange::new(name, settings))
                .clone()
        };
        self.persist_if(durable)?;
        Ok(exchange)
    }

    /// exchange.delete. Deleting a missing exchange succeeds, as in RabbitMQ.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> EngineResult<()> {
        if is_predeclared(name) {
            return Err(if name.is_empty() {
                self.default_exchange_refused()
            } else {
                EngineError::access_refused(format!(
                    "exchange name '{name}' contains reserved prefix 'amq.*'"
                ))
            });
        }
        let Some(exchange) = self.exchange(name) else {
            return Ok(());
        };
        if if_unused && exchange.has_bindings() {
            return Err(EngineError::precondition(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        self.remove_exchange(&exchange)
    }

    fn remove_exchange(&self, exchange: &Arc<Exchange>) -> EngineResult<()> {
        self.exchanges.write().remove(&exchange.name);
        let dest = Destination::Exchange(exchange.name.clone());
        let mut durable = exchange.settings.durable;
        for other in self.exchanges() {
            if other.unbind_destination(&dest) > 0 {
                durable |= other.settings.durable;
                self.auto_delete_exchange(&other)?;
            }
        }
        self.persist_if(durable)
    }

    /// An auto-delete exchange goes when its last binding as a source goes.
    fn auto_delete_exchange(&self, exchange: &Arc<Exchange>) -> EngineResult<()> {
        if exchange.settings.auto_delete && !exchange.has_bindings() {
            self.remove_exchange(exchange)?;
        }
        Ok(())
    }

    /// Finds a queue for a connection: 404 when missing, 405 when another connection owns it
    /// exclusively.
    pub fn queue(&self, name: &str, conn: ConnectionId) -> EngineResult<Arc<Queue>> {
        let q = self
            .queues
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| self.no_queue(name))?;
        self.check_owner(&q, conn)?;
        Ok(q)
    }

    fn check_owner(&self, q: &Queue, conn: ConnectionId) -> EngineResult<()> {
        match q.settings.exclusive_owner {
            Some(owner) if owner != conn => Err(EngineError::locked(format!(
                "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
                q.name, self.name
            ))),
            _ => Ok(()),
        }
    }

    /// queue.declare with RabbitMQ's rules. An empty name gets a server-generated `amq.gen-`
    /// name. Returns the queue with its ready-message and consumer counts.
    pub fn declare_queue(
        &self,
        name: &str,
        settings: QueueSettings,
        passive: bool,
        conn: ConnectionId,
    ) -> EngineResult<(Arc<Queue>, u32, u32)> {
        if passive {
            let q = self.queue(name, conn)?;
            return Ok((q.clone(), q.message_count(), q.consumer_count()));
        }
        if name.starts_with("amq.") {
            return Err(EngineError::access_refused(format!(
                "queue name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let name = if name.is_empty() {
            generated_name()
        } else {
            name.to_string()
        };
        if let Some(q) = self.queues.read().get(&name).cloned() {
            self.check_owner(&q, conn)?;
            self.check_equivalent(&q, &settings)?;
            q.touch();
            return Ok((q.clone(), q.message_count(), q.consumer_count()));
        }
        let args = QueueArgs::parse(&name, &self.name, &settings.arguments)?;
        let id = self
            .shared
            .next_queue_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let persist = settings.durable && settings.exclusive_owner.is_none();
        let q = {
            let mut map = self.queues.write();
            if let Some(q) = map.get(&name).cloned() {
                // Declared concurrently by someone else: that one stands.
                drop(map);
                self.check_owner(&q, conn)?;
                self.check_equivalent(&q, &settings)?;
                return Ok((q.clone(), q.message_count(), q.consumer_count()));
            }
            let q = Queue::new(
                name.clone(),
                id,
                self.name.clone(),
                settings,
                args,
                self.shared.clone(),
            );
            map.insert(name, q.clone());
            q
        };
        self.persist_if(persist)?;
        Ok((q, 0, 0))
    }

    /// Recreates a durable exchange from the definitions at startup.
    pub(crate) fn restore_exchange(&self, name: &str, settings: ExchangeSettings) {
        self.exchanges
            .write()
            .insert(name.to_string(), Exchange::new(name, settings));
    }

    /// Recreates a durable binding from the definitions at startup.
    pub(crate) fn restore_binding(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: Table,
    ) {
        if let Some(ex) = self.exchange(source) {
            ex.bind(Binding {
                destination,
                routing_key: routing_key.to_string(),
                arguments,
            });
        }
    }

    /// Swaps one binding of `source` for another in one step, written to the definitions
    /// once (SNS SetSubscriptionAttributes: the attributes are the binding's arguments).
    /// False when `old` is not bound.
    pub fn replace_binding(&self, source: &str, old: &Binding, new: Binding) -> EngineResult<bool> {
        let src = self
            .exchange(source)
            .ok_or_else(|| self.no_exchange(source))?;
        if src.settings.kind == ExchangeKind::Sns {
            if let Some(h) = self.shared.sns_fanout.get() {
                h.validate_binding(&new.arguments)
                    .map_err(EngineError::precondition)?;
            }
        }
        if !src.unbind(old) {
            return Ok(false);
        }
        src.bind(new);
        self.persist_if(src.settings.durable)?;
        Ok(true)
    }

    /// Recreates a durable queue from the definitions at startup, with its recorded id.
    pub(crate) fn restore_queue(
        &self,
        name: &str,
        id: u64,
        settings: QueueSettings,
    ) -> EngineResult<()> {
        let args = QueueArgs::parse(name, &self.name, &settings.arguments)?;
        let q = Queue::new(
            name.to_string(),
            id,
            self.name.clone(),
            settings,
            args,
            self.shared.clone(),
        );
        self.queues.write().insert(name.to_string(), q);
        Ok(())
    }

    fn check_equivalent(&self, q: &Queue, s: &QueueSettings) -> EngineResult<()> {
        let mismatch = |arg: &str, got: &str, have: &str| {
            EngineError::precondition(format!(
                "inequivalent arg '{arg}' for queue '{}' in vhost '{}': received '{got}' but current is '{have}'",
                q.name, self.name
            ))
        };
        let cur = &q.settings;
        if cur.durable != s.durable {
            return Err(mismatch("durable", yes_no(s.durable), yes_no(cur.durable)));
        }
        if cur.exclusive_owner.is_some() != s.exclusive_owner.is_some() {
            return Err(mismatch(
                "exclusive",
                yes_no(s.exclusive_owner.is_some()),
                yes_no(cur.exclusive_owner.is_some()),
            ));
        }
        if cur.auto_delete != s.auto_delete {
            return Err(mismatch(
                "auto_delete",
                yes_no(s.auto_delete),
                yes_no(cur.auto_delete),
            ));
        }
        // RabbitMQ compares the x-arguments it acts on; others are free-form.
        for (key, value) in &s.arguments {
            if key.starts_with("x-") && cur.arguments.get(key) != Some(value) {
                let have = cur
                    .arguments
                    .get(key)
                    .map_or("none".to_string(), |v| format!("{v:?}"));
                return Err(mismatch(key, &format!("{value:?}"), &have));
            }
        }
        for key in cur.arguments.keys() {
            if key.starts_with("x-") && !s.arguments.contains_key(key) {
                return Err(mismatch(key, "none", &format!("{:?}", cur.arguments[key])));
            }
        }
        Ok(())
    }

    /// queue.delete with if-unused (406 when it has consumers) and if-empty (406 when it has
    /// ready messages). Deleting a missing queue succeeds with count 0, as in RabbitMQ.
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn: ConnectionId,
    ) -> EngineResult<u32> {
        let q = match self.queue(name, conn) {
            Ok(q) => q,
            Err(e) if e.kind == super::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        if if_unused && q.consumer_count() > 0 {
            return Err(EngineError::precondition(format!(
                "queue '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        if if_empty && q.message_count() > 0 {
            return Err(EngineError::precondition(format!(
                "queue '{name}' in vhost '{}' is not empty",
                self.name
            )));
        }
        self.delete_queue_unchecked(&q)
    }

    /// Removes a queue and its bindings; consumers get a cancel. Returns its message count.
    pub fn delete_queue_unchecked(&self, q: &Arc<Queue>) -> EngineResult<u32> {
        {
            let mut map = self.queues.write();
            match map.get(&q.name) {
                Some(cur) if Arc::ptr_eq(cur, q) => {
                    map.remove(&q.name);
                }
                _ => return Ok(0),
            }
        }
        let dest = Destination::Queue(q.name.clone());
        for exchange in self.exchanges() {
            // An SNS subscription outlives its queue, as on AWS: deliveries to it fail (to
            // its dead-letter queue, if it has one) until a queue of that name exists again.
            let keep = |b: &Binding| {
                exchange.settings.kind == ExchangeKind::Sns && super::sns::is_subscription(b)
            };
            if exchange.unbind_destination_except(&dest, keep) > 0 {
                self.auto_delete_exchange(&exchange)?;
            }
        }
        let count = q.mark_deleted();
        self.persist_if(q.settings.durable)?;
        Ok(count)
    }

    pub fn purge_queue(&self, name: &str, conn: ConnectionId) -> EngineResult<u32> {
        Ok(self.queue(name, conn)?.purge())
    }

    /// queue.bind: 404 for a missing queue or exchange, 403 on the default exchange.
    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: Table,
        conn: ConnectionId,
    ) -> EngineResult<()> {
        let q = self.queue(queue, conn)?;
        let to = BindingEnd::queue(&q);
        self.change_binding(exchange, to, routing_key, arguments, Change::Add, false)
    }

    /// queue.unbind; unbinding what is not bound succeeds, as in RabbitMQ.
    pub fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: Table,
        conn: ConnectionId,
    ) -> EngineResult<()> {
        let q = self.queue(queue, conn)?;
        let to = BindingEnd::queue(&q);
        self.change_binding(exchange, to, routing_key, arguments, Change::Remove, false)
    }

    /// exchange.bind: messages reaching `source` also reach `destination`.
    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: Table,
    ) -> EngineResult<()> {
        let to = self.exchange_end(destination)?;
        self.change_binding(source, to, routing_key, arguments, Change::Add, false)
    }

    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: Table,
    ) -> EngineResult<()> {
        let to = self.exchange_end(destination)?;
        self.change_binding(source, to, routing_key, arguments, Change::Remove, false)
    }

    /// Binds an SNS subscription (the SNS API only: its `x-sns-*` arguments are refused from
    /// clients). `destination` is the subscriber's queue, or the topic itself for
    /// subscriptions the hook serves (HTTP/S endpoints, queues of another vhost).
    pub fn bind_subscription(
        &self,
        source: &str,
        destination: Destination,
        arguments: Table,
    ) -> EngineResult<()> {
        let to = match &destination {
            Destination::Queue(q) => BindingEnd::queue(&*self.queue(q, 0)?),
            Destination::Exchange(e) => self.exchange_end(e)?,
        };
        self.change_binding(source, to, "", arguments, Change::Add, true)
    }

    /// Removes one binding of `source` as it is (an SNS subscription, whose queue may no
    /// longer exist); false when it was not bound.
    pub fn remove_binding(&self, source: &str, binding: &Binding) -> EngineResult<bool> {
        let src = self
            .exchange(source)
            .ok_or_else(|| self.no_exchange(source))?;
        if !src.unbind(binding) {
            return Ok(false);
        }
        self.persist_if(src.settings.durable)?;
        Ok(true)
    }

    fn exchange_end(&self, name: &str) -> EngineResult<BindingEnd> {
        let ex = self.exchange(name).ok_or_else(|| self.no_exchange(name))?;
        Ok(BindingEnd {
            destination: Destination::Exchange(ex.name.clone()),
            durable: ex.settings.durable,
            is_default_exchange: name.is_empty(),
        })
    }

    /// What the four binding methods share, with RabbitMQ's order of checks: the destination
    /// was found by the caller (404 first for it), then the source (404), then 403 if either is
    /// the default exchange. A removal that emptied an auto-delete source deletes it. Only a
    /// binding between two durable ends is written to the definitions.
    fn change_binding(
        &self,
        source: &str,
        to: BindingEnd,
        routing_key: &str,
        arguments: Table,
        change: Change,
        trusted: bool,
    ) -> EngineResult<()> {
        let src = self
            .exchange(source)
            .ok_or_else(|| self.no_exchange(source))?;
        if source.is_empty() || to.is_default_exchange {
            return Err(self.default_exchange_refused());
        }
        if !trusted && src.settings.kind == ExchangeKind::Sns {
            if let Some(arg) = super::sns::reserved_argument(&arguments) {
                return Err(EngineError::access_refused(format!(
                    "binding argument '{arg}' of SNS topic '{source}' in vhost '{}' is set by the SNS API only",
                    self.name
                )));
            }
        }
        if change == Change::Add {
            super::exchange::validate_binding(src.settings.kind, &arguments)?;
            if src.settings.kind == ExchangeKind::Sns {
                if let Some(h) = self.shared.sns_fanout.get() {
                    h.validate_binding(&arguments)
                        .map_err(EngineError::precondition)?;
                }
            }
        }
        let binding = Binding {
            destination: to.destination,
            routing_key: routing_key.to_string(),
            arguments,
        };
        let changed = match change {
            Change::Add => src.bind(binding),
            Change::Remove => {
                let removed = src.unbind(&binding);
                if removed {
                    self.auto_delete_exchange(&src)?;
                }
                removed
            }
        };
        self.persist_if(changed && src.settings.durable && to.durable)
    }

    /// Publishes as a client does: 404 for a missing exchange, 403 for an internal one.
    pub fn publish(&self, exchange: &str, msg: Message) -> EngineResult<PublishOutcome> {
        let ex = self
            .exchange(exchange)
            .ok_or_else(|| self.no_exchange(exchange))?;
        if ex.settings.internal {
            return Err(EngineError::access_refused(format!(
                "cannot publish to internal exchange '{exchange}' in vhost '{}'",
                self.name
            )));
        }
        if exchange.is_empty() && msg.routing_key.starts_with(REPLY_TO_QUEUE) {
            return Ok(self.publish_reply(msg));
        }
        let mut queues: Vec<Arc<Queue>> = Vec::new();
        let mut visited: Vec<String> = Vec::new();
        let mut topics: Vec<Arc<Exchange>> = Vec::new();
        self.route(&ex, &msg, &mut queues, &mut visited, &mut topics);
        let msg: SharedMessage = Arc::new(msg);
        let mut outcome = PublishOutcome {
            routed: !queues.is_empty(),
            ..Default::default()
        };
        let mut encoded: Option<Bytes> = None;
        for q in &queues {
            Self::enqueue(q, &msg, &mut encoded, &mut outcome);
        }
        for topic in topics {
            self.fan_out(&topic, &msg, &visited, &mut outcome);
        }
        Ok(outcome)
    }

    fn enqueue(
        q: &Queue,
        msg: &SharedMessage,
        encoded: &mut Option<Bytes>,
        outcome: &mut PublishOutcome,
    ) {
        match q.publish(msg, encoded) {
            Enqueued::Accepted { lsn } => outcome.lsn = outcome.lsn.max(lsn),
            Enqueued::Rejected => outcome.rejected = true,
        }
    }

    /// Delivers a message that reached an SNS topic's exchange to each of its bindings, as
    /// the SnsFanout hook transforms it (envelope, raw, or nothing when filtered out). An
    /// exchange bound to the topic routes the transformed message on (an MQTT subscriber
    /// behind `amq.topic`, for instance), with the binding's key as its routing key when the
    /// key is not empty: topic bindings carry no key of their own to match on.
    fn fan_out(
        &self,
        topic: &Arc<Exchange>,
        msg: &SharedMessage,
        visited: &[String],
        outcome: &mut PublishOutcome,
    ) {
        let hook = self.shared.sns_fanout.get();
        let prepared;
        let msg = match hook {
            Some(h) => {
                prepared = h.prepare(msg);
                &prepared
            }
            None => msg,
        };
        /// Where one binding's copy goes: its destination, the copy, the binding's key, the
        /// dead-letter queue for when the queue is missing, and a queue of another vhost.
        type Target = (
            Destination,
            SharedMessage,
            String,
            Option<String>,
            Option<(String, String)>,
        );
        let targets: Vec<Target> = topic.with_bindings(|bs| {
            bs.iter()
                .filter_map(|b| {
                    let m = match hook {
                        Some(h) => h.message_for(&self.name, &topic.name, b, msg)?,
                        None => msg.clone(),
                    };
                    let foreign = match (&b.destination, hook) {
                        (Destination::Exchange(_), Some(h)) => h.foreign_queue(b),
                        _ => None,
                    };
                    let dead_letters = match (&b.destination, hook) {
                        (Destination::Queue(_), Some(h)) => h.dead_letter_queue(b),
                        (Destination::Exchange(_), Some(h)) if foreign.is_some() => {
                            h.dead_letter_queue(b)
                        }
                        _ => None,
                    };
                    Some((
                        b.destination.clone(),
                        m,
                        b.routing_key.clone(),
                        dead_letters,
                        foreign,
                    ))
                })
                .collect()
        });
        if let Some(h) = hook {
            // Outside the bindings' lock: the hook may write to disk here.
            if let Err(e) = h.bindings_done() {
                tracing::error!(topic = %topic.name, "SNS fan-out not stored: {e}");
                outcome.failed = true;
                outcome.rejected = true;
            }
        }
        // Each exchange binding routes from what was visited up to this topic: two bindings to
        // the same exchange (two keys into amq.topic) both deliver, and the topic itself stays
        // visited, so no path leads back into it.
        let base = visited.to_vec();
        for (dest, m, key, dead_letters, foreign) in targets {
            if let Some((vhost, name)) = foreign {
                // A subscribed queue of another account or region (an SNS self-binding), or
                // the subscription's dead-letter queue when that queue is missing.
                let q = self
                    .shared
                    .vhost(&vhost)
                    .and_then(|v| v.queues.read().get(&name).cloned());
                self.enqueue_or_dead_letter(q, hook, dead_letters, m, outcome);
                continue;
            }
            match dest {
                Destination::Queue(name) => {
                    let q = self.queues.read().get(&name).cloned();
                    self.enqueue_or_dead_letter(q, hook, dead_letters, m, outcome);
                }
                Destination::Exchange(name) => {
                    let Some(next) = self.exchange(&name) else {
                        continue;
                    };
                    let m: SharedMessage = if key.is_empty() {
                        m
                    } else {
                        let mut owned = (*m).clone();
                        owned.routing_key = key;
                        Arc::new(owned)
                    };
                    let mut queues = Vec::new();
                    let mut topics = Vec::new();
                    let mut visited = base.clone();
                    self.route(&next, &m, &mut queues, &mut visited, &mut topics);
                    let mut encoded = None;
                    for q in &queues {
                        outcome.routed = true;
                        Self::enqueue(q, &m, &mut encoded, outcome);
                    }
                    for t in topics {
                        self.fan_out(&t, &m, &visited, outcome);
                    }
                }
            }
        }
    }

    /// Enqueues a topic binding's copy on its queue, or, when that queue is missing (a
    /// subscription whose queue was deleted), on the subscription's dead-letter queue if any.
    fn enqueue_or_dead_letter(
        &self,
        queue: Option<Arc<Queue>>,
        hook: Option<&Arc<dyn super::SnsFanout>>,
        dead_letters: Option<String>,
        m: SharedMessage,
        outcome: &mut PublishOutcome,
    ) {
        let (q, m) = match queue {
            Some(q) => (Some(q), m),
            None => self.dead_letter(hook, dead_letters, m),
        };
        if let Some(q) = q {
            outcome.routed = true;
            Self::enqueue(&q, &m, &mut None, outcome);
        }
    }

    /// Where the copy of a subscription whose queue is missing goes: its dead-letter queue in
    /// this vhost (as that queue takes it), or nowhere.
    fn dead_letter(
        &self,
        hook: Option<&Arc<dyn super::SnsFanout>>,
        dead_letters: Option<String>,
        m: SharedMessage,
    ) -> (Option<Arc<Queue>>, SharedMessage) {
        let Some(dlq) = dead_letters else {
            return (None, m);
        };
        let Some(q) = self.queues.read().get(&dlq).cloned() else {
            return (None, m);
        };
        let m = match hook {
            Some(h) => h.dead_letter_copy(&self.name, &dlq, m),
            None => m,
        };
        (Some(q), m)
    }

    /// Collects the queues a message reaches from `ex`, following exchange-to-exchange
    /// bindings (each exchange once) and alternate exchanges when nothing matched. SNS topic
    /// exchanges reached are collected in `topics`: they fan out per binding ([`Self::fan_out`]).
    fn route(
        &self,
        ex: &Arc<Exchange>,
        msg: &Message,
        queues: &mut Vec<Arc<Queue>>,
        visited: &mut Vec<String>,
        topics: &mut Vec<Arc<Exchange>>,
    ) {
        if visited.iter().any(|v| v == &ex.name) {
            return;
        }
        visited.push(ex.name.clone());
        if ex.settings.kind == ExchangeKind::Sns {
            topics.push(ex.clone());
            return;
        }
        let before = queues.len();
        let mut matched = false;
        if ex.name.is_empty() {
            if let Some(q) = self.queues.read().get(&msg.routing_key) {
                matched = true;
                if !queues.iter().any(|x| Arc::ptr_eq(x, q)) {
                    queues.push(q.clone());
                }
            }
        } else {
            let mut exchanges: Vec<String> = Vec::new();
            {
                let map = self.queues.read();
                ex.route(
                    &msg.routing_key,
                    msg.properties.headers.as_ref(),
                    |dest| match dest {
                        Destination::Queue(name) => {
                            if let Some(q) = map.get(name) {
                                matched = true;
                                if !queues.iter().any(|x| Arc::ptr_eq(x, q)) {
                                    queues.push(q.clone());
                                }
                            }
                        }
                        Destination::Exchange(name) => exchanges.push(name.clone()),
                    },
                );
            }
            for name in exchanges {
                if let Some(next) = self.exchange(&name) {
                    let (n, t) = (queues.len(), topics.len());
                    self.route(&next, msg, queues, visited, topics);
                    matched |= queues.len() > n || topics.len() > t;
                }
            }
        }
        if !matched && queues.len() == before {
            if let Some(ae) = ex.alternate_exchange().and_then(|n| self.exchange(n)) {
                self.route(&ae, msg, queues, visited, topics);
            }
        }
    }

    /// Registers a direct reply-to consumer; returns the name publishers reply to.
    pub fn register_reply_to(&self, handle: ChannelHandle, consumer_tag: Arc<str>) -> String {
        let token: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(24)
            .map(char::from)
            .collect();
        let name = format!("{REPLY_TO_QUEUE}.{token}");
        self.reply_to
            .lock()
            .insert(name.clone(), (handle, consumer_tag));
        name
    }

    pub fn unregister_reply_to(&self, name: &str) {
        self.reply_to.lock().remove(name);
    }

    fn publish_reply(&self, msg: Message) -> PublishOutcome {
        let target = self.reply_to.lock().get(&msg.routing_key).cloned();
        let Some((handle, tag)) = target else {
            return PublishOutcome::default();
        };
        let delivery = Delivery {
            queue: None,
            id: 0,
            message: Arc::new(msg),
            msg_id: 0,
            redelivered: false,
            delivery_count: 1,
            message_count: 0,
        };
        let sent = handle
            .tx
            .send(Outbound::Deliver {
                channel: handle.channel,
                consumer_tag: tag,
                delivery,
            })
            .is_ok();
        PublishOutcome {
            routed: sent,
            ..Default::default()
        }
    }

    /// A connection closed: its exclusive queues are deleted.
    pub fn connection_closed(&self, conn: ConnectionId) {
        let owned: Vec<Arc<Queue>> = self
            .queues
            .read()
            .values()
            .filter(|q| q.settings.exclusive_owner == Some(conn))
            .cloned()
            .collect();
        for q in owned {
            if let Err(e) = self.delete_queue_unchecked(&q) {
                tracing::warn!(queue = %q.name, error = %e, "deleting exclusive queue");
            }
        }
        self.reply_to.lock().retain(|_, (h, _)| h.conn != conn);
    }
}

/// A server-generated queue name as RabbitMQ makes them: `amq.gen-` and 22 url-safe chars.
fn generated_name() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    let suffix: String = (0..22)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("amq.gen-{suffix}")
}

/// The destination end of a binding being changed.
struct BindingEnd {
    destination: Destination,
    durable: bool,
    /// The default exchange takes no bindings of its own (403).
    is_default_exchange: bool,
}

impl BindingEnd {
    fn queue(q: &Queue) -> Self {
        BindingEnd {
            destination: Destination::Queue(q.name.clone()),
            durable: q.settings.durable,
            is_default_exchange: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Add,
    Remove,
}
