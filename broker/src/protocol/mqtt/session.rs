//! One MQTT connection's state: CONNECT and the session it opens, publishes into the engine,
//! subscriptions as bindings of the session's queue, deliveries out with packet ids.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use codecs::mqtt::topic::{filter_to_binding_key, routing_key_to_topic, split_shared};
use codecs::mqtt::{
    Ack, AckProperties, Codec, ConnAck, ConnAckProperties, Connect, Disconnect,
    DisconnectProperties, Limits, Packet, Protocol, Publish, QoS, ReasonCode, Reply,
    RetainHandling, SubAck, Subscribe, UnsubAck, Unsubscribe, Will,
};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::alias::{AliasPlan, OutAliases};
use super::mapping::{self, filter_matches, EXCHANGE};
use super::session_store::{Op, SessionState};
use super::{count, Connected, MqttContext, Takeover};
use crate::engine::mailbox::{mailbox, Mailbox, MailboxSender};
use crate::engine::{
    AuthError, ChannelCredit, ChannelHandle, ConnectionId, ConsumerSpec, Delivery, DeliveryId,
    Enqueued, Outbound, Queue, QueueSettings, Settle, Table, Value, Vhost,
};
use crate::net::Peer;
use crate::store::Lsn;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Connecting,
    Open,
    Done,
}

/// Binding arguments that record a subscription, so a persistent session finds its
/// subscriptions again after a reconnect or a restart (bindings are durable definitions).
const ARG_FILTER: &str = "x-mqtt-filter";
const ARG_QOS: &str = "x-mqtt-qos";
const ARG_SUB_ID: &str = "x-mqtt-subscription-id";
const ARG_NO_LOCAL: &str = "x-mqtt-no-local";
const ARG_RAP: &str = "x-mqtt-retain-as-published";
/// Topic aliases a client may use towards us (MQTT 5 Topic Alias Maximum in CONNACK).
const TOPIC_ALIAS_MAX: u16 = 16;
/// The channel number of the session's one engine channel.
const CHANNEL: u16 = 1;
const CONSUMER_TAG: &str = "mqtt";

#[derive(Debug, Clone)]
pub(super) struct Sub {
    qos: QoS,
    id: Option<u32>,
    /// MQTT 5 No Local: not the messages this client id published.
    no_local: bool,
    /// MQTT 5 Retain As Published: keep RETAIN on forwarded messages published with it.
    rap: bool,
}

impl Sub {
    fn new(s: &Subscribe, options: &codecs::mqtt::SubscriptionOptions) -> Sub {
        Sub {
            qos: options.qos,
            id: s.properties.subscription_identifier,
            no_local: options.no_local,
            rap: options.retain_as_published,
        }
    }
}

/// The session's subscriptions by filter. A `Vec` rather than a `HashMap`: a delivery looks at
/// every subscription anyway (filters match by wildcard, not by key), most sessions have one
/// or a few, and an empty `HashMap` is 48 bytes in every connection's task (a `Vec` 24), one
/// with a subscription a 180-byte table (a `Vec` 40 bytes).
#[derive(Debug, Default)]
struct Subs(Vec<(String, Sub)>);

impl Subs {
    fn insert(&mut self, filter: String, sub: Sub) -> Option<Sub> {
        if let Some((_, old)) = self.0.iter_mut().find(|(f, _)| *f == filter) {
            return Some(std::mem::replace(old, sub));
        }
        if self.0.capacity() == 0 {
            self.0.reserve_exact(1);
        }
        self.0.push((filter, sub));
        None
    }

    fn remove(&mut self, filter: &str) -> Option<Sub> {
        let i = self.0.iter().position(|(f, _)| f == filter)?;
        Some(self.0.remove(i).1)
    }

    fn get(&self, filter: &str) -> Option<&Sub> {
        self.0.iter().find(|(f, _)| f == filter).map(|(_, s)| s)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn iter(&self) -> impl Iterator<Item = (&String, &Sub)> {
        self.0.iter().map(|(f, s)| (f, s))
    }
}

/// Payloads from this size on keep sharing the read buffer they came in.
const COPY_PAYLOAD_BELOW: usize = 32 * 1024;

/// The payload of a PUBLISH, for a message that may stay queued for days. The codec hands out
/// a slice of the connection's read buffer (up to 64 KiB, shared by every packet read with it):
/// kept as is, one small message waiting for an offline session keeps the whole buffer alive.
/// Small payloads are copied out; a large one is most of its buffer anyway.
fn own_payload(payload: &bytes::Bytes) -> bytes::Bytes {
    if payload.len() < COPY_PAYLOAD_BELOW {
        bytes::Bytes::copy_from_slice(payload)
    } else {
        payload.clone()
    }
}

/// A shared subscription (`$share/{group}/{filter}`) this session is a member of: it consumes
/// from the group's queue, which the engine round-robins among the members.
#[derive(Debug)]
struct SharedSub {
    /// The filter after `$share/{group}/`.
    filter: String,
    sub: Sub,
    queue: Arc<Queue>,
}

/// The queue of a shared subscription: `mqtt-shared-<group>-<FNV-1a of the filter, hex>`.
fn shared_queue_name(group: &str, filter: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in filter.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("mqtt-shared-{group}-{h:016x}")
}

/// An outbound QoS 1/2 message awaiting PUBACK or PUBREC.
#[derive(Debug)]
enum OutFlight {
    /// `msg_id`: the store id, when the session journal has the packet id (persistent session,
    /// stored message); 0 otherwise.
    Engine {
        queue: Arc<Queue>,
        id: DeliveryId,
        msg_id: u64,
    },
    Retained,
}

/// What waits for durability, in order (see [`Session::gate`]).
#[derive(Debug)]
enum Gated {
    Send(Packet),
    /// Settle an outbound QoS 2 message once its PUBREC is in the session journal: until then
    /// a crash brings it back, to be resent with its packet id (which the client deduplicates).
    Settle(OutFlight),
}

/// Session state most connections never use (QoS 2, persistent-session resends, durability
/// gates, topic aliases, shared subscriptions): boxed on first use, so that an idle connection's
/// task does not carry about 400 bytes of empty maps.
#[derive(Debug, Default)]
struct Rare {
    /// Shared subscriptions by their full `$share/...` filter.
    shared: HashMap<String, SharedSub>,
    out_pubrel: HashSet<u16>,
    in_qos2: HashSet<u16>,
    /// Acknowledgements (and settlements) in order, each waiting for its store Lsn and its
    /// session journal sequence number to be durable.
    gated: VecDeque<(Lsn, u64, Gated)>,
    /// Outbound PUBLISHes in order, waiting for the session journal (QoS 2 on a persistent
    /// session: its packet id must survive a crash before the client sees it).
    gated_out: VecDeque<(Lsn, u64, Packet)>,
    /// The store position of the last retained copy queued at SUBSCRIBE: a copy is sent only
    /// once it is durable, so that a crash cannot lose one the client has not acknowledged.
    retained_lsn: Lsn,
    /// After a reconnect: messages (by store id) sent before and not acknowledged, to be sent
    /// again with their packet id and DUP when the queue redelivers them (MQTT-4.4.0-1).
    resend: HashMap<u64, u16>,
    /// After a reconnect: messages (by store id) whose PUBREC came before it; the client has
    /// them, only PUBREL is pending, so a redelivery of one is settled and not sent.
    resend_released: HashSet<u64>,
    aliases_in: HashMap<u16, String>,
    /// Topic aliases we use towards the client (MQTT 5, within its Topic Alias Maximum).
    aliases_out: OutAliases,
}

/// What [`Session::rare`] reads when nothing was allocated.
static NO_RARE: std::sync::LazyLock<Rare> = std::sync::LazyLock::new(Rare::default);

pub(super) struct Session {
    ctx: Arc<MqttContext>,
    pub(super) peer: SocketAddr,
    /// The user a verified client certificate names, when the listener allows certificate login.
    cert_login: Option<Box<str>>,
    conn_id: ConnectionId,
    codec: Codec,
    limits: Limits,
    pub(super) phase: Phase,
    pub(super) out: BytesMut,
    /// Engine deliveries to this session; created when it first consumes (a connection that
    /// never subscribes needs no channel).
    pub(super) rx: Option<Mailbox<Outbound>>,
    channel: Option<(MailboxSender<Outbound>, Arc<ChannelCredit>)>,
    /// The client's Receive Maximum: the prefetch of the session's consumers.
    receive_max: u16,
    pub(super) client_id: String,
    protocol: Protocol,
    pub(super) keep_alive: u16,
    vhost: Option<Arc<Vhost>>,
    queue: Option<Arc<Queue>>,
    /// The session outlives the connection (clean session 0, or MQTT 5 session expiry > 0).
    persistent: bool,
    session_expiry: u32,
    subs: Subs,
    /// Boxed: most clients have none, and the session is part of every connection's task.
    will: Option<Box<Will>>,
    /// Publish the will when the connection ends (cleared by a normal DISCONNECT).
    will_armed: bool,
    next_pid: u16,
    /// Outbound QoS 1/2 messages awaiting PUBACK or PUBREC, by packet id; boxed on the first
    /// (an empty map is 48 bytes in the task of every connection, most of which send none).
    #[allow(clippy::box_collection)]
    out_flight: Option<Box<HashMap<u16, OutFlight>>>,
    /// What most connections never use, allocated when first needed (see [`Rare`]).
    rare: Option<Box<Rare>>,
    client_packet_max: Option<u32>,
    /// MQTT 5 Request Problem Information (default 1): Reason Strings on acknowledgements.
    problem_info: bool,
    /// The client has published: blocked while the memory alarm is on.
    pub(super) publisher: bool,
    /// The session has delivered a message to the client (see connection.rs: parking).
    pub(super) delivered: bool,
    pub(super) signals: Arc<Takeover>,
    registered: bool,
}

impl Session {
    pub(super) fn new(ctx: Arc<MqttContext>, peer: &Peer) -> Session {
        let limits = Limits {
            packet_bytes_max: ctx.config.packet_bytes_max,
        };
        Session {
            conn_id: ctx.engine.next_connection_id(),
            ctx,
            peer: peer.addr,
            cert_login: peer.cert_login.as_deref().map(Box::from),
            codec: Codec::new(),
            limits,
            phase: Phase::Connecting,
            // Empty until there is something to send: an idle connection needs no buffer.
            out: BytesMut::new(),
            rx: None,
            channel: None,
            receive_max: 0,
            client_id: String::new(),
            protocol: Protocol::V3_1_1,
            keep_alive: 0,
            vhost: None,
            queue: None,
            persistent: false,
            session_expiry: 0,
            subs: Subs::default(),
            will: None,
            will_armed: false,
            next_pid: 1,
            out_flight: None,
            rare: None,
            client_packet_max: None,
            problem_info: true,
            publisher: false,
            delivered: false,
            signals: Arc::new(Takeover::new()),
            registered: false,
        }
    }

    pub(super) fn ctx(&self) -> &Arc<MqttContext> {
        &self.ctx
    }

    /// Nothing waits for durability or for a packet: the connection may park (the mailbox is
    /// looked at when the parking lot's waker is registered).
    pub(super) fn parkable(&self) -> bool {
        self.phase == Phase::Open
            && self
                .rare
                .as_deref()
                .is_none_or(|r| r.gated.is_empty() && r.gated_out.is_empty())
    }

    fn take_out_flight(&mut self, packet_id: u16) -> Option<OutFlight> {
        self.out_flight.as_mut()?.remove(&packet_id)
    }

    /// The rarely used state, read-only (empty when never allocated).
    fn rare(&self) -> &Rare {
        self.rare.as_deref().unwrap_or(&NO_RARE)
    }

    /// The rarely used state, allocated now if it was not.
    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// The session's queue (not kept: most sessions never declare it).
    fn queue_name(&self) -> String {
        format!("mqtt-subscription-{}", self.client_id)
    }

    fn v5(&self) -> bool {
        self.protocol == Protocol::V5
    }

    fn send(&mut self, packet: &Packet) {
        count(&self.ctx.stats.packets_sent, 1);
        if let (Some(max), false) = (self.client_packet_max, matches!(packet, Packet::Publish(_))) {
            // MQTT-3.1.2-25 / 4.13: a Reason String that would make an acknowledgement too
            // large for the client is left out.
            if self
                .codec
                .encoded_size(packet)
                .is_ok_and(|n| n > max as usize)
            {
                if let Some(p) = without_reason_string(packet) {
                    if let Err(e) = self.codec.encode(&p, &mut self.out) {
                        tracing::warn!(peer = %self.peer, error = %e, "cannot encode MQTT packet");
                    }
                    return;
                }
            }
        }
        if let Err(e) = self.codec.encode(packet, &mut self.out) {
            tracing::warn!(peer = %self.peer, error = %e, "cannot encode MQTT packet");
        }
    }

    /// Properties of an acknowledgement: a Reason String for an MQTT 5 client that did not
    /// turn Request Problem Information off, when `code` is not plain success.
    fn ack_props(&self, code: ReasonCode, text: impl FnOnce() -> String) -> AckProperties {
        if self.v5() && self.problem_info && code != ReasonCode::SUCCESS {
            AckProperties {
                reason_string: Some(text()),
                ..Default::default()
            }
        } else {
            AckProperties::default()
        }
    }

    /// Sends an acknowledgement once `lsn` (message store) and `jseq` (session journal) are
    /// durable, after every earlier one.
    fn send_gated(&mut self, lsn: Lsn, jseq: u64, packet: Packet) {
        self.gate(lsn, jseq, Gated::Send(packet));
    }

    fn gate(&mut self, lsn: Lsn, jseq: u64, what: Gated) {
        let ready = lsn <= self.ctx.engine.durable_lsn() && jseq <= self.ctx.sessions.durable_seq();
        if self.rare().gated.is_empty() && ready {
            self.run_gated(what);
        } else {
            self.rare_mut().gated.push_back((lsn, jseq, what));
        }
    }

    fn run_gated(&mut self, what: Gated) {
        match what {
            Gated::Send(p) => self.send(&p),
            Gated::Settle(f) => settle(f, Settle::Ack),
        }
    }

    /// Sends an outbound PUBLISH once `lsn` (message store) and `jseq` (session journal) are
    /// durable, after every earlier PUBLISH.
    fn send_publish(&mut self, lsn: Lsn, jseq: u64, packet: Packet) {
        if self.rare().gated_out.is_empty()
            && lsn <= self.ctx.engine.durable_lsn()
            && jseq <= self.ctx.sessions.durable_seq()
        {
            self.send(&packet);
        } else {
            self.rare_mut().gated_out.push_back((lsn, jseq, packet));
        }
    }

    pub(super) fn flush_gated(&mut self, durable: Lsn, journal: u64) {
        while self
            .rare()
            .gated
            .front()
            .is_some_and(|(lsn, j, _)| *lsn <= durable && *j <= journal)
        {
            if let Some((_, _, what)) = self.rare_mut().gated.pop_front() {
                self.run_gated(what);
            }
        }
        while self
            .rare()
            .gated_out
            .front()
            .is_some_and(|(lsn, j, _)| *lsn <= durable && *j <= journal)
        {
            if let Some((_, _, p)) = self.rare_mut().gated_out.pop_front() {
                self.send(&p);
            }
        }
    }

    /// Whether something waits for the message store, and for the session journal.
    pub(super) fn waits_for_durability(&self, durable: Lsn, journal: u64) -> (bool, bool) {
        let (mut store, mut jrnl) = (false, false);
        let rare = self.rare();
        if let Some((lsn, j, _)) = rare.gated.front() {
            store = *lsn > durable;
            jrnl = !store && *j > journal;
        }
        if let Some((lsn, j, _)) = rare.gated_out.front() {
            store |= *lsn > durable;
            jrnl |= *lsn <= durable && *j > journal;
        }
        (store, jrnl)
    }

    /// Records a change of this session's packet-id state in the session journal when the
    /// session is persistent; returns the sequence number to wait for (0: nothing to wait for).
    fn journal(&self, op: Op) -> u64 {
        if self.persistent {
            self.ctx.sessions.record(&self.client_id, op)
        } else {
            0
        }
    }

    /// Closes with an MQTT 5 DISCONNECT carrying `reason` (3.1.x: a plain close).
    fn disconnect(&mut self, reason: ReasonCode) {
        if self.v5() && self.phase == Phase::Open {
            let text = match reason {
                ReasonCode::SESSION_TAKEN_OVER => "session taken over",
                ReasonCode::SERVER_SHUTTING_DOWN => "server shutting down",
                ReasonCode::KEEP_ALIVE_TIMEOUT => "keep alive timeout",
                ReasonCode::TOPIC_ALIAS_INVALID => "topic alias invalid",
                _ => "protocol error",
            };
            // With a Reason String: some clients (paho 2.1) read the reason code only from a
            // DISCONNECT longer than 2 bytes.
            self.send(&Packet::Disconnect(Disconnect {
                reason,
                properties: DisconnectProperties {
                    reason_string: Some(text.into()),
                    ..Default::default()
                },
            }));
        }
        self.phase = Phase::Done;
    }

    fn connack_refuse(&mut self, code: ReasonCode) {
        let text = match code {
            ReasonCode::BAD_AUTHENTICATION_METHOD => "enhanced authentication is not supported",
            ReasonCode::BAD_USER_NAME_OR_PASSWORD => "unknown user or wrong password",
            ReasonCode::NOT_AUTHORIZED => "this user may not connect from here or to this vhost",
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID => "an empty client identifier is not allowed",
            _ => "connection refused",
        };
        // A Reason String is allowed on CONNACK whatever Request Problem Information says.
        let properties = if self.v5() {
            ConnAckProperties {
                reason_string: Some(text.into()),
                ..Default::default()
            }
        } else {
            ConnAckProperties::default()
        };
        self.send(&Packet::ConnAck(Box::new(ConnAck {
            session_present: false,
            code,
            properties,
        })));
        self.phase = Phase::Done;
    }

    /// Decodes what is buffered. Returns a CONNECT for [`Session::on_connect`] (which awaits a
    /// takeover); handles every other packet here.
    pub(super) fn on_bytes(&mut self, buf: &mut BytesMut) -> Option<Box<Connect>> {
        while self.phase != Phase::Done {
            match self.codec.decode(buf, &self.limits) {
                Ok(None) => return None,
                Ok(Some(Packet::Connect(c))) if self.phase == Phase::Connecting => {
                    count(&self.ctx.stats.packets_received, 1);
                    self.protocol = c.protocol;
                    return Some(c);
                }
                Ok(Some(packet)) => {
                    count(&self.ctx.stats.packets_received, 1);
                    self.on_packet(packet);
                }
                Err(e) => {
                    tracing::info!(peer = %self.peer, client_id = %self.client_id, error = %e, "bad MQTT input, closing");
                    match e.reply() {
                        Reply::Close => {}
                        Reply::ConnAck { protocol, code } => {
                            let codec = Codec::with_protocol(protocol);
                            let _ = codec.encode(
                                &Packet::ConnAck(Box::new(ConnAck {
                                    code,
                                    ..Default::default()
                                })),
                                &mut self.out,
                            );
                        }
                        Reply::Disconnect { reason } => {
                            if self.phase == Phase::Open {
                                self.send(&Packet::Disconnect(Disconnect {
                                    reason,
                                    ..Default::default()
                                }));
                            }
                        }
                    }
                    self.phase = Phase::Done;
                }
            }
        }
        None
    }

    pub(super) async fn on_connect(&mut self, c: Connect) {
        let ctx = self.ctx.clone();
        let cfg = &ctx.config;
        self.client_packet_max = c.properties.maximum_packet_size;
        if c.properties.authentication_method.is_some() {
            // Enhanced authentication (AUTH) is not offered: no method is known.
            return self.connack_refuse(ReasonCode::BAD_AUTHENTICATION_METHOD);
        }
        let user = match (&c.username, &cfg.anonymous_user) {
            // A verified client certificate logs in a client that sends no user name
            // (RabbitMQ's mqtt.ssl_cert_login); explicit credentials are still checked as given.
            (None, _) if self.cert_login.is_some() => {
                let name = self.cert_login.as_deref().unwrap_or_default();
                self.ctx.engine.authenticate_certificate(name, self.peer)
            }
            (Some(name), _) => {
                let pw = c.password.as_deref().unwrap_or_default();
                let pw = String::from_utf8_lossy(pw);
                self.ctx.engine.authenticate(name, &pw, self.peer)
            }
            (None, Some(anon)) => self.ctx.engine.user(anon).ok_or(AuthError::BadCredentials),
            (None, None) => Err(AuthError::BadCredentials),
        };
        let user = match user {
            Ok(u) => u,
            Err(AuthError::BadCredentials) => {
                tracing::info!(peer = %self.peer, user = ?c.username, "MQTT login refused");
                return self.connack_refuse(ReasonCode::BAD_USER_NAME_OR_PASSWORD);
            }
            Err(AuthError::LoopbackOnly) => {
                return self.connack_refuse(ReasonCode::NOT_AUTHORIZED);
            }
        };
        let vhost = match self.ctx.engine.vhost(&cfg.vhost) {
            Some(v) if self.ctx.engine.may_access(&user, &cfg.vhost) => v,
            _ => return self.connack_refuse(ReasonCode::NOT_AUTHORIZED),
        };
        let mut assigned = None;
        let client_id = if c.client_id.is_empty() {
            let allowed = match c.protocol {
                Protocol::V3_1 => false,
                Protocol::V3_1_1 => c.clean_start,
                Protocol::V5 => true,
            };
            if !allowed {
                return self.connack_refuse(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
            }
            let suffix: String = rand::rng()
                .sample_iter(rand::distr::Alphanumeric)
                .take(20)
                .map(char::from)
                .collect();
            let id = format!("wharf-{suffix}");
            assigned = Some(id.clone());
            id
        } else {
            c.client_id.clone()
        };
        self.client_id = client_id.clone();

        // Takeover: the old connection closes (MQTT 5: DISCONNECT 0x8E) and releases its
        // session before this one uses it.
        let old = self.ctx.clients.lock().insert(
            client_id.clone(),
            Connected {
                conn: self.conn_id,
                signals: self.signals.clone(),
            },
        );
        self.registered = true;
        if let Some(old) = old {
            tracing::info!(peer = %self.peer, client_id = %client_id, "session taken over by a new connection");
            old.signals.kick();
            let _ = tokio::time::timeout(Duration::from_secs(5), old.signals.done.fired()).await;
        }
        if let Some(will) = self.ctx.wills.lock().remove(&client_id) {
            will.cancel();
        }

        let (persistent, expiry) = match c.protocol {
            Protocol::V5 => {
                let e = c.properties.session_expiry_interval.unwrap_or(0);
                (e > 0, e)
            }
            _ => (!c.clean_start, u32::MAX),
        };
        self.persistent = persistent;
        self.session_expiry = expiry;
        let existing = vhost.queue(&self.queue_name(), self.conn_id).ok();
        let mut session_present = false;
        let mut rejoin = Vec::new();
        let mut saved = None;
        if c.clean_start {
            if let Some(q) = existing {
                let _ = vhost.delete_queue_unchecked(&q);
            }
            if self.ctx.sessions.get(&client_id).is_some() {
                self.ctx.sessions.record(&client_id, Op::Clear);
            }
            self.ctx.shared_offline.lock().remove(&client_id);
        } else {
            if let Some(q) = existing {
                session_present = true;
                self.restore_subscriptions(&vhost, &q);
                self.queue = Some(q);
            }
            if let Some(st) = self.ctx.sessions.get(&client_id) {
                saved = Some(st);
                session_present = true;
            }
            if let Some((subs, until)) = self.ctx.shared_offline.lock().remove(&client_id) {
                if until.is_none_or(|t| std::time::Instant::now() < t) {
                    session_present = true;
                    rejoin = subs;
                }
            }
        }
        self.vhost = Some(vhost);
        self.keep_alive = c.keep_alive;
        self.will = c.will.map(Box::new);
        self.will_armed = self.will.is_some();
        self.client_packet_max = c.properties.maximum_packet_size;
        if c.protocol == Protocol::V5 {
            if let Some(max) = c.properties.topic_alias_maximum.filter(|m| *m > 0) {
                self.rare_mut().aliases_out = OutAliases::new(max);
            }
        }
        self.problem_info = c.properties.request_problem_information.unwrap_or(true);
        let receive_max = match c.protocol {
            Protocol::V5 => c.properties.receive_maximum.unwrap_or(u16::MAX),
            _ => cfg.receive_maximum,
        };
        self.receive_max = receive_max;
        let properties = if c.protocol == Protocol::V5 {
            ConnAckProperties {
                receive_maximum: Some(cfg.receive_maximum),
                maximum_packet_size: Some(cfg.packet_bytes_max),
                assigned_client_identifier: assigned,
                topic_alias_maximum: Some(TOPIC_ALIAS_MAX),
                retain_available: Some(true),
                wildcard_subscription_available: Some(true),
                subscription_identifiers_available: Some(true),
                shared_subscription_available: Some(true),
                ..Default::default()
            }
        } else {
            ConnAckProperties::default()
        };
        self.phase = Phase::Open;
        self.send(&Packet::ConnAck(Box::new(ConnAck {
            session_present,
            code: ReasonCode::SUCCESS,
            properties,
        })));
        tracing::debug!(peer = %self.peer, client_id = %self.client_id, protocol = ?self.protocol, persistent, "MQTT session open");
        if let Some(st) = saved {
            self.resume(st);
        }
        if self.queue.is_some() {
            self.start_consuming();
        }
        for (full, sub) in rejoin {
            if let Some((group, filter)) = split_shared(&full) {
                self.join_shared(&full, group, filter, sub);
            }
        }
    }

    /// Takes up the packet-id state of a resumed session (MQTT-4.4.0-1): PUBRELs awaiting
    /// PUBCOMP are sent again at once, in PUBREC order; unacknowledged PUBLISHes go out again
    /// with their packet id and DUP as the queue redelivers them (in the order they were sent,
    /// which is queue order). Entries whose message left the queue meanwhile are dropped.
    fn resume(&mut self, st: SessionState) {
        self.rare_mut().in_qos2 = st.qos2_in.into_iter().collect();
        let wanted: HashSet<u64> = st
            .published
            .iter()
            .chain(&st.released)
            .map(|(_, m)| *m)
            .filter(|m| *m != 0)
            .collect();
        let held = match &self.queue {
            Some(q) if !wanted.is_empty() => q.holds(&wanted),
            _ => HashSet::new(),
        };
        for (pid, msg_id) in st.released {
            self.rare_mut().out_pubrel.insert(pid);
            if held.contains(&msg_id) {
                self.rare_mut().resend_released.insert(msg_id);
            }
            self.send(&Packet::PubRel(Ack {
                packet_id: pid,
                ..Default::default()
            }));
        }
        for (pid, msg_id) in st.published {
            if held.contains(&msg_id) {
                self.rare_mut().resend.insert(msg_id, pid);
            } else {
                self.journal(Op::Done(pid));
            }
        }
    }

    fn restore_subscriptions(&mut self, vhost: &Vhost, q: &Queue) {
        let Some(ex) = vhost.exchange(EXCHANGE) else {
            return;
        };
        let dest = crate::engine::Destination::Queue(q.name.clone());
        for b in ex.bindings() {
            if b.destination != dest {
                continue;
            }
            let Some(filter) = b.arguments.get(ARG_FILTER).and_then(Value::as_str) else {
                continue;
            };
            let qos = b
                .arguments
                .get(ARG_QOS)
                .and_then(Value::as_i64)
                .and_then(|x| u8::try_from(x).ok())
                .and_then(QoS::from_u8)
                .unwrap_or(QoS::AtMostOnce);
            let id = b
                .arguments
                .get(ARG_SUB_ID)
                .and_then(Value::as_i64)
                .and_then(|x| u32::try_from(x).ok());
            let flag = |name: &str| {
                b.arguments
                    .get(name)
                    .and_then(Value::as_i64)
                    .is_some_and(|v| v == 1)
            };
            let sub = Sub {
                qos,
                id,
                no_local: flag(ARG_NO_LOCAL),
                rap: flag(ARG_RAP),
            };
            self.subs.insert(filter.to_string(), sub);
            self.count_subs(1);
        }
    }

    /// The session's engine channel, created on first use.
    fn channel_handle(&mut self) -> ChannelHandle {
        let (tx, credit) = self.channel.get_or_insert_with(|| {
            let (tx, rx) = mailbox();
            self.rx = Some(rx);
            let credit = ChannelCredit::default();
            credit
                .global_prefetch
                .store(u32::from(self.receive_max), Ordering::Release);
            (tx, Arc::new(credit))
        });
        ChannelHandle {
            conn: self.conn_id,
            channel: CHANNEL,
            tx: tx.clone(),
            credit: credit.clone(),
        }
    }

    fn start_consuming(&mut self) {
        let Some(q) = self.queue.clone() else {
            return;
        };
        let spec = ConsumerSpec {
            tag: CONSUMER_TAG.into(),
            channel: self.channel_handle(),
            no_ack: false,
            exclusive: false,
            priority: 0,
            prefetch: 0,
        };
        if let Err(e) = q.consume(spec) {
            tracing::warn!(peer = %self.peer, queue = %q.name, error = %e, "cannot consume the MQTT session queue");
        }
    }

    /// The session's queue, declared on first use.
    fn ensure_queue(&mut self) -> Option<Arc<Queue>> {
        if let Some(q) = &self.queue {
            if !q.is_deleted() {
                return Some(q.clone());
            }
        }
        let vhost = self.vhost.clone()?;
        let mut arguments = Table::new();
        if self.persistent && self.session_expiry != u32::MAX {
            arguments.insert(
                "x-expires".into(),
                Value::I64(i64::from(self.session_expiry) * 1000),
            );
        }
        let settings = QueueSettings {
            durable: self.persistent,
            exclusive_owner: None,
            auto_delete: false,
            arguments,
        };
        let name = self.queue_name();
        match vhost.declare_queue(&name, settings, false, self.conn_id) {
            Ok((q, _, _)) => {
                self.queue = Some(q.clone());
                self.start_consuming();
                Some(q)
            }
            Err(e) => {
                tracing::warn!(peer = %self.peer, queue = %name, error = %e, "cannot declare the MQTT session queue");
                None
            }
        }
    }

    /// Counts subscriptions of connected sessions for `$SYS/broker/subscriptions/count`.
    fn count_subs(&self, delta: i64) {
        self.ctx
            .stats
            .subscriptions
            .fetch_add(delta, Ordering::Relaxed);
    }

    fn on_packet(&mut self, packet: Packet) {
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(a) => {
                if let Some(f) = self.take_out_flight(a.packet_id) {
                    self.journal_out(&f, Op::Done(a.packet_id));
                    settle(f, Settle::Ack);
                }
            }
            Packet::PubRec(a) => match self.take_out_flight(a.packet_id) {
                Some(f) if !a.reason.is_error() => {
                    // The PUBREC is journalled before the message is settled and PUBREL sent:
                    // a crash in between resends the PUBLISH (same id, DUP), never loses it.
                    let j = self.journal_out(&f, Op::Released(a.packet_id));
                    self.rare_mut().out_pubrel.insert(a.packet_id);
                    self.gate(0, j, Gated::Settle(f));
                    self.send_gated(
                        0,
                        j,
                        Packet::PubRel(Ack {
                            packet_id: a.packet_id,
                            ..Default::default()
                        }),
                    );
                }
                Some(f) => {
                    // Refused by the client: settled, not sent again.
                    self.journal_out(&f, Op::Done(a.packet_id));
                    settle(f, Settle::Ack);
                }
                None => {
                    let reason = if self.rare().out_pubrel.contains(&a.packet_id) {
                        ReasonCode::SUCCESS
                    } else {
                        ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                    };
                    let properties = self.ack_props(reason, || {
                        format!(
                            "no message in flight with packet identifier {}",
                            a.packet_id
                        )
                    });
                    self.send(&Packet::PubRel(Ack {
                        packet_id: a.packet_id,
                        reason,
                        properties,
                    }));
                }
            },
            Packet::PubComp(a) => {
                if self.rare_mut().out_pubrel.remove(&a.packet_id) {
                    self.journal(Op::Done(a.packet_id));
                }
            }
            Packet::PubRel(a) => {
                // The id is free once that is durable: a PUBCOMP before it could let the client
                // reuse the id for a new message that a crash would then drop as a resend.
                let (reason, j) = if self.rare_mut().in_qos2.remove(&a.packet_id) {
                    (
                        ReasonCode::SUCCESS,
                        self.journal(Op::Qos2InDone(a.packet_id)),
                    )
                } else {
                    (ReasonCode::PACKET_IDENTIFIER_NOT_FOUND, 0)
                };
                let properties = self.ack_props(reason, || {
                    format!(
                        "no QoS 2 message received with packet identifier {}",
                        a.packet_id
                    )
                });
                self.send_gated(
                    0,
                    j,
                    Packet::PubComp(Ack {
                        packet_id: a.packet_id,
                        reason,
                        properties,
                    }),
                );
            }
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u),
            Packet::PingReq => self.send(&Packet::PingResp),
            Packet::Disconnect(d) => {
                // 0x04: disconnect with will message.
                self.will_armed = d.reason == ReasonCode::DISCONNECT_WITH_WILL_MESSAGE;
                if let Some(e) = d.properties.session_expiry_interval {
                    if self.v5() && self.session_expiry == 0 && e > 0 {
                        // MQTT-3.14.2-2: a Protocol Error.
                        self.disconnect(ReasonCode::PROTOCOL_ERROR);
                        return;
                    }
                    self.session_expiry = e;
                    self.persistent = e > 0;
                }
                self.phase = Phase::Done;
            }
            Packet::Connect(_) => {
                // A second CONNECT is a Protocol Error (MQTT-3.1.0-2).
                self.disconnect(ReasonCode::PROTOCOL_ERROR);
            }
            Packet::Auth(_) => self.disconnect(ReasonCode::PROTOCOL_ERROR),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                self.disconnect(ReasonCode::PROTOCOL_ERROR);
            }
        }
    }

    fn on_publish(&mut self, mut p: Publish) {
        count(&self.ctx.stats.publish_received, 1);
        self.publisher = true;
        if let Some(alias) = p.properties.topic_alias {
            if alias > TOPIC_ALIAS_MAX {
                return self.disconnect(ReasonCode::TOPIC_ALIAS_INVALID);
            }
            if p.topic.is_empty() {
                match self.rare().aliases_in.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => return self.disconnect(ReasonCode::PROTOCOL_ERROR),
                }
            } else {
                self.rare_mut().aliases_in.insert(alias, p.topic.clone());
            }
        }
        if p.qos == QoS::ExactlyOnce && self.rare().in_qos2.contains(&p.packet_id) {
            // A resend of a message already taken: acknowledge, do not publish again.
            return self.send_gated(
                0,
                0,
                Packet::PubRec(Ack {
                    packet_id: p.packet_id,
                    ..Default::default()
                }),
            );
        }
        let mut msg = mapping::to_message(&p.topic, own_payload(&p.payload), p.qos, &p.properties);
        mapping::tag_publisher(&mut msg, &self.client_id, p.retain);
        if p.retain {
            self.ctx.retained.set(&p.topic, msg.clone());
        }
        let (lsn, reason, text) = match self.vhost.as_ref().map(|v| v.publish(EXCHANGE, msg)) {
            Some(Ok(o)) if o.rejected => (
                o.lsn,
                ReasonCode::QUOTA_EXCEEDED,
                "a queue is full and refuses publishes (x-overflow reject-publish)".to_string(),
            ),
            Some(Ok(o)) if !o.routed => (
                o.lsn,
                ReasonCode::NO_MATCHING_SUBSCRIBERS,
                "no subscription matches the topic".to_string(),
            ),
            Some(Ok(o)) => (o.lsn, ReasonCode::SUCCESS, String::new()),
            Some(Err(e)) => {
                tracing::warn!(peer = %self.peer, error = %e, "MQTT publish failed");
                (
                    0,
                    ReasonCode::UNSPECIFIED_ERROR,
                    format!("publish failed: {e}"),
                )
            }
            None => (0, ReasonCode::UNSPECIFIED_ERROR, "no vhost".to_string()),
        };
        let ack = Ack {
            packet_id: p.packet_id,
            reason,
            properties: self.ack_props(reason, || text),
        };
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send_gated(lsn, 0, Packet::PubAck(ack)),
            QoS::ExactlyOnce => {
                // PUBREC leaves once both the message and the packet id are durable: from then
                // on a resend of this PUBLISH is recognised, across a crash too.
                let mut j = 0;
                if !reason.is_error() {
                    self.rare_mut().in_qos2.insert(p.packet_id);
                    j = self.journal(Op::Qos2In(p.packet_id));
                }
                self.send_gated(lsn, j, Packet::PubRec(ack));
            }
        }
    }

    /// The arguments of a subscription's binding. Only a persistent session reads its
    /// subscriptions back from its bindings; a clean session's carry none (a table with an
    /// entry is a 720-byte B-tree leaf per subscription), unless the binding key cannot tell the
    /// filter apart: a literal `*` level maps to the same key as `+`, and the filter argument
    /// keeps the two bindings distinct.
    fn binding_args(&self, filter: &str, sub: &Sub) -> Table {
        let mut args = Table::new();
        if !self.persistent && !filter.split('/').any(|level| level == "*") {
            return args;
        }
        args.insert(ARG_FILTER.into(), Value::long_string(filter));
        args.insert(ARG_QOS.into(), Value::U8(sub.qos as u8));
        if let Some(id) = sub.id {
            args.insert(ARG_SUB_ID.into(), Value::I64(i64::from(id)));
        }
        // Only when set, so bindings made before these options existed still match.
        if sub.no_local {
            args.insert(ARG_NO_LOCAL.into(), Value::U8(1));
        }
        if sub.rap {
            args.insert(ARG_RAP.into(), Value::U8(1));
        }
        args
    }

    fn unbind(&self, filter: &str, sub: &Sub) {
        if let Some(v) = &self.vhost {
            let key = filter_to_binding_key(filter);
            let _ = v.unbind_queue(
                &self.queue_name(),
                EXCHANGE,
                &key,
                self.binding_args(filter, sub),
                self.conn_id,
            );
        }
    }

    fn on_subscribe(&mut self, s: Subscribe) {
        let mut reasons = Vec::with_capacity(s.subscriptions.len());
        let mut retained = Vec::new();
        for sub in &s.subscriptions {
            if let Some((group, filter)) = split_shared(&sub.filter) {
                let new = Sub::new(&s, &sub.options);
                // No retained messages for a shared subscription (MQTT-3.8.4-...: "retained
                // messages are not sent to the session when it establishes a new shared one").
                let code = if self.join_shared(&sub.filter, group, filter, new) {
                    ReasonCode(sub.options.qos as u8)
                } else if self.v5() {
                    ReasonCode::UNSPECIFIED_ERROR
                } else {
                    ReasonCode::V3_SUBACK_FAILURE
                };
                reasons.push(code);
                continue;
            }
            let Some(q) = self.ensure_queue() else {
                reasons.push(ReasonCode::UNSPECIFIED_ERROR);
                continue;
            };
            let new = Sub::new(&s, &sub.options);
            let existed = self.subs.remove(&sub.filter);
            if let Some(old) = &existed {
                self.unbind(&sub.filter, old);
            }
            let key = filter_to_binding_key(&sub.filter);
            let args = self.binding_args(&sub.filter, &new);
            let bound = self
                .vhost
                .as_ref()
                .map(|v| v.bind_queue(&q.name, EXCHANGE, &key, args, self.conn_id));
            if !matches!(bound, Some(Ok(()))) {
                reasons.push(ReasonCode::UNSPECIFIED_ERROR);
                continue;
            }
            reasons.push(ReasonCode(sub.options.qos as u8));
            let send_retained = match sub.options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendAtNewSubscribe => existed.is_none(),
                RetainHandling::DoNotSend => false,
            };
            if send_retained {
                retained.push((sub.filter.clone(), new.clone()));
            }
            if existed.is_none() {
                self.count_subs(1);
            }
            self.subs.insert(sub.filter.clone(), new);
        }
        let failed = reasons.iter().filter(|r| r.is_error()).count();
        let properties = if failed > 0 {
            self.ack_props(ReasonCode::UNSPECIFIED_ERROR, || {
                format!("{failed} subscription(s) refused: the broker could not declare or bind the queue (see its log)")
            })
        } else {
            AckProperties::default()
        };
        self.send_gated(
            0,
            0,
            Packet::SubAck(SubAck {
                packet_id: s.packet_id,
                reasons,
                properties,
            }),
        );
        for (filter, sub) in retained {
            for (topic, msg) in self.ctx.retained.matching(&filter) {
                let qos = sub.qos.min(mapping::message_qos(&msg));
                if qos != QoS::AtMostOnce && self.persistent {
                    if let Some(q) = self.queue.clone() {
                        // Through the session's durable queue, behind the SUBACK: a copy not
                        // acknowledged before a reconnect (or a restart) is sent again with its
                        // packet id, as live deliveries are (MQTT-4.4.0-1).
                        let copy = Arc::new(mapping::retained_for(&msg, &filter));
                        if let Enqueued::Accepted { lsn } = q.publish(&copy, &mut None) {
                            let rare = self.rare_mut();
                            rare.retained_lsn = rare.retained_lsn.max(lsn);
                        }
                        continue;
                    }
                }
                self.publish_out(
                    &topic,
                    &msg,
                    qos,
                    true,
                    false,
                    sub.id.into_iter().collect(),
                    None,
                    0,
                    0,
                );
            }
        }
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) {
        let mut reasons = Vec::new();
        for filter in &u.filters {
            if let Some(shared) = self.rare.as_mut().and_then(|r| r.shared.remove(filter)) {
                self.leave_shared(shared, false);
                self.count_subs(-1);
                reasons.push(ReasonCode::SUCCESS);
                continue;
            }
            match self.subs.remove(filter) {
                Some(sub) => {
                    self.unbind(filter, &sub);
                    self.count_subs(-1);
                    reasons.push(ReasonCode::SUCCESS);
                }
                None => reasons.push(ReasonCode::NO_SUBSCRIPTION_EXISTED),
            }
        }
        if !self.v5() {
            reasons.clear();
        }
        let properties = if reasons.contains(&ReasonCode::NO_SUBSCRIPTION_EXISTED) {
            self.ack_props(ReasonCode::NO_SUBSCRIPTION_EXISTED, || {
                "no such subscription in this session".to_string()
            })
        } else {
            AckProperties::default()
        };
        self.send_gated(
            0,
            0,
            Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                reasons,
                properties,
            }),
        );
    }

    /// Joins (or, when already a member, updates) the shared subscription `full`. The group's
    /// queue is declared and bound on first use, and deleted by the last member to leave.
    fn join_shared(&mut self, full: &str, group: &str, filter: &str, sub: Sub) -> bool {
        if let Some(cur) = self.rare.as_mut().and_then(|r| r.shared.get_mut(full)) {
            cur.sub = sub;
            return true;
        }
        let Some(vhost) = self.vhost.clone() else {
            return false;
        };
        let name = shared_queue_name(group, filter);
        let ctx = self.ctx.clone();
        let mut members = ctx.shared_members.lock();
        let settings = QueueSettings {
            durable: false,
            exclusive_owner: None,
            auto_delete: false,
            arguments: Table::new(),
        };
        let q = match vhost.declare_queue(&name, settings, false, self.conn_id) {
            Ok((q, _, _)) => q,
            Err(e) => {
                tracing::warn!(peer = %self.peer, queue = %name, error = %e, "cannot declare a shared subscription queue");
                return false;
            }
        };
        let mut args = Table::new();
        args.insert(ARG_FILTER.into(), Value::long_string(filter));
        args.insert("x-mqtt-share-group".into(), Value::long_string(group));
        let key = filter_to_binding_key(filter);
        if let Err(e) = vhost.bind_queue(&name, EXCHANGE, &key, args, self.conn_id) {
            tracing::warn!(peer = %self.peer, queue = %name, error = %e, "cannot bind a shared subscription queue");
            if !members.contains_key(&name) {
                let _ = vhost.delete_queue_unchecked(&q);
            }
            return false;
        }
        let spec = ConsumerSpec {
            tag: name.as_str().into(),
            channel: self.channel_handle(),
            no_ack: false,
            exclusive: false,
            priority: 0,
            prefetch: 0,
        };
        if let Err(e) = q.consume(spec) {
            tracing::warn!(peer = %self.peer, queue = %name, error = %e, "cannot consume a shared subscription queue");
            if !members.contains_key(&name) {
                let _ = vhost.delete_queue_unchecked(&q);
            }
            return false;
        }
        *members.entry(name).or_insert(0) += 1;
        drop(members);
        self.count_subs(1);
        self.rare_mut().shared.insert(
            full.to_string(),
            SharedSub {
                filter: filter.to_string(),
                sub,
                queue: q,
            },
        );
        true
    }

    /// Leaves a shared subscription: this member's consumer goes (with `release`, its
    /// unacknowledged messages go back to the group, as the connection is gone), and the last
    /// member deletes the queue.
    fn leave_shared(&mut self, s: SharedSub, release: bool) {
        if release {
            s.queue.release_channel(self.conn_id, CHANNEL);
        } else {
            s.queue.cancel(self.conn_id, CHANNEL, &s.queue.name);
        }
        let mut members = self.ctx.shared_members.lock();
        let last = match members.get_mut(&s.queue.name) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => true,
        };
        if last {
            members.remove(&s.queue.name);
            if let Some(v) = &self.vhost {
                let _ = v.delete_queue_unchecked(&s.queue);
            }
        }
    }

    fn alloc_pid(&mut self) -> u16 {
        loop {
            let pid = self.next_pid;
            self.next_pid = if pid == u16::MAX { 1 } else { pid + 1 };
            if !self
                .out_flight
                .as_ref()
                .is_some_and(|m| m.contains_key(&pid))
                && !self.rare().out_pubrel.contains(&pid)
                && !self.rare().resend.values().any(|p| *p == pid)
            {
                return pid;
            }
        }
    }

    /// Writes a PUBLISH to the client. QoS 1/2 get a packet id and are tracked until PUBACK or
    /// PUBREC; `engine` is the delivery to settle then.
    #[allow(clippy::too_many_arguments)]
    fn publish_out(
        &mut self,
        topic: &str,
        msg: &crate::engine::Message,
        qos: QoS,
        retain: bool,
        dup: bool,
        subscription_identifiers: Vec<u32>,
        engine: Option<(Arc<Queue>, DeliveryId)>,
        msg_id: u64,
        lsn: Lsn,
    ) {
        if msg_id != 0
            && self
                .rare
                .as_mut()
                .is_some_and(|r| r.resend_released.remove(&msg_id))
        {
            // Its PUBREC came before a reconnect: the client has it, PUBREL was sent again.
            return ack_skip(engine);
        }
        if mapping::expiry(msg) == mapping::Expiry::Expired {
            // Expired while queued (or retained): not delivered (MQTT-3.3.2-5).
            return self.skip(engine, msg_id);
        }
        // Sent before a reconnect and not acknowledged: again with its packet id and DUP.
        let resend_pid = (msg_id != 0 && qos != QoS::AtMostOnce)
            .then(|| self.rare.as_mut().and_then(|r| r.resend.remove(&msg_id)))
            .flatten();
        let mut properties = if self.v5() {
            mapping::to_properties(msg)
        } else {
            Default::default()
        };
        properties.subscription_identifiers = subscription_identifiers;
        // Topic aliases (MQTT 5): the alias only once the client has been told the topic.
        let alias = self.rare().aliases_out.plan(topic);
        let wire_topic = match alias {
            AliasPlan::Known(a) => {
                properties.topic_alias = Some(a);
                String::new()
            }
            AliasPlan::New(a) => {
                properties.topic_alias = Some(a);
                topic.to_string()
            }
            AliasPlan::None => topic.to_string(),
        };
        let mut packet = Publish {
            dup: (dup || resend_pid.is_some()) && qos != QoS::AtMostOnce,
            qos,
            retain,
            topic: wire_topic,
            packet_id: 0,
            properties,
            payload: msg.body.clone(),
        };
        if qos != QoS::AtMostOnce {
            packet.packet_id = resend_pid.unwrap_or_else(|| self.alloc_pid());
        }
        let packet = Packet::Publish(packet);
        if let Some(max) = self.client_packet_max {
            if self
                .codec
                .encoded_size(&packet)
                .is_ok_and(|n| n > max as usize)
            {
                // MQTT-3.1.2-25: too large for the client: dropped as if delivered.
                if let Some(pid) = resend_pid {
                    self.journal(Op::Done(pid));
                }
                if let Some((q, id)) = engine {
                    q.settle(&[id], Settle::Ack);
                }
                return;
            }
        }
        if alias != AliasPlan::None {
            self.rare_mut().aliases_out.commit(topic, alias);
        }
        let mut jseq = 0;
        if let Packet::Publish(p) = &packet {
            if qos != QoS::AtMostOnce {
                let f = match engine {
                    Some((queue, id)) => {
                        // A persistent session journals the packet id of a stored message, so
                        // a resend after a reconnect or a restart uses it again. Only QoS 2
                        // waits for it: a QoS 1 duplicate with a new id is still at least once.
                        let journalled = msg_id != 0 && self.persistent;
                        if journalled {
                            let j = self.journal(Op::Published(p.packet_id, msg_id));
                            if qos == QoS::ExactlyOnce {
                                jseq = j;
                            }
                        }
                        OutFlight::Engine {
                            queue,
                            id,
                            msg_id: if journalled { msg_id } else { 0 },
                        }
                    }
                    None => OutFlight::Retained,
                };
                self.out_flight
                    .get_or_insert_with(Box::default)
                    .insert(p.packet_id, f);
            } else if let Some((q, id)) = engine {
                q.settle(&[id], Settle::Ack);
            }
        }
        count(&self.ctx.stats.publish_sent, 1);
        self.send_publish(lsn, jseq, packet);
    }

    /// A delivery that is not sent: settled, and no longer awaited for a resend.
    fn skip(&mut self, engine: Option<(Arc<Queue>, DeliveryId)>, msg_id: u64) {
        if msg_id != 0 {
            if let Some(rare) = self.rare.as_mut() {
                let pid = rare.resend.remove(&msg_id);
                rare.resend_released.remove(&msg_id);
                if let Some(pid) = pid {
                    self.journal(Op::Done(pid));
                }
            }
        }
        ack_skip(engine);
    }

    /// Journals `op` for an outbound message whose packet id is in the journal.
    fn journal_out(&self, f: &OutFlight, op: Op) -> u64 {
        match f {
            OutFlight::Engine { msg_id, .. } if *msg_id != 0 => self.journal(op),
            _ => 0,
        }
    }

    pub(super) fn on_outbound(&mut self, ev: Outbound) {
        match ev {
            Outbound::Deliver {
                delivery,
                consumer_tag,
                ..
            } => {
                self.delivered = true;
                if &*consumer_tag == CONSUMER_TAG {
                    self.deliver(delivery);
                } else {
                    self.deliver_shared(&consumer_tag, delivery);
                }
            }
            Outbound::Cancel { consumer_tag, .. } => {
                if &*consumer_tag == CONSUMER_TAG {
                    // The queue was deleted (x-expires, or from AMQP).
                    self.queue = None;
                } else {
                    // A shared subscription's queue was deleted from elsewhere.
                    let gone: Vec<String> = self
                        .rare()
                        .shared
                        .iter()
                        .filter(|(_, s)| *s.queue.name == *consumer_tag)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in gone {
                        if let Some(s) = self.rare_mut().shared.remove(&k) {
                            self.leave_shared(s, false);
                            self.count_subs(-1);
                        }
                    }
                }
            }
        }
    }

    fn deliver(&mut self, d: Delivery) {
        let engine = d.queue.clone().map(|q| (q, d.id));
        let Some(topic) = routing_key_to_topic(&d.message.routing_key) else {
            tracing::debug!(key = %d.message.routing_key, "routing key is no MQTT topic: not delivered");
            return self.skip(engine, d.msg_id);
        };
        // The subscription(s) this is for: the highest QoS wins, every identifier is sent.
        // No Local subscriptions skip this client's own messages; Retain As Published ones
        // keep RETAIN on messages published with it.
        if let Some(filter) = mapping::retained_filter(&d.message) {
            // A retained message queued at SUBSCRIBE: for that subscription only (gone if it
            // was unsubscribed meanwhile), RETAIN set as on any retained message sent then.
            let Some(sub) = self.subs.get(filter) else {
                return self.skip(engine, d.msg_id);
            };
            let qos = sub.qos.min(mapping::message_qos(&d.message));
            let ids = sub.id.into_iter().collect();
            let topic = topic.into_owned();
            return self.publish_out(
                &topic,
                &d.message.clone(),
                qos,
                true,
                d.redelivered,
                ids,
                engine,
                d.msg_id,
                self.rare().retained_lsn,
            );
        }
        let own = mapping::publisher(&d.message) == Some(self.client_id.as_str());
        let was_retained = mapping::published_retained(&d.message);
        let mut best: Option<QoS> = None;
        let mut ids = Vec::new();
        let mut retain = false;
        for (filter, sub) in self.subs.iter() {
            if filter_matches(filter, &topic) && !(own && sub.no_local) {
                best = Some(best.map_or(sub.qos, |b| b.max(sub.qos)));
                ids.extend(sub.id);
                retain |= sub.rap && was_retained;
            }
        }
        let Some(sub_qos) = best else {
            // `$` topics reached through a leading wildcard, or a literal `*` level.
            return self.skip(engine, d.msg_id);
        };
        let qos = sub_qos.min(mapping::message_qos(&d.message));
        let topic = topic.into_owned();
        self.publish_out(
            &topic,
            &d.message.clone(),
            qos,
            retain,
            d.redelivered,
            ids,
            engine,
            d.msg_id,
            0,
        );
    }

    /// A delivery from a shared subscription's queue (consumer tag = queue name).
    fn deliver_shared(&mut self, tag: &str, d: Delivery) {
        let engine = d.queue.clone().map(|q| (q, d.id));
        let found = self
            .rare()
            .shared
            .values()
            .find(|s| s.queue.name == tag)
            .map(|s| (s.filter.clone(), s.sub.clone()));
        let topic = routing_key_to_topic(&d.message.routing_key);
        let (Some((filter, sub)), Some(topic)) = (found, topic) else {
            return ack_skip(engine);
        };
        if !filter_matches(&filter, &topic) {
            return ack_skip(engine);
        }
        let qos = sub.qos.min(mapping::message_qos(&d.message));
        let retain = sub.rap && mapping::published_retained(&d.message);
        let topic = topic.into_owned();
        self.publish_out(
            &topic,
            &d.message.clone(),
            qos,
            retain,
            d.redelivered,
            sub.id.into_iter().collect(),
            engine,
            // Shared subscription queues are not durable: nothing to resend by store id.
            0,
            0,
        );
    }

    pub(super) fn on_shutdown(&mut self) {
        self.will_armed = false;
        self.disconnect(ReasonCode::SERVER_SHUTTING_DOWN);
    }

    pub(super) fn on_taken_over(&mut self) {
        self.disconnect(ReasonCode::SESSION_TAKEN_OVER);
    }

    pub(super) fn on_keep_alive_timeout(&mut self) {
        self.disconnect(ReasonCode::KEEP_ALIVE_TIMEOUT);
    }

    /// The connection is gone: deliveries back to the queue, the queue deleted unless the
    /// session persists, the will published (or scheduled).
    pub(super) fn finish(&mut self) {
        self.count_subs(-((self.subs.len() + self.rare().shared.len()) as i64));
        if self.persistent && !self.rare().shared.is_empty() {
            // A persistent session's shared subscriptions are taken up again when it
            // reconnects (in this broker process, within its Session Expiry Interval).
            let subs = self
                .rare()
                .shared
                .iter()
                .map(|(full, s)| (full.clone(), s.sub.clone()))
                .collect();
            let until = (self.session_expiry != u32::MAX).then(|| {
                std::time::Instant::now() + Duration::from_secs(u64::from(self.session_expiry))
            });
            self.ctx
                .shared_offline
                .lock()
                .insert(self.client_id.clone(), (subs, until));
        }
        let shared = self
            .rare
            .as_mut()
            .map(|r| std::mem::take(&mut r.shared))
            .unwrap_or_default();
        for (_, s) in shared {
            self.leave_shared(s, true);
        }
        if let Some(q) = self.queue.take() {
            q.release_channel(self.conn_id, CHANNEL);
            if !self.persistent {
                if let Some(v) = &self.vhost {
                    let _ = v.delete_queue_unchecked(&q);
                }
            }
        }
        // A persistent session's packet-id state is in the session journal already; one that
        // does not persist (clean session, or MQTT 5 Session Expiry Interval 0) leaves none.
        if !self.persistent && self.registered && self.ctx.sessions.get(&self.client_id).is_some() {
            self.ctx.sessions.record(&self.client_id, Op::Clear);
        }
        if self.will_armed {
            if let (Some(will), Some(vhost)) = (self.will.take(), self.vhost.clone()) {
                self.schedule_will(*will, vhost);
            }
        }
        if self.registered {
            let mut clients = self.ctx.clients.lock();
            if clients
                .get(&self.client_id)
                .is_some_and(|c| c.conn == self.conn_id)
            {
                clients.remove(&self.client_id);
            }
        }
        self.ctx.engine.connection_closed(self.conn_id);
        self.signals.done.fire();
    }

    fn schedule_will(&self, will: Will, vhost: Arc<Vhost>) {
        let mut delay = will.properties.will_delay_interval.unwrap_or(0);
        if self.v5() {
            delay = delay.min(self.session_expiry);
        }
        let ctx = self.ctx.clone();
        if delay == 0 {
            publish_will(&ctx, &vhost, &will, &self.client_id);
            return;
        }
        let token = CancellationToken::new();
        if let Some(old) = ctx
            .wills
            .lock()
            .insert(self.client_id.clone(), token.clone())
        {
            old.cancel();
        }
        let client_id = self.client_id.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = token.cancelled() => {}
                () = tokio::time::sleep(Duration::from_secs(u64::from(delay))) => {
                    // Ours is still the pending one unless it was cancelled meanwhile.
                    if !token.is_cancelled() {
                        ctx.wills.lock().remove(&client_id);
                    }
                    publish_will(&ctx, &vhost, &will, &client_id);
                }
            }
        });
    }
}

fn publish_will(ctx: &MqttContext, vhost: &Vhost, will: &Will, client_id: &str) {
    let props = codecs::mqtt::PublishProperties {
        payload_format_utf8: will.properties.payload_format_utf8,
        message_expiry_interval: will.properties.message_expiry_interval,
        response_topic: will.properties.response_topic.clone(),
        correlation_data: will.properties.correlation_data.clone(),
        user_properties: will.properties.user_properties.clone(),
        content_type: will.properties.content_type.clone(),
        ..Default::default()
    };
    let mut msg = mapping::to_message(&will.topic, will.payload.clone(), will.qos, &props);
    mapping::tag_publisher(&mut msg, client_id, will.retain);
    if will.retain {
        ctx.retained.set(&will.topic, msg.clone());
    }
    if let Err(e) = vhost.publish(EXCHANGE, msg) {
        tracing::warn!(error = %e, topic = %will.topic, "cannot publish will");
    }
}

/// Settles a delivery that is not sent (no MQTT topic, no matching subscription, expired).
fn ack_skip(engine: Option<(Arc<Queue>, DeliveryId)>) {
    if let Some((q, id)) = engine {
        if id != 0 {
            q.settle(&[id], Settle::Ack);
        }
    }
}

/// `packet` without its Reason String, when it is an acknowledgement that has one.
fn without_reason_string(packet: &Packet) -> Option<Packet> {
    let mut p = packet.clone();
    let props = match &mut p {
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            &mut a.properties
        }
        Packet::SubAck(a) => &mut a.properties,
        Packet::UnsubAck(a) => &mut a.properties,
        Packet::ConnAck(c) => {
            c.properties.reason_string.take()?;
            return Some(p);
        }
        _ => return None,
    };
    props.reason_string.take()?;
    Some(p)
}

fn settle(f: OutFlight, how: Settle) {
    if let OutFlight::Engine { queue, id, .. } = f {
        queue.settle(&[id], how);
    }
}
