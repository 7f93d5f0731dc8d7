//! `wharf-bench stomp`: a STOMP 1.2 workload against any broker (Wharf, RabbitMQ's STOMP
//! plugin), on a small client of our own ([`wire`]), so the same client drives both brokers
//! and the ratio between two runs compares brokers.
//!
//! The workload: one publisher connection SENDs `--messages` bodies of `--size` bytes to
//! `/queue/<run>`; one subscriber connection SUBSCRIBEs to it with `--ack auto` or
//! `--ack client-individual` (then with a `prefetch-count` header, `--prefetch`, and one ACK
//! per MESSAGE, by its `ack` header, all ACKs of one read in one write).
//!
//! Each body carries its send time and a sequence number in its first 16 bytes; the
//! subscriber measures end-to-end latency and checks the sequence (messages never seen are
//! lost, repeats are duplicates). Delivered msgs/s = messages received / time from the first
//! SEND to the last MESSAGE.
//!
//! Flow control: STOMP has none for publishers, so the publisher keeps at most `--window`
//! messages sent and not yet received by the subscriber; no broker is driven into buffering
//! without bound and latency measures the broker, not a backlog. SENDs are encoded back to
//! back into one buffer, up to `--batch` per write. With `--persistent` the SENDs carry
//! `persistent:true` and every `--receipt-every`th (and the last) asks for a RECEIPT; the
//! publisher then also keeps at most `--window` messages not covered by a RECEIPT (as AMQP
//! publishers do with confirms).
//!
//! Heart-beats are off (`heart-beat:0,0`). Everything runs on one thread (current-thread
//! runtime), leaving the other cores to the broker.

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

use crate::mqtt::{clock_ticks, cpu_ticks};
use crate::{now_nanos, percentile};
use wire::{show, Incoming};

/// Bytes a read may fill at once.
const READ_CHUNK: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum AckMode {
    /// The broker considers a MESSAGE acknowledged once sent.
    Auto,
    /// One ACK per MESSAGE, by its `ack` header.
    ClientIndividual,
}

impl AckMode {
    fn header(self) -> &'static str {
        match self {
            AckMode::Auto => "auto",
            AckMode::ClientIndividual => "client-individual",
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "wharf-bench stomp",
    about = "STOMP 1.2 load generator: 1 publisher -> 1 queue -> 1 subscriber"
)]
pub(crate) struct StompArgs {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long)]
    port: u16,
    #[arg(long, default_value = "guest")]
    login: String,
    #[arg(long, default_value = "guest")]
    passcode: String,
    /// The CONNECT `host` header: the vhost, for Wharf and RabbitMQ alike.
    #[arg(long, default_value = "/")]
    vhost: String,
    /// The subscription's ack mode.
    #[arg(long, value_enum, default_value_t = AckMode::Auto)]
    ack: AckMode,
    /// client-individual: the SUBSCRIBE's prefetch-count header.
    #[arg(long, default_value_t = 1000)]
    prefetch: u32,
    /// Body bytes (at least 16: send time and sequence number).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Messages to send.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Most messages sent and not yet received (and, with --persistent, not yet covered by
    /// a RECEIPT).
    #[arg(long, default_value_t = 1000)]
    window: u64,
    /// Most SENDs encoded into one write.
    #[arg(long, default_value_t = 64)]
    batch: u64,
    /// SENDs carry persistent:true; every --receipt-every'th asks for a RECEIPT.
    #[arg(long)]
    persistent: bool,
    #[arg(long, default_value_t = 100)]
    receipt_every: u64,
    /// The subscriber gives up after receiving nothing for this long (its missing messages
    /// are reported as lost).
    #[arg(long, default_value_t = 10)]
    idle_timeout_secs: u64,
    /// The broker's process id: its CPU time for the run is reported.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Name printed in the result line.
    #[arg(long, default_value = "broker")]
    label: String,
}

impl StompArgs {
    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

pub(crate) fn main(args: StompArgs) -> anyhow::Result<()> {
    if args.size < 16 {
        bail!("--size must be at least 16");
    }
    if args.window == 0 || args.batch == 0 || args.receipt_every == 0 || args.messages == 0 {
        bail!("--window, --batch, --receipt-every and --messages must be at least 1");
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(Arc::new(args)))
}

/// One connection after CONNECTED.
struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    name: String,
}

impl Conn {
    /// Connects, sends CONNECT and waits for CONNECTED.
    async fn open(args: &StompArgs, name: String) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(args.addr())
            .await
            .with_context(|| format!("{name}: connect to {}", args.addr()))?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(64 * 1024),
            name,
        };
        wire::connect(&mut conn.wbuf, &args.vhost, &args.login, &args.passcode);
        conn.flush().await?;
        conn.expect("CONNECTED", |f| matches!(f, Incoming::Connected))
            .await?;
        Ok(conn)
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

    /// Reads frames until one `want` accepts (heart-beats are skipped; anything else, and an
    /// ERROR above all, is an error).
    async fn expect(&mut self, what: &str, want: impl Fn(&Incoming) -> bool) -> anyhow::Result<()> {
        loop {
            while let Some((frame, n)) = wire::parse(&self.rbuf)? {
                let ok = want(&frame);
                match frame {
                    _ if ok => {}
                    Incoming::Heartbeat => {}
                    Incoming::Error { message, body } => bail!(
                        "{}: ERROR {} ({}) while waiting for {what}",
                        self.name,
                        show(message),
                        show(body)
                    ),
                    other => bail!("{}: expected {what}, got {other:?}", self.name),
                }
                self.rbuf.advance(n);
                if ok {
                    return Ok(());
                }
            }
            self.fill().await?;
        }
    }

    /// DISCONNECT with a receipt: once it comes, the broker has handled every earlier frame
    /// (ACKs above all). Failures are only reported.
    async fn close(mut self) {
        let name = self.name.clone();
        wire::disconnect(&mut self.wbuf, "bye");
        let done = async {
            self.flush().await?;
            self.expect(
                "RECEIPT bye",
                |f| matches!(f, Incoming::Receipt { id } if *id == b"bye"),
            )
            .await
        };
        match tokio::time::timeout(Duration::from_secs(5), done).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("{name}: close: {e:#}"),
            Err(_) => eprintln!("{name}: close: no RECEIPT for DISCONNECT within 5s"),
        }
    }
}

/// What the subscriber has received, for the publisher's window.
struct Progress {
    /// The next sequence number the subscriber waits for.
    next: AtomicU64,
    notify: Notify,
}

struct SubResult {
    received: u64,
    duplicates: u64,
    latencies_ns: Vec<u64>,
    last: Option<Instant>,
}

async fn run(args: Arc<StompArgs>) -> anyhow::Result<()> {
    let run_id = format!("{}-{}", std::process::id(), now_nanos() % 1_000_000);
    let destination = format!("/queue/wharf-bench-{run_id}");
    let mut sub = Conn::open(&args, format!("sub-{run_id}")).await?;
    let prefetch = (args.ack == AckMode::ClientIndividual).then_some(args.prefetch);
    wire::subscribe(
        &mut sub.wbuf,
        "0",
        &destination,
        args.ack.header(),
        prefetch,
        "sub",
    );
    sub.flush().await?;
    sub.expect(
        "RECEIPT for SUBSCRIBE",
        |f| matches!(f, Incoming::Receipt { id } if *id == b"sub"),
    )
    .await?;
    let publisher_conn = Conn::open(&args, format!("pub-{run_id}")).await?;

    let progress = Arc::new(Progress {
        next: AtomicU64::new(0),
        notify: Notify::new(),
    });
    let cpu_before = args.broker_pid.and_then(cpu_ticks);
    let client_cpu_before = cpu_ticks(std::process::id());
    let start = Instant::now();
    let sub_task = {
        let (args, progress) = (args.clone(), progress.clone());
        tokio::spawn(async move { subscriber(sub, &args, &progress).await })
    };
    let pub_task = {
        let (args, progress, destination) = (args.clone(), progress.clone(), destination.clone());
        tokio::spawn(async move { publisher(publisher_conn, &args, &destination, &progress).await })
    };
    let (published, receipts) = pub_task.await??;
    let (r, sub) = sub_task.await??;
    let elapsed = r.last.unwrap_or(start).duration_since(start);
    let secs_of = |before: Option<u64>, pid: Option<u32>| match (before, pid.and_then(cpu_ticks)) {
        (Some(b), Some(a)) => format!("{:.2}", (a - b) as f64 / clock_ticks() as f64),
        _ => "-".into(),
    };
    let broker_cpu = secs_of(cpu_before, args.broker_pid);
    let client_cpu = secs_of(client_cpu_before, Some(std::process::id()));
    sub.close().await;

    let mut latencies = r.latencies_ns;
    latencies.sort_unstable();
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "result label={} ack={} persistent={} size={} published={} receipts={} delivered={} \
         lost={} duplicates={} secs={:.3} rate={:.0} p50_us={} p99_us={} broker_cpu_s={} \
         client_cpu_s={}",
        args.label,
        args.ack.header(),
        args.persistent,
        args.size,
        published,
        receipts,
        r.received,
        published.saturating_sub(r.received),
        r.duplicates,
        secs,
        r.received as f64 / secs,
        percentile(&latencies, 0.50) / 1000,
        percentile(&latencies, 0.99) / 1000,
        broker_cpu,
        client_cpu,
    );
    Ok(())
}

/// Sends `--messages` messages to `destination`; returns how many, and how many RECEIPTs came.
async fn publisher(
    mut conn: Conn,
    args: &StompArgs,
    destination: &str,
    progress: &Progress,
) -> anyhow::Result<(u64, u64)> {
    let total = args.messages;
    let mut body = vec![0u8; args.size];
    let mut published = 0u64;
    // Messages covered by a RECEIPT (a receipt id is the count of messages sent up to it).
    let mut receipted = 0u64;
    let mut receipts = 0u64;
    while published < total || (args.persistent && receipted < total) {
        let received = progress.next.load(Ordering::Relaxed);
        let mut allowed = args
            .window
            .saturating_sub(published - received.min(published))
            .min(total - published)
            .min(args.batch);
        if args.persistent {
            allowed = allowed.min(args.window.saturating_sub(published - receipted));
        }
        if allowed > 0 {
            let now = now_nanos();
            for _ in 0..allowed {
                body[..8].copy_from_slice(&now.to_be_bytes());
                body[8..16].copy_from_slice(&published.to_be_bytes());
                published += 1;
                let receipt = (args.persistent
                    && (published.is_multiple_of(args.receipt_every) || published == total))
                    .then_some(published);
                wire::send(&mut conn.wbuf, destination, &body, args.persistent, receipt);
            }
            conn.flush().await?;
            continue;
        }
        // Blocked: wait for the subscriber, or for RECEIPTs. A notification sent while we are
        // not waiting is kept as a permit by `Notify`.
        tokio::select! {
            () = progress.notify.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(args.idle_timeout_secs)) => bail!(
                "{}: no progress for {}s ({published} sent, {} received, {receipted} receipted)",
                conn.name, args.idle_timeout_secs, progress.next.load(Ordering::Relaxed)
            ),
            read = conn.fill() => {
                read?;
                let mut used = 0;
                while let Some((frame, n)) = wire::parse(&conn.rbuf[used..])? {
                    used += n;
                    match frame {
                        Incoming::Receipt { id } => {
                            let covered = std::str::from_utf8(id)
                                .ok()
                                .and_then(|s| s.parse::<u64>().ok())
                                .with_context(|| format!("{}: receipt-id {:?}", conn.name, show(id)))?;
                            receipted = receipted.max(covered);
                            receipts += 1;
                        }
                        Incoming::Heartbeat => {}
                        Incoming::Error { message, body } => bail!(
                            "{}: ERROR {} ({})", conn.name, show(message), show(body)
                        ),
                        other => bail!("{}: unexpected {other:?}", conn.name),
                    }
                }
                conn.rbuf.advance(used);
            }
        }
    }
    conn.close().await;
    Ok((published, receipts))
}

/// Receives until it has seen the last sequence number, or nothing came for
/// `--idle-timeout-secs`. Returns the connection still open.
async fn subscriber(
    mut conn: Conn,
    args: &StompArgs,
    progress: &Progress,
) -> anyhow::Result<(SubResult, Conn)> {
    let total = args.messages;
    let acks = args.ack == AckMode::ClientIndividual;
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
        while let Some((frame, n)) = wire::parse(&conn.rbuf[used..])? {
            used += n;
            match frame {
                Incoming::Message { ack, body } => {
                    if acks {
                        let id =
                            ack.with_context(|| format!("{}: MESSAGE without ack", conn.name))?;
                        wire::ack(&mut conn.wbuf, id);
                    }
                    if body.len() < 16 {
                        bail!("{}: body of {} bytes", conn.name, body.len());
                    }
                    let sent = u64::from_be_bytes(body[..8].try_into()?);
                    let seq = u64::from_be_bytes(body[8..16].try_into()?);
                    if seq < next {
                        r.duplicates += 1;
                        continue;
                    }
                    next = seq + 1;
                    r.received += 1;
                    r.latencies_ns.push(now.saturating_sub(sent));
                }
                Incoming::Heartbeat => {}
                Incoming::Error { message, body } => {
                    bail!("{}: ERROR {} ({})", conn.name, show(message), show(body))
                }
                other => bail!("{}: unexpected {other:?}", conn.name),
            }
        }
        conn.rbuf.advance(used);
        if used > 0 {
            r.last = Some(Instant::now());
            progress.next.store(next, Ordering::Relaxed);
            progress.notify.notify_one();
        }
        if !conn.wbuf.is_empty() {
            conn.flush().await?;
        }
    }
    Ok((r, conn))
}
