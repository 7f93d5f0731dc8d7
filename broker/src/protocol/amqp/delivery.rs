//! Engine events to the client (deliveries, server-side cancels) and channel release.

use amq_protocol::protocol::{basic, AMQPClass};

use super::channel::{Channel, Unacked};
use super::mapping::properties_to_amqp;
use super::session::{echo, Session};
use crate::engine::Outbound;

impl Session {
    /// One event from a queue. Events for channels that are gone or closing are dropped: the
    /// channel's release already returned their messages to the queue.
    pub(super) fn on_outbound(&mut self, ev: Outbound) {
        let ch = match &ev {
            Outbound::Deliver { channel, .. } | Outbound::Cancel { channel, .. } => *channel,
        };
        let Some(mut c) = self.channels.remove(&ch) else {
            return;
        };
        self.outbound_to(&mut c, ev);
        self.channels.insert(ch, c);
    }

    fn outbound_to(&mut self, c: &mut Channel, ev: Outbound) {
        if c.closing {
            return;
        }
        match ev {
            Outbound::Deliver {
                consumer_tag,
                delivery,
                ..
            } => {
                let tag = c.take_tag();
                if delivery.id != 0 {
                    if let Some(queue) = delivery.queue.clone() {
                        c.unacked.insert(
                            tag,
                            Unacked {
                                queue,
                                id: delivery.id,
                            },
                        );
                    }
                }
                let msg = &delivery.message;
                let method = AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                    consumer_tag: echo(&consumer_tag),
                    delivery_tag: tag,
                    redelivered: delivery.redelivered,
                    exchange: echo(&msg.exchange),
                    routing_key: echo(&msg.routing_key),
                }));
                codecs::amqp::encode_content(
                    c.id,
                    &method,
                    &properties_to_amqp(&msg.properties),
                    &msg.body,
                    self.frame_max,
                    &mut self.out,
                );
            }
            Outbound::Cancel { consumer_tag, .. } => {
                // The queue is gone. Clients that did not ask for consumer_cancel_notify are
                // not told, as in RabbitMQ.
                if c.consumers.remove(&consumer_tag).is_some() && self.caps.consumer_cancel_notify {
                    self.send(
                        c.id,
                        AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                            consumer_tag: echo(&consumer_tag),
                            nowait: true,
                        })),
                    );
                }
            }
        }
    }

    /// Handles every event already queued for this connection. `current` is a channel taken
    /// out of the map while a method runs on it; its events go to it.
    pub(super) fn drain_outbound(&mut self, mut current: Option<&mut Channel>) {
        while let Ok(ev) = self.rx.try_recv() {
            let ch = match &ev {
                Outbound::Deliver { channel, .. } | Outbound::Cancel { channel, .. } => *channel,
            };
            match current.as_deref_mut() {
                Some(c) if c.id == ch => self.outbound_to(c, ev),
                _ => self.on_outbound(ev),
            }
        }
    }

    /// The channel closes: its consumers go, its unacked messages return to their queues
    /// (redelivered), auto-delete queues that lost their last consumer go, its direct reply-to
    /// registration goes, and deliveries already on their way to it are dropped.
    pub(super) fn release_channel(&mut self, c: &mut Channel) {
        let vhost = self.vhost.clone();
        for q in std::mem::take(&mut c.queues) {
            if q.release_channel(self.conn_id, c.id) {
                if let Some(v) = &vhost {
                    let _ = v.delete_queue_unchecked(&q);
                }
            }
        }
        c.consumers.clear();
        c.unacked.clear();
        c.tx = None;
        c.gated.clear();
        c.committing = false;
        c.content = Default::default();
        if let (Some((_, name)), Some(v)) = (c.reply_to.take(), &vhost) {
            v.unregister_reply_to(&name);
        }
        // A released channel takes no more events: those already queued for it are dropped
        // (`outbound_to` ignores closing channels), the others are delivered.
        c.closing = true;
        self.drain_outbound(Some(c));
    }
}
