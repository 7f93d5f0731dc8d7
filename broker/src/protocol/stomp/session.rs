//! One STOMP connection's state: CONNECT and version negotiation, frame dispatch, receipts,
//! transactions, ERROR-then-close. Subscriptions and deliveries are in `subscriptions.rs`,
//! SEND and temp queues in `send.rs`. No I/O here: bytes in through [`Session::on_bytes`],
//! bytes out in [`Session::out`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use codecs::stomp::{self, Command, Frame, Item, Limits, Version};
use tokio::sync::mpsc;

use super::subscriptions::{Subscription, Unacked};
use super::StompContext;
use crate::engine::{AuthError, ChannelCredit, ConnectionId, Engine, Outbound, Queue, User, Vhost};
use crate::net::Peer;
use crate::store::Lsn;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Connecting,
    Open,
    /// Closing: what is in `out` is written, then the socket closes.
    Done,
}

/// The versions this server speaks, as listed in an ERROR for a failed negotiation.
const SUPPORTED: &str = "1.0,1.1,1.2";

pub(super) struct Session {
    pub(super) ctx: Arc<StompContext>,
    pub(super) engine: Arc<Engine>,
    pub(super) peer: SocketAddr,
    cert_login: Option<String>,
    pub(super) conn_id: ConnectionId,
    /// Shown in CONNECTED and in message ids, as RabbitMQ's `session` header.
    pub(super) session_name: String,
    limits: Limits,
    pub(super) phase: Phase,
    pub(super) version: Version,
    pub(super) out: BytesMut,
    pub(super) rx: mpsc::UnboundedReceiver<Outbound>,
    pub(super) tx: mpsc::UnboundedSender<Outbound>,
    /// Shared by every subscription: prefetch is per consumer (ConsumerSpec::prefetch).
    pub(super) credit: Arc<ChannelCredit>,
    pub(super) user: Option<User>,
    pub(super) vhost: Option<Arc<Vhost>>,
    /// Subscriptions by engine channel number (one channel each, so that a subscription's
    /// consumer and leases can be told apart).
    pub(super) subs: HashMap<u16, Subscription>,
    /// Subscription id -> channel.
    pub(super) sub_ids: HashMap<String, u16>,
    /// Delivered, not yet acknowledged (client ack modes), by delivery tag.
    pub(super) unacked: BTreeMap<u64, Unacked>,
    pub(super) next_tag: u64,
    /// `/temp-queue/<name>` -> the private queue it stands for on this connection.
    pub(super) temp_queues: HashMap<String, Arc<Queue>>,
    /// `/queue/<name>` destinations this connection has declared (SEND declares them), so
    /// that a stream of SENDs declares once; an entry whose queue was deleted since is
    /// declared again.
    pub(super) declared_queues: HashMap<String, Arc<Queue>>,
    /// Open transactions: their SEND, ACK and NACK frames, in order, until COMMIT.
    transactions: HashMap<String, Vec<Frame>>,
    /// Receipts in order, each waiting for its Lsn to be durable.
    gated: VecDeque<(Lsn, Frame)>,
    /// Heart-beat intervals agreed at CONNECT: we send every `send_every`, and expect the
    /// client to send every `recv_every`.
    pub(super) send_every: Option<Duration>,
    pub(super) recv_every: Option<Duration>,
    /// The client has sent a SEND: blocked while the memory alarm is on.
    pub(super) publisher: bool,
    /// Highest Lsn of the SENDs since it was last taken (COMMIT's receipt waits for it).
    pub(super) last_lsn: Lsn,
}

impl Session {
    pub(super) fn new(ctx: Arc<StompContext>, peer: &Peer) -> Session {
        let engine = ctx.engine.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let conn_id = engine.next_connection_id();
        Session {
            limits: ctx.config.limits,
            engine,
            ctx,
            peer: peer.addr,
            cert_login: peer.cert_login.clone(),
            conn_id,
            session_name: format!("session-{conn_id}"),
            phase: Phase::Connecting,
            version: Version::V1_0,
            out: BytesMut::with_capacity(256),
            rx,
            tx,
            credit: Arc::new(ChannelCredit::default()),
            user: None,
            vhost: None,
            subs: HashMap::new(),
            sub_ids: HashMap::new(),
            unacked: BTreeMap::new(),
            next_tag: 1,
            temp_queues: HashMap::new(),
            declared_queues: HashMap::new(),
            transactions: HashMap::new(),
            gated: VecDeque::new(),
            send_every: None,
            recv_every: None,
            publisher: false,
            last_lsn: 0,
        }
    }

    pub(super) fn send(&mut self, frame: &Frame) {
        if let Err(e) = stomp::encode(frame, self.version, &mut self.out) {
            tracing::warn!(peer = %self.peer, error = %e, command = frame.command.as_str(), "cannot encode STOMP frame");
        }
    }

    /// Sends an ERROR frame (`message` header, `detail` as a text body) and closes: STOMP says
    /// the server closes the connection after an ERROR.
    pub(super) fn error(&mut self, message: &str, detail: &str, request: Option<&Frame>) {
        if self.phase == Phase::Done {
            return;
        }
        tracing::info!(peer = %self.peer, message, detail, "STOMP error, closing");
        let mut f = Frame::new(Command::Error);
        // 1.0 cannot escape: keep the message on one line whatever the version.
        f.push("message", message.replace(['\n', '\r'], " "));
        if let Some(r) = request.and_then(|r| r.header("receipt")) {
            f.push("receipt-id", r.to_string());
        }
        f.push("content-type", "text/plain");
        f.push("content-length", detail.len().to_string());
        f.body = detail.to_string().into();
        f.headers
            .retain(|(n, v)| stomp::representable(Command::Error, self.version, n, v));
        self.send(&f);
        self.phase = Phase::Done;
    }

    /// Sends a RECEIPT for `frame` if it asked for one, once `lsn` is durable and after every
    /// earlier receipt.
    pub(super) fn receipt(&mut self, frame: &Frame, lsn: Lsn) {
        let Some(r) = frame.header("receipt") else {
            return;
        };
        let mut receipt = Frame::new(Command::Receipt);
        receipt.push("receipt-id", r.to_string());
        if !stomp::representable(Command::Receipt, self.version, "receipt-id", r) {
            receipt.headers.clear();
        }
        if self.gated.is_empty() && lsn <= self.engine.durable_lsn() {
            self.send(&receipt);
        } else {
            self.gated.push_back((lsn, receipt));
        }
    }

    pub(super) fn flush_gated(&mut self, durable: Lsn) {
        while self.gated.front().is_some_and(|(lsn, _)| *lsn <= durable) {
            if let Some((_, f)) = self.gated.pop_front() {
                self.send(&f);
            }
        }
    }

    pub(super) fn waits_for_durability(&self, durable: Lsn) -> bool {
        self.gated.front().is_some_and(|(lsn, _)| *lsn > durable)
    }

    /// Decodes and handles what is buffered, up to an error.
    pub(super) fn on_bytes(&mut self, buf: &mut BytesMut) {
        while self.phase != Phase::Done {
            // Before CONNECT nothing is escaped (CONNECT never is; anything else is refused).
            match stomp::decode(buf, self.version, &self.limits) {
                Ok(None) => return,
                Ok(Some(Item::Heartbeat)) => {}
                Ok(Some(Item::Frame(f))) => self.on_frame(f),
                Err(e) => {
                    let detail = match e {
                        stomp::Error::FrameTooLarge { .. }
                        | stomp::Error::LineTooLong { .. }
                        | stomp::Error::TooManyHeaders { .. } => {
                            "the frame exceeds a limit of this server"
                        }
                        _ => "the bytes received are not a valid STOMP frame",
                    };
                    self.error(&e.to_string(), detail, None);
                }
            }
        }
    }

    fn on_frame(&mut self, f: Frame) {
        match (self.phase, f.command) {
            (Phase::Connecting, Command::Connect | Command::Stomp) => self.on_connect(&f),
            (Phase::Connecting, _) => self.error(
                "Illegal command",
                "You must log in using CONNECT first",
                Some(&f),
            ),
            (Phase::Open, _) => self.on_open_frame(f, true),
            (Phase::Done, _) => {}
        }
    }

    /// A frame after CONNECT. `direct` is false for frames replayed by COMMIT.
    fn on_open_frame(&mut self, f: Frame, direct: bool) {
        if direct {
            if let Some(tx) = f.header("transaction") {
                if matches!(f.command, Command::Send | Command::Ack | Command::Nack) {
                    let tx = tx.to_string();
                    let Some(frames) = self.transactions.get_mut(&tx) else {
                        return self.error(
                            "Bad transaction",
                            &format!("Invalid transaction identifier: {tx}"),
                            Some(&f),
                        );
                    };
                    // Buffered until COMMIT; its receipt says it was taken into the
                    // transaction (the COMMIT's receipt waits for durability).
                    frames.push(f.clone());
                    return self.receipt(&f, 0);
                }
            }
        }
        match f.command {
            Command::Send => self.on_send(&f),
            Command::Subscribe => self.on_subscribe(&f),
            Command::Unsubscribe => self.on_unsubscribe(&f),
            Command::Ack => self.on_ack(&f, true),
            Command::Nack => self.on_ack(&f, false),
            Command::Begin | Command::Commit | Command::Abort => self.on_transaction(&f),
            Command::Disconnect => {
                self.receipt(&f, 0);
                self.phase = Phase::Done;
            }
            Command::Connect | Command::Stomp => {
                self.error("Illegal command", "Already connected", Some(&f));
            }
            Command::Connected | Command::Message | Command::Receipt | Command::Error => self
                .error(
                    "Illegal command",
                    &format!("{} is a server frame", f.command.as_str()),
                    Some(&f),
                ),
        }
    }

    fn on_transaction(&mut self, f: &Frame) {
        let Some(tx) = f.header("transaction").map(str::to_string) else {
            return self.error(
                "Missing transaction",
                &format!("{} must include a 'transaction' header", f.command.as_str()),
                Some(f),
            );
        };
        match f.command {
            Command::Begin => {
                if self.transactions.contains_key(&tx) {
                    return self.error(
                        "Bad transaction",
                        &format!("Transaction {tx} already started"),
                        Some(f),
                    );
                }
                self.transactions.insert(tx, Vec::new());
                self.receipt(f, 0);
            }
            Command::Commit => {
                let Some(frames) = self.transactions.remove(&tx) else {
                    return self.error(
                        "Bad transaction",
                        &format!("Invalid transaction identifier: {tx}"),
                        Some(f),
                    );
                };
                self.last_lsn = 0;
                for frame in frames {
                    if self.phase != Phase::Open {
                        return;
                    }
                    self.on_open_frame(frame, false);
                }
                // The COMMIT's receipt waits for every message it published to be durable.
                let lsn = std::mem::take(&mut self.last_lsn);
                self.receipt(f, lsn);
            }
            _ => {
                if self.transactions.remove(&tx).is_none() {
                    return self.error(
                        "Bad transaction",
                        &format!("Invalid transaction identifier: {tx}"),
                        Some(f),
                    );
                }
                self.receipt(f, 0);
            }
        }
    }

    fn on_connect(&mut self, f: &Frame) {
        let ctx = self.ctx.clone();
        let cfg = &ctx.config;
        // Version: the highest both speak; 1.0 when the client names none.
        let version = match f.header("accept-version") {
            None => Some(Version::V1_0),
            Some(list) => list.split(',').filter_map(Version::parse).max(),
        };
        let Some(version) = version else {
            let mut e = Frame::new(Command::Error);
            e.push("version", SUPPORTED);
            e.push("message", "Version mismatch");
            let body = format!("Supported protocol versions are {SUPPORTED}");
            e.push("content-type", "text/plain");
            e.push("content-length", body.len().to_string());
            e.body = body.into();
            self.send(&e);
            self.phase = Phase::Done;
            return;
        };
        self.version = version;
        let user = match (f.header("login"), &cfg.default_user) {
            // A verified client certificate logs in a client that sends no login (RabbitMQ's
            // stomp.ssl_cert_login); explicit credentials are still checked as given.
            (None, _) if self.cert_login.is_some() => {
                let name = self.cert_login.as_deref().unwrap_or_default();
                self.engine.authenticate_certificate(name, self.peer)
            }
            (Some(login), _) => {
                let pass = f.header("passcode").unwrap_or_default();
                self.engine.authenticate(login, pass, self.peer)
            }
            (None, Some(default)) => self.engine.user(default).ok_or(AuthError::BadCredentials),
            (None, None) => Err(AuthError::BadCredentials),
        };
        let user = match user {
            Ok(u) => u,
            Err(e) => {
                let who = f.header("login").unwrap_or_default();
                let detail = match e {
                    AuthError::BadCredentials => format!("Access refused for user '{who}'"),
                    AuthError::LoopbackOnly => format!(
                        "Access refused for user '{who}': this user may only connect from localhost"
                    ),
                };
                return self.error("Bad CONNECT", &detail, Some(f));
            }
        };
        // RabbitMQ: the host header names the vhost, and one that is not a vhost is refused;
        // without it, the configured default.
        let vhost_name = match f.header("host") {
            Some(h) if !h.is_empty() => h.to_string(),
            _ => cfg.vhost.clone(),
        };
        let vhost = match self.engine.vhost(&vhost_name) {
            Some(v) if self.engine.may_access(&user, &vhost_name) => v,
            _ => {
                return self.error(
                    "Bad CONNECT",
                    &format!("Virtual host '{vhost_name}' access denied"),
                    Some(f),
                )
            }
        };
        let (cx, cy) = match f.header("heart-beat").map(parse_heartbeat) {
            None => (0, 0),
            Some(Some(hb)) if version > Version::V1_0 => hb,
            Some(Some(_)) => (0, 0),
            Some(None) => {
                return self.error(
                    "Invalid heart-beat header",
                    "heart-beat must be two comma-separated non-negative integers",
                    Some(f),
                )
            }
        };
        let ours = cfg.heartbeat_ms;
        let agree = |theirs: u32| {
            (theirs > 0 && ours > 0).then(|| Duration::from_millis(u64::from(theirs.max(ours))))
        };
        self.send_every = agree(cy);
        self.recv_every = agree(cx);
        self.user = Some(user);
        self.vhost = Some(vhost);
        self.phase = Phase::Open;
        let mut c = Frame::new(Command::Connected);
        c.push("version", version.as_str());
        c.push("heart-beat", format!("{ours},{ours}"));
        c.push("server", format!("Wharf/{}", env!("CARGO_PKG_VERSION")));
        c.push("session", self.session_name.clone());
        self.send(&c);
        tracing::debug!(peer = %self.peer, version = version.as_str(), vhost = %vhost_name, "STOMP session open");
    }

    pub(super) fn on_shutdown(&mut self) {
        if self.phase == Phase::Open {
            self.error("Server shutting down", "the broker is stopping", None);
        }
        self.phase = Phase::Done;
    }

    /// The client missed its heart-beats.
    pub(super) fn on_heartbeat_timeout(&mut self) {
        self.error(
            "Heart-beat timeout",
            "no frame or heart-beat received within the agreed interval",
            None,
        );
    }

    /// The connection is gone: unacknowledged deliveries go back to their queues, private
    /// queues go with the connection, durable subscriptions stay.
    pub(super) fn finish(&mut self) {
        self.release_all();
        self.engine.connection_closed(self.conn_id);
    }
}

/// `cx,cy` in milliseconds.
fn parse_heartbeat(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn heartbeat_header() {
        assert_eq!(super::parse_heartbeat("0,0"), Some((0, 0)));
        assert_eq!(super::parse_heartbeat("1000, 2000"), Some((1000, 2000)));
        assert_eq!(super::parse_heartbeat("1000"), None);
        assert_eq!(super::parse_heartbeat("a,b"), None);
    }
}
