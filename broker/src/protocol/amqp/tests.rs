//! `serve` over an in-memory duplex pipe with a real engine, speaking raw frames through the
//! codec: every exchange is what a client library would see on the wire.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{
    basic, channel, confirm, connection, exchange, queue, tx, AMQPClass, BasicProperties,
};
use amq_protocol_types::{AMQPValue, FieldTable, LongString};
use bytes::{Bytes, BytesMut};
use codecs::amqp::{self as codec, ContentHeader, Frame, Limits, ProtocolHeader};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{serve, AmqpConfig, AmqpContext};
use crate::engine::{Engine, EngineConfig, User};

const TIMEOUT: Duration = Duration::from_secs(5);

struct Broker {
    ctx: Arc<AmqpContext>,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn new() -> Broker {
        Self::with(EngineConfig::default(), AmqpConfig::default())
    }

    fn with(mut engine: EngineConfig, config: AmqpConfig) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        engine.data_dir = dir.path().to_path_buf();
        engine.fsync = false;
        let engine = Engine::open(engine).unwrap();
        Broker {
            ctx: Arc::new(AmqpContext { engine, config }),
            _dir: dir,
        }
    }

    fn connect_from(&self, peer: &str) -> (Client, JoinHandle<()>, CancellationToken) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let token = CancellationToken::new();
        let peer: SocketAddr = peer.parse().unwrap();
        let task = tokio::spawn(serve(server, peer, self.ctx.clone(), token.clone()));
        (Client::new(client), task, token)
    }

    fn connect(&self) -> Client {
        self.connect_from("127.0.0.1:40000").0
    }

    /// A connection through the handshake, with channel 1 open.
    async fn open(&self) -> Client {
        let mut c = self.connect();
        c.handshake("guest", "guest", "/").await;
        c.open_channel(1).await;
        c
    }
}

struct Client {
    io: DuplexStream,
    buf: BytesMut,
}

fn m(class: AMQPClass) -> Frame {
    Frame::Method(0, class)
}

impl Client {
    fn new(io: DuplexStream) -> Client {
        Client {
            io,
            buf: BytesMut::new(),
        }
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        codec::encode(&frame, &mut out);
        self.send_raw(&out).await;
    }

    async fn method(&mut self, ch: u16, class: AMQPClass) {
        self.send(Frame::Method(ch, class)).await;
    }

    /// The next frame, heartbeats skipped. `None` on EOF.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            let limits = Limits { frame_bytes_max: 0 };
            if let Some(f) = codec::decode(&mut self.buf, &limits).unwrap() {
                if matches!(f, Frame::Heartbeat(_)) {
                    continue;
                }
                return Some(f);
            }
            let n = tokio::time::timeout(TIMEOUT, self.io.read_buf(&mut self.buf))
                .await
                .expect("timed out waiting for a frame")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    async fn expect(&mut self) -> (u16, AMQPClass) {
        match self.next().await {
            Some(Frame::Method(ch, m)) => (ch, m),
            other => panic!("expected a method, got {other:?}"),
        }
    }

    /// Reads a content-bearing method with its header and body.
    async fn expect_content(&mut self) -> (AMQPClass, BasicProperties, Vec<u8>) {
        let (_, method) = self.expect().await;
        let Some(Frame::Header(_, h)) = self.next().await else {
            panic!("expected a content header after {method:?}")
        };
        let mut body = Vec::new();
        while (body.len() as u64) < h.body_size {
            match self.next().await {
                Some(Frame::Body(_, b)) => body.extend_from_slice(&b),
                other => panic!("expected a body frame, got {other:?}"),
            }
        }
        (method, h.properties, body)
    }

    async fn expect_eof(&mut self) {
        if let Some(f) = self.next().await {
            panic!("expected EOF, got {f:?}");
        }
    }

    async fn expect_connection_close(&mut self) -> connection::Close {
        match self.expect().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => c,
            other => panic!("expected connection.close, got {other:?}"),
        }
    }

    async fn expect_channel_close(&mut self, ch: u16) -> channel::Close {
        match self.expect().await {
            (c, AMQPClass::Channel(channel::AMQPMethod::Close(close))) if c == ch => close,
            other => panic!("expected channel.close on {ch}, got {other:?}"),
        }
    }

    async fn handshake_caps(&mut self, user: &str, pass: &str, vhost: &str, heartbeat: u16) {
        self.send(Frame::ProtocolHeader(ProtocolHeader::AMQP_0_9_1))
            .await;
        let (_, start) = self.expect().await;
        assert!(matches!(
            start,
            AMQPClass::Connection(connection::AMQPMethod::Start(_))
        ));
        let mut caps = FieldTable::default();
        for c in ["connection.blocked", "consumer_cancel_notify"] {
            caps.insert(c.into(), AMQPValue::Boolean(true));
        }
        let mut props = FieldTable::default();
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        let response = format!("\0{user}\0{pass}");
        self.send(m(AMQPClass::Connection(connection::AMQPMethod::StartOk(
            connection::StartOk {
                client_properties: props,
                mechanism: "PLAIN".into(),
                response: LongString::from(response.as_bytes()),
                locale: "en_US".into(),
            },
        ))))
        .await;
        let (_, tune) = self.expect().await;
        let AMQPClass::Connection(connection::AMQPMethod::Tune(t)) = tune else {
            // A refused login: leave the close for the caller.
            self.buf = {
                let mut b = BytesMut::new();
                codec::encode(&Frame::Method(0, tune), &mut b);
                b.extend_from_slice(&self.buf);
                b
            };
            return;
        };
        self.send(m(AMQPClass::Connection(connection::AMQPMethod::TuneOk(
            connection::TuneOk {
                channel_max: t.channel_max,
                frame_max: t.frame_max,
                heartbeat,
            },
        ))))
        .await;
        self.send(m(AMQPClass::Connection(connection::AMQPMethod::Open(
            connection::Open {
                virtual_host: vhost.into(),
            },
        ))))
        .await;
    }

    async fn handshake(&mut self, user: &str, pass: &str, vhost: &str) {
        self.handshake_caps(user, pass, vhost, 0).await;
        let (_, ok) = self.expect().await;
        assert!(
            matches!(ok, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))),
            "{ok:?}"
        );
    }

    async fn open_channel(&mut self, ch: u16) {
        self.method(
            ch,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )
        .await;
        assert_eq!(
            self.expect().await,
            (
                ch,
                AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {}))
            )
        );
    }

    async fn rpc(&mut self, ch: u16, class: AMQPClass) -> AMQPClass {
        self.method(ch, class).await;
        let (got_ch, reply) = self.expect().await;
        assert_eq!(got_ch, ch, "{reply:?}");
        reply
    }

    async fn declare_queue(&mut self, ch: u16, name: &str, durable: bool) -> queue::DeclareOk {
        match self
            .rpc(
                ch,
                AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                    queue: name.into(),
                    durable,
                    ..Default::default()
                })),
            )
            .await
        {
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => ok,
            other => panic!("expected declare-ok, got {other:?}"),
        }
    }

    async fn publish_with(
        &mut self,
        ch: u16,
        p: basic::Publish,
        props: BasicProperties,
        body: &[u8],
    ) {
        let mut out = BytesMut::new();
        codec::encode(
            &Frame::Method(ch, AMQPClass::Basic(basic::AMQPMethod::Publish(p))),
            &mut out,
        );
        codec::encode(
            &Frame::Header(
                ch,
                ContentHeader {
                    class_id: 60,
                    body_size: body.len() as u64,
                    properties: props,
                },
            ),
            &mut out,
        );
        for part in body.chunks(1000) {
            codec::encode(&Frame::Body(ch, Bytes::copy_from_slice(part)), &mut out);
        }
        self.send_raw(&out).await;
    }

    async fn publish(&mut self, ch: u16, exchange: &str, key: &str, body: &[u8]) {
        self.publish_with(
            ch,
            basic::Publish {
                exchange: exchange.into(),
                routing_key: key.into(),
                mandatory: false,
                immediate: false,
            },
            BasicProperties::default(),
            body,
        )
        .await;
    }

    async fn get(&mut self, ch: u16, q: &str, no_ack: bool) -> Option<(basic::GetOk, Vec<u8>)> {
        self.method(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: q.into(),
                no_ack,
            })),
        )
        .await;
        let (_, m) = self.expect().await;
        match m {
            AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_)) => None,
            AMQPClass::Basic(basic::AMQPMethod::GetOk(ok)) => {
                let Some(Frame::Header(_, h)) = self.next().await else {
                    panic!("no header")
                };
                let mut body = Vec::new();
                while (body.len() as u64) < h.body_size {
                    let Some(Frame::Body(_, b)) = self.next().await else {
                        panic!("no body")
                    };
                    body.extend_from_slice(&b);
                }
                Some((ok, body))
            }
            other => panic!("expected get-ok/empty, got {other:?}"),
        }
    }

    async fn consume(&mut self, ch: u16, q: &str, tag: &str, no_ack: bool) -> String {
        match self
            .rpc(
                ch,
                AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                    queue: q.into(),
                    consumer_tag: tag.into(),
                    no_ack,
                    ..Default::default()
                })),
            )
            .await
        {
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(ok)) => ok.consumer_tag.to_string(),
            other => panic!("expected consume-ok, got {other:?}"),
        }
    }

    async fn expect_deliver(&mut self) -> (basic::Deliver, BasicProperties, Vec<u8>) {
        let (method, props, body) = self.expect_content().await;
        let AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) = method else {
            panic!("expected basic.deliver, got {method:?}")
        };
        (d, props, body)
    }

    async fn ack(&mut self, ch: u16, tag: u64, multiple: bool) {
        self.method(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: tag,
                multiple,
            })),
        )
        .await;
    }

    async fn close(&mut self) {
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        )
        .await;
        assert!(matches!(
            self.expect().await,
            (0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)))
        ));
        self.expect_eof().await;
    }
}

#[tokio::test]
async fn handshake_announces_rabbitmq_capabilities_and_closes_cleanly() {
    let b = Broker::new();
    let mut c = b.connect();
    c.send_raw(b"AMQP\x00\x00\x09\x01").await;
    let (ch, start) = c.expect().await;
    assert_eq!(ch, 0);
    let AMQPClass::Connection(connection::AMQPMethod::Start(s)) = start else {
        panic!()
    };
    assert_eq!((s.version_major, s.version_minor), (0, 9));
    assert_eq!(s.mechanisms.as_bytes(), b"PLAIN AMQPLAIN");
    assert_eq!(s.locales.as_bytes(), b"en_US");
    let props = s.server_properties.inner();
    assert_eq!(
        props.get("product"),
        Some(&AMQPValue::LongString("Wharf".into()))
    );
    let Some(AMQPValue::FieldTable(caps)) = props.get("capabilities") else {
        panic!()
    };
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
        assert_eq!(
            caps.inner().get(cap),
            Some(&AMQPValue::Boolean(true)),
            "{cap}"
        );
    }
    // Rest of the handshake on a fresh connection, then a clean close.
    let mut c = b.connect();
    c.handshake("guest", "guest", "/").await;
    c.close().await;
}

#[tokio::test]
async fn wrong_protocol_header_gets_ours_and_a_close() {
    let b = Broker::new();
    let mut c = b.connect();
    c.send_raw(b"AMQP\x01\x01\x00\x0a").await;
    let mut got = [0u8; 8];
    tokio::time::timeout(TIMEOUT, c.io.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"AMQP\x00\x00\x09\x01");
    c.expect_eof().await;
    let mut c = b.connect();
    c.send_raw(b"GET / HTTP/1.1\r\n\r\n").await;
    let mut got = [0u8; 8];
    tokio::time::timeout(TIMEOUT, c.io.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"AMQP\x00\x00\x09\x01");
}

#[tokio::test]
async fn bad_login_is_refused_with_rabbitmq_text() {
    let b = Broker::new();
    let mut c = b.connect();
    c.handshake_caps("guest", "nope", "/", 0).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, 403);
    assert_eq!(
        close.reply_text.as_str(),
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
    );
    // guest from another host: refused the same way.
    let (mut c, _, _) = b.connect_from("10.1.2.3:5000");
    c.handshake_caps("guest", "guest", "/", 0).await;
    assert_eq!(c.expect_connection_close().await.reply_code, 403);
}

#[tokio::test]
async fn amqplain_and_secure_round_trip() {
    let b = Broker::new();
    let mut c = b.connect();
    c.send(Frame::ProtocolHeader(ProtocolHeader::AMQP_0_9_1))
        .await;
    c.expect().await;
    // Empty response: the server sends connection.secure, the client answers secure-ok.
    c.send(m(AMQPClass::Connection(connection::AMQPMethod::StartOk(
        connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: "AMQPLAIN".into(),
            response: LongString::from(""),
            locale: "en_US".into(),
        },
    ))))
    .await;
    assert!(matches!(
        c.expect().await.1,
        AMQPClass::Connection(connection::AMQPMethod::Secure(_))
    ));
    let mut r = Vec::new();
    for (k, v) in [("LOGIN", "guest"), ("PASSWORD", "guest")] {
        r.push(k.len() as u8);
        r.extend_from_slice(k.as_bytes());
        r.push(b'S');
        r.extend_from_slice(&(v.len() as u32).to_be_bytes());
        r.extend_from_slice(v.as_bytes());
    }
    c.send(m(AMQPClass::Connection(connection::AMQPMethod::SecureOk(
        connection::SecureOk {
            response: LongString::from(r),
        },
    ))))
    .await;
    assert!(matches!(
        c.expect().await.1,
        AMQPClass::Connection(connection::AMQPMethod::Tune(_))
    ));
}

#[tokio::test]
async fn unknown_vhost_and_bad_tune_are_530() {
    let b = Broker::new();
    let mut c = b.connect();
    c.handshake_caps("guest", "guest", "nowhere", 0).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, 530);
    assert_eq!(
        close.reply_text.as_str(),
        "NOT_ALLOWED - vhost nowhere not found"
    );
    assert_eq!((close.class_id, close.method_id), (10, 40));

    let mut c = b.connect();
    c.send(Frame::ProtocolHeader(ProtocolHeader::AMQP_0_9_1))
        .await;
    c.expect().await;
    c.send(m(AMQPClass::Connection(connection::AMQPMethod::StartOk(
        connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: "PLAIN".into(),
            response: LongString::from("\0guest\0guest"),
            locale: "en_US".into(),
        },
    ))))
    .await;
    c.expect().await;
    c.send(m(AMQPClass::Connection(connection::AMQPMethod::TuneOk(
        connection::TuneOk {
            channel_max: 10,
            frame_max: 1024,
            heartbeat: 0,
        },
    ))))
    .await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, 530);
    assert!(close
        .reply_text
        .as_str()
        .contains("frame_max = 1024 is lower"));
}

#[tokio::test]
async fn publish_consume_ack_round_trip_keeps_properties() {
    let b = Broker::new();
    let mut c = b.open().await;
    let ok = c.declare_queue(1, "q1", false).await;
    assert_eq!(ok.queue.as_str(), "q1");
    let mut headers = FieldTable::default();
    headers.insert("h".into(), AMQPValue::LongString("v".into()));
    headers.insert("n".into(), AMQPValue::LongLongInt(-7));
    let props = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_headers(headers)
        .with_delivery_mode(1)
        .with_priority(3)
        .with_correlation_id("corr".into())
        .with_message_id("m1".into())
        .with_timestamp(1_700_000_000)
        .with_app_id("test".into());
    let body = vec![b'x'; 300_000]; // spans many frames both ways
    c.publish_with(
        1,
        basic::Publish {
            exchange: "".into(),
            routing_key: "q1".into(),
            mandatory: false,
            immediate: false,
        },
        props.clone(),
        &body,
    )
    .await;
    let tag = c.consume(1, "q1", "", false).await;
    assert!(tag.starts_with("amq.ctag-"), "{tag}");
    let (d, got_props, got_body) = c.expect_deliver().await;
    assert_eq!(d.consumer_tag.as_str(), tag);
    assert_eq!(d.delivery_tag, 1);
    assert!(!d.redelivered);
    assert_eq!(d.routing_key.as_str(), "q1");
    assert_eq!(got_props, props);
    assert_eq!(got_body, body);
    c.ack(1, 1, false).await;
    // A second ack of the same tag is a channel error.
    c.ack(1, 1, false).await;
    let close = c.expect_channel_close(1).await;
    assert_eq!(close.reply_code, 406);
    assert_eq!(
        close.reply_text.as_str(),
        "PRECONDITION_FAILED - unknown delivery tag 1"
    );
    assert_eq!((close.class_id, close.method_id), (60, 80));
    // Frames on the closing channel are discarded until close-ok.
    c.publish(1, "", "q1", b"dropped").await;
    c.method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    )
    .await;
    c.open_channel(1).await;
    assert!(
        c.get(1, "q1", true).await.is_none(),
        "acked and nothing new"
    );
    c.close().await;
}

#[tokio::test]
async fn get_nack_requeue_and_multiple_ack() {
    let b = Broker::new();
    let mut c = b.open().await;
    c.declare_queue(1, "q", false).await;
    for i in 0..3u8 {
        c.publish(1, "", "q", &[i]).await;
    }
    let (ok, body) = c.get(1, "q", false).await.unwrap();
    assert_eq!((ok.delivery_tag, ok.message_count, body), (1, 2, vec![0]));
    c.method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
            delivery_tag: 1,
            multiple: false,
            requeue: true,
        })),
    )
    .await;
    let (ok, body) = c.get(1, "q", false).await.unwrap();
    assert!(ok.redelivered);
    assert_eq!((ok.delivery_tag, body), (2, vec![0]));
    let (ok, _) = c.get(1, "q", false).await.unwrap();
    assert_eq!(ok.delivery_tag, 3);
    c.ack(1, 3, true).await; // settles 2 and 3
    let (ok, body) = c.get(1, "q", false).await.unwrap();
    assert_eq!((ok.delivery_tag, body), (4, vec![2]));
    c.ack(1, 0, true).await; // tag 0 + multiple: everything
    assert!(c.get(1, "q", false).await.is_none());
}

#[tokio::test]
async fn confirms_ack_in_order_and_return_unroutable_mandatory() {
    let b = Broker::new();
    let mut c = b.open().await;
    c.declare_queue(1, "dq", true).await;
    let r = c
        .rpc(
            1,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
        )
        .await;
    assert!(matches!(
        r,
        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))
    ));
    let persistent = BasicProperties::default().with_delivery_mode(2);
    for _ in 0..3 {
        c.publish_with(
            1,
            basic::Publish {
                exchange: "".into(),
                routing_key: "dq".into(),
                mandatory: false,
                immediate: false,
            },
            persistent.clone(),
            b"durable",
        )
        .await;
    }
    let mut confirmed = 0;
    while confirmed < 3 {
        let (_, m) = c.expect().await;
        let AMQPClass::Basic(basic::AMQPMethod::Ack(a)) = m else {
            panic!("expected basic.ack, got {m:?}")
        };
        assert!(a.delivery_tag > confirmed);
        confirmed = a.delivery_tag;
    }
    assert_eq!(confirmed, 3);
    // Mandatory and unroutable: basic.return, then the ack.
    c.publish_with(
        1,
        basic::Publish {
            exchange: "".into(),
            routing_key: "nowhere".into(),
            mandatory: true,
            immediate: false,
        },
        BasicProperties::default(),
        b"lost",
    )
    .await;
    let (m, _, body) = c.expect_content().await;
    let AMQPClass::Basic(basic::AMQPMethod::Return(r)) = m else {
        panic!("{m:?}")
    };
    assert_eq!((r.reply_code, r.reply_text.as_str()), (312, "NO_ROUTE"));
    assert_eq!(body, b"lost");
    assert_eq!(
        c.expect().await.1,
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: 4,
            multiple: false
        }))
    );
    // tx on a confirm channel is refused.
    c.method(1, AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})))
        .await;
    assert_eq!(c.expect_channel_close(1).await.reply_code, 406);
}

#[tokio::test]
async fn transactions_commit_and_rollback() {
    let b = Broker::new();
    let mut c = b.open().await;
    c.declare_queue(1, "tq", true).await;
    c.rpc(1, AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})))
        .await;
    c.publish(1, "", "tq", b"rolled back").await;
    assert!(matches!(
        c.rpc(1, AMQPClass::Tx(tx::AMQPMethod::Rollback(tx::Rollback {})))
            .await,
        AMQPClass::Tx(tx::AMQPMethod::RollbackOk(_))
    ));
    c.open_channel(2).await;
    assert!(c.get(2, "tq", true).await.is_none());
    c.publish(1, "", "tq", b"committed").await;
    assert!(c.get(2, "tq", true).await.is_none(), "not before commit");
    assert!(matches!(
        c.rpc(1, AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {})))
            .await,
        AMQPClass::Tx(tx::AMQPMethod::CommitOk(_))
    ));
    assert_eq!(c.get(2, "tq", true).await.unwrap().1, b"committed");
    // An ack inside a transaction takes effect at commit; a rollback restores it.
    c.publish(2, "", "tq", b"m").await;
    let (ok, _) = c.get(1, "tq", false).await.unwrap();
    c.ack(1, ok.delivery_tag, false).await;
    c.rpc(1, AMQPClass::Tx(tx::AMQPMethod::Rollback(tx::Rollback {})))
        .await;
    c.ack(1, ok.delivery_tag, false).await;
    c.rpc(1, AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {})))
        .await;
    assert!(c.get(2, "tq", true).await.is_none());
    // confirm.select on a tx channel is refused.
    c.method(
        1,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        })),
    )
    .await;
    let close = c.expect_channel_close(1).await;
    assert_eq!(close.reply_code, 406);
    assert_eq!(
        close.reply_text.as_str(),
        "PRECONDITION_FAILED - cannot switch from tx to confirm mode"
    );
}

#[tokio::test]
async fn prefetch_limits_unacked_deliveries() {
    let b = Broker::new();
    let mut c = b.open().await;
    c.declare_queue(1, "pq", false).await;
    for i in 0..3u8 {
        c.publish(1, "", "pq", &[i]).await;
    }
    c.rpc(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 1,
            global: false,
        })),
    )
    .await;
    c.consume(1, "pq", "c1", false).await;
    let (d, _, body) = c.expect_deliver().await;
    assert_eq!(body, vec![0]);
    // Nothing more until the ack: a passive declare answers first.
    let ok = match c
        .rpc(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "pq".into(),
                passive: true,
                ..Default::default()
            })),
        )
        .await
    {
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => ok,
        other => panic!("{other:?}"),
    };
    assert_eq!((ok.message_count, ok.consumer_count), (2, 1));
    c.ack(1, d.delivery_tag, false).await;
    let (_, _, body) = c.expect_deliver().await;
    assert_eq!(body, vec![1]);
}

#[tokio::test]
async fn protocol_violations_get_rabbitmq_codes() {
    let b = Broker::new();

    // Oversized frame: 501, decided from the header alone.
    let mut c = b.open().await;
    c.send_raw(&[3, 0, 1, 0, 0x10, 0, 0]).await;
    assert_eq!(c.expect_connection_close().await.reply_code, 501);

    // Bad frame end: 501.
    let mut c = b.open().await;
    c.send_raw(&[8, 0, 0, 0, 0, 0, 0, 0xAB]).await;
    assert_eq!(c.expect_connection_close().await.reply_code, 501);

    // Content body without a header: 505.
    let mut c = b.open().await;
    c.send(Frame::Body(1, Bytes::from_static(b"x"))).await;
    assert_eq!(c.expect_connection_close().await.reply_code, 505);

    // A method on a channel never opened: 504.
    let mut c = b.open().await;
    c.method(
        7,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos::default())),
    )
    .await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, 504);
    assert_eq!(
        close.reply_text.as_str(),
        "CHANNEL_ERROR - expected 'channel.open'"
    );

    // channel.open twice: 504.
    let mut c = b.open().await;
    c.method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    )
    .await;
    assert_eq!(c.expect_connection_close().await.reply_code, 504);

    // Unknown exchange type: 503.
    let mut c = b.open().await;
    c.method(
        1,
        AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
            exchange: "x".into(),
            kind: "foo".into(),
            ..Default::default()
        })),
    )
    .await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, 503);
    assert_eq!(
        close.reply_text.as_str(),
        "COMMAND_INVALID - invalid exchange type 'foo'"
    );
    assert_eq!((close.class_id, close.method_id), (40, 10));

    // immediate=true: 540.
    let mut c = b.open().await;
    c.method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: true,
        })),
    )
    .await;
    let close = c.expect_connection_close().await;
    assert_eq!(
        (close.reply_code, close.reply_text.as_str()),
        (540, "NOT_IMPLEMENTED - immediate=true")
    );

    // Unknown method id: 540.
    let mut c = b.open().await;
    c.send_raw(&[1, 0, 1, 0, 0, 0, 4, 0, 60, 0, 99, 0xCE]).await;
    assert_eq!(c.expect_connection_close().await.reply_code, 540);

    // Reused consumer tag: 530.
    let mut c = b.open().await;
    c.declare_queue(1, "q", false).await;
    c.consume(1, "q", "t", true).await;
    c.method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "q".into(),
            consumer_tag: "t".into(),
            ..Default::default()
        })),
    )
    .await;
    let close = c.expect_connection_close().await;
    assert_eq!(
        (close.reply_code, close.reply_text.as_str()),
        (530, "NOT_ALLOWED - attempt to reuse consumer tag 't'")
    );
    // After our close, the client's close-ok ends the connection.
    c.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
    )
    .await;
    c.expect_eof().await;
}

#[tokio::test]
async fn channel_errors_close_only_the_channel() {
    let b = Broker::new();
    let mut c = b.open().await;
    c.open_channel(2).await;
    c.method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "missing".into(),
            passive: true,
            ..Default::default()
        })),
    )
    .await;
    let close = c.expect_channel_close(1).await;
    assert_eq!(
        (close.reply_code, close.reply_text.as_str()),
        (404, "NOT_FOUND - no queue 'missing' in vhost '/'")
    );
    assert_eq!((close.class_id, close.method_id), (50, 10));
    // Channel 2 works on.
    c.declare_queue(2, "ok", false).await;
    // Publishing to a missing exchange: 404 on that channel.
    c.publish(2, "no-such-exchange", "k", b"x").await;
    let close = c.expect_channel_close(2).await;
    assert_eq!(close.reply_code, 404);
    assert_eq!((close.class_id, close.method_id), (60, 40));
    // Empty queue name without a declared queue: 404.
    c.method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    )
    .await;
    c.open_channel(1).await;
    c.method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
            queue: "".into(),
            nowait: false,
        })),
    )
    .await;
    let close = c.expect_channel_close(1).await;
    assert_eq!(
        close.reply_text.as_str(),
        "NOT_FOUND - no previously declared queue"
    );
}

#[tokio::test]
async fn empty_queue_name_means_the_last_declared_one() {
    let b = Broker::new();
    let mut c = b.open().await;
    let ok = c.declare_queue(1, "", false).await;
    assert!(ok.queue.as_str().starts_with("amq.gen-"));
    c.rpc(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
            queue: "".into(),
            exchange: "amq.direct".into(),
            routing_key: "".into(),
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )
    .await;
    // The routing key defaulted to the queue's name.
    c.publish(1, "amq.direct", ok.queue.as_str(), b"via shortcut")
        .await;
    assert_eq!(c.get(1, "", true).await.unwrap().1, b"via shortcut");
}

#[tokio::test]
async fn direct_reply_to() {
    let b = Broker::new();
    let mut c = b.open().await;
    c.open_channel(2).await;
    // Without no-ack: refused.
    c.method(
        2,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "amq.rabbitmq.reply-to".into(),
            ..Default::default()
        })),
    )
    .await;
    assert_eq!(c.expect_channel_close(2).await.reply_code, 406);
    c.method(
        2,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    )
    .await;
    let tag = c.consume(1, "amq.rabbitmq.reply-to", "", true).await;
    c.declare_queue(1, "rpc", false).await;
    c.publish_with(
        1,
        basic::Publish {
            exchange: "".into(),
            routing_key: "rpc".into(),
            mandatory: false,
            immediate: false,
        },
        BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
        b"request",
    )
    .await;
    c.open_channel(2).await;
    let (req, _) = c.get(2, "rpc", true).await.unwrap();
    let _ = req;
    // The server reads reply_to from the request and answers there.
    c.method(
        2,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "rpc".into(),
            no_ack: true,
        })),
    )
    .await;
    assert!(matches!(
        c.expect().await.1,
        AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_))
    ));
    // Publish again to read the rewritten reply_to from a get.
    c.publish_with(
        1,
        basic::Publish {
            exchange: "".into(),
            routing_key: "rpc".into(),
            mandatory: false,
            immediate: false,
        },
        BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
        b"request",
    )
    .await;
    c.method(
        2,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "rpc".into(),
            no_ack: true,
        })),
    )
    .await;
    let (_, props, _) = c.expect_content().await;
    let reply_to = props.reply_to().clone().unwrap();
    assert!(reply_to.as_str().starts_with("amq.rabbitmq.reply-to."));
    c.publish(2, "", reply_to.as_str(), b"response").await;
    let (d, _, body) = c.expect_deliver().await;
    assert_eq!(d.consumer_tag.as_str(), tag);
    assert_eq!(body, b"response");
}

#[tokio::test]
async fn shutdown_sends_320_and_waits_for_close_ok() {
    let b = Broker::new();
    let (mut c, task, token) = b.connect_from("127.0.0.1:40001");
    c.handshake("guest", "guest", "/").await;
    token.cancel();
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, 320);
    assert_eq!(
        close.reply_text.as_str(),
        "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
    );
    c.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
    )
    .await;
    tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn heartbeats_are_sent_and_silence_closes() {
    let b = Broker::new();
    let mut c = b.connect();
    c.handshake_caps("guest", "guest", "/", 1).await;
    c.expect().await; // open-ok
                      // A heartbeat arrives within the interval.
    let mut saw_heartbeat = false;
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until && !saw_heartbeat {
        let limits = Limits { frame_bytes_max: 0 };
        if let Some(f) = codec::decode(&mut c.buf, &limits).unwrap() {
            saw_heartbeat = matches!(f, Frame::Heartbeat(0));
            continue;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), c.io.read_buf(&mut c.buf)).await;
    }
    assert!(saw_heartbeat);
    // We send nothing: after two intervals the server hangs up.
    let eof = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match c.io.read_buf(&mut c.buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => c.buf.clear(),
            }
        }
    })
    .await;
    assert!(eof.is_ok(), "server kept a silent connection");
}

#[tokio::test]
async fn memory_alarm_blocks_publishers() {
    let b = Broker::with(
        EngineConfig {
            memory_high_watermark_bytes: 10_000,
            ..Default::default()
        },
        AmqpConfig::default(),
    );
    let mut c = b.connect();
    c.handshake("guest", "guest", "/").await;
    c.open_channel(1).await;
    c.declare_queue(1, "big", false).await;
    c.publish(1, "", "big", &[0u8; 20_000]).await;
    assert!(matches!(
        c.expect().await,
        (0, AMQPClass::Connection(connection::AMQPMethod::Blocked(_)))
    ));
    // The next publish is held; the purge behind it waits with it.
    c.publish(1, "", "big", b"held").await;
    c.method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
            queue: "big".into(),
            nowait: false,
        })),
    )
    .await;
    // Another connection frees the memory (it is told about the alarm when it opens).
    let mut other = b.connect();
    other.handshake("guest", "guest", "/").await;
    assert!(matches!(
        other.expect().await,
        (0, AMQPClass::Connection(connection::AMQPMethod::Blocked(_)))
    ));
    other.open_channel(1).await;
    other
        .rpc(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
                queue: "big".into(),
                nowait: false,
            })),
        )
        .await;
    assert!(matches!(
        c.expect().await,
        (
            0,
            AMQPClass::Connection(connection::AMQPMethod::Unblocked(_))
        )
    ));
    // The held publish went in, then the purge removed it.
    let reply = c.expect().await.1;
    assert_eq!(
        reply,
        AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
            message_count: 1
        }))
    );
}

#[tokio::test]
async fn queue_delete_cancels_consumers_and_exclusive_queues_die_with_the_connection() {
    let b = Broker::new();
    let mut c = b.open().await;
    c.declare_queue(1, "gone", false).await;
    c.consume(1, "gone", "ct", false).await;
    c.open_channel(2).await;
    c.rpc(
        2,
        AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: "gone".into(),
            ..Default::default()
        })),
    )
    .await;
    assert_eq!(
        c.expect().await,
        (
            1,
            AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: "ct".into(),
                nowait: true
            }))
        )
    );
    c.rpc(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "mine".into(),
            exclusive: true,
            ..Default::default()
        })),
    )
    .await;
    // Another connection cannot use it.
    let mut other = b.open().await;
    other
        .method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "mine".into(),
                passive: true,
                ..Default::default()
            })),
        )
        .await;
    assert_eq!(other.expect_channel_close(1).await.reply_code, 405);
    c.close().await;
    let vhost = b.ctx.engine.vhost("/").unwrap();
    assert!(vhost.queue("mine", 0).is_err(), "exclusive queue deleted");
}

#[tokio::test]
async fn closing_a_channel_requeues_its_unacked_messages() {
    let b = Broker::new();
    let mut c = b.open().await;
    c.declare_queue(1, "rq", false).await;
    c.publish(1, "", "rq", b"one").await;
    c.consume(1, "rq", "", false).await;
    c.expect_deliver().await;
    c.rpc(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: 200,
            reply_text: "".into(),
            class_id: 0,
            method_id: 0,
        })),
    )
    .await;
    c.open_channel(1).await;
    let (ok, body) = c.get(1, "rq", true).await.unwrap();
    assert!(ok.redelivered);
    assert_eq!(body, b"one");
}

#[tokio::test]
async fn recover_and_flow() {
    let b = Broker::new();
    let mut c = b.open().await;
    c.declare_queue(1, "fq", false).await;
    c.publish(1, "", "fq", b"a").await;
    c.consume(1, "fq", "c", false).await;
    let (d, _, _) = c.expect_deliver().await;
    assert!(!d.redelivered);
    let r = c
        .rpc(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Recover(basic::Recover { requeue: true })),
        )
        .await;
    // The redelivery may come before or after recover-ok.
    let d = match r {
        AMQPClass::Basic(basic::AMQPMethod::RecoverOk(_)) => c.expect_deliver().await.0,
        AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) => {
            // Header and body, then recover-ok.
            c.next().await;
            c.next().await;
            assert!(matches!(
                c.expect().await.1,
                AMQPClass::Basic(basic::AMQPMethod::RecoverOk(_))
            ));
            d
        }
        other => panic!("{other:?}"),
    };
    assert!(d.redelivered);
    c.ack(1, d.delivery_tag, false).await;
    // Flow off: deliveries pause.
    let r = c
        .rpc(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active: false })),
        )
        .await;
    assert_eq!(
        r,
        AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
            active: false
        }))
    );
    c.publish(1, "", "fq", b"b").await;
    c.open_channel(2).await;
    let ok = c.declare_queue(2, "fq", false).await;
    assert_eq!(ok.message_count, 1, "held while flow is off");
    c.rpc(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active: true })),
    )
    .await;
    let (_, _, body) = c.expect_deliver().await;
    assert_eq!(body, b"b");
}

#[tokio::test]
async fn users_limited_to_some_vhosts() {
    let b = Broker::with(
        EngineConfig {
            vhosts: vec!["/".into(), "other".into()],
            users: vec![User {
                name: "u".into(),
                password: "p".into(),
                loopback_only: false,
                vhosts: vec!["other".into()],
                access_key_id: String::new(),
                secret_access_key: String::new(),
            }],
            ..Default::default()
        },
        AmqpConfig::default(),
    );
    let (mut c, _, _) = b.connect_from("192.0.2.1:1234");
    c.handshake("u", "p", "other").await;
    let (mut c, _, _) = b.connect_from("192.0.2.1:1235");
    c.handshake_caps("u", "p", "/", 0).await;
    let close = c.expect_connection_close().await;
    assert_eq!(
        close.reply_text.as_str(),
        "NOT_ALLOWED - access to vhost '/' refused for user 'u'"
    );
}

#[tokio::test]
async fn garbage_after_handshake_never_panics() {
    let b = Broker::new();
    let mut seed: u64 = 42;
    for round in 0..24 {
        let mut c = b.open().await;
        let mut junk = Vec::new();
        for _ in 0..(64 + round * 8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            junk.push(seed as u8);
        }
        // A plausible frame type up front so some rounds reach the method parser.
        junk[0] = [1u8, 2, 3, 8][round % 4];
        junk[1] = 0;
        junk[2] = 1;
        c.send_raw(&junk).await;
        // Whatever happens, the session answers or hangs up; it does not die silently mid-way.
        let _ = tokio::time::timeout(Duration::from_millis(300), async {
            while let Ok(n) = c.io.read_buf(&mut c.buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }
    // And the broker still serves.
    let mut c = b.open().await;
    c.declare_queue(1, "still-alive", false).await;
}

#[tokio::test]
async fn prefetch_set_between_consumers_applies_to_the_later_one() {
    let b = Broker::new();
    for _ in 0..20 {
        let mut c = b.open().await;
        c.open_channel(2).await;
        let q1 = c.declare_queue(1, "", false).await.queue.to_string();
        let q2 = c.declare_queue(1, "", false).await.queue.to_string();
        for q in [&q1, &q2] {
            for i in 0..5u8 {
                c.publish(2, "", q, &[i]).await;
            }
        }
        c.rpc(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: 1,
                global: false,
            })),
        )
        .await;
        c.consume(1, &q1, "c1", false).await;
        let (d, _, _) = c.expect_deliver().await;
        assert_eq!(d.consumer_tag.as_str(), "c1");
        c.rpc(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: 3,
                global: false,
            })),
        )
        .await;
        c.consume(1, &q2, "c2", false).await;
        for _ in 0..3 {
            let (d, _, _) = c.expect_deliver().await;
            assert_eq!(d.consumer_tag.as_str(), "c2");
        }
        c.close().await;
    }
}

/// EXTERNAL is offered only where a verified client certificate names the user, and logs in
/// as that user; elsewhere it is an unknown mechanism.
#[tokio::test]
async fn external_mechanism_logs_in_as_the_certificate_user() {
    async fn start_ok(c: &mut Client, mechanism: &str) {
        c.send(Frame::ProtocolHeader(ProtocolHeader::AMQP_0_9_1))
            .await;
        let (_, start) = c.expect().await;
        let AMQPClass::Connection(connection::AMQPMethod::Start(s)) = start else {
            panic!("{start:?}")
        };
        c.buf.extend_from_slice(s.mechanisms.as_bytes());
        c.send(m(AMQPClass::Connection(connection::AMQPMethod::StartOk(
            connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: mechanism.into(),
                response: LongString::from(""),
                locale: "en_US".into(),
            },
        ))))
        .await;
    }
    let b = Broker::new();
    let connect = |cert_login: Option<&str>| {
        let (client, server) = tokio::io::duplex(1 << 20);
        let peer = crate::net::Peer {
            addr: "127.0.0.1:40000".parse().unwrap(),
            cert_login: cert_login.map(str::to_string),
        };
        tokio::spawn(serve(server, peer, b.ctx.clone(), CancellationToken::new()));
        Client::new(client)
    };

    let mut c = connect(Some("guest"));
    start_ok(&mut c, "EXTERNAL").await;
    assert_eq!(
        std::mem::take(&mut c.buf).as_ref(),
        b"PLAIN AMQPLAIN EXTERNAL"
    );
    let (_, tune) = c.expect().await;
    assert!(
        matches!(tune, AMQPClass::Connection(connection::AMQPMethod::Tune(_))),
        "{tune:?}"
    );

    // A certificate naming no known user is refused as a bad login.
    let mut c = connect(Some("nobody"));
    start_ok(&mut c, "EXTERNAL").await;
    c.buf.clear();
    assert_eq!(c.expect_connection_close().await.reply_code, 403);

    // Without a certificate EXTERNAL is not on offer.
    let mut c = connect(None);
    start_ok(&mut c, "EXTERNAL").await;
    assert_eq!(std::mem::take(&mut c.buf).as_ref(), b"PLAIN AMQPLAIN");
    assert_eq!(c.expect_connection_close().await.reply_code, 503);
}
