//! lapin (Rust AMQP 0-9-1 client) against a real broker: wharf, or `WHARF_TEST_AMQP_URL`.

use std::time::Duration;

use futures_lite::stream::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind,
    ExchangeKind,
};
use tokio::time::timeout;
use wharf_tests::Broker;

const WAIT: Duration = Duration::from_secs(5);

async fn connect(broker: &Broker) -> Connection {
    timeout(
        WAIT,
        Connection::connect(&broker.amqp_url(), ConnectionProperties::default()),
    )
    .await
    .expect("connect timed out")
    .expect("connect")
}

/// A name no other test (or earlier run against the same external broker) uses.
fn unique(prefix: &str) -> ShortString {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("wt.lapin.{prefix}.{}.{nanos}", std::process::id()).into()
}

async fn exclusive_queue(ch: &Channel) -> ShortString {
    ch.queue_declare(
        "".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare exclusive queue")
    .name()
    .clone()
}

async fn publish_confirmed(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack(), "publish not acked: {confirm:?}");
}

async fn get_body(ch: &Channel, queue: &str) -> Option<Vec<u8>> {
    let msg = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")?;
    Some(msg.delivery.data)
}

/// The AMQP reply code of a broker error (channel or connection close).
fn reply_code(err: &lapin::Error) -> Option<u16> {
    match err.kind() {
        ErrorKind::ProtocolError(e) => Some(e.get_id()),
        _ => None,
    }
}

#[tokio::test]
async fn publish_consume_round_trip_with_confirms() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let q = exclusive_queue(&ch).await;
    for i in 0..100u32 {
        let body = format!("message {i}");
        let confirm = ch
            .basic_publish(
                "".into(),
                q.clone(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default()
                    .with_message_id(format!("id-{i}").into())
                    .with_content_type("text/plain".into()),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert_eq!(confirm, Confirmation::Ack(None));
    }
    let consumer_ch = conn.create_channel().await.expect("channel");
    let mut consumer = consumer_ch
        .basic_consume(
            q.clone(),
            "lapin-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for i in 0..100u32 {
        let delivery = timeout(WAIT, consumer.next())
            .await
            .expect("delivery timed out")
            .expect("consumer ended")
            .expect("delivery");
        assert_eq!(delivery.data, format!("message {i}").into_bytes());
        assert_eq!(
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str()),
            Some(format!("id-{i}").as_str())
        );
        assert_eq!(
            delivery
                .properties
                .content_type()
                .as_ref()
                .map(|s| s.as_str()),
            Some("text/plain")
        );
        assert!(!delivery.redelivered);
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
    }
    conn.close(200, "bye".into()).await.expect("close");
}

#[tokio::test]
async fn topic_routing() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let x = unique("topic");
    ch.exchange_declare(
        x.clone(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("exchange.declare");
    let (q_star, q_hash) = (exclusive_queue(&ch).await, exclusive_queue(&ch).await);
    for (q, pattern) in [(&q_star, "logs.*.error"), (&q_hash, "logs.#")] {
        ch.queue_bind(
            q.clone(),
            x.clone(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    }
    for key in [
        "logs.db.error",
        "logs.db.info",
        "logs.a.b.error",
        "other.db.error",
    ] {
        publish_confirmed(&ch, x.as_str(), key, key.as_bytes()).await;
    }
    let mut star = Vec::new();
    while let Some(b) = get_body(&ch, q_star.as_str()).await {
        star.push(String::from_utf8(b).expect("utf8"));
    }
    let mut hash = Vec::new();
    while let Some(b) = get_body(&ch, q_hash.as_str()).await {
        hash.push(String::from_utf8(b).expect("utf8"));
    }
    assert_eq!(star, ["logs.db.error"]);
    assert_eq!(hash, ["logs.db.error", "logs.db.info", "logs.a.b.error"]);
}

#[tokio::test]
async fn qos_limits_unacked_deliveries() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let q = exclusive_queue(&ch).await;
    for i in 0..5 {
        publish_confirmed(&ch, "", q.as_str(), format!("m{i}").as_bytes()).await;
    }
    let cch = conn.create_channel().await.expect("channel");
    cch.basic_qos(2, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = cch
        .basic_consume(
            q.clone(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let first = timeout(WAIT, consumer.next())
        .await
        .expect("1st")
        .expect("end")
        .expect("d");
    let second = timeout(WAIT, consumer.next())
        .await
        .expect("2nd")
        .expect("end")
        .expect("d");
    assert_eq!(
        (first.data.as_slice(), second.data.as_slice()),
        (&b"m0"[..], &b"m1"[..])
    );
    // prefetch 2 reached: no third delivery until one is acked
    assert!(
        timeout(Duration::from_millis(500), consumer.next())
            .await
            .is_err(),
        "a third message arrived beyond prefetch 2"
    );
    first.ack(BasicAckOptions::default()).await.expect("ack");
    let third = timeout(WAIT, consumer.next())
        .await
        .expect("3rd")
        .expect("end")
        .expect("d");
    assert_eq!(third.data, b"m2");
    assert!(timeout(Duration::from_millis(300), consumer.next())
        .await
        .is_err());
    second.ack(BasicAckOptions::default()).await.expect("ack");
    third.ack(BasicAckOptions::default()).await.expect("ack");
    for expected in [&b"m3"[..], &b"m4"[..]] {
        let d = timeout(WAIT, consumer.next())
            .await
            .expect("next")
            .expect("end")
            .expect("d");
        assert_eq!(d.data, expected);
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
}

#[tokio::test]
async fn basic_get_and_get_empty() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let q = exclusive_queue(&ch).await;
    assert!(ch
        .basic_get(q.clone(), BasicGetOptions::default())
        .await
        .expect("get")
        .is_none());
    for i in 0..3 {
        publish_confirmed(&ch, "", q.as_str(), format!("g{i}").as_bytes()).await;
    }
    let msg = ch
        .basic_get(q.clone(), BasicGetOptions::default())
        .await
        .expect("get")
        .expect("a message");
    assert_eq!(msg.delivery.data, b"g0");
    assert_eq!(msg.message_count, 2);
    assert_eq!(msg.delivery.routing_key.as_str(), q.as_str());
    msg.delivery
        .ack(BasicAckOptions::default())
        .await
        .expect("ack");
    let msg = ch
        .basic_get(q.clone(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("a message");
    assert_eq!(
        (msg.delivery.data.as_slice(), msg.message_count),
        (&b"g1"[..], 1)
    );
}

#[tokio::test]
async fn nack_requeue_redelivers() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let q = exclusive_queue(&ch).await;
    publish_confirmed(&ch, "", q.as_str(), b"again").await;
    let mut consumer = ch
        .basic_consume(
            q.clone(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let d = timeout(WAIT, consumer.next())
        .await
        .expect("1st")
        .expect("end")
        .expect("d");
    assert!(!d.redelivered);
    d.nack(BasicNackOptions {
        requeue: true,
        multiple: false,
    })
    .await
    .expect("nack");
    let d = timeout(WAIT, consumer.next())
        .await
        .expect("2nd")
        .expect("end")
        .expect("d");
    assert_eq!(d.data, b"again");
    assert!(d.redelivered, "requeued message must be marked redelivered");
    d.nack(BasicNackOptions {
        requeue: false,
        multiple: false,
    })
    .await
    .expect("nack");
    assert!(timeout(Duration::from_millis(300), consumer.next())
        .await
        .is_err());
}

#[tokio::test]
async fn queue_declare_errors_close_the_channel() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let q = unique("args");
    let mut ttl = FieldTable::default();
    ttl.insert("x-message-ttl".into(), AMQPValue::LongInt(1000));
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        q.clone(),
        QueueDeclareOptions {
            auto_delete: true,
            ..QueueDeclareOptions::default()
        },
        ttl,
    )
    .await
    .expect("declare");

    // redeclare with different arguments: 406 PRECONDITION_FAILED closes that channel only
    let bad = conn.create_channel().await.expect("channel");
    let mut other_ttl = FieldTable::default();
    other_ttl.insert("x-message-ttl".into(), AMQPValue::LongInt(2000));
    let err = bad
        .queue_declare(
            q.clone(),
            QueueDeclareOptions {
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            other_ttl,
        )
        .await
        .expect_err("redeclare with other arguments must fail");
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
    assert!(!bad.status().connected(), "the channel must be closed");

    // passive declare of a missing queue: 404 NOT_FOUND
    let bad = conn.create_channel().await.expect("channel");
    let err = bad
        .queue_declare(
            unique("missing"),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("passive declare of a missing queue must fail");
    assert_eq!(reply_code(&err), Some(404), "{err:?}");
    assert!(!bad.status().connected());

    // the connection and the first channel still work
    assert!(conn.status().connected());
    let q2 = ch
        .queue_declare(
            q.clone(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("first channel still works");
    assert_eq!(q2.name().as_str(), q.as_str());
    ch.queue_delete(q, QueueDeleteOptions::default())
        .await
        .expect("delete");
}

#[tokio::test]
async fn exchange_redeclare_with_other_type_is_406() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.expect("channel");
    let x = unique("x");
    ch.exchange_declare(
        x.clone(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    let bad = conn.create_channel().await.expect("channel");
    let err = bad
        .exchange_declare(
            x.clone(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("must fail");
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
    ch.exchange_delete(x, ExchangeDeleteOptions::default())
        .await
        .expect("delete");
}

#[tokio::test]
async fn persistent_message_survives_restart() {
    let mut broker = Broker::start();
    if broker.is_external() {
        eprintln!("skipped: {} is set", wharf_tests::EXTERNAL_URL_VAR);
        return;
    }
    for kill in [false, true] {
        let conn = connect(&broker).await;
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        ch.queue_declare(
            "durable.lapin".into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
        let confirm = ch
            .basic_publish(
                "".into(),
                "durable.lapin".into(),
                BasicPublishOptions::default(),
                b"survivor",
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack());
        // a transient one must not survive
        publish_confirmed(&ch, "", "durable.lapin", b"transient").await;
        drop(conn);
        broker.restart(kill);
        let conn = connect(&broker).await;
        let ch = conn.create_channel().await.expect("channel");
        assert_eq!(
            get_body(&ch, "durable.lapin").await.as_deref(),
            Some(&b"survivor"[..]),
            "after restart (kill={kill})"
        );
        assert_eq!(get_body(&ch, "durable.lapin").await, None);
        conn.close(200, "bye".into()).await.expect("close");
    }
}
