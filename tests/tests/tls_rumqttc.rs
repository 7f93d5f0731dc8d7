//! rumqttc over MQTTS against a real wharf: server certificate checked against the development
//! CA made by `wharf certs`, and a client certificate logging in as its CN (no user name).
//!
//! Skipped with `WHARF_TEST_AMQP_URL` (an external broker has no TLS configured by us).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::time::timeout;
use wharf_tests::{make_dev_certs, skip_for_external_broker, Broker};

const WAIT: Duration = Duration::from_secs(10);

fn client_config(dir: &Path, with_cert: bool) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    if with_cert {
        let chain = CertificateDer::pem_file_iter(dir.join("client-guest.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join("client-guest-key.pem")).unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    }
}

/// Connects, and returns the client and its event loop once the CONNACK came (or the error).
async fn connect(
    port: u16,
    config: rustls::ClientConfig,
    password: bool,
    id: &str,
) -> Result<(AsyncClient, rumqttc::EventLoop), String> {
    let mut opts = MqttOptions::new(id, "localhost", port);
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(config),
    )));
    if password {
        opts.set_credentials("guest", "guest");
    }
    let (client, mut events) = AsyncClient::new(opts, 16);
    loop {
        match timeout(WAIT, events.poll()).await {
            Err(_) => return Err("no CONNACK in time".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Ok((client, events)),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn rumqttc_over_mqtts_with_certificate_login() {
    if skip_for_external_broker() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    make_dev_certs(dir.path(), &["guest"]);
    let d = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
    let (cert, key, ca) = (d("server.pem"), d("server-key.pem"), d("ca.pem"));
    let broker = Broker::start_with_env(&[
        ("WHARF_TLS__CERT_FILE", &cert),
        ("WHARF_TLS__KEY_FILE", &key),
        ("WHARF_TLS__CA_FILE", &ca),
        ("WHARF_TLS__VERIFY_PEER", "true"),
        ("WHARF_TLS__CERT_LOGIN", "true"),
    ]);
    let port = broker
        .port_of("mqtts")
        .unwrap_or_else(|| panic!("no mqtts listener:\n{}", broker.log()));

    // Password login over TLS: the subscriber.
    let (sub, mut sub_events) = connect(port, client_config(dir.path(), false), true, "tls-sub")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", broker.log()));
    sub.subscribe("tls/rumqttc", QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        match timeout(WAIT, sub_events.poll()).await.unwrap().unwrap() {
            Event::Incoming(Packet::SubAck(_)) => break,
            _ => continue,
        }
    }

    // Certificate login: no user name, the certificate's CN (guest) is the user.
    let (publisher, mut pub_events) =
        connect(port, client_config(dir.path(), true), false, "tls-pub")
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", broker.log()));
    publisher
        .publish("tls/rumqttc", QoS::AtLeastOnce, false, &b"over tls"[..])
        .await
        .unwrap();
    let pump = tokio::spawn(async move { while pub_events.poll().await.is_ok() {} });
    let got = loop {
        match timeout(WAIT, sub_events.poll()).await.unwrap().unwrap() {
            Event::Incoming(Packet::Publish(p)) => break p,
            _ => continue,
        }
    };
    assert_eq!(got.topic, "tls/rumqttc");
    assert_eq!(&got.payload[..], b"over tls");
    pump.abort();

    // Without a certificate and without a user name there is nobody to log in as.
    let refused = connect(port, client_config(dir.path(), false), false, "tls-anon").await;
    assert!(refused.is_err(), "anonymous TLS client was let in");
}
