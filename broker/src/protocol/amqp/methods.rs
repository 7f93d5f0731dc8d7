//! Frames on channels other than 0: content assembly, then the channel, exchange, queue,
//! basic, confirm and tx methods, each turned into engine calls.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use amq_protocol::protocol::{access, basic, channel, confirm, exchange, queue, tx, AMQPClass};
use bytes::Bytes;
use codecs::amqp::Frame;
use rand::Rng;

use super::channel::{by_queue, Channel, Content, Gated, Tx, Unacked};
use super::errors::{code, AmqpError, AmqpResult};
use super::mapping::{properties_from_amqp, properties_to_amqp, table_from_amqp};
use super::session::{echo, Session};
use crate::engine::vhost::REPLY_TO_QUEUE;
use crate::engine::{
    ConsumerSpec, ExchangeKind, ExchangeSettings, GetMode, Message, QueueSettings, Settle,
};
use crate::store::Lsn;

/// The class id of basic, the only content class.
const BASIC: u16 = 60;

impl Session {
    /// A frame on channel `ch` != 0 of an open connection. `Err` is a connection exception;
    /// channel exceptions are handled here (the channel is closed).
    pub(super) fn on_channel_frame(&mut self, frame: Frame) -> AmqpResult<()> {
        let ch = frame.channel();
        let Some(mut c) = self.channels.remove(&ch) else {
            return self.on_unopened_channel(frame);
        };
        if c.closing {
            self.on_closing_channel(c, frame);
            return Ok(());
        }
        match self.channel_frame(&mut c, frame) {
            Ok(keep) => {
                if keep {
                    self.channels.insert(ch, c);
                }
                Ok(())
            }
            Err(e) if e.is_hard() => {
                self.channels.insert(ch, c);
                Err(e)
            }
            Err(e) => {
                self.fail_channel(c, e);
                Ok(())
            }
        }
    }

    fn on_unopened_channel(&mut self, frame: Frame) -> AmqpResult<()> {
        match frame {
            Frame::Method(ch, AMQPClass::Channel(channel::AMQPMethod::Open(_))) => {
                if self.channel_max != 0 && self.channels.len() >= usize::from(self.channel_max) {
                    return Err(AmqpError::new(
                        code::NOT_ALLOWED,
                        format!(
                            "number of channels opened ({}) has reached the negotiated channel_max ({})",
                            self.channels.len(),
                            self.channel_max
                        ),
                    )
                    .during(20, 10));
                }
                let c = self.new_channel(ch);
                self.channels.insert(ch, c);
                self.send(
                    ch,
                    AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
                );
                Ok(())
            }
            Frame::Method(_, m) => Err(AmqpError::new(
                code::CHANNEL_ERROR,
                "expected 'channel.open'",
            )
            .during(m.get_amqp_class_id(), m.get_amqp_method_id())),
            _ => Err(AmqpError::new(
                code::UNEXPECTED_FRAME,
                "expected method frame, got non method frame instead",
            )),
        }
    }

    /// After we sent channel.close, only close and close-ok count; the rest is discarded.
    fn on_closing_channel(&mut self, c: Channel, frame: Frame) {
        match frame {
            Frame::Method(ch, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))) => {
                // The channel id is free again.
                let _ = ch;
            }
            Frame::Method(ch, AMQPClass::Channel(channel::AMQPMethod::Close(_))) => {
                self.send(
                    ch,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
                self.channels.insert(ch, c);
            }
            _ => {
                self.channels.insert(c.id, c);
            }
        }
    }

    /// Closes a channel for a channel exception: resources released now, channel.close sent,
    /// frames discarded until close-ok.
    pub(super) fn fail_channel(&mut self, mut c: Channel, err: AmqpError) {
        tracing::warn!(
            peer = %self.peer,
            channel = c.id,
            code = err.code,
            class_id = err.class_id,
            method_id = err.method_id,
            text = %err.text,
            "AMQP channel error"
        );
        self.release_channel(&mut c);
        self.send(c.id, super::session::channel_close(&err));
        c.closing = true;
        self.channels.insert(c.id, c);
    }

    /// Handles one frame of an open channel. `Ok(false)`: the channel is gone (closed).
    fn channel_frame(&mut self, c: &mut Channel, frame: Frame) -> AmqpResult<bool> {
        match (std::mem::take(&mut c.content), frame) {
            (Content::Idle, Frame::Method(_, m)) => self.channel_method(c, m),
            (Content::Idle, _) => Err(AmqpError::new(
                code::UNEXPECTED_FRAME,
                "expected method frame, got non method frame instead",
            )),
            (Content::Header(publish), Frame::Header(_, h)) => {
                if h.class_id != BASIC {
                    return Err(AmqpError::new(
                        code::UNEXPECTED_FRAME,
                        format!(
                            "expected content header for class {BASIC}, got one for class {} instead",
                            h.class_id
                        ),
                    )
                    .during(60, 40));
                }
                let max = self.ctx.config.message_bytes_max;
                if h.body_size > max {
                    return Err(AmqpError::precondition(format!(
                        "message size {} is larger than configured max size {max}",
                        h.body_size
                    ))
                    .during(60, 40));
                }
                if h.body_size == 0 {
                    self.publish(c, publish, h.properties, Bytes::new())?;
                } else {
                    c.content = Content::Body {
                        publish,
                        properties: Box::new(h.properties),
                        remaining: h.body_size,
                        chunks: Vec::new(),
                    };
                }
                Ok(true)
            }
            (Content::Header(_), _) => Err(AmqpError::new(
                code::UNEXPECTED_FRAME,
                format!(
                    "expected content header for class {BASIC}, got non content header frame instead"
                ),
            )
            .during(60, 40)),
            (
                Content::Body {
                    publish,
                    properties,
                    remaining,
                    mut chunks,
                },
                Frame::Body(_, body),
            ) => {
                let len = body.len() as u64;
                if len > remaining {
                    return Err(AmqpError::new(
                        code::FRAME_ERROR,
                        "content body frame exceeds remaining content size",
                    )
                    .during(60, 40));
                }
                if !body.is_empty() {
                    chunks.push(body);
                }
                if len == remaining {
                    self.publish(c, publish, *properties, Content::join(chunks))?;
                } else {
                    c.content = Content::Body {
                        publish,
                        properties,
                        remaining: remaining - len,
                        chunks,
                    };
                }
                Ok(true)
            }
            (Content::Body { .. }, _) => Err(AmqpError::new(
                code::UNEXPECTED_FRAME,
                "expected content body, got non content body frame instead",
            )
            .during(60, 40)),
        }
    }

    fn channel_method(&mut self, c: &mut Channel, m: AMQPClass) -> AmqpResult<bool> {
        let (class_id, method_id) = (m.get_amqp_class_id(), m.get_amqp_method_id());
        let closes = matches!(
            m,
            AMQPClass::Channel(channel::AMQPMethod::Close(_) | channel::AMQPMethod::CloseOk(_))
        );
        if c.committing && !closes {
            return Err(AmqpError::new(
                code::CHANNEL_ERROR,
                "unexpected command while processing 'tx.commit'",
            )
            .during(class_id, method_id));
        }
        self.dispatch(c, m)
            .map_err(|e| e.during(class_id, method_id))
    }

    fn dispatch(&mut self, c: &mut Channel, m: AMQPClass) -> AmqpResult<bool> {
        use basic::AMQPMethod as B;
        use channel::AMQPMethod as C;
        use exchange::AMQPMethod as E;
        use queue::AMQPMethod as Q;
        match m {
            AMQPClass::Channel(C::Open(_)) => Err(AmqpError::new(
                code::CHANNEL_ERROR,
                "second 'channel.open' seen",
            )),
            AMQPClass::Channel(C::Close(_)) => {
                self.release_channel(c);
                self.send(c.id, AMQPClass::Channel(C::CloseOk(channel::CloseOk {})));
                return Ok(false);
            }
            AMQPClass::Channel(C::Flow(f)) => {
                c.handle.credit.paused.store(!f.active, Ordering::Release);
                if f.active {
                    for q in c.consumer_queues() {
                        q.kick();
                    }
                }
                self.send(
                    c.id,
                    AMQPClass::Channel(C::FlowOk(channel::FlowOk { active: f.active })),
                );
                Ok(())
            }
            // We never send channel.flow, so its answer needs nothing.
            AMQPClass::Channel(C::FlowOk(_)) => Ok(()),
            AMQPClass::Access(access::AMQPMethod::Request(_)) => {
                self.send(
                    c.id,
                    AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
                );
                Ok(())
            }
            AMQPClass::Exchange(E::Declare(d)) => self.exchange_declare(c, d),
            AMQPClass::Exchange(E::Delete(d)) => {
                self.vhost()?
                    .delete_exchange(d.exchange.as_str(), d.if_unused)?;
                self.reply(
                    c,
                    d.nowait,
                    AMQPClass::Exchange(E::DeleteOk(exchange::DeleteOk {})),
                );
                Ok(())
            }
            AMQPClass::Exchange(E::Bind(b)) => {
                self.vhost()?.bind_exchange(
                    b.destination.as_str(),
                    b.source.as_str(),
                    b.routing_key.as_str(),
                    table_from_amqp(&b.arguments),
                )?;
                self.reply(
                    c,
                    b.nowait,
                    AMQPClass::Exchange(E::BindOk(exchange::BindOk {})),
                );
                Ok(())
            }
            AMQPClass::Exchange(E::Unbind(b)) => {
                self.vhost()?.unbind_exchange(
                    b.destination.as_str(),
                    b.source.as_str(),
                    b.routing_key.as_str(),
                    table_from_amqp(&b.arguments),
                )?;
                self.reply(
                    c,
                    b.nowait,
                    AMQPClass::Exchange(E::UnbindOk(exchange::UnbindOk {})),
                );
                Ok(())
            }
            AMQPClass::Queue(Q::Declare(d)) => self.queue_declare(c, d),
            AMQPClass::Queue(Q::Bind(b)) => {
                let name = queue_name(c, b.queue.as_str())?;
                let key = routing_key_shortcut(c, b.queue.as_str(), b.routing_key.as_str())?;
                self.vhost()?.bind_queue(
                    &name,
                    b.exchange.as_str(),
                    &key,
                    table_from_amqp(&b.arguments),
                    self.conn_id,
                )?;
                self.reply(c, b.nowait, AMQPClass::Queue(Q::BindOk(queue::BindOk {})));
                Ok(())
            }
            AMQPClass::Queue(Q::Unbind(b)) => {
                let name = queue_name(c, b.queue.as_str())?;
                let key = routing_key_shortcut(c, b.queue.as_str(), b.routing_key.as_str())?;
                self.vhost()?.unbind_queue(
                    &name,
                    b.exchange.as_str(),
                    &key,
                    table_from_amqp(&b.arguments),
                    self.conn_id,
                )?;
                self.send(c.id, AMQPClass::Queue(Q::UnbindOk(queue::UnbindOk {})));
                Ok(())
            }
            AMQPClass::Queue(Q::Purge(p)) => {
                let name = queue_name(c, p.queue.as_str())?;
                let n = self.vhost()?.purge_queue(&name, self.conn_id)?;
                self.reply(
                    c,
                    p.nowait,
                    AMQPClass::Queue(Q::PurgeOk(queue::PurgeOk { message_count: n })),
                );
                Ok(())
            }
            AMQPClass::Queue(Q::Delete(d)) => {
                let name = queue_name(c, d.queue.as_str())?;
                let n = self
                    .vhost()?
                    .delete_queue(&name, d.if_unused, d.if_empty, self.conn_id)?;
                self.reply(
                    c,
                    d.nowait,
                    AMQPClass::Queue(Q::DeleteOk(queue::DeleteOk { message_count: n })),
                );
                Ok(())
            }
            AMQPClass::Basic(B::Qos(q)) => {
                let n = u32::from(q.prefetch_count);
                if q.global {
                    let before = c.handle.credit.global_prefetch.swap(n, Ordering::AcqRel);
                    if n == 0 || (before != 0 && n > before) {
                        for q in c.consumer_queues() {
                            q.kick();
                        }
                    }
                } else {
                    c.consumer_prefetch = n;
                }
                self.send(c.id, AMQPClass::Basic(B::QosOk(basic::QosOk {})));
                Ok(())
            }
            AMQPClass::Basic(B::Consume(b)) => self.basic_consume(c, b),
            AMQPClass::Basic(B::Cancel(b)) => {
                self.basic_cancel(c, b.consumer_tag.as_str());
                self.reply(
                    c,
                    b.nowait,
                    AMQPClass::Basic(B::CancelOk(basic::CancelOk {
                        consumer_tag: b.consumer_tag,
                    })),
                );
                Ok(())
            }
            AMQPClass::Basic(B::Publish(p)) => {
                if p.immediate {
                    return Err(AmqpError::new(code::NOT_IMPLEMENTED, "immediate=true"));
                }
                c.content = Content::Header(p);
                Ok(())
            }
            AMQPClass::Basic(B::Get(g)) => self.basic_get(c, g),
            AMQPClass::Basic(B::Ack(a)) => self.settle(c, a.delivery_tag, a.multiple, Settle::Ack),
            AMQPClass::Basic(B::Nack(n)) => {
                let how = if n.requeue {
                    Settle::Requeue
                } else {
                    Settle::Reject
                };
                self.settle(c, n.delivery_tag, n.multiple, how)
            }
            AMQPClass::Basic(B::Reject(r)) => {
                let how = if r.requeue {
                    Settle::Requeue
                } else {
                    Settle::Reject
                };
                self.settle(c, r.delivery_tag, false, how)
            }
            AMQPClass::Basic(B::RecoverAsync(r)) => self.recover(c, r.requeue),
            AMQPClass::Basic(B::Recover(r)) => {
                self.recover(c, r.requeue)?;
                self.send(c.id, AMQPClass::Basic(B::RecoverOk(basic::RecoverOk {})));
                Ok(())
            }
            AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
                if c.tx.is_some() {
                    return Err(AmqpError::precondition(
                        "cannot switch from tx to confirm mode",
                    ));
                }
                if !c.confirm {
                    c.confirm = true;
                    c.next_seq = 1;
                }
                self.reply(
                    c,
                    s.nowait,
                    AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                );
                Ok(())
            }
            AMQPClass::Tx(tx::AMQPMethod::Select(_)) => {
                if c.confirm {
                    return Err(AmqpError::precondition(
                        "cannot switch from confirm to tx mode",
                    ));
                }
                c.tx.get_or_insert_with(Tx::default);
                self.send(
                    c.id,
                    AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
                );
                Ok(())
            }
            AMQPClass::Tx(tx::AMQPMethod::Commit(_)) => self.tx_commit(c),
            AMQPClass::Tx(tx::AMQPMethod::Rollback(_)) => {
                let Some(t) = c.tx.as_mut() else {
                    return Err(AmqpError::precondition("channel is not transactional"));
                };
                t.publishes.clear();
                for (_, entries) in std::mem::take(&mut t.settles) {
                    c.unacked.extend(entries);
                }
                self.send(
                    c.id,
                    AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
                );
                Ok(())
            }
            // Server-to-client methods, and connection methods on a channel.
            _ => Err(AmqpError::new(
                code::COMMAND_INVALID,
                "unimplemented method",
            )),
        }
        .map(|()| true)
    }

    /// Sends `m` unless the client asked for no reply (nowait).
    fn reply(&mut self, c: &Channel, nowait: bool, m: AMQPClass) {
        if !nowait {
            self.send(c.id, m);
        }
    }

    fn exchange_declare(&mut self, c: &mut Channel, d: exchange::Declare) -> AmqpResult<()> {
        // RabbitMQ ignores the type of a passive declare.
        let kind = if d.passive {
            ExchangeKind::parse(d.kind.as_str()).unwrap_or(ExchangeKind::Direct)
        } else {
            ExchangeKind::parse(d.kind.as_str()).ok_or_else(|| {
                AmqpError::new(
                    code::COMMAND_INVALID,
                    format!("invalid exchange type '{}'", d.kind),
                )
            })?
        };
        let settings = ExchangeSettings {
            kind,
            durable: d.durable,
            auto_delete: d.auto_delete,
            internal: d.internal,
            arguments: table_from_amqp(&d.arguments),
        };
        self.vhost()?
            .declare_exchange(d.exchange.as_str(), settings, d.passive)?;
        self.reply(
            c,
            d.nowait,
            AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
        );
        Ok(())
    }

    fn queue_declare(&mut self, c: &mut Channel, d: queue::Declare) -> AmqpResult<()> {
        let vhost = self.vhost()?;
        let requested = if d.passive && d.queue.as_str().is_empty() {
            queue_name(c, "")?
        } else {
            d.queue.as_str().to_string()
        };
        // Clients probe for direct reply-to support with a passive declare of the pseudo-queue.
        // RabbitMQ answers 0 messages and 1 consumer for it.
        let (name, messages, consumers) = if d.passive && requested == REPLY_TO_QUEUE {
            (requested, 0, 1)
        } else {
            let settings = QueueSettings {
                durable: d.durable,
                exclusive_owner: d.exclusive.then_some(self.conn_id),
                auto_delete: d.auto_delete,
                arguments: table_from_amqp(&d.arguments),
            };
            let (q, m, n) = vhost.declare_queue(&requested, settings, d.passive, self.conn_id)?;
            (q.name.clone(), m, n)
        };
        c.last_queue = Some(name.clone());
        self.reply(
            c,
            d.nowait,
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                queue: echo(&name),
                message_count: messages,
                consumer_count: consumers,
            })),
        );
        Ok(())
    }

    fn basic_consume(&mut self, c: &mut Channel, b: basic::Consume) -> AmqpResult<()> {
        let tag: Arc<str> = if b.consumer_tag.as_str().is_empty() {
            generated_tag().into()
        } else {
            b.consumer_tag.as_str().into()
        };
        let reused =
            c.consumers.contains_key(&tag) || c.reply_to.as_ref().is_some_and(|(t, _)| *t == tag);
        if reused {
            return Err(AmqpError::new(
                code::NOT_ALLOWED,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        let vhost = self.vhost()?;
        if b.queue.as_str() == REPLY_TO_QUEUE {
            if !b.no_ack {
                return Err(AmqpError::precondition("reply consumer cannot acknowledge"));
            }
            if c.reply_to.is_some() {
                return Err(AmqpError::precondition("reply consumer already set"));
            }
            let name = vhost.register_reply_to(c.handle.clone(), tag.clone());
            c.reply_to = Some((tag.clone(), name));
        } else {
            let name = queue_name(c, b.queue.as_str())?;
            let q = vhost.queue(&name, self.conn_id)?;
            let priority = match b.arguments.inner().get("x-priority") {
                None => 0,
                Some(v) => super::mapping::value_from_amqp(v).as_i64().ok_or_else(|| {
                    AmqpError::precondition(format!(
                        "invalid arg 'x-priority' for queue '{name}': {{unacceptable_type}}"
                    ))
                })?,
            };
            q.consume(ConsumerSpec {
                tag: tag.clone(),
                channel: c.handle.clone(),
                no_ack: b.no_ack,
                exclusive: b.exclusive,
                priority,
                prefetch: c.consumer_prefetch,
            })?;
            c.consumers.insert(tag.clone(), q.clone());
            c.track_queue(&q);
        }
        // Deliveries the queue dispatched already wait in our outbound receiver, which is read
        // only after this reply is queued: consume-ok goes first.
        self.reply(
            c,
            b.nowait,
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: echo(&tag),
            })),
        );
        Ok(())
    }

    /// Cancels a consumer of this channel (unknown tags are ignored, as the spec asks).
    /// Deliveries dispatched before the cancel are written first, so none follows cancel-ok.
    fn basic_cancel(&mut self, c: &mut Channel, tag: &str) {
        if c.reply_to.as_ref().is_some_and(|(t, _)| &**t == tag) {
            if let (Some((_, name)), Some(v)) = (c.reply_to.take(), self.vhost.clone()) {
                v.unregister_reply_to(&name);
            }
            self.drain_outbound(Some(c));
            return;
        }
        let Some(q) = c.consumers.remove(tag) else {
            return;
        };
        let auto_delete = q.cancel(self.conn_id, c.id, tag);
        self.drain_outbound(Some(c));
        if auto_delete {
            if let Some(v) = self.vhost.clone() {
                let _ = v.delete_queue_unchecked(&q);
            }
        }
    }

    fn basic_get(&mut self, c: &mut Channel, g: basic::Get) -> AmqpResult<()> {
        let name = queue_name(c, g.queue.as_str())?;
        let q = self.vhost()?.queue(&name, self.conn_id)?;
        let mode = if g.no_ack {
            GetMode::NoAck
        } else {
            GetMode::Channel(c.handle.clone())
        };
        let Some(d) = q.get(mode) else {
            self.send(
                c.id,
                AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
            );
            return Ok(());
        };
        let tag = c.take_tag();
        if !g.no_ack {
            c.unacked.insert(
                tag,
                Unacked {
                    queue: q.clone(),
                    id: d.id,
                },
            );
            c.track_queue(&q);
        }
        let method = AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
            delivery_tag: tag,
            redelivered: d.redelivered,
            exchange: echo(&d.message.exchange),
            routing_key: echo(&d.message.routing_key),
            message_count: d.message_count,
        }));
        let props = properties_to_amqp(&d.message.properties);
        codecs::amqp::encode_content(
            c.id,
            &method,
            &props,
            &d.message.body,
            self.frame_max,
            &mut self.out,
        );
        Ok(())
    }

    fn settle(&mut self, c: &mut Channel, tag: u64, multiple: bool, how: Settle) -> AmqpResult<()> {
        let entries = c
            .take_unacked(tag, multiple)
            .ok_or_else(|| AmqpError::precondition(format!("unknown delivery tag {tag}")))?;
        if let Some(t) = c.tx.as_mut() {
            t.settles.push((how, entries));
            return Ok(());
        }
        self.apply_settle(c, &entries, how);
        Ok(())
    }

    fn apply_settle(&mut self, c: &Channel, entries: &[(u64, Unacked)], how: Settle) {
        for (q, ids) in by_queue(entries) {
            // Ids the queue no longer has (deleted meanwhile) need nothing more.
            let _ = q.settle(&ids, how);
        }
        // A channel-wide prefetch freed by acks on one queue may let consumers on another go.
        if c.handle.credit.global_prefetch.load(Ordering::Acquire) != 0 {
            for q in c.consumer_queues() {
                q.kick();
            }
        }
    }

    fn recover(&mut self, c: &mut Channel, requeue: bool) -> AmqpResult<()> {
        if !requeue {
            return Err(AmqpError::new(code::NOT_IMPLEMENTED, "requeue=false"));
        }
        let entries: Vec<(u64, Unacked)> = std::mem::take(&mut c.unacked).into_iter().collect();
        self.apply_settle(c, &entries, Settle::Requeue);
        Ok(())
    }

    fn tx_commit(&mut self, c: &mut Channel) -> AmqpResult<()> {
        let Some(t) = c.tx.as_mut() else {
            return Err(AmqpError::precondition("channel is not transactional"));
        };
        let publishes = std::mem::take(&mut t.publishes);
        let settles = std::mem::take(&mut t.settles);
        let mut lsn: Lsn = 0;
        for (mandatory, msg) in publishes {
            lsn = lsn.max(self.route(c, mandatory, msg)?);
        }
        for (how, entries) in settles {
            self.apply_settle(c, &entries, how);
        }
        c.gated.push_back(Gated::CommitOk { lsn });
        c.committing = true;
        Ok(())
    }

    /// A complete basic.publish (method, header, body) as the client sent it.
    fn publish(
        &mut self,
        c: &mut Channel,
        p: basic::Publish,
        props: amq_protocol::protocol::BasicProperties,
        body: Bytes,
    ) -> AmqpResult<()> {
        let mut properties = properties_from_amqp(&props);
        if properties.reply_to.as_deref() == Some(REPLY_TO_QUEUE) {
            let Some((_, name)) = &c.reply_to else {
                return Err(
                    AmqpError::precondition("fast reply consumer does not exist").during(60, 40),
                );
            };
            properties.reply_to = Some(name.clone());
        }
        if let Some(e) = &properties.expiration {
            if e.parse::<u64>().is_err() {
                return Err(AmqpError::precondition(format!(
                    "invalid expiration '{e}': {}",
                    if e.starts_with('-') {
                        "{value_negative}"
                    } else {
                        "{value_not_integer}"
                    }
                ))
                .during(60, 40));
            }
        }
        if let Some(u) = &properties.user_id {
            if u != self.user_name() {
                return Err(AmqpError::precondition(format!(
                    "user_id property set to '{u}' but authenticated user was '{}'",
                    self.user_name()
                ))
                .during(60, 40));
            }
        }
        let msg = Message {
            exchange: p.exchange.as_str().to_string(),
            routing_key: p.routing_key.as_str().to_string(),
            properties,
            body,
        };
        if let Some(t) = c.tx.as_mut() {
            t.publishes.push((p.mandatory, msg));
            return Ok(());
        }
        self.route(c, p.mandatory, msg)
            .map(|_| ())
            .map_err(|e| e.during(60, 40))
    }

    /// Hands a message to the engine: basic.return when mandatory and unroutable, then the
    /// confirm (queued behind earlier ones) in confirm mode. Returns the Lsn to wait for.
    fn route(&mut self, c: &mut Channel, mandatory: bool, msg: Message) -> AmqpResult<Lsn> {
        let vhost = self.vhost()?;
        let returned = mandatory.then(|| {
            (
                msg.exchange.clone(),
                msg.routing_key.clone(),
                msg.properties.clone(),
                msg.body.clone(),
            )
        });
        let exchange = msg.exchange.clone();
        let outcome = vhost.publish(&exchange, msg)?;
        if let (Some((ex, key, props, body)), false) = (returned, outcome.routed) {
            // Confirms of earlier publishes go before this return, as RabbitMQ orders them.
            super::session::flush_channel_gated(c, self.engine.durable_lsn(), &mut self.out);
            let method = AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                reply_code: code::NO_ROUTE,
                reply_text: "NO_ROUTE".into(),
                exchange: echo(&ex),
                routing_key: echo(&key),
            }));
            codecs::amqp::encode_content(
                c.id,
                &method,
                &properties_to_amqp(&props),
                &body,
                self.frame_max,
                &mut self.out,
            );
        }
        if c.confirm {
            let seq = c.next_seq;
            c.next_seq += 1;
            c.gated.push_back(if outcome.rejected {
                Gated::Nack { seq }
            } else {
                Gated::Ack {
                    seq,
                    lsn: outcome.lsn,
                }
            });
        }
        Ok(outcome.lsn)
    }
}

/// The queue a method names; the empty name means the channel's last declared queue.
fn queue_name(c: &Channel, name: &str) -> AmqpResult<String> {
    if !name.is_empty() {
        return Ok(name.to_string());
    }
    c.last_queue
        .clone()
        .ok_or_else(|| AmqpError::not_found("no previously declared queue"))
}

/// queue.bind/unbind with both the queue and the routing key empty binds with the last
/// declared queue's name as the key (the spec's shortcut, which RabbitMQ implements).
fn routing_key_shortcut(c: &Channel, queue: &str, key: &str) -> AmqpResult<String> {
    if queue.is_empty() && key.is_empty() {
        queue_name(c, "")
    } else {
        Ok(key.to_string())
    }
}

/// "amq.ctag-" and 22 url-safe characters, as RabbitMQ generates consumer tags.
fn generated_tag() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    let suffix: String = (0..22)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("amq.ctag-{suffix}")
}
