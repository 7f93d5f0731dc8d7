//! `wharf-bench mqtt`: MQTT 3.1.1 workloads against any broker (Wharf, Mosquitto), on a small
//! client of our own ([`wire`]), so the same client drives both brokers and the ratio between
//! two runs compares brokers.
//!
//! Workloads (`--workload`):
//! - `pairs`: `--clients` N publishers and N subscribers; publisher i publishes on topic i,
//!   which only subscriber i subscribes to (N independent streams through one broker);
//! - `fanout`: one publisher, `--clients` N subscribers, all on one topic: every message is
//!   delivered N times;
//! - `idle`: `--clients` N connections (CONNECT/CONNACK, optionally one SUBSCRIBE each) held
//!   open; the broker's resident memory (`VmRSS` of `--broker-pid`) is read before and after,
//!   and the difference per connection is reported ([`idle`]).
//!
//! Messages carry their send time and sequence number in the first 16 payload bytes; each
//! subscriber measures end-to-end latency and checks the sequence (gaps are lost messages,
//! repeats are duplicates). Delivered msgs/s = messages received by all subscribers / time
//! from the first publish to the last receipt.
//!
//! Flow control: a publisher keeps at most `--window` messages published and not yet received
//! by the slowest subscriber of its topic, so no broker is driven into dropping (QoS 0 has
//! no flow control of its own) and latency measures the broker, not a backlog. At QoS 1 it
//! also keeps at most `--inflight` publishes without PUBACK; subscribers subscribe at QoS 1
//! and PUBACK every delivery (one write per read batch). Publishes are encoded back to back
//! into one buffer, up to `--batch` per write.
//!
//! Everything runs on one thread (current-thread runtime), leaving the other cores to the
//! broker.

mod idle;
mod wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Buf, BytesMut};
use clap::{Parser, ValueEnum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::{now_nanos, percentile};
use wire::Incoming;

/// Bytes a read may fill at once.
const READ_CHUNK: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum Workload {
    /// N publishers -> N topics -> N subscribers, publisher i to subscriber i.
    Pairs,
    /// 1 publisher -> 1 topic -> N subscribers.
    Fanout,
    /// N idle connections; resident memory of the broker per connection.
    Idle,
}

#[derive(Debug, Parser)]
#[command(
    name = "wharf-bench mqtt",
    about = "MQTT 3.1.1 load generator: pairs, fan-out and idle connections"
)]
pub(crate) struct MqttArgs {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long)]
    port: u16,
    /// User name sent in CONNECT; empty: none.
    #[arg(long, default_value = "guest")]
    username: String,
    #[arg(long, default_value = "guest")]
    password: String,
    #[arg(long, value_enum, default_value_t = Workload::Pairs)]
    workload: Workload,
    /// pairs: publisher/subscriber pairs; fanout: subscribers; idle: connections.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// QoS of publishes and subscriptions (0 or 1).
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Payload bytes (at least 16: send time and sequence number).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Messages each publisher sends.
    #[arg(long, default_value_t = 50_000)]
    messages: u64,
    /// Most messages a publisher keeps ahead of the slowest subscriber of its topic.
    #[arg(long, default_value_t = 1000)]
    window: u64,
    /// QoS 1: most publishes a publisher keeps without PUBACK.
    #[arg(long, default_value_t = 1000)]
    inflight: u64,
    /// Most publishes encoded into one write.
    #[arg(long, default_value_t = 64)]
    batch: u64,
    /// Subscribers connect with clean session 0 (their queues are the broker's persistent
    /// sessions); the sessions are discarded after the run.
    #[arg(long)]
    persistent_session: bool,
    /// A subscriber that receives nothing for this long gives up (its missing messages are
    /// reported as lost).
    #[arg(long, default_value_t = 10)]
    idle_timeout_secs: u64,
    /// Keep alive sent in CONNECT, seconds.
    #[arg(long, default_value_t = 60)]
    keepalive: u16,
    /// idle: connections being opened at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// idle: each connection also subscribes (QoS 1) to a topic of its own.
    #[arg(long)]
    subscribe: bool,
    /// idle: seconds between the last connection and the memory reading.
    #[arg(long, default_value_t = 5)]
    settle_secs: u64,
    /// The broker's process id: idle reads its VmRSS; the others report its CPU time.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Name printed in the result line.
    #[arg(long, default_value = "broker")]
    label: String,
}

impl MqttArgs {
    fn user(&self) -> Option<(&str, &str)> {
        (!self.username.is_empty()).then_some((self.username.as_str(), self.password.as_str()))
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

pub(crate) fn main(args: MqttArgs) -> anyhow::Result<()> {
    if args.qos > 1 {
        bail!("--qos must be 0 or 1");
    }
    if args.size < 16 {
        bail!("--size must be at least 16");
    }
    if args.window == 0 || args.batch == 0 || args.inflight == 0 || args.clients == 0 {
        bail!("--window, --inflight, --batch and --clients must be at least 1");
    }
    if args.inflight >= u64::from(u16::MAX) {
        bail!("--inflight must be below 65535 (packet identifiers)");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.workload {
        Workload::Idle => runtime.block_on(idle::run(Arc::new(args))),
        Workload::Pairs | Workload::Fanout => runtime.block_on(run(args)),
    }
}

/// One connection after CONNACK.
struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    name: String,
}

impl Conn {
    /// Connects, sends CONNECT and waits for a CONNACK that accepts it.
    async fn open(args: &MqttArgs, client_id: String, clean_session: bool) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(args.addr())
            .await
            .with_context(|| format!("{client_id}: connect to {}", args.addr()))?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            rbuf: BytesMut::with_capacity(64),
            wbuf: BytesMut::with_capacity(256),
            name: client_id,
        };
        wire::connect(
            &mut conn.wbuf,
            &conn.name,
            args.keepalive,
            clean_session,
            args.user(),
        );
        conn.flush().await?;
        match conn.next_control().await? {
            (wire::CONNACK, 0) => Ok(conn),
            (wire::CONNACK, code) => bail!("{}: CONNACK return code {code}", conn.name),
            (other, _) => bail!("{}: expected CONNACK, got packet type {other}", conn.name),
        }
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        self.stream
            .write_all(&self.wbuf)
            .await
            .with_context(|| format!("{}: write", self.name))?;
        self.wbuf.clear();
        Ok(())
    }

    /// Reads more bytes; an error if the broker closed the connection.
    async fn fill(&mut self) -> anyhow::Result<()> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        let n = self
            .stream
            .read_buf(&mut self.rbuf)
            .await
            .with_context(|| format!("{}: read", self.name))?;
        if n == 0 {
            bail!("{}: broker closed the connection", self.name);
        }
        Ok(())
    }

    /// The next packet during setup (CONNACK, SUBACK): its type and first return code.
    async fn next_control(&mut self) -> anyhow::Result<(u8, u8)> {
        loop {
            if let Some((packet, n)) = wire::parse(&self.rbuf)? {
                let got = match packet {
                    Incoming::ConnAck { code, .. } => (wire::CONNACK, code),
                    Incoming::SubAck { codes, .. } => {
                        (wire::SUBACK, codes.first().copied().unwrap_or(0x80))
                    }
                    Incoming::Publish { .. } => (wire::PUBLISH, 0),
                    Incoming::PubAck { .. } => (wire::PUBACK, 0),
                    Incoming::PingResp => (wire::PINGRESP, 0),
                    Incoming::Other(t) => (t, 0),
                };
                self.rbuf.advance(n);
                return Ok(got);
            }
            self.fill().await?;
        }
    }

    /// Subscribes to one filter and checks the granted QoS.
    async fn subscribe(&mut self, filter: &str, qos: u8) -> anyhow::Result<()> {
        wire::subscribe(&mut self.wbuf, 1, filter, qos);
        self.flush().await?;
        match self.next_control().await? {
            (wire::SUBACK, granted) if granted == qos => Ok(()),
            (wire::SUBACK, code) => bail!("{}: SUBACK return code {code:#x}", self.name),
            (other, _) => bail!("{}: expected SUBACK, got packet type {other}", self.name),
        }
    }

    /// Sends DISCONNECT and waits (a little) for the broker to close the connection, so the
    /// client id is free again; failures are only reported.
    async fn close(mut self) {
        wire::disconnect(&mut self.wbuf);
        let name = self.name.clone();
        if let Err(e) = self.flush().await {
            eprintln!("{name}: close: {e:#}");
        }
        let _ = self.stream.shutdown().await;
        let until_eof = async {
            let mut scratch = [0u8; 4096];
            while matches!(self.stream.read(&mut scratch).await, Ok(n) if n > 0) {}
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), until_eof).await;
    }
}

/// What the subscribers of one topic have received, for the publisher's window.
struct TopicState {
    /// Per subscriber: the next sequence number it waits for.
    next: Vec<AtomicU64>,
    progress: Notify,
}

impl TopicState {
    fn slowest(&self) -> u64 {
        self.next
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }
}

struct SubResult {
    received: u64,
    duplicates: u64,
    latencies_ns: Vec<u64>,
    last: Option<Instant>,
}

async fn run(args: MqttArgs) -> anyhow::Result<()> {
    let run_id = format!("{}-{}", std::process::id(), now_nanos() % 1_000_000);
    let (topics, subs_per_topic) = match args.workload {
        Workload::Pairs => (args.clients, 1),
        _ => (1, args.clients),
    };
    let topic_names: Vec<String> = (0..topics).map(|t| format!("bench/{run_id}/{t}")).collect();
    let states: Vec<Arc<TopicState>> = (0..topics)
        .map(|_| {
            Arc::new(TopicState {
                next: (0..subs_per_topic).map(|_| AtomicU64::new(0)).collect(),
                progress: Notify::new(),
            })
        })
        .collect();

    let mut subscribers = Vec::new();
    for (t, topic) in topic_names.iter().enumerate() {
        for s in 0..subs_per_topic {
            let id = format!("wb-{run_id}-sub-{t}-{s}");
            let mut conn = Conn::open(&args, id, !args.persistent_session).await?;
            conn.subscribe(topic, args.qos).await?;
            subscribers.push((t, s, conn));
        }
    }
    let mut publishers = Vec::new();
    for (t, name) in topic_names.iter().enumerate() {
        let conn = Conn::open(&args, format!("wb-{run_id}-pub-{t}"), true).await?;
        publishers.push((name.clone(), conn));
    }

    let cpu_before = args.broker_pid.and_then(cpu_ticks);
    let client_cpu_before = cpu_ticks(std::process::id());
    let args = Arc::new(args);
    let start = Instant::now();
    let mut sub_tasks = Vec::new();
    for (t, s, conn) in subscribers {
        let state = states[t].clone();
        let args = args.clone();
        sub_tasks.push(tokio::spawn(async move {
            subscriber(conn, &args, &state, s).await
        }));
    }
    let mut pub_tasks = Vec::new();
    for (t, (topic, conn)) in publishers.into_iter().enumerate() {
        let state = states[t].clone();
        let args = args.clone();
        pub_tasks.push(tokio::spawn(async move {
            publisher(conn, &args, &topic, &state).await
        }));
    }
    let mut published = 0;
    for task in pub_tasks {
        published += task.await??;
    }
    let mut received = 0;
    let mut duplicates = 0;
    let mut latencies = Vec::new();
    let mut last = start;
    let mut sub_conns = Vec::new();
    for task in sub_tasks {
        let (r, conn) = task.await??;
        received += r.received;
        duplicates += r.duplicates;
        latencies.extend(r.latencies_ns);
        last = last.max(r.last.unwrap_or(start));
        sub_conns.push(conn);
    }
    let elapsed = last.duration_since(start);
    let cpu = match (cpu_before, args.broker_pid.and_then(cpu_ticks)) {
        (Some(b), Some(a)) => format!("{:.2}", (a - b) as f64 / clock_ticks() as f64),
        _ => "-".into(),
    };
    let client_cpu = match (client_cpu_before, cpu_ticks(std::process::id())) {
        (Some(b), Some(a)) => format!("{:.2}", (a - b) as f64 / clock_ticks() as f64),
        _ => "-".into(),
    };

    for conn in sub_conns {
        let name = conn.name.clone();
        conn.close().await;
        if args.persistent_session {
            // Discard the session the broker keeps for this client id.
            match Conn::open(&args, name.clone(), true).await {
                Ok(c) => c.close().await,
                Err(e) => eprintln!("{name}: discarding the session: {e:#}"),
            }
        }
    }

    latencies.sort_unstable();
    let expected = published * subs_per_topic as u64;
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "result label={} workload={:?} qos={} size={} publishers={} subscribers={} \
         persistent_session={} published={} expected={} delivered={} lost={} duplicates={} \
         secs={:.3} rate={:.0} p50_us={} p99_us={} broker_cpu_s={} client_cpu_s={}",
        args.label,
        args.workload,
        args.qos,
        args.size,
        topics,
        topics * subs_per_topic,
        args.persistent_session,
        published,
        expected,
        received,
        expected.saturating_sub(received),
        duplicates,
        secs,
        received as f64 / secs,
        percentile(&latencies, 0.50) / 1000,
        percentile(&latencies, 0.99) / 1000,
        cpu,
        client_cpu,
    );
    Ok(())
}

/// Publishes `--messages` messages on `topic`; returns how many.
async fn publisher(
    mut conn: Conn,
    args: &MqttArgs,
    topic: &str,
    state: &TopicState,
) -> anyhow::Result<u64> {
    let total = args.messages;
    let qos1 = args.qos == 1;
    let mut payload = vec![0u8; args.size];
    let mut published = 0u64;
    let mut unacked = 0u64;
    let mut packet_id = 0u16;
    while published < total || unacked > 0 {
        let mut allowed = args
            .window
            .saturating_sub(published - state.slowest())
            .min(total - published)
            .min(args.batch);
        if qos1 {
            allowed = allowed.min(args.inflight.saturating_sub(unacked));
        }
        if allowed > 0 {
            let now = now_nanos();
            for _ in 0..allowed {
                payload[..8].copy_from_slice(&now.to_be_bytes());
                payload[8..16].copy_from_slice(&published.to_be_bytes());
                if qos1 {
                    packet_id = packet_id.checked_add(1).unwrap_or(1);
                    unacked += 1;
                }
                wire::publish(&mut conn.wbuf, topic, args.qos, packet_id, &payload);
                published += 1;
            }
            conn.flush().await?;
            continue;
        }
        // Blocked: wait for the subscribers, or for PUBACKs. A notification sent while we are
        // not waiting is kept as a permit by `Notify`.
        tokio::select! {
            () = state.progress.notified() => {}
            read = conn.fill() => {
                read?;
                let mut used = 0;
                while let Some((packet, n)) = wire::parse(&conn.rbuf[used..])? {
                    used += n;
                    match packet {
                        Incoming::PubAck { .. } if unacked > 0 => unacked -= 1,
                        Incoming::PingResp => {}
                        other => bail!("{}: unexpected {other:?}", conn.name),
                    }
                }
                conn.rbuf.advance(used);
            }
        }
    }
    conn.close().await;
    Ok(published)
}

/// Receives until it has seen the last sequence number, or nothing came for
/// `--idle-timeout-secs`. Returns the connection still open.
async fn subscriber(
    mut conn: Conn,
    args: &MqttArgs,
    state: &TopicState,
    index: usize,
) -> anyhow::Result<(SubResult, Conn)> {
    let total = args.messages;
    let idle = Duration::from_secs(args.idle_timeout_secs);
    let mut r = SubResult {
        received: 0,
        duplicates: 0,
        latencies_ns: Vec::with_capacity(total as usize),
        last: None,
    };
    let mut next = 0u64;
    while next < total {
        match tokio::time::timeout(idle, conn.fill()).await {
            Ok(read) => read?,
            Err(_) => {
                eprintln!(
                    "{}: nothing received for {}s; {} of {total} messages seen",
                    conn.name, args.idle_timeout_secs, r.received
                );
                break;
            }
        }
        let now = now_nanos();
        let mut used = 0;
        while let Some((packet, n)) = wire::parse(&conn.rbuf[used..])? {
            used += n;
            match packet {
                Incoming::Publish {
                    qos,
                    packet_id,
                    payload,
                    ..
                } => {
                    if qos > 0 {
                        wire::puback(&mut conn.wbuf, packet_id);
                    }
                    if payload.len() < 16 {
                        bail!("{}: payload of {} bytes", conn.name, payload.len());
                    }
                    let sent = u64::from_be_bytes(payload[..8].try_into()?);
                    let seq = u64::from_be_bytes(payload[8..16].try_into()?);
                    if seq < next {
                        r.duplicates += 1;
                        continue;
                    }
                    next = seq + 1;
                    r.received += 1;
                    r.latencies_ns.push(now.saturating_sub(sent));
                }
                Incoming::PingResp => {}
                other => bail!("{}: unexpected {other:?}", conn.name),
            }
        }
        conn.rbuf.advance(used);
        if used > 0 {
            r.last = Some(Instant::now());
            state.next[index].store(next, Ordering::Relaxed);
            state.progress.notify_one();
        }
        if !conn.wbuf.is_empty() {
            conn.flush().await?;
        }
    }
    Ok((r, conn))
}

/// User plus system CPU time of a process, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second (USER_HZ, 100 on Linux).
pub(crate) fn clock_ticks() -> u64 {
    100
}
