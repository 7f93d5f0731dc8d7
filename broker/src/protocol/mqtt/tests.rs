//! `serve` over an in-memory duplex pipe with a real engine, speaking packets through the codec.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use codecs::mqtt::{
    Ack, Codec, Connect, ConnectProperties, Limits, Packet, Protocol, Publish, QoS, ReasonCode,
    Subscribe, Subscription, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::sync::CancellationToken;

use super::{serve, MqttConfig, MqttContext};
use crate::engine::{Engine, EngineConfig, Message};

const TIMEOUT: Duration = Duration::from_secs(5);

struct Broker {
    ctx: Arc<MqttContext>,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn new() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig {
            data_dir: dir.path().to_path_buf(),
            fsync: false,
            ..Default::default()
        })
        .unwrap();
        let config = MqttConfig {
            data_dir: dir.path().to_path_buf(),
            fsync: false,
            ..Default::default()
        };
        Broker {
            ctx: MqttContext::new(engine, config).unwrap(),
            _dir: dir,
        }
    }

    fn connect_raw(&self) -> Client {
        self.connect_raw_with(CancellationToken::new())
    }

    /// A connection whose session gets `shutdown` as its listeners' token.
    fn connect_raw_with(&self, shutdown: CancellationToken) -> Client {
        let (client, server) = tokio::io::duplex(1 << 20);
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        tokio::spawn(serve(server, peer, self.ctx.clone(), shutdown));
        Client {
            io: client,
            buf: BytesMut::new(),
            codec: Codec::new(),
        }
    }

    async fn connect(&self, protocol: Protocol, client_id: &str, clean: bool) -> (Client, Packet) {
        let mut c = self.connect_raw();
        c.send(&Packet::Connect(Box::new(connect(
            protocol, client_id, clean,
        ))))
        .await;
        c.codec = Codec::with_protocol(protocol);
        let ack = c.recv().await.expect("CONNACK");
        (c, ack)
    }
}

fn connect(protocol: Protocol, client_id: &str, clean: bool) -> Connect {
    Connect {
        protocol,
        clean_start: clean,
        keep_alive: 30,
        client_id: client_id.into(),
        will: None,
        username: Some("guest".into()),
        password: Some(Bytes::from_static(b"guest")),
        properties: ConnectProperties::default(),
    }
}

struct Client {
    io: DuplexStream,
    buf: BytesMut,
    codec: Codec,
}

impl Client {
    async fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        self.codec.encode(p, &mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    /// The next packet; `None` when the server closed.
    async fn recv(&mut self) -> Option<Packet> {
        let limits = Limits {
            packet_bytes_max: 0,
        };
        loop {
            if let Some(p) = self.codec.decode(&mut self.buf, &limits).unwrap() {
                return Some(p);
            }
            let n = tokio::time::timeout(TIMEOUT, self.io.read_buf(&mut self.buf))
                .await
                .expect("timed out")
                .unwrap();
            if n == 0 {
                return None;
            }
        }
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) -> Packet {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            subscriptions: vec![Subscription {
                filter: filter.into(),
                options: SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            }],
            properties: Default::default(),
        }))
        .await;
        self.recv().await.unwrap()
    }

    async fn publish(&mut self, topic: &str, qos: QoS, pid: u16, body: &'static [u8]) {
        self.send(&Packet::Publish(Publish {
            qos,
            topic: topic.into(),
            packet_id: pid,
            payload: Bytes::from_static(body),
            ..Default::default()
        }))
        .await;
    }
}

fn connack_code(p: &Packet) -> ReasonCode {
    match p {
        Packet::ConnAck(c) => c.code,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn first_packet_not_connect_closes_without_answer() {
    let b = Broker::new();
    let mut c = b.connect_raw();
    c.send_raw(&[0xC0, 0x00]).await; // PINGREQ
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(TIMEOUT, c.io.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn bad_password_is_refused_with_the_right_code() {
    let b = Broker::new();
    for (protocol, code) in [(Protocol::V3_1_1, 4), (Protocol::V5, 0x86)] {
        let mut c = b.connect_raw();
        let mut conn = connect(protocol, "x", true);
        conn.password = Some(Bytes::from_static(b"wrong"));
        c.send(&Packet::Connect(Box::new(conn))).await;
        c.codec = Codec::with_protocol(protocol);
        assert_eq!(connack_code(&c.recv().await.unwrap()), ReasonCode(code));
        assert!(c.recv().await.is_none());
    }
}

#[tokio::test]
async fn empty_client_id_rules() {
    let b = Broker::new();
    let (_c, ack) = b.connect(Protocol::V3_1_1, "", false).await;
    assert_eq!(connack_code(&ack), ReasonCode::V3_IDENTIFIER_REJECTED);
    let (_c, ack) = b.connect(Protocol::V5, "", true).await;
    let Packet::ConnAck(ack) = ack else { panic!() };
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    assert!(ack
        .properties
        .assigned_client_identifier
        .unwrap()
        .starts_with("wharf-"));
}

#[tokio::test]
async fn pub_sub_qos1_and_amqp_side() {
    let b = Broker::new();
    let (mut sub, _) = b.connect(Protocol::V3_1_1, "sub", true).await;
    let Packet::SubAck(sa) = sub.subscribe("a/+", QoS::AtLeastOnce).await else {
        panic!()
    };
    assert_eq!(sa.reasons, vec![ReasonCode(1)]);
    let (mut publ, _) = b.connect(Protocol::V5, "pub", true).await;
    publ.publish("a/b", QoS::AtLeastOnce, 7, b"hello").await;
    let Some(Packet::PubAck(a)) = publ.recv().await else {
        panic!()
    };
    assert_eq!(a.packet_id, 7);
    let Some(Packet::Publish(p)) = sub.recv().await else {
        panic!()
    };
    assert_eq!(
        (p.topic.as_str(), p.qos, &p.payload[..]),
        ("a/b", QoS::AtLeastOnce, &b"hello"[..])
    );
    sub.send(&Packet::PubAck(Ack {
        packet_id: p.packet_id,
        ..Default::default()
    }))
    .await;
    // An AMQP-side publish to amq.topic (transient: QoS 0).
    let vhost = b.ctx.engine.vhost("/").unwrap();
    vhost
        .publish(
            "amq.topic",
            Message::new("amq.topic", "a.c", Bytes::from_static(b"amqp")),
        )
        .unwrap();
    let Some(Packet::Publish(p)) = sub.recv().await else {
        panic!()
    };
    assert_eq!((p.topic.as_str(), p.qos), ("a/c", QoS::AtMostOnce));
}

#[tokio::test]
async fn dollar_topics_not_matched_by_leading_wildcards() {
    let b = Broker::new();
    let (mut sub, _) = b.connect(Protocol::V5, "s", true).await;
    sub.subscribe("#", QoS::AtMostOnce).await;
    let (mut publ, _) = b.connect(Protocol::V5, "p", true).await;
    publ.publish("$SYS/x", QoS::AtMostOnce, 0, b"no").await;
    publ.publish("t", QoS::AtMostOnce, 0, b"yes").await;
    let Some(Packet::Publish(p)) = sub.recv().await else {
        panic!()
    };
    assert_eq!(p.topic, "t");
}

#[tokio::test]
async fn wildcard_in_publish_topic_gets_disconnect_0x82() {
    let b = Broker::new();
    let (mut c, _) = b.connect(Protocol::V5, "w", true).await;
    // PUBLISH QoS 0 to "a/#" written by hand (the codec refuses to encode it? it may not).
    c.send_raw(&[0x30, 0x06, 0x00, 0x03, b'a', b'/', b'#', 0x00])
        .await;
    match c.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::PROTOCOL_ERROR),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert!(c.recv().await.is_none());
}

#[tokio::test]
async fn takeover_sends_0x8e_to_the_old_connection() {
    let b = Broker::new();
    let (mut old, _) = b.connect(Protocol::V5, "same", true).await;
    let (_new, ack) = b.connect(Protocol::V5, "same", true).await;
    assert_eq!(connack_code(&ack), ReasonCode::SUCCESS);
    match old.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::SESSION_TAKEN_OVER),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
}

#[tokio::test]
async fn qos2_inbound_is_exactly_once() {
    let b = Broker::new();
    let (mut sub, _) = b.connect(Protocol::V3_1_1, "s2", true).await;
    sub.subscribe("q2", QoS::ExactlyOnce).await;
    let (mut publ, _) = b.connect(Protocol::V3_1_1, "p2", true).await;
    publ.publish("q2", QoS::ExactlyOnce, 9, b"once").await;
    assert!(matches!(publ.recv().await, Some(Packet::PubRec(a)) if a.packet_id == 9));
    // The same packet id again before PUBREL: not published twice.
    publ.send(&Packet::Publish(Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        topic: "q2".into(),
        packet_id: 9,
        payload: Bytes::from_static(b"once"),
        ..Default::default()
    }))
    .await;
    assert!(matches!(publ.recv().await, Some(Packet::PubRec(a)) if a.packet_id == 9));
    publ.send(&Packet::PubRel(Ack {
        packet_id: 9,
        ..Default::default()
    }))
    .await;
    assert!(matches!(publ.recv().await, Some(Packet::PubComp(a)) if a.packet_id == 9));
    let Some(Packet::Publish(p)) = sub.recv().await else {
        panic!()
    };
    assert_eq!(p.qos, QoS::ExactlyOnce);
    sub.send(&Packet::PubRec(Ack {
        packet_id: p.packet_id,
        ..Default::default()
    }))
    .await;
    assert!(matches!(sub.recv().await, Some(Packet::PubRel(a)) if a.packet_id == p.packet_id));
    // Nothing else arrives: a PINGREQ's answer comes next.
    sub.send(&Packet::PingReq).await;
    assert_eq!(sub.recv().await, Some(Packet::PingResp));
}

#[tokio::test]
async fn retained_message_is_delivered_on_subscribe_and_cleared() {
    let b = Broker::new();
    let (mut publ, _) = b.connect(Protocol::V3_1_1, "rp", true).await;
    publ.send(&Packet::Publish(Publish {
        retain: true,
        topic: "r/1".into(),
        payload: Bytes::from_static(b"kept"),
        ..Default::default()
    }))
    .await;
    publ.send(&Packet::PingReq).await;
    assert_eq!(publ.recv().await, Some(Packet::PingResp));
    let (mut sub, _) = b.connect(Protocol::V3_1_1, "rs", true).await;
    assert!(matches!(
        sub.subscribe("r/#", QoS::AtMostOnce).await,
        Packet::SubAck(_)
    ));
    let Some(Packet::Publish(p)) = sub.recv().await else {
        panic!()
    };
    assert!(p.retain);
    assert_eq!(&p.payload[..], b"kept");
    publ.send(&Packet::Publish(Publish {
        retain: true,
        topic: "r/1".into(),
        payload: Bytes::new(),
        ..Default::default()
    }))
    .await;
    publ.send(&Packet::PingReq).await;
    assert_eq!(publ.recv().await, Some(Packet::PingResp));
    assert!(b.ctx.retained.matching("r/#").is_empty());
}

#[tokio::test]
async fn shared_subscription_round_robins_and_goes_with_its_last_member() {
    let b = Broker::new();
    let (mut m1, _) = b.connect(Protocol::V3_1_1, "m1", true).await;
    let (mut m2, _) = b.connect(Protocol::V5, "m2", true).await;
    for m in [&mut m1, &mut m2] {
        let Packet::SubAck(sa) = m.subscribe("$share/g/s/+", QoS::AtMostOnce).await else {
            panic!()
        };
        assert_eq!(sa.reasons, vec![ReasonCode(0)]);
    }
    let (mut publ, _) = b.connect(Protocol::V5, "p", true).await;
    for _ in 0..4 {
        publ.publish("s/x", QoS::AtMostOnce, 0, b"m").await;
    }
    for m in [&mut m1, &mut m2] {
        for _ in 0..2 {
            let Some(Packet::Publish(p)) = m.recv().await else {
                panic!()
            };
            assert_eq!(p.topic, "s/x");
        }
    }
    let vhost = b.ctx.engine.vhost("/").unwrap();
    let shared = || {
        vhost
            .queues()
            .into_iter()
            .filter(|q| q.name.starts_with("mqtt-shared-g-"))
            .count()
    };
    assert_eq!(shared(), 1);
    drop(m1);
    drop(m2);
    for _ in 0..100 {
        if shared() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(shared(), 0);
}

#[tokio::test]
async fn no_local_skips_own_publishes() {
    let b = Broker::new();
    let (mut c, _) = b.connect(Protocol::V5, "nl", true).await;
    c.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        subscriptions: vec![
            Subscription {
                filter: "n/own".into(),
                options: SubscriptionOptions {
                    no_local: true,
                    ..Default::default()
                },
            },
            Subscription {
                filter: "n/other".into(),
                options: SubscriptionOptions::default(),
            },
        ],
        properties: Default::default(),
    }))
    .await;
    assert!(matches!(c.recv().await, Some(Packet::SubAck(_))));
    c.publish("n/own", QoS::AtMostOnce, 0, b"skipped").await;
    c.publish("n/other", QoS::AtMostOnce, 0, b"kept").await;
    let Some(Packet::Publish(p)) = c.recv().await else {
        panic!()
    };
    assert_eq!(&p.payload[..], b"kept");
}

/// The PUBLISH packets `c` receives next, `n` of them.
async fn publishes(c: &mut Client, n: usize) -> Vec<Publish> {
    let mut out = Vec::new();
    while out.len() < n {
        match c.recv().await {
            Some(Packet::Publish(p)) => out.push(p),
            Some(_) => {}
            None => panic!("closed after {} PUBLISH packets", out.len()),
        }
    }
    out
}

#[tokio::test]
async fn outbound_topic_aliases_within_the_client_maximum() {
    let b = Broker::new();
    let mut sub = b.connect_raw();
    let mut conn = connect(Protocol::V5, "alias-sub", true);
    conn.properties.topic_alias_maximum = Some(2);
    sub.send(&Packet::Connect(Box::new(conn))).await;
    sub.codec = Codec::with_protocol(Protocol::V5);
    assert_eq!(
        connack_code(&sub.recv().await.unwrap()),
        ReasonCode::SUCCESS
    );
    sub.subscribe("al/#", QoS::AtMostOnce).await;
    let (mut publ, _) = b.connect(Protocol::V5, "alias-pub", true).await;
    for t in ["al/x", "al/x", "al/y", "al/z", "al/y", "al/z", "al/x"] {
        publ.publish(t, QoS::AtMostOnce, 0, b"m").await;
    }
    let got: Vec<(String, Option<u16>)> = publishes(&mut sub, 7)
        .await
        .into_iter()
        .map(|p| (p.topic, p.properties.topic_alias))
        .collect();
    let want: Vec<(String, Option<u16>)> = vec![
        ("al/x".into(), Some(1)), // first time: topic and alias
        ("".into(), Some(1)),     // then the alias alone
        ("al/y".into(), Some(2)),
        ("al/z".into(), None), // the client allows 2: no third alias
        ("".into(), Some(2)),
        ("al/z".into(), None),
        ("".into(), Some(1)),
    ];
    assert_eq!(got, want);

    // A new connection starts without aliases; a client that announces none gets none.
    drop(sub);
    let (mut plain, _) = b.connect(Protocol::V5, "alias-none", true).await;
    plain.subscribe("al/#", QoS::AtMostOnce).await;
    publ.publish("al/x", QoS::AtMostOnce, 0, b"m").await;
    publ.publish("al/x", QoS::AtMostOnce, 0, b"m").await;
    for p in publishes(&mut plain, 2).await {
        assert_eq!((p.topic.as_str(), p.properties.topic_alias), ("al/x", None));
    }
}

#[tokio::test]
async fn reconnect_resends_pubrel_then_publishes_with_their_ids_and_dup() {
    let b = Broker::new();
    let (mut sub, _) = b.connect(Protocol::V3_1_1, "rsnd", false).await;
    sub.subscribe("rs/#", QoS::ExactlyOnce).await;
    let (mut publ, _) = b.connect(Protocol::V3_1_1, "rsnd-pub", true).await;
    // One acknowledged first, so the ids in flight are not a fresh connection's first ones.
    for (i, body) in [&b"w"[..], b"a", b"b"].into_iter().enumerate() {
        publ.send(&Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            topic: "rs/t".into(),
            packet_id: i as u16 + 1,
            payload: Bytes::from_static(body),
            ..Default::default()
        }))
        .await;
    }
    let first = publishes(&mut sub, 3).await;
    sub.send(&Packet::PubAck(Ack {
        packet_id: first[0].packet_id,
        ..Default::default()
    }))
    .await;
    // Reconnect without PUBACK for "a" and "b".
    drop(sub);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (mut sub, ack) = b.connect(Protocol::V3_1_1, "rsnd", false).await;
    let Packet::ConnAck(ack) = ack else { panic!() };
    assert!(ack.session_present);
    let again = publishes(&mut sub, 2).await;
    let seen = |v: &[Publish]| -> Vec<(u16, bool, Bytes)> {
        v.iter()
            .map(|p| (p.packet_id, p.dup, p.payload.clone()))
            .collect()
    };
    let mut want = seen(&first[1..]);
    for w in &mut want {
        assert!(!w.1);
        w.1 = true;
    }
    assert_eq!(seen(&again), want);
    assert!(again[0].packet_id > 1);
}

/// One token shared by every connection, as the listeners give it: when it is cancelled, each
/// MQTT 5 session sends DISCONNECT 0x8B (Server shutting down) and closes, connected or idle.
#[tokio::test]
async fn shutdown_token_closes_every_session_with_0x8b() {
    let b = Broker::new();
    let token = CancellationToken::new();
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut c = b.connect_raw_with(token.clone());
        c.send(&Packet::Connect(Box::new(connect(
            Protocol::V5,
            &format!("shut-{i}"),
            true,
        ))))
        .await;
        c.codec = Codec::with_protocol(Protocol::V5);
        assert_eq!(connack_code(&c.recv().await.unwrap()), ReasonCode::SUCCESS);
        clients.push(c);
    }
    // One of them busy with a subscription, the others idle.
    assert!(matches!(
        clients[0].subscribe("shut/t", QoS::AtLeastOnce).await,
        Packet::SubAck(_)
    ));
    token.cancel();
    for c in &mut clients {
        match c.recv().await {
            Some(Packet::Disconnect(d)) => assert_eq!(d.reason, ReasonCode::SERVER_SHUTTING_DOWN),
            other => panic!("expected DISCONNECT 0x8B, got {other:?}"),
        }
        assert!(c.recv().await.is_none(), "closed after the DISCONNECT");
    }
}
