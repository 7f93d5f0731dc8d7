//! `serve` over an in-memory duplex pipe with a real engine, speaking frames through the codec.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use codecs::stomp::{self, Command, Frame, Item, Limits, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::sync::CancellationToken;

use super::{serve, StompConfig, StompContext};
use crate::engine::{Engine, EngineConfig, Message, QueueSettings, Table};
use crate::net::Peer;

const TIMEOUT: Duration = Duration::from_secs(5);

struct Broker {
    ctx: Arc<StompContext>,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn new() -> Broker {
        Broker::with(StompConfig::default())
    }

    fn with(config: StompConfig) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig {
            data_dir: dir.path().to_path_buf(),
            fsync: false,
            ..Default::default()
        })
        .unwrap();
        Broker {
            ctx: Arc::new(StompContext { engine, config }),
            _dir: dir,
        }
    }

    fn raw_with(&self, peer: Peer) -> Client {
        let (client, server) = tokio::io::duplex(1 << 20);
        tokio::spawn(serve(
            server,
            peer,
            self.ctx.clone(),
            CancellationToken::new(),
        ));
        Client {
            io: client,
            buf: BytesMut::new(),
            version: Version::V1_0,
        }
    }

    fn raw(&self) -> Client {
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        self.raw_with(peer.into())
    }

    /// A logged-in client of `version`.
    async fn connect(&self, version: Version) -> Client {
        let mut c = self.raw();
        c.send(
            &Frame::new(Command::Connect)
                .with("accept-version", version.as_str())
                .with("host", "/")
                .with("login", "guest")
                .with("passcode", "guest"),
        )
        .await;
        let connected = c.recv().await.expect("CONNECTED");
        assert_eq!(connected.command, Command::Connected, "{connected:?}");
        assert_eq!(connected.header("version"), Some(version.as_str()));
        c.version = version;
        c
    }
}

struct Client {
    io: DuplexStream,
    buf: BytesMut,
    version: Version,
}

impl Client {
    async fn send(&mut self, f: &Frame) {
        let mut out = BytesMut::new();
        stomp::encode(f, self.version, &mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
    }

    async fn send_raw(&mut self, b: &[u8]) {
        self.io.write_all(b).await.unwrap();
    }

    /// The next frame (heart-beats skipped); `None` when the server closed.
    async fn recv(&mut self) -> Option<Frame> {
        let limits = Limits::default();
        loop {
            match stomp::decode(&mut self.buf, self.version, &limits).unwrap() {
                Some(Item::Frame(f)) => return Some(f),
                Some(Item::Heartbeat) => continue,
                None => {}
            }
            let n = tokio::time::timeout(TIMEOUT, self.io.read_buf(&mut self.buf))
                .await
                .expect("a frame in time")
                .unwrap();
            if n == 0 {
                return None;
            }
        }
    }

    /// Nothing arrives within `d`.
    async fn quiet(&mut self, d: Duration) {
        if let Ok(n) = tokio::time::timeout(d, self.io.read_buf(&mut self.buf)).await {
            panic!("unexpected bytes ({n:?}): {:?}", self.buf);
        }
    }

    /// An ERROR frame with a message header, then the close.
    async fn expect_error(&mut self, contains: &str) -> Frame {
        let e = self.recv().await.expect("ERROR");
        assert_eq!(e.command, Command::Error, "{e:?}");
        let message = e.header("message").expect("message header");
        assert!(message.contains(contains), "{message:?} lacks {contains:?}");
        assert!(self.recv().await.is_none(), "not closed after ERROR");
        e
    }

    async fn subscribe(&mut self, dest: &str, id: &str, ack: &str) {
        self.send(
            &Frame::new(Command::Subscribe)
                .with("destination", dest)
                .with("id", id)
                .with("ack", ack)
                .with("receipt", format!("sub-{id}")),
        )
        .await;
        self.expect_receipt(&format!("sub-{id}")).await;
    }

    async fn expect_receipt(&mut self, id: &str) {
        let r = self.recv().await.expect("RECEIPT");
        assert_eq!(r.command, Command::Receipt, "{r:?}");
        assert_eq!(r.header("receipt-id"), Some(id));
    }

    async fn send_to(&mut self, dest: &str, body: &str) {
        self.send(
            &Frame::new(Command::Send)
                .with("destination", dest)
                .with("receipt", "s")
                .with_body(body.to_string()),
        )
        .await;
        self.expect_receipt("s").await;
    }

    async fn message(&mut self) -> Frame {
        let m = self.recv().await.expect("MESSAGE");
        assert_eq!(m.command, Command::Message, "{m:?}");
        m
    }
}

fn body(f: &Frame) -> &str {
    std::str::from_utf8(&f.body).unwrap()
}

#[tokio::test]
async fn negotiates_the_highest_common_version() {
    let b = Broker::new();
    let mut c = b.raw();
    c.send(
        &Frame::new(Command::Stomp)
            .with("accept-version", "1.0,1.1,1.2,2.0")
            .with("login", "guest")
            .with("passcode", "guest")
            .with("heart-beat", "0,5000"),
    )
    .await;
    let f = c.recv().await.unwrap();
    assert_eq!(f.command, Command::Connected);
    assert_eq!(f.header("version"), Some("1.2"));
    assert_eq!(f.header("heart-beat"), Some("1000,1000"));
    assert!(f.header("session").is_some());
    assert!(f.header("server").unwrap().starts_with("Wharf/"));
}

#[tokio::test]
async fn no_accept_version_is_1_0_and_no_host_is_the_default_vhost() {
    let b = Broker::new();
    let mut c = b.raw();
    c.send(
        &Frame::new(Command::Connect)
            .with("login", "guest")
            .with("passcode", "guest"),
    )
    .await;
    assert_eq!(c.recv().await.unwrap().header("version"), Some("1.0"));
}

#[tokio::test]
async fn version_mismatch_is_an_error() {
    let b = Broker::new();
    let mut c = b.raw();
    c.send(&Frame::new(Command::Connect).with("accept-version", "2.0"))
        .await;
    let e = c.expect_error("Version mismatch").await;
    assert_eq!(e.header("version"), Some("1.0,1.1,1.2"));
}

#[tokio::test]
async fn bad_login_and_bad_host_are_refused() {
    let b = Broker::new();
    for (login, pass, host) in [
        ("guest", "wrong", "/"),
        ("nobody", "guest", "/"),
        ("guest", "guest", "no-such-vhost"),
    ] {
        let mut c = b.raw();
        c.send(
            &Frame::new(Command::Connect)
                .with("accept-version", "1.2")
                .with("login", login)
                .with("passcode", pass)
                .with("host", host),
        )
        .await;
        c.expect_error("Bad CONNECT").await;
    }
    // No login and no default user.
    let mut c = b.raw();
    c.send(&Frame::new(Command::Connect).with("accept-version", "1.2"))
        .await;
    c.expect_error("Bad CONNECT").await;
}

#[tokio::test]
async fn default_user_and_certificate_login() {
    let b = Broker::with(StompConfig {
        default_user: Some("guest".into()),
        ..Default::default()
    });
    let mut c = b.raw();
    c.send(&Frame::new(Command::Connect).with("accept-version", "1.2"))
        .await;
    assert_eq!(c.recv().await.unwrap().command, Command::Connected);

    let b = Broker::new();
    let peer = Peer {
        addr: "127.0.0.1:40001".parse().unwrap(),
        cert_login: Some("guest".into()),
    };
    let mut c = b.raw_with(peer);
    c.send(&Frame::new(Command::Connect).with("accept-version", "1.2"))
        .await;
    assert_eq!(c.recv().await.unwrap().command, Command::Connected);
    // A certificate for an unknown user logs nobody in.
    let peer = Peer {
        addr: "127.0.0.1:40002".parse().unwrap(),
        cert_login: Some("stranger".into()),
    };
    let mut c = b.raw_with(peer);
    c.send(&Frame::new(Command::Connect).with("accept-version", "1.2"))
        .await;
    c.expect_error("Bad CONNECT").await;
}

#[tokio::test]
async fn frames_before_connect_are_refused() {
    let b = Broker::new();
    let mut c = b.raw();
    c.send(&Frame::new(Command::Send).with("destination", "/queue/a"))
        .await;
    c.expect_error("Illegal command").await;
}

#[tokio::test]
async fn queue_send_subscribe_with_headers_mapped() {
    let b = Broker::new();
    let mut c = b.connect(Version::V1_2).await;
    c.subscribe("/queue/q1", "s1", "auto").await;
    c.send(
        &Frame::new(Command::Send)
            .with("destination", "/queue/q1")
            .with("content-type", "text/plain")
            .with("persistent", "true")
            .with("correlation-id", "c-9")
            .with("priority", "3")
            .with("x-custom", "a:b\nc")
            .with("content-length", "3")
            .with_body(&b"a\0b"[..]),
    )
    .await;
    let m = c.message().await;
    assert_eq!(m.header("subscription"), Some("s1"));
    assert_eq!(m.header("destination"), Some("/queue/q1"));
    assert_eq!(m.header("content-type"), Some("text/plain"));
    assert_eq!(m.header("persistent"), Some("true"));
    assert_eq!(m.header("correlation-id"), Some("c-9"));
    assert_eq!(m.header("priority"), Some("3"));
    assert_eq!(m.header("x-custom"), Some("a:b\nc"));
    assert_eq!(m.header("redelivered"), Some("false"));
    assert_eq!(&m.body[..], b"a\0b");
    // ack:auto has no ack header.
    assert_eq!(m.header("ack"), None);
    // The queue is durable and shared: it exists in the engine.
    let v = b.ctx.engine.vhost("/").unwrap();
    assert!(v.queue("q1", 0).unwrap().settings.durable);
}

#[tokio::test]
async fn client_ack_is_cumulative_and_nack_requeues() {
    let b = Broker::new();
    let mut c = b.connect(Version::V1_2).await;
    for i in 0..3 {
        c.send_to("/queue/cq", &format!("m{i}")).await;
    }
    c.subscribe("/queue/cq", "s", "client").await;
    let ms = [c.message().await, c.message().await, c.message().await];
    // ACK of the second acknowledges the first too.
    c.send(
        &Frame::new(Command::Ack)
            .with("id", ms[1].header("ack").unwrap())
            .with("receipt", "a"),
    )
    .await;
    c.expect_receipt("a").await;
    let q = b.ctx.engine.vhost("/").unwrap().queue("cq", 0).unwrap();
    assert_eq!(q.in_flight_count(), 1);
    // NACK requeues: the message comes again, redelivered.
    c.send(&Frame::new(Command::Nack).with("id", ms[2].header("ack").unwrap()))
        .await;
    let again = c.message().await;
    assert_eq!(body(&again), "m2");
    assert_eq!(again.header("redelivered"), Some("true"));
    // An id that is no longer outstanding is an error.
    c.send(&Frame::new(Command::Ack).with("id", ms[0].header("ack").unwrap()))
        .await;
    c.expect_error("Invalid message-id").await;
}

#[tokio::test]
async fn client_individual_ack_and_1_1_and_1_0_ids() {
    let b = Broker::new();
    for version in [Version::V1_0, Version::V1_1] {
        let mut c = b.connect(version).await;
        let dest = format!("/queue/ci{}", version.as_str());
        c.send_to(&dest, "x").await;
        c.send_to(&dest, "y").await;
        let mode = if version == Version::V1_0 {
            "client"
        } else {
            "client-individual"
        };
        c.subscribe(&dest, "s", mode).await;
        let (x, y) = (c.message().await, c.message().await);
        assert_eq!(x.header("ack"), None, "no ack header before 1.2");
        let mut ack = Frame::new(Command::Ack)
            .with("message-id", y.header("message-id").unwrap())
            .with("receipt", "r");
        if version == Version::V1_1 {
            ack.push("subscription", "s");
        }
        c.send(&ack).await;
        c.expect_receipt("r").await;
        let q = b
            .ctx
            .engine
            .vhost("/")
            .unwrap()
            .queue(&dest[7..], 0)
            .unwrap();
        // 1.1 client-individual: x is still out; 1.0 client: cumulative, both settled.
        let left = if version == Version::V1_0 { 0 } else { 1 };
        assert_eq!(q.in_flight_count(), left, "{version:?}");
        let _ = x;
    }
}

#[tokio::test]
async fn prefetch_count_limits_unacked() {
    let b = Broker::new();
    let mut c = b.connect(Version::V1_2).await;
    for i in 0..5 {
        c.send_to("/queue/pf", &i.to_string()).await;
    }
    c.send(
        &Frame::new(Command::Subscribe)
            .with("destination", "/queue/pf")
            .with("id", "p")
            .with("ack", "client-individual")
            .with("prefetch-count", "2"),
    )
    .await;
    let first = c.message().await;
    c.message().await;
    c.quiet(Duration::from_millis(200)).await;
    c.send(&Frame::new(Command::Ack).with("id", first.header("ack").unwrap()))
        .await;
    assert_eq!(body(&c.message().await), "2");
}

#[tokio::test]
async fn transactions_buffer_until_commit_and_abort_discards() {
    let b = Broker::new();
    let mut c = b.connect(Version::V1_2).await;
    c.subscribe("/queue/tx", "s", "auto").await;
    c.send(&Frame::new(Command::Begin).with("transaction", "t1"))
        .await;
    c.send(
        &Frame::new(Command::Send)
            .with("destination", "/queue/tx")
            .with("transaction", "t1")
            .with_body("in t1"),
    )
    .await;
    c.quiet(Duration::from_millis(200)).await;
    c.send(
        &Frame::new(Command::Commit)
            .with("transaction", "t1")
            .with("receipt", "c"),
    )
    .await;
    c.expect_receipt("c").await;
    assert_eq!(body(&c.message().await), "in t1");
    c.send(&Frame::new(Command::Begin).with("transaction", "t2"))
        .await;
    c.send(
        &Frame::new(Command::Send)
            .with("destination", "/queue/tx")
            .with("transaction", "t2")
            .with_body("in t2"),
    )
    .await;
    c.send(
        &Frame::new(Command::Abort)
            .with("transaction", "t2")
            .with("receipt", "ab"),
    )
    .await;
    c.expect_receipt("ab").await;
    c.quiet(Duration::from_millis(200)).await;
    c.send(&Frame::new(Command::Commit).with("transaction", "t2"))
        .await;
    c.expect_error("Bad transaction").await;
}

#[tokio::test]
async fn topic_private_and_durable_subscriptions() {
    let b = Broker::new();
    let mut sub = b.connect(Version::V1_2).await;
    sub.subscribe("/topic/news.*", "private", "auto").await;
    sub.send(
        &Frame::new(Command::Subscribe)
            .with("destination", "/topic/news.#")
            .with("id", "dur")
            .with("persistent", "true")
            .with("receipt", "d"),
    )
    .await;
    sub.expect_receipt("d").await;
    let mut publisher = b.connect(Version::V1_1).await;
    publisher.send_to("/topic/news.today", "hello").await;
    let (a, b2) = (sub.message().await, sub.message().await);
    assert_eq!(a.header("destination"), Some("/topic/news.today"));
    let mut ids = [
        a.header("subscription").unwrap(),
        b2.header("subscription").unwrap(),
    ];
    ids.sort_unstable();
    assert_eq!(ids, ["dur", "private"]);
    drop(sub);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The durable subscription's queue keeps messages while its client is away.
    publisher.send_to("/topic/news.later", "kept").await;
    let v = b.ctx.engine.vhost("/").unwrap();
    let q = v.queue("stomp-subscription-dur", 0).unwrap();
    assert_eq!(q.message_count(), 1);
    let mut back = b.connect(Version::V1_2).await;
    back.send(
        &Frame::new(Command::Subscribe)
            .with("destination", "/topic/news.#")
            .with("id", "dur")
            .with("persistent", "true"),
    )
    .await;
    assert_eq!(body(&back.message().await), "kept");
    // UNSUBSCRIBE with persistent:true deletes it.
    back.send(
        &Frame::new(Command::Unsubscribe)
            .with("id", "dur")
            .with("persistent", "true")
            .with("receipt", "u"),
    )
    .await;
    back.expect_receipt("u").await;
    assert!(v.queue("stomp-subscription-dur", 0).is_err());
}

#[tokio::test]
async fn activemq_subscription_name_is_durable() {
    let b = Broker::new();
    let mut c = b.connect(Version::V1_1).await;
    c.send(
        &Frame::new(Command::Subscribe)
            .with("destination", "/topic/t")
            .with("id", "1")
            .with("activemq.subscriptionName", "amq-sub")
            .with("receipt", "r"),
    )
    .await;
    c.expect_receipt("r").await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let v = b.ctx.engine.vhost("/").unwrap();
    assert!(
        v.queue("stomp-subscription-amq-sub", 0)
            .unwrap()
            .settings
            .durable
    );
}

#[tokio::test]
async fn exchange_and_amq_queue_destinations() {
    let b = Broker::new();
    let v = b.ctx.engine.vhost("/").unwrap();
    let settings = QueueSettings {
        durable: false,
        exclusive_owner: None,
        auto_delete: false,
        arguments: Table::new(),
    };
    v.declare_queue("made-by-amqp", settings, false, 0).unwrap();
    v.bind_queue("made-by-amqp", "amq.direct", "k", Table::new(), 0)
        .unwrap();
    let mut c = b.connect(Version::V1_2).await;
    c.subscribe("/amq/queue/made-by-amqp", "a", "auto").await;
    c.send_to("/exchange/amq.direct/k", "via exchange").await;
    let m = c.message().await;
    assert_eq!(body(&m), "via exchange");
    assert_eq!(m.header("destination"), Some("/exchange/amq.direct/k"));
    // An AMQP publish reaches the STOMP subscriber with its properties.
    let mut msg = Message::new("", "made-by-amqp", Bytes::from_static(b"from amqp"));
    msg.properties.content_type = Some("application/json".into());
    msg.properties.message_id = Some("amqp-1".into());
    v.publish("", msg).unwrap();
    let m = c.message().await;
    assert_eq!(m.header("content-type"), Some("application/json"));
    assert_eq!(m.header("amqp-message-id"), Some("amqp-1"));
    assert_eq!(m.header("destination"), Some("/queue/made-by-amqp"));
    // /amq/queue is never declared.
    c.send(
        &Frame::new(Command::Subscribe)
            .with("destination", "/amq/queue/missing")
            .with("id", "m"),
    )
    .await;
    c.expect_error("Subscription refused").await;
}

#[tokio::test]
async fn temp_queue_reply_to_is_rewritten() {
    let b = Broker::new();
    let mut server = b.connect(Version::V1_2).await;
    server.subscribe("/queue/rpc", "s", "auto").await;
    let mut client = b.connect(Version::V1_2).await;
    client
        .send(
            &Frame::new(Command::Send)
                .with("destination", "/queue/rpc")
                .with("reply-to", "/temp-queue/answers")
                .with_body("question"),
        )
        .await;
    let req = server.message().await;
    let reply_to = req.header("reply-to").unwrap().to_string();
    assert!(reply_to.starts_with("/reply-queue/amq.gen-"), "{reply_to}");
    server.send_to(&reply_to, "answer").await;
    let answer = client.message().await;
    assert_eq!(body(&answer), "answer");
    assert_eq!(answer.header("subscription"), Some("/temp-queue/answers"));
}

#[tokio::test]
async fn heartbeats_both_ways_and_timeout() {
    let b = Broker::with(StompConfig {
        heartbeat_ms: 100,
        ..Default::default()
    });
    let mut c = b.raw();
    c.send(
        &Frame::new(Command::Connect)
            .with("accept-version", "1.2")
            .with("login", "guest")
            .with("passcode", "guest")
            .with("heart-beat", "100,100"),
    )
    .await;
    let f = c.recv().await.unwrap();
    assert_eq!(f.header("heart-beat"), Some("100,100"));
    // The server beats: an EOL arrives without any frame.
    let n = tokio::time::timeout(TIMEOUT, c.io.read_buf(&mut c.buf))
        .await
        .unwrap()
        .unwrap();
    assert!(n > 0 && c.buf.iter().all(|b| *b == b'\n'), "{:?}", c.buf);
    c.buf.clear();
    // Beating keeps us alive well past the tolerance (2 x 100 ms)...
    c.send_raw(b"\n").await;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        c.send_raw(b"\n").await;
    }
    // ...and silence closes.
    c.expect_error("Heart-beat timeout").await;
}

#[tokio::test]
async fn disconnect_receipt_then_close() {
    let b = Broker::new();
    let mut c = b.connect(Version::V1_2).await;
    c.send(&Frame::new(Command::Disconnect).with("receipt", "bye"))
        .await;
    c.expect_receipt("bye").await;
    assert!(c.recv().await.is_none());
}

#[tokio::test]
async fn bad_input_gets_an_error_and_a_close_and_others_keep_working() {
    let b = Broker::with(StompConfig {
        limits: Limits {
            frame_bytes_max: 1024,
            ..Default::default()
        },
        ..Default::default()
    });
    let mut other = b.connect(Version::V1_2).await;
    other.subscribe("/queue/bystander", "s", "auto").await;
    let cases: [(&[u8], &str); 7] = [
        (
            b"SEND\ndestination:/queue/a\nk:a\\tb\n\nx\0",
            "invalid escape",
        ),
        (b"FOO\n\n\0", "unknown STOMP command"),
        (b"SEND\nnocolon\n\n\0", "without ':'"),
        (b"SEND\n\nno destination\0", "Missing destination"),
        (b"SEND\ndestination:/nowhere/a\n\n\0", "Unknown destination"),
        (b"SEND\ncontent-length:5000\n\n", "frame larger than 1024"),
        (b"MESSAGE\n\n\0", "Illegal command"),
    ];
    for (input, want) in cases {
        let mut c = b.connect(Version::V1_2).await;
        c.send_raw(input).await;
        c.expect_error(want).await;
    }
    // No NUL within the limit: an error once the limit is passed.
    let mut c = b.connect(Version::V1_2).await;
    c.send_raw(b"SEND\ndestination:/queue/a\n\n").await;
    c.send_raw(&[b'x'; 500]).await;
    c.quiet(Duration::from_millis(100)).await;
    c.send_raw(&[b'x'; 600]).await;
    c.expect_error("frame larger than 1024").await;
    other.send_to("/queue/bystander", "still here").await;
    assert_eq!(body(&other.message().await), "still here");
}

#[tokio::test]
async fn user_id_must_be_the_login() {
    let b = Broker::new();
    let mut c = b.connect(Version::V1_2).await;
    c.send(
        &Frame::new(Command::Send)
            .with("destination", "/queue/u")
            .with("user-id", "someone-else"),
    )
    .await;
    c.expect_error("Invalid header").await;
}

/// A subscriber that does not read: deliveries stop at the output high-water mark and the
/// ack-auto window, the rest waits in the queue; all of it arrives once it reads.
#[tokio::test]
async fn slow_reader_leaves_messages_in_the_queue() {
    let b = Broker::new();
    let mut c = b.connect(Version::V1_2).await;
    c.subscribe("/queue/slow", "s", "auto").await;
    let v = b.ctx.engine.vhost("/").unwrap();
    let body = Bytes::from(vec![b'x'; 1024]);
    const N: usize = 5000;
    for _ in 0..N {
        v.publish("", Message::new("", "slow", body.clone()))
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let q = v.queue("slow", 0).unwrap();
    // At most ~1 MiB in the pipe, ~1 MiB of output and the 1000-message window are out.
    assert!(q.message_count() > 1000, "only {} left", q.message_count());
    let mut got = 0;
    while got < N {
        let m = c.message().await;
        assert_eq!(m.body.len(), 1024);
        got += 1;
    }
    assert_eq!(q.message_count(), 0);
}

/// SEND to /queue/x declares the queue once per connection; when the queue is deleted in
/// between, the next SEND declares it again, so that message is queued rather than dropped as
/// unroutable.
#[tokio::test]
async fn send_declares_its_queue_again_after_a_delete() {
    let b = Broker::new();
    let v = b.ctx.engine.vhost("/").unwrap();
    let mut c = b.connect(Version::V1_2).await;
    c.send_to("/queue/redeclared", "one").await;
    c.send_to("/queue/redeclared", "two").await;
    let first = v.queue("redeclared", 0).unwrap();
    assert_eq!(first.message_count(), 2);

    assert_eq!(v.delete_queue("redeclared", false, false, 0).unwrap(), 2);
    assert!(v.queue("redeclared", 0).is_err());
    c.send_to("/queue/redeclared", "three").await;
    let again = v
        .queue("redeclared", 0)
        .expect("declared again by the SEND");
    assert!(!Arc::ptr_eq(&first, &again));
    assert_eq!(again.message_count(), 1);
    c.subscribe("/queue/redeclared", "r", "auto").await;
    assert_eq!(body(&c.message().await), "three");
}
