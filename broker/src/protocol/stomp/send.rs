//! SEND: destination to exchange and routing key, headers to the engine message, temp queues
//! for reply-to, and the durability the receipt waits for.

use std::sync::Arc;

use codecs::stomp::Frame;

use super::destination::Destination;
use super::mapping;
use super::session::Session;
use super::subscriptions::{AckMode, Subscription};
use crate::engine::{ConsumerSpec, EngineError, Queue, QueueSettings, Table, Vhost};

/// Most `/queue/` destinations a connection remembers as declared (the memory one connection
/// may hold for it).
const DECLARED_QUEUES_MAX: usize = 1024;

impl Session {
    pub(super) fn on_send(&mut self, f: &Frame) {
        self.publisher = true;
        let Some(dest) = f.header("destination") else {
            return self.error(
                "Missing destination",
                "SEND must include a 'destination', and optional 'reply-to' header",
                Some(f),
            );
        };
        let parsed = match Destination::parse(dest) {
            Ok(d) => d,
            Err(e) => return self.error("Unknown destination", &e.to_string(), Some(f)),
        };
        let Some(vhost) = self.vhost.clone() else {
            return;
        };
        // reply-to /temp-queue/x: the private queue of this connection, under the name other
        // clients can send to (RabbitMQ rewrites it the same way).
        let reply_to = match f.header("reply-to") {
            Some(r) => match r.strip_prefix("/temp-queue/") {
                Some(name) if !name.is_empty() => match self.temp_queue(name) {
                    Some(q) => Some(format!("/reply-queue/{}", q.name)),
                    None => return self.error("Cannot create temp queue", r, Some(f)),
                },
                _ => Some(r.to_string()),
            },
            None => None,
        };
        let temp_name;
        let (exchange, key) = match &parsed {
            Destination::TempQueue(name) => match self.temp_queue(name) {
                Some(q) => {
                    temp_name = q.name.clone();
                    ("", temp_name.as_str())
                }
                None => return self.error("Cannot create temp queue", dest, Some(f)),
            },
            Destination::Queue(name) => {
                if let Err(e) = self.declare_send_queue(&vhost, name) {
                    return self.error("Cannot declare queue", &e.text, Some(f));
                }
                parsed.publish_target()
            }
            other => other.publish_target(),
        };
        let user = self
            .user
            .as_ref()
            .map(|u| u.name.clone())
            .unwrap_or_default();
        let msg = match mapping::to_message(f, exchange, key, reply_to, &user) {
            Ok(m) => m,
            Err(detail) => return self.error("Invalid header", &detail, Some(f)),
        };
        match vhost.publish(exchange, msg) {
            Ok(o) => {
                self.last_lsn = self.last_lsn.max(o.lsn);
                self.receipt(f, o.lsn);
            }
            Err(e) => {
                let message = match e.kind {
                    crate::engine::ErrorKind::NotFound => "not_found",
                    crate::engine::ErrorKind::AccessRefused => "access_refused",
                    _ => "Publish failed",
                };
                self.error(message, &e.text, Some(f));
            }
        }
    }

    /// Declares the queue of a `/queue/<name>` SEND, once per connection while it exists.
    /// RabbitMQ declares /queue/ destinations on SEND too, so that the first message is not
    /// lost when nobody has subscribed yet.
    fn declare_send_queue(&mut self, vhost: &Vhost, name: &str) -> Result<(), EngineError> {
        if self
            .declared_queues
            .get(name)
            .is_some_and(|q| !q.is_deleted())
        {
            return Ok(());
        }
        let settings = QueueSettings {
            durable: true,
            exclusive_owner: None,
            auto_delete: false,
            arguments: Table::new(),
        };
        let (q, _, _) = vhost.declare_queue(name, settings, false, self.conn_id)?;
        if self.declared_queues.len() >= DECLARED_QUEUES_MAX {
            // A client sending to ever new queues: forget the deleted ones, and past the bound
            // declare on every SEND as before rather than grow.
            self.declared_queues.retain(|_, q| !q.is_deleted());
        }
        if self.declared_queues.len() < DECLARED_QUEUES_MAX {
            self.declared_queues.insert(name.to_string(), q);
        }
        Ok(())
    }

    /// The private queue `/temp-queue/<name>` stands for on this connection, created and
    /// consumed (ack auto, subscription `/temp-queue/<name>`) on first use.
    fn temp_queue(&mut self, name: &str) -> Option<Arc<Queue>> {
        if let Some(q) = self.temp_queues.get(name) {
            if !q.is_deleted() {
                return Some(q.clone());
            }
        }
        let vhost = self.vhost.clone()?;
        let settings = QueueSettings {
            durable: false,
            exclusive_owner: Some(self.conn_id),
            auto_delete: true,
            arguments: Table::new(),
        };
        let q = match vhost.declare_queue("", settings, false, self.conn_id) {
            Ok((q, _, _)) => q,
            Err(e) => {
                tracing::warn!(error = %e, "cannot declare a STOMP temp queue");
                return None;
            }
        };
        let id = format!("/temp-queue/{name}");
        let channel = self.free_channel()?;
        let spec = ConsumerSpec {
            tag: id.as_str().into(),
            channel: self.handle(channel),
            no_ack: false,
            exclusive: false,
            priority: 0,
            prefetch: 1000,
        };
        if let Err(e) = q.consume(spec) {
            tracing::warn!(error = %e, "cannot consume a STOMP temp queue");
            let _ = vhost.delete_queue_unchecked(&q);
            return None;
        }
        self.sub_ids.insert(id.clone(), channel);
        self.subs.insert(
            channel,
            Subscription {
                id,
                ack: AckMode::Auto,
                queue: q.clone(),
                durable: false,
            },
        );
        self.temp_queues.insert(name.to_string(), q.clone());
        Some(q)
    }
}
