//! The workload on our own AMQP 0-9-1 client (`--client raw`), built on `codecs::amqp`.
//!
//! It does what an efficient real client does, so that the bench process costs much less than
//! the broker it measures:
//! - the publisher encodes as many publishes as the window allows (at most `--batch`) into one
//!   buffer and writes it with one `write_all`;
//! - the consumer reads big chunks, decodes every complete frame in them, and in persistent
//!   mode acks once per read batch with `multiple=true` (RabbitMQ PerfTest's
//!   `--multi-ack-every` does the same);
//! - publisher confirms are counted from the broker's basic.ack frames (single or multiple);
//!   a basic.nack fails the run.
//!
//! Publisher and consumer are two futures joined on one task of a current-thread runtime, each
//! with its own TCP connection, so they share the flow-control counter without atomics and
//! without cross-thread wakeups.
//!
//! The publish frames (method, content header, body) are the same for every message but for
//! the send time and sequence number at the start of the body: they are encoded once with the
//! codec, then copied and patched per message.

use std::cell::Cell;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use amq_protocol::protocol::{
    basic, channel, confirm, connection, queue, AMQPClass, BasicProperties,
};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use anyhow::{anyhow, bail, Context};
use bytes::BytesMut;
use codecs::amqp::{decode, encode, encode_content, ContentHeader, Frame, Limits, ProtocolHeader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::{now_nanos, Args, Mode, Outcome};

/// The one channel each connection uses.
const CH: u16 = 1;
/// Bytes a read may fill at once.
const READ_CHUNK: usize = 256 * 1024;
/// How long closing a connection may wait for close-ok.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) async fn run(args: &Args, queue: &str) -> anyhow::Result<Outcome> {
    let persistent = args.mode == Mode::Persistent;
    let uri = Uri::parse(&args.url)?;
    let mut publisher = Conn::open(&uri, "publisher").await?;
    let mut consumer = Conn::open(&uri, "consumer").await?;

    match publisher
        .rpc(AMQPClass::Queue(queue::AMQPMethod::Declare(
            queue::Declare {
                queue: queue.into(),
                durable: persistent,
                ..Default::default()
            },
        )))
        .await?
    {
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_)) => {}
        other => bail!("publisher: expected queue.declare-ok, got {other:?}"),
    }
    if persistent {
        match publisher
            .rpc(AMQPClass::Confirm(confirm::AMQPMethod::Select(
                confirm::Select { nowait: false },
            )))
            .await?
        {
            AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_)) => {}
            other => bail!("publisher: expected confirm.select-ok, got {other:?}"),
        }
        match consumer
            .rpc(AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: args.window.min(u16::MAX as u64) as u16,
                global: false,
            })))
            .await?
        {
            AMQPClass::Basic(basic::AMQPMethod::QosOk(_)) => {}
            other => bail!("consumer: expected basic.qos-ok, got {other:?}"),
        }
    }
    match consumer
        .rpc(AMQPClass::Basic(basic::AMQPMethod::Consume(
            basic::Consume {
                queue: queue.into(),
                consumer_tag: "bench".into(),
                no_ack: !persistent,
                ..Default::default()
            },
        )))
        .await?
    {
        AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) => {}
        other => bail!("consumer: expected basic.consume-ok, got {other:?}"),
    }

    let template = PublishTemplate::new(queue, persistent, args.size, publisher.frame_max);
    let consumed = Cell::new(0u64);
    let progress = Notify::new();
    let start = Instant::now();
    let ((), latencies_ns) = tokio::try_join!(
        publish(&mut publisher, args, &template, &consumed, &progress),
        consume(&mut consumer, args, &consumed, &progress),
    )?;
    let elapsed = start.elapsed();

    // Cleanup failures do not void the measurement.
    match publisher
        .rpc(AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: queue.into(),
            ..Default::default()
        })))
        .await
    {
        Ok(AMQPClass::Queue(queue::AMQPMethod::DeleteOk(_))) => {}
        Ok(other) => eprintln!("publisher: expected queue.delete-ok, got {other:?}"),
        Err(e) => eprintln!("queue.delete: {e:#}"),
    }
    for conn in [&mut publisher, &mut consumer] {
        if let Err(e) = conn.close().await {
            eprintln!("{}: close: {e:#}", conn.name);
        }
    }
    Ok(Outcome {
        elapsed,
        latencies_ns,
    })
}

/// Publishes `--messages` messages, each batch in one write, keeping at most `--window`
/// unconsumed and (persistent mode) at most `--window` unconfirmed.
async fn publish(
    conn: &mut Conn,
    args: &Args,
    template: &PublishTemplate,
    consumed: &Cell<u64>,
    progress: &Notify,
) -> anyhow::Result<()> {
    let persistent = args.mode == Mode::Persistent;
    let total = args.messages;
    let mut confirms = Confirms::default();
    let mut published = 0u64;
    while published < total || confirms.outstanding > 0 {
        let mut allowed = args
            .window
            .saturating_sub(published - consumed.get())
            .min(total - published)
            .min(args.batch);
        if persistent {
            allowed = allowed.min(args.window.saturating_sub(confirms.outstanding));
        }
        if allowed > 0 {
            for _ in 0..allowed {
                template.append(&mut conn.wbuf, now_nanos(), published);
                published += 1;
                if persistent {
                    confirms.published();
                }
            }
            conn.flush().await?;
            continue;
        }
        // Blocked by the window: wait for the consumer, or for confirms (or an error) from the
        // broker. Both branches are cancel-safe; a notification that arrives while we are not
        // waiting is kept as a permit by `Notify`.
        conn.reserve_read();
        tokio::select! {
            () = progress.notified() => {}
            read = conn.stream.read_buf(&mut conn.rbuf) => {
                if read.context("publisher: read")? == 0 {
                    bail!("publisher: broker closed the TCP connection");
                }
                while let Some(frame) = decode(&mut conn.rbuf, &conn.limits)? {
                    on_publisher_frame(frame, &mut confirms)?;
                }
            }
        }
    }
    Ok(())
}

/// A frame the broker sent the publisher: confirms, or news that the run failed.
fn on_publisher_frame(frame: Frame, confirms: &mut Confirms) -> anyhow::Result<()> {
    match frame {
        Frame::Method(_, class) => match check_close("publisher", class)? {
            AMQPClass::Basic(basic::AMQPMethod::Ack(ack)) => {
                confirms.ack(ack.delivery_tag, ack.multiple)?
            }
            AMQPClass::Basic(basic::AMQPMethod::Nack(nack)) => bail!(
                "publisher: broker nacked delivery tag {} (multiple={})",
                nack.delivery_tag,
                nack.multiple
            ),
            AMQPClass::Connection(
                connection::AMQPMethod::Blocked(_) | connection::AMQPMethod::Unblocked(_),
            ) => {}
            other => bail!("publisher: unexpected {other:?}"),
        },
        Frame::Heartbeat(_) => {}
        other => bail!("publisher: unexpected {other:?}"),
    }
    Ok(())
}

/// Consumes `--messages` messages and returns their latencies. Reads as much as the socket
/// holds, decodes every complete frame, then (persistent mode) acks everything received with
/// one basic.ack(multiple=true) and tells the publisher how many arrived.
async fn consume(
    conn: &mut Conn,
    args: &Args,
    consumed: &Cell<u64>,
    progress: &Notify,
) -> anyhow::Result<Vec<u64>> {
    let persistent = args.mode == Mode::Persistent;
    let total = args.messages as usize;
    let mut latencies_ns = Vec::with_capacity(total);
    let mut content = Content::Idle;
    let mut next_seq = 0u64;
    let mut last_tag = 0u64;
    let mut acked_tag = 0u64;
    while latencies_ns.len() < total {
        conn.fill().await?;
        let before = latencies_ns.len();
        while let Some(frame) = decode(&mut conn.rbuf, &conn.limits)? {
            match (frame, &mut content) {
                (Frame::Method(_, class), Content::Idle) => match check_close("consumer", class)? {
                    AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) => {
                        content = Content::Header {
                            tag: d.delivery_tag,
                        };
                    }
                    AMQPClass::Basic(basic::AMQPMethod::Cancel(_)) => {
                        bail!("consumer: the broker cancelled the consumer")
                    }
                    AMQPClass::Connection(
                        connection::AMQPMethod::Blocked(_) | connection::AMQPMethod::Unblocked(_),
                    ) => {}
                    other => bail!("consumer: unexpected {other:?}"),
                },
                (Frame::Header(_, h), Content::Header { tag }) => {
                    if h.body_size < 16 {
                        bail!("consumer: body of {} bytes, expected 16+", h.body_size);
                    }
                    content = Content::Body {
                        tag: *tag,
                        remaining: h.body_size,
                        head: [0; 16],
                        have: 0,
                    };
                }
                (
                    Frame::Body(_, bytes),
                    Content::Body {
                        tag,
                        remaining,
                        head,
                        have,
                    },
                ) => {
                    let take = (head.len() - *have).min(bytes.len());
                    head[*have..*have + take].copy_from_slice(&bytes[..take]);
                    *have += take;
                    *remaining = remaining
                        .checked_sub(bytes.len() as u64)
                        .ok_or_else(|| anyhow!("consumer: body frame past the body size"))?;
                    if *remaining == 0 {
                        let sent = u64::from_be_bytes(head[..8].try_into()?);
                        let seq = u64::from_be_bytes(head[8..].try_into()?);
                        if seq != next_seq {
                            bail!("consumer: got message {seq}, expected {next_seq}");
                        }
                        next_seq += 1;
                        latencies_ns.push(now_nanos().saturating_sub(sent));
                        last_tag = *tag;
                        content = Content::Idle;
                    }
                }
                (Frame::Heartbeat(_), _) => {}
                (other, _) => bail!("consumer: unexpected {other:?} in state {content:?}"),
            }
        }
        if persistent && last_tag > acked_tag {
            conn.send(AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: last_tag,
                multiple: true,
            })));
            conn.flush().await?;
            acked_tag = last_tag;
        }
        let arrived = (latencies_ns.len() - before) as u64;
        if arrived > 0 {
            consumed.set(consumed.get() + arrived);
            progress.notify_one();
        }
    }
    Ok(latencies_ns)
}

/// Where the consumer is in the delivery being received.
#[derive(Debug)]
enum Content {
    Idle,
    /// basic.deliver seen, content header next.
    Header {
        tag: u64,
    },
    /// Body frames next; the first 16 body bytes (send time, sequence number) collected.
    Body {
        tag: u64,
        remaining: u64,
        head: [u8; 16],
        have: usize,
    },
}

/// Publisher confirms outstanding, by delivery tag (the n-th publish after confirm.select has
/// tag n). The broker may confirm one tag or all up to a tag (`multiple`).
#[derive(Default)]
struct Confirms {
    /// Tag of `pending[0]` minus 1: every tag up to it is confirmed.
    base: u64,
    /// Whether each tag after `base` is confirmed.
    pending: VecDeque<bool>,
    /// Published and not confirmed.
    outstanding: u64,
}

impl Confirms {
    fn published(&mut self) {
        self.pending.push_back(false);
        self.outstanding += 1;
    }

    fn ack(&mut self, tag: u64, multiple: bool) -> anyhow::Result<()> {
        if tag > self.base + self.pending.len() as u64 {
            bail!(
                "publisher: broker confirmed tag {tag}, only {} published",
                self.base + self.pending.len() as u64
            );
        }
        if multiple {
            while self.base < tag {
                if let Some(done) = self.pending.pop_front() {
                    self.outstanding -= u64::from(!done);
                }
                self.base += 1;
            }
        } else if tag > self.base {
            if let Some(done) = self.pending.get_mut((tag - self.base - 1) as usize) {
                self.outstanding -= u64::from(!*done);
                *done = true;
            }
            while self.pending.front() == Some(&true) {
                self.pending.pop_front();
                self.base += 1;
            }
        }
        Ok(())
    }
}

/// The wire form of one publish (basic.publish, content header, body frames), encoded once by
/// the codec; each message is a copy with its send time and sequence number patched in.
struct PublishTemplate {
    frames: BytesMut,
    /// Offset of the first body byte in `frames`.
    body_at: usize,
}

impl PublishTemplate {
    fn new(queue: &str, persistent: bool, size: usize, frame_max: u32) -> PublishTemplate {
        let method = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: queue.into(),
            mandatory: false,
            immediate: false,
        }));
        let properties = if persistent {
            BasicProperties::default().with_delivery_mode(2)
        } else {
            BasicProperties::default()
        };
        let mut frames = BytesMut::new();
        encode_content(
            CH,
            &method,
            &properties,
            &vec![0u8; size],
            frame_max,
            &mut frames,
        );
        // The body starts after the method frame, the header frame and the body frame's
        // 7-byte frame header.
        let mut head = BytesMut::new();
        encode(&Frame::Method(CH, method), &mut head);
        encode(
            &Frame::Header(
                CH,
                ContentHeader {
                    class_id: 60,
                    body_size: size as u64,
                    properties,
                },
            ),
            &mut head,
        );
        assert!(frames.starts_with(&head), "encode_content framing changed");
        PublishTemplate {
            frames,
            body_at: head.len() + 7,
        }
    }

    fn append(&self, out: &mut BytesMut, sent_nanos: u64, seq: u64) {
        let at = out.len() + self.body_at;
        out.extend_from_slice(&self.frames);
        out[at..at + 8].copy_from_slice(&sent_nanos.to_be_bytes());
        out[at + 8..at + 16].copy_from_slice(&seq.to_be_bytes());
    }
}

/// An open AMQP connection with channel 1 open.
struct Conn {
    name: &'static str,
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    limits: Limits,
    /// Negotiated frame_max (0: no limit).
    frame_max: u32,
}

impl Conn {
    /// Connects and does the handshake: protocol header, start-ok (PLAIN), tune-ok (the
    /// server's channel_max and frame_max, no heartbeats), open, then channel.open.
    async fn open(uri: &Uri, name: &'static str) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect((uri.host.as_str(), uri.port))
            .await
            .with_context(|| format!("{name}: connect to {}:{}", uri.host, uri.port))?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            name,
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(64 * 1024),
            limits: Limits::default(),
            frame_max: Limits::default().frame_bytes_max,
        };
        encode(
            &Frame::ProtocolHeader(ProtocolHeader::AMQP_0_9_1),
            &mut conn.wbuf,
        );
        conn.flush().await?;
        let start = match conn.next_method().await? {
            AMQPClass::Connection(connection::AMQPMethod::Start(s)) => s,
            other => bail!("{name}: expected connection.start, got {other:?}"),
        };
        let mechanisms = String::from_utf8_lossy(start.mechanisms.as_bytes()).into_owned();
        if !mechanisms.split_whitespace().any(|m| m == "PLAIN") {
            bail!("{name}: broker offers no PLAIN login (mechanisms: {mechanisms})");
        }
        let mut capabilities = FieldTable::default();
        for cap in [
            "publisher_confirms",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "authentication_failure_close",
        ] {
            capabilities.insert(cap.into(), AMQPValue::Boolean(true));
        }
        let mut client_properties = FieldTable::default();
        client_properties.insert(
            "product".into(),
            AMQPValue::LongString("wharf-bench".into()),
        );
        client_properties.insert("connection_name".into(), AMQPValue::LongString(name.into()));
        client_properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
        conn.send_on(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties,
                mechanism: "PLAIN".into(),
                response: LongString::from(format!("\0{}\0{}", uri.user, uri.pass)),
                locale: "en_US".into(),
            })),
        );
        conn.flush().await?;
        let tune = match conn.next_method().await? {
            AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t,
            other => bail!("{name}: expected connection.tune, got {other:?}"),
        };
        conn.frame_max = tune.frame_max;
        conn.limits = Limits {
            frame_bytes_max: tune.frame_max,
        };
        conn.send_on(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max: tune.frame_max,
                heartbeat: 0,
            })),
        );
        conn.send_on(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: uri.vhost.as_str().into(),
            })),
        );
        conn.flush().await?;
        match conn.next_method().await? {
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => {}
            other => bail!("{name}: expected connection.open-ok, got {other:?}"),
        }
        match conn
            .rpc(AMQPClass::Channel(channel::AMQPMethod::Open(
                channel::Open {},
            )))
            .await?
        {
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)) => {}
            other => bail!("{name}: expected channel.open-ok, got {other:?}"),
        }
        Ok(conn)
    }

    /// Queues a method on channel 1 for the next [`Conn::flush`].
    fn send(&mut self, class: AMQPClass) {
        self.send_on(CH, class);
    }

    fn send_on(&mut self, channel: u16, class: AMQPClass) {
        encode(&Frame::Method(channel, class), &mut self.wbuf);
    }

    /// Writes everything queued, in one write when the socket takes it.
    async fn flush(&mut self) -> anyhow::Result<()> {
        self.stream
            .write_all(&self.wbuf)
            .await
            .with_context(|| format!("{}: write", self.name))?;
        self.wbuf.clear();
        Ok(())
    }

    fn reserve_read(&mut self) {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
    }

    /// Reads whatever the socket holds (at least one byte) into the read buffer.
    async fn fill(&mut self) -> anyhow::Result<()> {
        self.reserve_read();
        let n = self
            .stream
            .read_buf(&mut self.rbuf)
            .await
            .with_context(|| format!("{}: read", self.name))?;
        if n == 0 {
            bail!("{}: broker closed the TCP connection", self.name);
        }
        Ok(())
    }

    /// The next method frame, skipping heartbeats; a close from the broker is an error.
    async fn next_method(&mut self) -> anyhow::Result<AMQPClass> {
        loop {
            match decode(&mut self.rbuf, &self.limits)? {
                Some(Frame::Method(_, class)) => return check_close(self.name, class),
                Some(Frame::Heartbeat(_)) => {}
                Some(Frame::ProtocolHeader(h)) => {
                    bail!(
                        "{}: broker refused the protocol, answering {:?}",
                        self.name,
                        h.0
                    )
                }
                Some(other) => bail!("{}: expected a method, got {other:?}", self.name),
                None => self.fill().await?,
            }
        }
    }

    /// Sends a synchronous method on channel 1 and returns the reply.
    async fn rpc(&mut self, class: AMQPClass) -> anyhow::Result<AMQPClass> {
        self.send(class);
        self.flush().await?;
        self.next_method().await
    }

    /// connection.close, then waits for close-ok (skipping anything still in flight).
    async fn close(&mut self) -> anyhow::Result<()> {
        self.send_on(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        );
        self.flush().await?;
        tokio::time::timeout(CLOSE_TIMEOUT, async {
            loop {
                match decode(&mut self.rbuf, &self.limits)? {
                    Some(Frame::Method(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)),
                    )) => return Ok(()),
                    Some(_) => {}
                    None => self.fill().await?,
                }
            }
        })
        .await
        .map_err(|_| anyhow!("no connection.close-ok within {CLOSE_TIMEOUT:?}"))?
    }
}

/// Turns a connection.close or channel.close from the broker into an error (the broker's
/// reply code and text), passes any other method through.
fn check_close(name: &str, class: AMQPClass) -> anyhow::Result<AMQPClass> {
    match class {
        AMQPClass::Connection(connection::AMQPMethod::Close(c)) => bail!(
            "{name}: broker closed the connection: {} {} (class {} method {})",
            c.reply_code,
            c.reply_text,
            c.class_id,
            c.method_id
        ),
        AMQPClass::Channel(channel::AMQPMethod::Close(c)) => bail!(
            "{name}: broker closed the channel: {} {} (class {} method {})",
            c.reply_code,
            c.reply_text,
            c.class_id,
            c.method_id
        ),
        other => Ok(other),
    }
}

/// The parts of `amqp://user:pass@host:port/vhost` the client needs. User and password default
/// to guest, the port to 5672, the vhost to `/` (written `%2f`).
#[derive(Debug, PartialEq)]
struct Uri {
    user: String,
    pass: String,
    host: String,
    port: u16,
    vhost: String,
}

impl Uri {
    fn parse(url: &str) -> anyhow::Result<Uri> {
        let rest = url
            .strip_prefix("amqp://")
            .ok_or_else(|| anyhow!("--url: only amqp:// URLs are supported: {url}"))?;
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, vhost) = match rest.split_once('/') {
            Some((authority, path)) => (authority, percent_decode(path)?),
            None => (rest, "/".to_owned()),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (user, pass) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (percent_decode(user)?, percent_decode(pass)?),
                None => (percent_decode(u)?, String::new()),
            },
            None => ("guest".to_owned(), "guest".to_owned()),
        };
        // `[::1]:5672`, `host:5672`, `host`.
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| anyhow!("--url: unclosed [ in {url}"))?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse()
                .with_context(|| format!("--url: bad port {p:?}"))?,
            None => 5672,
        };
        let host = if host.is_empty() { "localhost" } else { host };
        Ok(Uri {
            user,
            pass,
            host: host.to_owned(),
            port,
            vhost,
        })
    }
}

fn percent_decode(s: &str) -> anyhow::Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| anyhow!("--url: truncated escape in {s:?}"))?;
            out.push(
                u8::from_str_radix(hex, 16)
                    .with_context(|| format!("--url: bad escape %{hex} in {s:?}"))?,
            );
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).with_context(|| format!("--url: {s:?} is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_forms() {
        let u = Uri::parse("amqp://guest:gu%40st@127.0.0.1:5673/%2f").unwrap();
        assert_eq!(
            u,
            Uri {
                user: "guest".into(),
                pass: "gu@st".into(),
                host: "127.0.0.1".into(),
                port: 5673,
                vhost: "/".into(),
            }
        );
        let u = Uri::parse("amqp://[::1]/prod").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 5672));
        assert_eq!((u.user.as_str(), u.vhost.as_str()), ("guest", "prod"));
        assert_eq!(Uri::parse("amqp://h").unwrap().vhost, "/");
        assert!(Uri::parse("http://h").is_err());
        assert!(Uri::parse("amqp://h:x").is_err());
    }

    #[test]
    fn confirms_single_and_multiple() {
        let mut c = Confirms::default();
        for _ in 0..5 {
            c.published();
        }
        c.ack(2, false).unwrap();
        assert_eq!(c.outstanding, 4);
        c.ack(1, false).unwrap();
        assert_eq!((c.outstanding, c.base), (3, 2));
        c.ack(4, true).unwrap();
        assert_eq!((c.outstanding, c.base), (1, 4));
        c.ack(4, false).unwrap(); // already confirmed
        assert_eq!(c.outstanding, 1);
        assert!(c.ack(6, true).is_err());
        c.ack(5, true).unwrap();
        assert_eq!((c.outstanding, c.pending.len()), (0, 0));
    }

    #[test]
    fn template_round_trips_through_the_codec() {
        for (size, frame_max) in [(16, 131_072), (1024, 131_072), (10_000, 4096), (20, 0)] {
            let t = PublishTemplate::new("q", true, size, frame_max);
            let mut buf = BytesMut::new();
            t.append(&mut buf, 7, 9);
            let limits = Limits {
                frame_bytes_max: frame_max,
            };
            let mut body = Vec::new();
            while let Some(frame) = decode(&mut buf, &limits).unwrap() {
                match frame {
                    Frame::Method(CH, AMQPClass::Basic(basic::AMQPMethod::Publish(p))) => {
                        assert_eq!(p.routing_key.as_str(), "q")
                    }
                    Frame::Header(CH, h) => {
                        assert_eq!(h.body_size, size as u64);
                        assert_eq!(h.properties.delivery_mode(), &Some(2));
                    }
                    Frame::Body(CH, b) => body.extend_from_slice(&b),
                    other => panic!("{other:?}"),
                }
            }
            assert!(buf.is_empty());
            assert_eq!(body.len(), size);
            assert_eq!(body[..8], 7u64.to_be_bytes());
            assert_eq!(body[8..16], 9u64.to_be_bytes());
        }
    }
}
