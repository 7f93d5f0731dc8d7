//! rumqttc over WebSocket (`ws://.../ws`, subprotocol `mqtt`) and WSS against a real wharf,
//! with a TCP client on the other end of each message.
//!
//! Skipped with `WHARF_TEST_AMQP_URL` (the URL names no WebSocket port).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::time::timeout;
use wharf_tests::{make_dev_certs, skip_for_external_broker, Broker};

const WAIT: Duration = Duration::from_secs(10);

/// Connects and returns the client and its event loop once the CONNACK came.
async fn connect(opts: MqttOptions, broker: &Broker) -> (AsyncClient, EventLoop) {
    let (client, mut events) = AsyncClient::new(opts, 16);
    loop {
        match timeout(WAIT, events.poll()).await {
            Err(_) => panic!("no CONNACK in time:\n{}", broker.log()),
            Ok(Err(e)) => panic!("connect: {e}\n{}", broker.log()),
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return (client, events),
            Ok(Ok(_)) => {}
        }
    }
}

fn ws_options(id: &str, url: String, transport: Transport) -> MqttOptions {
    // The port argument is not used with WebSocket transports: the URL has it.
    let mut opts = MqttOptions::new(id, url, 0);
    opts.set_transport(transport);
    opts.set_credentials("guest", "guest");
    opts
}

fn tcp_options(id: &str, broker: &Broker) -> MqttOptions {
    let port = broker.mqtt_port().expect("an MQTT port");
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_credentials("guest", "guest");
    opts
}

async fn subscribe(client: &AsyncClient, events: &mut EventLoop, topic: &str) {
    client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = timeout(WAIT, events.poll())
            .await
            .expect("no SUBACK in time")
            .expect("subscribe")
        {
            return;
        }
    }
}

/// `publisher` sends `body` to `topic` at QoS 1; the subscriber's event loop must deliver it.
async fn pass_message(
    publisher: (&AsyncClient, EventLoop),
    subscriber: &mut EventLoop,
    topic: &str,
    body: &[u8],
) {
    let (client, mut pub_events) = publisher;
    client
        .publish(topic, QoS::AtLeastOnce, false, body.to_vec())
        .await
        .unwrap();
    let pump = tokio::spawn(async move { while pub_events.poll().await.is_ok() {} });
    let got = loop {
        match timeout(WAIT, subscriber.poll())
            .await
            .expect("no PUBLISH in time")
            .expect("subscriber")
        {
            Event::Incoming(Packet::Publish(p)) => break p,
            _ => continue,
        }
    };
    pump.abort();
    assert_eq!(got.topic, topic);
    assert_eq!(&got.payload[..], body);
}

#[tokio::test]
async fn rumqttc_over_websocket_both_ways() {
    if skip_for_external_broker() {
        return;
    }
    let broker = Broker::start();
    let port = broker
        .port_of("ws")
        .unwrap_or_else(|| panic!("no ws listener:\n{}", broker.log()));
    let url = format!("ws://127.0.0.1:{port}/ws");

    // WebSocket subscriber, TCP publisher.
    let (ws_sub, mut ws_events) =
        connect(ws_options("ws-sub", url.clone(), Transport::Ws), &broker).await;
    subscribe(&ws_sub, &mut ws_events, "ws/rumqttc/in").await;
    let (tcp_pub, tcp_pub_events) = connect(tcp_options("tcp-pub", &broker), &broker).await;
    pass_message(
        (&tcp_pub, tcp_pub_events),
        &mut ws_events,
        "ws/rumqttc/in",
        b"to ws",
    )
    .await;

    // TCP subscriber, WebSocket publisher.
    let (tcp_sub, mut tcp_events) = connect(tcp_options("tcp-sub", &broker), &broker).await;
    subscribe(&tcp_sub, &mut tcp_events, "ws/rumqttc/out").await;
    let (ws_pub, ws_pub_events) = connect(ws_options("ws-pub", url, Transport::Ws), &broker).await;
    pass_message(
        (&ws_pub, ws_pub_events),
        &mut tcp_events,
        "ws/rumqttc/out",
        b"from ws",
    )
    .await;
}

#[tokio::test]
async fn rumqttc_over_wss() {
    if skip_for_external_broker() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    make_dev_certs(dir.path(), &[]);
    let d = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
    let (cert, key) = (d("server.pem"), d("server-key.pem"));
    let broker = Broker::start_with_env(&[
        ("WHARF_TLS__CERT_FILE", &cert),
        ("WHARF_TLS__KEY_FILE", &key),
    ]);
    let port = broker
        .port_of("wss")
        .unwrap_or_else(|| panic!("no wss listener:\n{}", broker.log()));
    let config = Arc::new(client_config(dir.path()));
    let wss = || Transport::Wss(TlsConfiguration::Rustls(config.clone()));
    let url = format!("wss://localhost:{port}/ws");

    let (sub, mut sub_events) = connect(ws_options("wss-sub", url.clone(), wss()), &broker).await;
    subscribe(&sub, &mut sub_events, "wss/rumqttc").await;
    let (publisher, pub_events) = connect(ws_options("wss-pub", url, wss()), &broker).await;
    pass_message(
        (&publisher, pub_events),
        &mut sub_events,
        "wss/rumqttc",
        b"over wss",
    )
    .await;
}

/// Trusts the development CA only; rustls on ring, the broker's provider.
fn client_config(dir: &Path) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}
