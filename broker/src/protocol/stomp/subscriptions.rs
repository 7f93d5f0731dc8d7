//! SUBSCRIBE, UNSUBSCRIBE, MESSAGE deliveries and ACK/NACK.
//!
//! Each subscription is one engine consumer on a channel number of its own (its consumer tag
//! is the subscription id), so its leases can be told apart from the others'. Acks settle
//! engine deliveries by a per-connection delivery tag carried in the MESSAGE's `message-id`
//! (and `ack`, 1.2), written as RabbitMQ writes it: `T_<subscription>@@<session>@@<tag>`.

use std::sync::Arc;

use codecs::stomp::{self, Command, Frame, Version};

use super::destination::{self, Destination};
use super::mapping;
use super::session::{Phase, Session};
use crate::engine::{
    ChannelHandle, ConsumerSpec, Delivery, DeliveryId, EngineError, Outbound, Queue, QueueSettings,
    Settle, Table, Value,
};

/// Unacknowledged deliveries an `ack:auto` subscription may have in the socket's way when
/// no prefetch is set; they are settled as they are written, so this only bounds memory.
const AUTO_WINDOW: u32 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AckMode {
    /// Settled when written (RabbitMQ: no-ack).
    Auto,
    /// An ACK settles its message and every earlier one of the subscription.
    Client,
    /// An ACK settles its message only.
    ClientIndividual,
}

#[derive(Debug)]
pub(super) struct Subscription {
    pub(super) id: String,
    pub(super) ack: AckMode,
    pub(super) queue: Arc<Queue>,
    /// A durable subscription's queue outlives the connection; UNSUBSCRIBE with
    /// `persistent:true` (or an ActiveMQ subscription name) deletes it.
    pub(super) durable: bool,
}

#[derive(Debug)]
pub(super) struct Unacked {
    pub(super) channel: u16,
    pub(super) queue: Arc<Queue>,
    pub(super) id: DeliveryId,
}

/// The tag at the end of a message id (`...@@<tag>`).
fn parse_tag(ack_id: &str) -> Option<u64> {
    ack_id
        .rsplit_once("@@")
        .map_or(ack_id, |(_, t)| t)
        .parse()
        .ok()
}

/// `x-*` SUBSCRIBE headers become queue arguments, as RabbitMQ takes `x-max-length`,
/// `x-message-ttl`, `x-queue-type`... from them: integers as integers, `true`/`false` as
/// booleans, anything else as text. `x-queue-name` names the queue instead.
fn queue_arguments(f: &Frame) -> Table {
    let mut args = Table::new();
    for (k, v) in &f.headers {
        if !k.starts_with("x-") || k == "x-queue-name" || args.contains_key(k) {
            continue;
        }
        let value = if let Ok(n) = v.parse::<i64>() {
            Value::I64(n)
        } else if let Ok(b) = v.parse::<bool>() {
            Value::Bool(b)
        } else {
            Value::long_string(v.clone())
        };
        args.insert(k.clone(), value);
    }
    args
}

/// The queue of a durable topic/exchange subscription: `stomp-subscription-<name>` when the
/// name is plain, else its 64-bit FNV-1a in hex (queue names are short strings).
fn durable_queue_name(name: &str) -> String {
    let plain = name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if plain {
        return format!("stomp-subscription-{name}");
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("stomp-subscription-{h:016x}")
}

fn engine_detail(e: &EngineError) -> String {
    e.text.clone()
}

impl Session {
    /// The smallest channel number used by no subscription and no unacknowledged delivery.
    pub(super) fn free_channel(&self) -> Option<u16> {
        (1..=u16::MAX)
            .find(|c| !self.subs.contains_key(c) && !self.unacked.values().any(|u| u.channel == *c))
    }

    pub(super) fn handle(&self, channel: u16) -> ChannelHandle {
        ChannelHandle {
            conn: self.conn_id,
            channel,
            tx: self.tx.clone(),
            credit: self.credit.clone(),
        }
    }

    pub(super) fn on_subscribe(&mut self, f: &Frame) {
        let Some(dest) = f.header("destination") else {
            return self.error(
                "Missing destination",
                "SUBSCRIBE must include a 'destination' header",
                Some(f),
            );
        };
        // 1.0 allows no id: the destination stands for it (as RabbitMQ does).
        let id = match (f.header("id"), self.version) {
            (Some(id), _) => id.to_string(),
            (None, Version::V1_0) => dest.to_string(),
            (None, _) => {
                return self.error(
                    "Missing id",
                    "SUBSCRIBE must include an 'id' header from STOMP 1.1 on",
                    Some(f),
                )
            }
        };
        if self.sub_ids.contains_key(&id) {
            return self.error(
                "Duplicated subscription identifier",
                &format!("A subscription identified by '{id}' already exists"),
                Some(f),
            );
        }
        let ack = match f.header("ack").unwrap_or("auto") {
            "auto" => AckMode::Auto,
            "client" => AckMode::Client,
            "client-individual" => AckMode::ClientIndividual,
            other => {
                return self.error(
                    "Invalid ack mode",
                    &format!("'{other}' is not auto, client or client-individual"),
                    Some(f),
                )
            }
        };
        let prefetch = match f.header("prefetch-count") {
            None => self.ctx.config.prefetch_count,
            Some(p) => match p.trim().parse::<u32>() {
                Ok(n) => n,
                Err(_) => {
                    return self.error(
                        "Invalid prefetch-count",
                        "prefetch-count must be a non-negative integer",
                        Some(f),
                    )
                }
            },
        };
        let parsed = match Destination::parse(dest) {
            Ok(d) => d,
            Err(e) => return self.error("Unknown destination", &e.to_string(), Some(f)),
        };
        let (queue, durable) = match self.subscription_queue(f, &parsed) {
            Ok(q) => q,
            Err((message, detail)) => return self.error(message, &detail, Some(f)),
        };
        let Some(channel) = self.free_channel() else {
            return self.error("Too many subscriptions", "no channel left", Some(f));
        };
        let prefetch = match (ack, prefetch) {
            (AckMode::Auto, 0) => AUTO_WINDOW,
            (_, n) => n,
        };
        let spec = ConsumerSpec {
            tag: id.as_str().into(),
            channel: self.handle(channel),
            no_ack: false,
            exclusive: false,
            priority: 0,
            prefetch,
        };
        if let Err(e) = queue.consume(spec) {
            return self.error("Subscription refused", &engine_detail(&e), Some(f));
        }
        self.sub_ids.insert(id.clone(), channel);
        self.subs.insert(
            channel,
            Subscription {
                id,
                ack,
                queue,
                durable,
            },
        );
        self.receipt(f, 0);
    }

    /// The queue a SUBSCRIBE consumes, declared and bound as its destination says; and
    /// whether it is a durable subscription.
    fn subscription_queue(
        &mut self,
        f: &Frame,
        dest: &Destination,
    ) -> Result<(Arc<Queue>, bool), (&'static str, String)> {
        let vhost = self.vhost.clone().ok_or(("Not connected", String::new()))?;
        let refused = |e: EngineError| ("Subscription refused", engine_detail(&e));
        match dest {
            Destination::Queue(name) => {
                let settings = QueueSettings {
                    durable: true,
                    exclusive_owner: None,
                    auto_delete: false,
                    arguments: queue_arguments(f),
                };
                let (q, _, _) = vhost
                    .declare_queue(name, settings, false, self.conn_id)
                    .map_err(refused)?;
                Ok((q, false))
            }
            Destination::AmqQueue(name) | Destination::ReplyQueue(name) => {
                let q = vhost.queue(name, self.conn_id).map_err(refused)?;
                Ok((q, false))
            }
            Destination::TempQueue(_) => Err((
                "Invalid destination",
                "/temp-queue/ destinations are for reply-to headers and SEND only".into(),
            )),
            Destination::Topic(_) | Destination::Exchange { .. } => {
                let (exchange, key) = dest.publish_target();
                if vhost.exchange(exchange).is_none() {
                    return Err((
                        "not_found",
                        format!("no exchange '{exchange}' in vhost '{}'", vhost.name),
                    ));
                }
                // Durable: RabbitMQ's persistent:true with an id, or ActiveMQ's
                // activemq.subscriptionName.
                let durable_name = match (
                    f.header("activemq.subscriptionName"),
                    f.header("persistent"),
                    f.header("id"),
                ) {
                    (Some(n), _, _) => Some(n.to_string()),
                    (None, Some("true"), Some(id)) => Some(id.to_string()),
                    _ => None,
                };
                let explicit = f.header("x-queue-name").map(str::to_string);
                let (name, settings) = match &durable_name {
                    Some(n) => (
                        explicit.unwrap_or_else(|| durable_queue_name(n)),
                        QueueSettings {
                            durable: true,
                            exclusive_owner: None,
                            auto_delete: false,
                            arguments: queue_arguments(f),
                        },
                    ),
                    None => (
                        explicit.unwrap_or_default(),
                        QueueSettings {
                            durable: false,
                            exclusive_owner: Some(self.conn_id),
                            auto_delete: true,
                            arguments: queue_arguments(f),
                        },
                    ),
                };
                let (q, _, _) = vhost
                    .declare_queue(&name, settings, false, self.conn_id)
                    .map_err(refused)?;
                if let Err(e) = vhost.bind_queue(&q.name, exchange, key, Table::new(), self.conn_id)
                {
                    if durable_name.is_none() {
                        let _ = vhost.delete_queue_unchecked(&q);
                    }
                    return Err(refused(e));
                }
                Ok((q, durable_name.is_some()))
            }
        }
    }

    pub(super) fn on_unsubscribe(&mut self, f: &Frame) {
        let id = match (f.header("id"), f.header("destination"), self.version) {
            (Some(id), _, _) => id.to_string(),
            (None, Some(d), Version::V1_0) => d.to_string(),
            _ => {
                return self.error(
                    "Missing id",
                    "UNSUBSCRIBE must include an 'id' header",
                    Some(f),
                )
            }
        };
        let Some(channel) = self.sub_ids.remove(&id) else {
            return self.error(
                "No subscription found",
                &format!("There is no subscription identified by '{id}'"),
                Some(f),
            );
        };
        let Some(sub) = self.subs.remove(&channel) else {
            return;
        };
        // As RabbitMQ's basic.cancel: unacknowledged messages stay leased until acked or
        // the connection closes.
        let auto_delete = sub.queue.cancel(self.conn_id, channel, &sub.id);
        let forget = sub.durable
            && (f.header("persistent") == Some("true")
                || f.header("activemq.subscriptionName").is_some());
        if auto_delete || forget {
            if let Some(v) = &self.vhost {
                let _ = v.delete_queue_unchecked(&sub.queue);
            }
        }
        self.receipt(f, 0);
    }

    pub(super) fn on_ack(&mut self, f: &Frame, ack: bool) {
        // 1.2: `id` (the MESSAGE's `ack` header); 1.0 and 1.1: `message-id`.
        let header = if self.version == Version::V1_2 {
            "id"
        } else {
            "message-id"
        };
        let Some(ack_id) = f.header(header) else {
            return self.error(
                "Missing header",
                &format!("{} must include a '{header}' header", f.command.as_str()),
                Some(f),
            );
        };
        let Some(tag) = parse_tag(ack_id).filter(|t| self.unacked.contains_key(t)) else {
            return self.error(
                "Invalid message-id",
                &format!("no unacknowledged message with id '{ack_id}'"),
                Some(f),
            );
        };
        let channel = self.unacked[&tag].channel;
        let cumulative = self
            .subs
            .get(&channel)
            .is_some_and(|s| s.ack == AckMode::Client);
        let tags: Vec<u64> = if cumulative {
            self.unacked
                .range(..=tag)
                .filter(|(_, u)| u.channel == channel)
                .map(|(t, _)| *t)
                .collect()
        } else {
            vec![tag]
        };
        let how = match (ack, f.header("requeue")) {
            (true, _) => Settle::Ack,
            (false, Some("false")) => Settle::Reject,
            (false, _) => Settle::Requeue,
        };
        for t in tags {
            if let Some(u) = self.unacked.remove(&t) {
                u.queue.settle(&[u.id], how);
            }
        }
        self.receipt(f, 0);
    }

    pub(super) fn on_outbound(&mut self, ev: Outbound) {
        match ev {
            Outbound::Deliver {
                channel, delivery, ..
            } => self.deliver(channel, delivery),
            Outbound::Cancel { channel, .. } => {
                // The queue was deleted (from AMQP, or x-expires): the subscription ends.
                if let Some(sub) = self.subs.remove(&channel) {
                    tracing::info!(peer = %self.peer, subscription = %sub.id, queue = %sub.queue.name, "queue deleted: STOMP subscription ended");
                    self.sub_ids.remove(&sub.id);
                }
            }
        }
    }

    fn deliver(&mut self, channel: u16, d: Delivery) {
        if self.phase != Phase::Open {
            return;
        }
        let Some(sub) = self.subs.get(&channel) else {
            // Unsubscribed while this was on its way: back to the queue.
            if let Some(q) = &d.queue {
                q.settle(&[d.id], Settle::Requeue);
            }
            return;
        };
        let (id, ack) = (sub.id.clone(), sub.ack);
        let tag = self.next_tag;
        self.next_tag += 1;
        let ack_id = format!("T_{id}@@{}@@{tag}", self.session_name);
        let msg = &d.message;
        let mut frame = Frame::new(Command::Message);
        frame.push("subscription", id);
        frame.push(
            "destination",
            destination::format(&msg.exchange, &msg.routing_key),
        );
        frame.push("message-id", ack_id.clone());
        if self.version == Version::V1_2 && ack != AckMode::Auto {
            frame.push("ack", ack_id);
        }
        frame.push("redelivered", d.redelivered.to_string());
        mapping::message_headers(msg, &mut frame.headers);
        frame.push("content-length", msg.body.len().to_string());
        // What this version cannot write (a line break in a 1.0 header) is dropped.
        let version = self.version;
        frame
            .headers
            .retain(|(n, v)| stomp::representable(Command::Message, version, n, v));
        frame.body = msg.body.clone();
        self.send(&frame);
        match (ack, &d.queue) {
            (_, None) => {}
            (AckMode::Auto, Some(q)) => {
                q.settle(&[d.id], Settle::Ack);
            }
            (_, Some(q)) => {
                self.unacked.insert(
                    tag,
                    Unacked {
                        channel,
                        queue: q.clone(),
                        id: d.id,
                    },
                );
            }
        }
    }

    /// Every consumer goes and every lease returns to its queue (redelivered).
    pub(super) fn release_all(&mut self) {
        let mut queues: Vec<(u16, Arc<Queue>)> = self
            .subs
            .iter()
            .map(|(c, s)| (*c, s.queue.clone()))
            .collect();
        queues.extend(self.unacked.values().map(|u| (u.channel, u.queue.clone())));
        for (channel, q) in queues {
            if q.release_channel(self.conn_id, channel) && !q.settings.durable {
                if let Some(v) = &self.vhost {
                    let _ = v.delete_queue_unchecked(&q);
                }
            }
        }
        self.subs.clear();
        self.sub_ids.clear();
        self.unacked.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_from_ack_ids() {
        assert_eq!(parse_tag("T_sub@@session-1@@42"), Some(42));
        assert_eq!(parse_tag("T_a@@b@@c@@session-1@@7"), Some(7));
        assert_eq!(parse_tag("17"), Some(17));
        assert_eq!(parse_tag("T_x@@s@@nope"), None);
    }

    #[test]
    fn durable_names() {
        assert_eq!(durable_queue_name("sub-1"), "stomp-subscription-sub-1");
        let odd = durable_queue_name("a b/c");
        assert!(
            odd.starts_with("stomp-subscription-") && odd.len() == 19 + 16,
            "{odd}"
        );
    }

    #[test]
    fn queue_arguments_from_headers() {
        let f = Frame::new(Command::Subscribe)
            .with("x-max-length", "10")
            .with("x-queue-type", "classic")
            .with("x-queue-name", "named")
            .with("x-single-active-consumer", "true")
            .with("id", "1");
        let a = queue_arguments(&f);
        assert_eq!(a.len(), 3);
        assert_eq!(a["x-max-length"], Value::I64(10));
        assert_eq!(a["x-queue-type"], Value::long_string("classic"));
        assert_eq!(a["x-single-active-consumer"], Value::Bool(true));
    }
}
