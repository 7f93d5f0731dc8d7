//! The connection's state machine, without I/O: bytes and engine events in, bytes to write
//! out. The task in `mod.rs` owns the socket and the timers and calls into this.
//!
//! Phases follow RabbitMQ's reader: protocol header, start/start-ok (and secure/secure-ok),
//! tune/tune-ok, open, running, closing. Connection exceptions close the connection; channel
//! exceptions close only their channel (see `errors.rs` for which codes are which).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
use amq_protocol_types::{AMQPValue, FieldTable, LongString};
use bytes::BytesMut;
use codecs::amqp::{self as codec, Frame, Limits, ProtocolHeader};

use super::channel::{Channel, Gated};
use super::errors::{code, AmqpError, AmqpResult};
use super::mapping::short_lossy;
use super::AmqpContext;
use crate::engine::mailbox::{mailbox, Mailbox, MailboxSender};
use crate::engine::{
    AuthError, ChannelCredit, ChannelHandle, ConnectionId, Engine, Outbound, User, Vhost,
};
use crate::net::Peer;

/// Stop decoding and reading while this much output waits for the socket (slow readers).
pub(super) const OUT_HIGH_WATER: usize = 4 << 20;
/// How long we wait for connection.close-ok after sending connection.close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// On shutdown, the wait for close-ok is shorter: the broker is going away.
const SHUTDOWN_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mechanism {
    Plain,
    AmqPlain,
    /// SASL EXTERNAL: the identity is the verified client certificate's (RabbitMQ's
    /// rabbitmq_auth_mechanism_ssl); offered only on connections that have one.
    External,
}

impl Mechanism {
    fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::AmqPlain => "AMQPLAIN",
            Mechanism::External => "EXTERNAL",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Waiting for the 8-byte protocol header.
    AwaitingHeader,
    /// connection.start sent.
    Starting,
    /// connection.secure sent (start-ok came without a response).
    Securing(Mechanism),
    /// connection.tune sent.
    Tuning,
    /// tune-ok received; waiting for connection.open.
    Opening,
    Open,
    /// We sent connection.close; waiting for close-ok.
    Closing,
    /// Flush what is left and close the socket.
    Done,
}

/// What the client said it understands (client-properties "capabilities").
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ClientCaps {
    pub connection_blocked: bool,
    pub consumer_cancel_notify: bool,
}

pub(super) struct Session {
    pub(super) ctx: Arc<AmqpContext>,
    pub(super) engine: Arc<Engine>,
    pub(super) peer: SocketAddr,
    /// The user a verified client certificate names, when the listener allows certificate login.
    pub(super) cert_login: Option<String>,
    pub(super) conn_id: ConnectionId,
    /// Bytes to write, batched until the task flushes them.
    pub(super) out: BytesMut,
    pub(super) limits: Limits,
    pub(super) phase: Phase,
    pub(super) user: Option<User>,
    pub(super) vhost: Option<Arc<Vhost>>,
    pub(super) caps: ClientCaps,
    pub(super) channel_max: u16,
    pub(super) frame_max: u32,
    /// Negotiated heartbeat in seconds; 0 = off.
    pub(super) heartbeat: u16,
    pub(super) channels: HashMap<u16, Channel>,
    /// Where queues send this connection's deliveries; every channel registers a clone.
    pub(super) tx: MailboxSender<Outbound>,
    pub(super) rx: Mailbox<Outbound>,
    /// The memory alarm is on: publishes wait.
    pub(super) alarm: bool,
    /// A basic.publish that arrived while the alarm was on; reading stops until it clears.
    pub(super) stalled: Option<Frame>,
    /// The peer broke framing: its bytes can no longer be trusted or decoded.
    pub(super) lost_sync: bool,
    pub(super) close_deadline: Option<Instant>,
}

impl Session {
    pub(super) fn new(ctx: Arc<AmqpContext>, peer: &Peer) -> Session {
        let engine = ctx.engine.clone();
        let (tx, rx) = mailbox();
        let limits = Limits {
            frame_bytes_max: ctx.config.frame_max_bytes,
        };
        Session {
            conn_id: engine.next_connection_id(),
            engine,
            peer: peer.addr,
            cert_login: peer.cert_login.clone(),
            out: BytesMut::with_capacity(8 * 1024),
            limits,
            phase: Phase::AwaitingHeader,
            user: None,
            vhost: None,
            caps: ClientCaps::default(),
            channel_max: ctx.config.channel_max,
            frame_max: ctx.config.frame_max_bytes,
            heartbeat: 0,
            channels: HashMap::new(),
            tx,
            rx,
            alarm: false,
            stalled: None,
            lost_sync: false,
            close_deadline: None,
            ctx,
        }
    }

    pub(super) fn send(&mut self, channel: u16, method: AMQPClass) {
        codec::encode(&Frame::Method(channel, method), &mut self.out);
    }

    /// Before connection.open-ok (and not already closing).
    pub(super) fn handshaking(&self) -> bool {
        matches!(
            self.phase,
            Phase::AwaitingHeader
                | Phase::Starting
                | Phase::Securing(_)
                | Phase::Tuning
                | Phase::Opening
        )
    }

    pub(super) fn send_heartbeat(&mut self) {
        codec::encode(&Frame::Heartbeat(0), &mut self.out);
    }

    /// Whether the socket should be read: not while a publish waits for the alarm, nor while
    /// too much output is queued, nor once we are done.
    pub(super) fn wants_input(&self) -> bool {
        self.stalled.is_none() && self.phase != Phase::Done && self.out.len() < OUT_HIGH_WATER
    }

    /// Decodes and handles every complete frame in `buf`.
    pub(super) fn on_bytes(&mut self, buf: &mut BytesMut) {
        loop {
            if self.phase == Phase::Done || self.lost_sync {
                buf.clear();
                return;
            }
            if self.out.len() >= OUT_HIGH_WATER {
                return;
            }
            if self.phase == Phase::AwaitingHeader {
                let Some(header) = codec::decode_protocol_header(buf) else {
                    return;
                };
                self.on_protocol_header(header);
                continue;
            }
            if let Some(frame) = self.stalled.take() {
                if self.alarm {
                    self.stalled = Some(frame);
                    return;
                }
                self.on_frame(frame);
                continue;
            }
            match codec::decode(buf, &self.limits) {
                Ok(Some(frame)) => {
                    if self.alarm && self.phase == Phase::Open && is_publish(&frame) {
                        // RabbitMQ's "blocking": the first publish under the alarm stops the
                        // reader until the alarm clears.
                        self.stalled = Some(frame);
                        return;
                    }
                    self.on_frame(frame);
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(peer = %self.peer, error = %e, "AMQP framing error");
                    self.close_connection(AmqpError::from(&e));
                    self.lost_sync = true;
                    buf.clear();
                    return;
                }
            }
        }
    }

    fn on_protocol_header(&mut self, header: ProtocolHeader) {
        if !header.is_supported() {
            tracing::info!(peer = %self.peer, header = ?header.0, "refused AMQP protocol header");
            codec::encode(
                &Frame::ProtocolHeader(ProtocolHeader::AMQP_0_9_1),
                &mut self.out,
            );
            self.phase = Phase::Done;
            return;
        }
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: server_properties(),
                mechanisms: LongString::from(if self.cert_login.is_some() {
                    "PLAIN AMQPLAIN EXTERNAL"
                } else {
                    "PLAIN AMQPLAIN"
                }),
                locales: LongString::from("en_US"),
            })),
        );
        self.phase = Phase::Starting;
    }

    fn on_frame(&mut self, frame: Frame) {
        let result = match self.phase {
            Phase::AwaitingHeader | Phase::Done => Ok(()),
            Phase::Closing => {
                self.on_frame_closing(frame);
                Ok(())
            }
            Phase::Open => self.on_frame_open(frame),
            _ => self.on_frame_handshake(frame),
        };
        if let Err(e) = result {
            self.close_connection(e);
        }
    }

    fn on_frame_closing(&mut self, frame: Frame) {
        match frame {
            Frame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(_))) => {
                self.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                self.phase = Phase::Done;
            }
            Frame::Method(0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {
                self.phase = Phase::Done;
            }
            _ => {}
        }
    }

    fn on_frame_handshake(&mut self, frame: Frame) -> AmqpResult<()> {
        match frame {
            Frame::Method(0, AMQPClass::Connection(m)) => self.connection_method(m),
            Frame::Method(0, other) => Err(self.unexpected_method(&other)),
            Frame::Heartbeat(0) => Ok(()),
            Frame::ProtocolHeader(_) => Err(unknown_frame(b'A')),
            other => Err(AmqpError::new(
                code::UNEXPECTED_FRAME,
                format!(
                    "type {}, channel {}: frame before the connection is open",
                    frame_type(&other),
                    other.channel()
                ),
            )),
        }
    }

    fn on_frame_open(&mut self, frame: Frame) -> AmqpResult<()> {
        match frame {
            Frame::Heartbeat(0) => Ok(()),
            Frame::Heartbeat(ch) => Err(AmqpError::new(
                code::UNEXPECTED_FRAME,
                format!("type 8, channel {ch}: heartbeat on a channel other than 0"),
            )),
            Frame::ProtocolHeader(_) => Err(unknown_frame(b'A')),
            Frame::Method(0, AMQPClass::Connection(m)) => self.connection_method(m),
            Frame::Method(0, other) => Err(self.unexpected_method(&other)),
            Frame::Header(0, _) | Frame::Body(0, _) => Err(AmqpError::new(
                code::UNEXPECTED_FRAME,
                "content frame on channel 0",
            )),
            frame => self.on_channel_frame(frame),
        }
    }

    fn unexpected_method(&self, m: &AMQPClass) -> AmqpError {
        AmqpError::new(
            code::CHANNEL_ERROR,
            format!(
                "unexpected method in connection state {}",
                self.state_name()
            ),
        )
        .during(m.get_amqp_class_id(), m.get_amqp_method_id())
    }

    fn state_name(&self) -> &'static str {
        match self.phase {
            Phase::AwaitingHeader | Phase::Starting => "starting",
            Phase::Securing(_) => "securing",
            Phase::Tuning => "tuning",
            Phase::Opening => "opening",
            Phase::Open => "running",
            Phase::Closing | Phase::Done => "closing",
        }
    }

    fn connection_method(&mut self, m: connection::AMQPMethod) -> AmqpResult<()> {
        let ids = (10, AMQPClass::Connection(m.clone()).get_amqp_method_id());
        let result = match (self.phase, m) {
            (_, connection::AMQPMethod::Close(c)) => {
                tracing::debug!(peer = %self.peer, code = c.reply_code, text = %c.reply_text, "client closed the connection");
                self.release_all();
                self.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                self.phase = Phase::Done;
                Ok(())
            }
            (Phase::Starting, connection::AMQPMethod::StartOk(s)) => self.on_start_ok(s),
            (Phase::Securing(mech), connection::AMQPMethod::SecureOk(s)) => {
                self.authenticate(mech, s.response.as_bytes())
            }
            (Phase::Tuning, connection::AMQPMethod::TuneOk(t)) => self.on_tune_ok(t),
            (Phase::Opening, connection::AMQPMethod::Open(o)) => self.on_open(o),
            (Phase::Open, connection::AMQPMethod::UpdateSecret(u)) => self.on_update_secret(u),
            (_, other) => Err(self.unexpected_method(&AMQPClass::Connection(other))),
        };
        result.map_err(|e| e.during(ids.0, ids.1))
    }

    fn on_start_ok(&mut self, s: connection::StartOk) -> AmqpResult<()> {
        if let Some(AMQPValue::FieldTable(caps)) = s.client_properties.inner().get("capabilities") {
            let flag =
                |name: &str| matches!(caps.inner().get(name), Some(AMQPValue::Boolean(true)));
            self.caps = ClientCaps {
                connection_blocked: flag("connection.blocked"),
                consumer_cancel_notify: flag("consumer_cancel_notify"),
            };
        }
        let mech = match s.mechanism.as_str() {
            "PLAIN" => Mechanism::Plain,
            "AMQPLAIN" => Mechanism::AmqPlain,
            "EXTERNAL" if self.cert_login.is_some() => Mechanism::External,
            other => {
                return Err(AmqpError::new(
                    code::COMMAND_INVALID,
                    format!("unknown authentication mechanism '{other}'"),
                ))
            }
        };
        if s.response.is_empty() && mech != Mechanism::External {
            // The client wants a challenge first (secure / secure-ok); ours is empty.
            self.send(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Secure(connection::Secure {
                    challenge: LongString::from(""),
                })),
            );
            self.phase = Phase::Securing(mech);
            return Ok(());
        }
        self.authenticate(mech, s.response.as_bytes())
    }

    fn authenticate(&mut self, mech: Mechanism, response: &[u8]) -> AmqpResult<()> {
        let invalid = || {
            AmqpError::new(
                code::SYNTAX_ERROR,
                format!("{} response invalid", mech.name()),
            )
        };
        let (user, checked) = match mech {
            Mechanism::Plain | Mechanism::AmqPlain => {
                let (user, pass) = if mech == Mechanism::Plain {
                    parse_plain(response)
                } else {
                    parse_amqplain(response)
                }
                .ok_or_else(invalid)?;
                let checked = self.engine.authenticate(&user, &pass, self.peer);
                (user, checked)
            }
            Mechanism::External => {
                // The response may name an authorization identity; as RabbitMQ, the certificate's
                // name is the only one accepted.
                let user = self.cert_login.clone().ok_or_else(invalid)?;
                let checked = self.engine.authenticate_certificate(&user, self.peer);
                (user, checked)
            }
        };
        match checked {
            Ok(u) => {
                self.user = Some(u);
                self.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                        channel_max: self.ctx.config.channel_max,
                        frame_max: self.ctx.config.frame_max_bytes,
                        heartbeat: self.ctx.config.heartbeat_secs,
                    })),
                );
                self.phase = Phase::Tuning;
                Ok(())
            }
            Err(why) => {
                let reason = match why {
                    AuthError::BadCredentials => "invalid credentials".to_string(),
                    AuthError::LoopbackOnly => {
                        format!("user '{user}' can only connect via localhost")
                    }
                };
                tracing::warn!(peer = %self.peer, user = %user, mechanism = mech.name(), %reason, "AMQP login refused");
                Err(AmqpError::new(
                    code::ACCESS_REFUSED,
                    format!(
                        "Login was refused using authentication mechanism {}. For details see the broker logfile.",
                        mech.name()
                    ),
                ))
            }
        }
    }

    fn on_tune_ok(&mut self, t: connection::TuneOk) -> AmqpResult<()> {
        let negotiated = |field: &str, client: u32, min: u32, server: u32| -> AmqpResult<()> {
            if client != 0 && client < min {
                return Err(AmqpError::new(
                    code::NOT_ALLOWED,
                    format!("negotiated {field} = {client} is lower than the minimum allowed value ({min})"),
                ));
            }
            if server != 0 && (client == 0 || client > server) {
                return Err(AmqpError::new(
                    code::NOT_ALLOWED,
                    format!("negotiated {field} = {client} is higher than the maximum allowed value ({server})"),
                ));
            }
            Ok(())
        };
        negotiated(
            "frame_max",
            t.frame_max,
            codec::FRAME_MIN_SIZE,
            self.ctx.config.frame_max_bytes,
        )?;
        negotiated(
            "channel_max",
            u32::from(t.channel_max),
            1,
            u32::from(self.ctx.config.channel_max),
        )?;
        self.frame_max = t.frame_max;
        self.channel_max = t.channel_max;
        self.limits.frame_bytes_max = t.frame_max;
        // The client already negotiated (the lower of two non-zero values, or the non-zero
        // one); like RabbitMQ we take what tune-ok says, 0 included, so we never expect
        // heartbeats from a client that will not send them.
        self.heartbeat = t.heartbeat;
        self.phase = Phase::Opening;
        Ok(())
    }

    fn on_open(&mut self, o: connection::Open) -> AmqpResult<()> {
        let name = o.virtual_host.as_str();
        let user = self
            .user
            .clone()
            .ok_or_else(|| AmqpError::new(code::CHANNEL_ERROR, "connection.open before login"))?;
        // RabbitMQ's two texts: a vhost that does not exist, one the user may not open.
        let vhost = self
            .engine
            .vhost(name)
            .ok_or_else(|| AmqpError::new(code::NOT_ALLOWED, format!("vhost {name} not found")))?;
        if !self.engine.may_access(&user, name) {
            return Err(AmqpError::new(
                code::NOT_ALLOWED,
                format!("access to vhost '{name}' refused for user '{}'", user.name),
            ));
        }
        self.vhost = Some(vhost);
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
        );
        self.phase = Phase::Open;
        tracing::info!(peer = %self.peer, user = %user.name, vhost = %name, "AMQP connection open");
        if self.alarm {
            self.send_blocked();
        }
        Ok(())
    }

    fn on_update_secret(&mut self, u: connection::UpdateSecret) -> AmqpResult<()> {
        let user = self.user.clone().map(|u| u.name).unwrap_or_default();
        let secret = String::from_utf8_lossy(u.new_secret.as_bytes()).into_owned();
        match self.engine.authenticate(&user, &secret, self.peer) {
            Ok(u) => {
                self.user = Some(u);
                self.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                        connection::UpdateSecretOk {},
                    )),
                );
                Ok(())
            }
            Err(_) => Err(AmqpError::new(
                code::NOT_ALLOWED,
                "New secret was refused by one of the backends",
            )),
        }
    }

    /// Sends connection.close and waits for close-ok. Channels are released at once, so their
    /// unacked messages go back to their queues without waiting for the peer.
    pub(super) fn close_connection(&mut self, err: AmqpError) {
        if matches!(self.phase, Phase::Closing | Phase::Done) {
            return;
        }
        if self.phase == Phase::AwaitingHeader {
            self.phase = Phase::Done;
            return;
        }
        if err.code == code::CONNECTION_FORCED {
            tracing::info!(peer = %self.peer, text = %err.text, "closing AMQP connection");
        } else {
            tracing::warn!(
                peer = %self.peer,
                code = err.code,
                class_id = err.class_id,
                method_id = err.method_id,
                text = %err.text,
                "closing AMQP connection"
            );
        }
        self.release_all();
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: err.code,
                reply_text: err.reply_text(),
                class_id: err.class_id,
                method_id: err.method_id,
            })),
        );
        self.phase = Phase::Closing;
        self.close_deadline = Some(Instant::now() + CLOSE_TIMEOUT);
    }

    /// The broker is shutting down: connection.close 320, a short wait for close-ok.
    pub(super) fn on_shutdown(&mut self) {
        match self.phase {
            Phase::AwaitingHeader => self.phase = Phase::Done,
            Phase::Closing | Phase::Done => {}
            _ => {
                self.close_connection(AmqpError::new(
                    code::CONNECTION_FORCED,
                    "broker forced connection closure with reason 'shutdown'",
                ));
                self.close_deadline = Some(Instant::now() + SHUTDOWN_CLOSE_TIMEOUT);
            }
        }
    }

    /// The memory alarm rose or fell.
    pub(super) fn on_alarm(&mut self, active: bool) {
        if active == self.alarm {
            return;
        }
        self.alarm = active;
        if self.phase != Phase::Open {
            return;
        }
        if active {
            self.send_blocked();
        } else if self.caps.connection_blocked {
            self.send(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Unblocked(connection::Unblocked {})),
            );
        }
    }

    fn send_blocked(&mut self) {
        if self.caps.connection_blocked {
            self.send(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                    reason: "low on memory".into(),
                })),
            );
        }
    }

    /// Whether a confirm or commit-ok waits for an Lsn above `durable`.
    pub(super) fn waits_for_durability(&self, durable: u64) -> bool {
        self.channels
            .values()
            .any(|c| c.gated.front().is_some_and(|g| g.lsn() > durable))
    }

    /// Sends every confirm and commit-ok whose Lsn is durable, in publish order per channel,
    /// one basic.ack/nack (multiple) per run.
    pub(super) fn flush_gated(&mut self, durable: u64) {
        for c in self.channels.values_mut() {
            flush_channel_gated(c, durable, &mut self.out);
        }
    }

    /// Releases every channel (consumers go, unacked messages return to their queues).
    pub(super) fn release_all(&mut self) {
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            if let Some(mut c) = self.channels.remove(&id) {
                self.release_channel(&mut c);
            }
        }
    }

    /// The connection is gone: channels released, exclusive queues deleted.
    pub(super) fn finish(&mut self) {
        self.release_all();
        self.engine.connection_closed(self.conn_id);
        tracing::debug!(peer = %self.peer, conn = self.conn_id, "AMQP connection finished");
    }

    pub(super) fn new_channel(&mut self, id: u16) -> Channel {
        let handle = ChannelHandle {
            conn: self.conn_id,
            channel: id,
            tx: self.tx.clone(),
            credit: Arc::new(ChannelCredit::default()),
        };
        Channel::new(id, handle)
    }

    pub(super) fn vhost(&self) -> AmqpResult<Arc<Vhost>> {
        self.vhost
            .clone()
            .ok_or_else(|| AmqpError::new(code::CHANNEL_ERROR, "no vhost open"))
    }

    pub(super) fn user_name(&self) -> &str {
        self.user.as_ref().map_or("", |u| u.name.as_str())
    }
}

/// Writes one channel's confirms and commit-oks whose Lsn is durable, in order: consecutive
/// acks (or nacks) become one basic.ack (nack) with multiple set.
pub(super) fn flush_channel_gated(c: &mut Channel, durable: u64, out: &mut BytesMut) {
    let mut run: Option<(bool, u64, usize)> = None; // (ack?, last seq, length)
    let emit = |run: &mut Option<(bool, u64, usize)>, out: &mut BytesMut| {
        if let Some((ack, seq, n)) = run.take() {
            let m = if ack {
                basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: seq,
                    multiple: n > 1,
                })
            } else {
                basic::AMQPMethod::Nack(basic::Nack {
                    delivery_tag: seq,
                    multiple: n > 1,
                    requeue: false,
                })
            };
            codec::encode(&Frame::Method(c.id, AMQPClass::Basic(m)), out);
        }
    };
    while let Some(g) = c.gated.front().copied() {
        if g.lsn() > durable {
            break;
        }
        c.gated.pop_front();
        match g {
            Gated::Ack { seq, .. } | Gated::Nack { seq } => {
                let ack = matches!(g, Gated::Ack { .. });
                match &mut run {
                    Some((a, last, n)) if *a == ack => {
                        *last = seq;
                        *n += 1;
                    }
                    _ => {
                        emit(&mut run, out);
                        run = Some((ack, seq, 1));
                    }
                }
            }
            Gated::CommitOk { .. } => {
                emit(&mut run, out);
                c.committing = false;
                let ok = amq_protocol::protocol::tx::AMQPMethod::CommitOk(
                    amq_protocol::protocol::tx::CommitOk {},
                );
                codec::encode(&Frame::Method(c.id, AMQPClass::Tx(ok)), out);
            }
        }
    }
    emit(&mut run, out);
}

fn is_publish(frame: &Frame) -> bool {
    matches!(
        frame,
        Frame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Publish(_)))
    )
}

fn frame_type(frame: &Frame) -> u8 {
    match frame {
        Frame::ProtocolHeader(_) => b'A',
        Frame::Method(..) => codec::FRAME_METHOD,
        Frame::Header(..) => codec::FRAME_HEADER,
        Frame::Body(..) => codec::FRAME_BODY,
        Frame::Heartbeat(_) => codec::FRAME_HEARTBEAT,
    }
}

fn unknown_frame(t: u8) -> AmqpError {
    AmqpError::new(code::FRAME_ERROR, format!("type {t}: unknown_frame"))
}

/// SASL PLAIN: `authzid NUL authcid NUL passwd`; the authorization id is ignored, as RabbitMQ
/// does.
fn parse_plain(response: &[u8]) -> Option<(String, String)> {
    let mut parts = response.split(|b| *b == 0);
    let _authzid = parts.next()?;
    let user = std::str::from_utf8(parts.next()?).ok()?;
    let pass = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((user.to_string(), pass.to_string()))
}

/// AMQPLAIN: the entries of a field table (no length prefix) with LOGIN and PASSWORD as long
/// strings. Read by hand: only those two types matter, and nothing here recurses.
fn parse_amqplain(response: &[u8]) -> Option<(String, String)> {
    let mut rest = response;
    let mut login = None;
    let mut password = None;
    while !rest.is_empty() {
        let (&klen, r) = rest.split_first()?;
        let key = r.get(..klen as usize)?;
        let r = r.get(klen as usize..)?;
        let (&kind, r) = r.split_first()?;
        if kind != b'S' {
            return None;
        }
        let len = u32::from_be_bytes(r.get(..4)?.try_into().ok()?) as usize;
        let value = std::str::from_utf8(r.get(4..4 + len)?).ok()?.to_string();
        rest = r.get(4 + len..)?;
        match key {
            b"LOGIN" => login = Some(value),
            b"PASSWORD" => password = Some(value),
            _ => {}
        }
    }
    Some((login?, password?))
}

/// connection.start's server-properties, with the capabilities RabbitMQ announces.
fn server_properties() -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        caps.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    props.insert("product".into(), text("Wharf"));
    props.insert("version".into(), text(env!("CARGO_PKG_VERSION")));
    props.insert("platform".into(), text("Rust"));
    props.insert(
        "information".into(),
        text("Wharf: one broker for AMQP 0-9-1, MQTT, STOMP and the AWS messaging APIs"),
    );
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    props
}

/// channel.close for an error.
pub(super) fn channel_close(err: &AmqpError) -> AMQPClass {
    AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
        reply_code: err.code,
        reply_text: err.reply_text(),
        class_id: err.class_id,
        method_id: err.method_id,
    }))
}

/// A name echoed back in a method (queue, exchange, tag), cut to a short string.
pub(super) fn echo(s: &str) -> amq_protocol_types::ShortString {
    short_lossy(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_responses() {
        assert_eq!(
            parse_plain(b"\0guest\0secret"),
            Some(("guest".into(), "secret".into()))
        );
        assert_eq!(
            parse_plain(b"admin\0guest\0secret"),
            Some(("guest".into(), "secret".into()))
        );
        assert_eq!(parse_plain(b"guest"), None);
        assert_eq!(parse_plain(b"\0a\0b\0c"), None);
        assert_eq!(parse_plain(b"\0\xff\0b"), None);
    }

    #[test]
    fn amqplain_responses() {
        let mut r = Vec::new();
        for (k, v) in [("LOGIN", "guest"), ("PASSWORD", "pw")] {
            r.push(k.len() as u8);
            r.extend_from_slice(k.as_bytes());
            r.push(b'S');
            r.extend_from_slice(&(v.len() as u32).to_be_bytes());
            r.extend_from_slice(v.as_bytes());
        }
        assert_eq!(parse_amqplain(&r), Some(("guest".into(), "pw".into())));
        for cut in 0..r.len() {
            assert_eq!(parse_amqplain(&r[..cut]), None, "cut at {cut}");
        }
        assert_eq!(
            parse_amqplain(&[5, b'L', b'O', b'G', b'I', b'N', b't', 1]),
            None
        );
    }
}
