//! rumqttc (Rust MQTT 3.1.1 and 5 client) against a real wharf process.
//!
//! Each test starts its own broker. With `WHARF_TEST_AMQP_URL` set (an external AMQP broker) the
//! harness knows no MQTT port and every test here skips.

use std::time::Duration;

use futures_lite::stream::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use rumqttc::v5;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use wharf_tests::Broker;

const WAIT: Duration = Duration::from_secs(10);

/// The MQTT port, or `None` (with a note) when the tests run against an external broker.
fn mqtt_port(broker: &Broker, test: &str) -> Option<u16> {
    let port = broker.mqtt_port();
    if port.is_none() {
        eprintln!("{test}: skipped, no MQTT listener on an external broker");
    }
    port
}

// ---------------------------------------------------------------------------------------------
// MQTT 3.1.1 client (rumqttc's v4 API)

type V4Event = Result<rumqttc::Event, rumqttc::ConnectionError>;

/// A 3.1.1 client whose event loop runs in a task, forwarding every event until the first error
/// (rumqttc would reconnect on the next poll: the tests want to see the error instead).
struct V4 {
    client: rumqttc::AsyncClient,
    events: mpsc::UnboundedReceiver<V4Event>,
    task: JoinHandle<()>,
}

fn v4_options(port: u16, id: &str, clean: bool, password: &str) -> rumqttc::MqttOptions {
    let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    opts.set_credentials("guest", password)
        .set_clean_session(clean)
        .set_keep_alive(Duration::from_secs(30));
    opts
}

fn v4_start(opts: rumqttc::MqttOptions) -> V4 {
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 64);
    let (tx, events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let event = eventloop.poll().await;
            let stop = event.is_err();
            if tx.send(event).is_err() || stop {
                break;
            }
        }
    });
    V4 {
        client,
        events,
        task,
    }
}

impl V4 {
    /// The next event, failing the test on a timeout or a closed event loop.
    async fn next(&mut self) -> V4Event {
        timeout(WAIT, self.events.recv())
            .await
            .expect("no MQTT event within the wait")
            .expect("event loop ended")
    }

    /// Skips events until `pick` returns something; fails on a connection error.
    async fn until<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&rumqttc::Packet) -> Option<T>,
    ) -> T {
        loop {
            match self.next().await {
                Ok(rumqttc::Event::Incoming(p)) => {
                    if let Some(t) = pick(&p) {
                        return t;
                    }
                }
                Ok(rumqttc::Event::Outgoing(_)) => {}
                Err(e) => panic!("waiting for {what}: connection error {e:?}"),
            }
        }
    }

    async fn connack(&mut self) -> rumqttc::ConnAck {
        self.until("CONNACK", |p| match p {
            rumqttc::Packet::ConnAck(c) => Some(c.clone()),
            _ => None,
        })
        .await
    }

    async fn connect(port: u16, id: &str, clean: bool) -> (V4, rumqttc::ConnAck) {
        let mut c = v4_start(v4_options(port, id, clean, "guest"));
        let ack = c.connack().await;
        assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
        (c, ack)
    }

    async fn subscribe(&mut self, filter: &str, qos: rumqttc::QoS) {
        self.client.subscribe(filter, qos).await.expect("subscribe");
        let codes = self
            .until("SUBACK", |p| match p {
                rumqttc::Packet::SubAck(s) => Some(s.return_codes.clone()),
                _ => None,
            })
            .await;
        assert_eq!(codes, vec![rumqttc::SubscribeReasonCode::Success(qos)]);
    }

    async fn publish(&self, topic: &str, qos: rumqttc::QoS, retain: bool, payload: &[u8]) {
        self.client
            .publish(topic, qos, retain, payload.to_vec())
            .await
            .expect("publish");
    }

    async fn puback(&mut self) {
        self.until("PUBACK", |p| {
            matches!(p, rumqttc::Packet::PubAck(_)).then_some(())
        })
        .await;
    }

    async fn message(&mut self) -> rumqttc::Publish {
        self.until("PUBLISH", |p| match p {
            rumqttc::Packet::Publish(m) => Some(m.clone()),
            _ => None,
        })
        .await
    }

    /// Sends DISCONNECT and waits for the event loop to end.
    async fn disconnect(self) {
        self.client.disconnect().await.expect("disconnect");
        let V4 {
            client,
            mut events,
            task,
        } = self;
        // The loop ends on the error that follows the DISCONNECT.
        while let Ok(Some(Ok(_))) = timeout(WAIT, events.recv()).await {}
        drop(client);
        timeout(WAIT, task)
            .await
            .expect("event loop ends after DISCONNECT")
            .expect("event loop task");
    }
}

#[tokio::test]
async fn v4_connect_subscribe_publish_qos0_and_qos1_round_trip() {
    let broker = Broker::start();
    let Some(port) = mqtt_port(&broker, "v4_round_trip") else {
        return;
    };
    let (mut c, ack) = V4::connect(port, "wt-v4-rt", true).await;
    assert!(!ack.session_present, "clean session has no session present");
    c.subscribe("wt/v4/+", rumqttc::QoS::AtLeastOnce).await;

    c.publish("wt/v4/zero", rumqttc::QoS::AtMostOnce, false, b"qos zero")
        .await;
    let m = c.message().await;
    assert_eq!(m.topic, "wt/v4/zero");
    assert_eq!(&m.payload[..], b"qos zero");
    assert_eq!(m.qos, rumqttc::QoS::AtMostOnce);
    assert!(!m.retain);

    c.publish("wt/v4/one", rumqttc::QoS::AtLeastOnce, false, b"qos one")
        .await;
    // PUBACK for our publish and the delivery itself, in either order.
    let (mut acked, mut got) = (false, None);
    while !acked || got.is_none() {
        match c.next().await.expect("connection") {
            rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) => acked = true,
            rumqttc::Event::Incoming(rumqttc::Packet::Publish(m)) => got = Some(m),
            _ => {}
        }
    }
    let m = got.expect("delivery");
    assert_eq!(m.topic, "wt/v4/one");
    assert_eq!(&m.payload[..], b"qos one");
    assert_eq!(
        m.qos,
        rumqttc::QoS::AtLeastOnce,
        "granted QoS 1 delivers at QoS 1"
    );
    assert_ne!(m.pkid, 0);
    c.disconnect().await;
}

#[tokio::test]
async fn persistent_session_gets_qos1_message_published_while_offline() {
    let broker = Broker::start();
    let Some(port) = mqtt_port(&broker, "persistent_session") else {
        return;
    };
    let (mut sub, ack) = V4::connect(port, "wt-v4-persistent", false).await;
    assert!(!ack.session_present, "first connect: no session yet");
    sub.subscribe("wt/persist/#", rumqttc::QoS::AtLeastOnce)
        .await;
    sub.disconnect().await;

    let (mut publisher, _) = V4::connect(port, "wt-v4-publisher", true).await;
    publisher
        .publish(
            "wt/persist/offline",
            rumqttc::QoS::AtLeastOnce,
            false,
            b"while you were out",
        )
        .await;
    publisher.puback().await;
    publisher.disconnect().await;

    let (mut sub, ack) = V4::connect(port, "wt-v4-persistent", false).await;
    assert!(ack.session_present, "the session was kept");
    let m = sub.message().await;
    assert_eq!(m.topic, "wt/persist/offline");
    assert_eq!(&m.payload[..], b"while you were out");
    assert_eq!(m.qos, rumqttc::QoS::AtLeastOnce);
    sub.disconnect().await;
}

#[tokio::test]
async fn retained_message_delivered_to_later_subscriber() {
    let broker = Broker::start();
    let Some(port) = mqtt_port(&broker, "retained") else {
        return;
    };
    let (mut publisher, _) = V4::connect(port, "wt-v4-retainer", true).await;
    publisher
        .publish(
            "wt/retained/state",
            rumqttc::QoS::AtLeastOnce,
            true,
            b"last known",
        )
        .await;
    publisher.puback().await;
    publisher.disconnect().await;

    let (mut late, _) = V4::connect(port, "wt-v4-late", true).await;
    late.subscribe("wt/retained/+", rumqttc::QoS::AtLeastOnce)
        .await;
    let m = late.message().await;
    assert_eq!(m.topic, "wt/retained/state");
    assert_eq!(&m.payload[..], b"last known");
    assert!(
        m.retain,
        "a retained message sent on subscribe has RETAIN set"
    );
    late.disconnect().await;
}

#[tokio::test]
async fn bad_password_refused_with_bad_user_name_or_password() {
    let broker = Broker::start();
    let Some(port) = mqtt_port(&broker, "bad_password") else {
        return;
    };
    // 3.1.1: CONNACK return code 4.
    let mut c = v4_start(v4_options(port, "wt-v4-badpw", true, "not-guest"));
    match c.next().await {
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, rumqttc::ConnectReturnCode::BadUserNamePassword);
        }
        other => panic!("3.1.1 bad password: expected a refused CONNACK, got {other:?}"),
    }

    // 5.0: reason code 0x86.
    let mut opts = v5::MqttOptions::new("wt-v5-badpw", "127.0.0.1", port);
    opts.set_credentials("guest", "not-guest");
    let mut c = v5_start(opts);
    match c.next().await {
        Err(v5::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(
                code,
                v5::mqttbytes::v5::ConnectReturnCode::BadUserNamePassword
            );
        }
        other => panic!("5.0 bad password: expected a refused CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn rumqttc_publish_reaches_lapin_consumer_on_amq_topic() {
    let broker = Broker::start();
    let Some(port) = mqtt_port(&broker, "cross_protocol") else {
        return;
    };
    let conn = timeout(
        WAIT,
        Connection::connect(&broker.amqp_url(), ConnectionProperties::default()),
    )
    .await
    .expect("AMQP connect timed out")
    .expect("AMQP connect");
    let ch = conn.create_channel().await.expect("channel");
    let queue = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare queue")
        .name()
        .clone();
    ch.queue_bind(
        queue.clone(),
        "amq.topic".into(),
        "r.*".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind r.* on amq.topic");
    let mut consumer = ch
        .basic_consume(
            queue,
            "wt-mqtt-cross".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");

    let (mut c, _) = V4::connect(port, "wt-v4-cross", true).await;
    c.publish("r/x", rumqttc::QoS::AtLeastOnce, false, b"from mqtt")
        .await;
    c.puback().await;

    let delivery = timeout(WAIT, consumer.next())
        .await
        .expect("no AMQP delivery within the wait")
        .expect("consumer ended")
        .expect("delivery");
    assert_eq!(delivery.exchange.as_str(), "amq.topic");
    assert_eq!(delivery.routing_key.as_str(), "r.x");
    assert_eq!(delivery.data, b"from mqtt");
    c.disconnect().await;
    conn.close(200, "bye".into()).await.expect("AMQP close");
}

// ---------------------------------------------------------------------------------------------
// MQTT 5 client (rumqttc::v5)

type V5Event = Result<v5::Event, v5::ConnectionError>;

struct V5 {
    client: v5::AsyncClient,
    events: mpsc::UnboundedReceiver<V5Event>,
}

fn v5_start(opts: v5::MqttOptions) -> V5 {
    let (client, mut eventloop) = v5::AsyncClient::new(opts, 64);
    let (tx, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let event = eventloop.poll().await;
            let stop = event.is_err();
            if tx.send(event).is_err() || stop {
                break;
            }
        }
    });
    V5 { client, events }
}

impl V5 {
    async fn next(&mut self) -> V5Event {
        timeout(WAIT, self.events.recv())
            .await
            .expect("no MQTT event within the wait")
            .expect("event loop ended")
    }

    async fn until<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&v5::Incoming) -> Option<T>,
    ) -> T {
        loop {
            match self.next().await {
                Ok(v5::Event::Incoming(p)) => {
                    if let Some(t) = pick(&p) {
                        return t;
                    }
                }
                Ok(v5::Event::Outgoing(_)) => {}
                Err(e) => panic!("waiting for {what}: connection error {e:?}"),
            }
        }
    }
}

#[tokio::test]
async fn v5_publish_user_properties_and_content_type_received_intact() {
    use v5::mqttbytes::v5::{ConnectReturnCode, Packet, PublishProperties, SubscribeReasonCode};
    use v5::mqttbytes::QoS;

    let broker = Broker::start();
    let Some(port) = mqtt_port(&broker, "v5_properties") else {
        return;
    };
    let mut opts = v5::MqttOptions::new("wt-v5-props", "127.0.0.1", port);
    opts.set_credentials("guest", "guest")
        .set_keep_alive(Duration::from_secs(30));
    let mut c = v5_start(opts);
    let code = c
        .until("CONNACK", |p| match p {
            Packet::ConnAck(a) => Some(a.code),
            _ => None,
        })
        .await;
    assert_eq!(code, ConnectReturnCode::Success);

    c.client
        .subscribe("wt/v5/props", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let codes = c
        .until("SUBACK", |p| match p {
            Packet::SubAck(s) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await;
    assert_eq!(codes, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);

    // Distinct keys, one non-ASCII. wharf carries user properties as AMQP headers (one value
    // per key, kept in key order; docs/mapping/mqtt.md), so repeated keys and the publisher's
    // order are not kept: the list is compared as a set.
    let mut user_properties = vec![
        ("trace".to_string(), "a1".to_string()),
        ("origin".to_string(), "rumqttc".to_string()),
        ("clé".to_string(), "valeur ✓".to_string()),
        ("empty".to_string(), String::new()),
    ];
    let props = PublishProperties {
        content_type: Some("application/json; charset=utf-8".to_string()),
        user_properties: user_properties.clone(),
        ..PublishProperties::default()
    };
    c.client
        .publish_with_properties(
            "wt/v5/props",
            QoS::AtLeastOnce,
            false,
            br#"{"ok":true}"#.to_vec(),
            props,
        )
        .await
        .expect("publish");
    let m = c
        .until("PUBLISH", |p| match p {
            Packet::Publish(m) => Some(m.clone()),
            _ => None,
        })
        .await;
    assert_eq!(&m.topic[..], b"wt/v5/props");
    assert_eq!(&m.payload[..], br#"{"ok":true}"#);
    let got = m.properties.expect("PUBLISH properties");
    assert_eq!(
        got.content_type.as_deref(),
        Some("application/json; charset=utf-8")
    );
    let mut received = got.user_properties;
    received.sort();
    user_properties.sort();
    assert_eq!(received, user_properties);
    c.client.disconnect().await.expect("disconnect");
}
