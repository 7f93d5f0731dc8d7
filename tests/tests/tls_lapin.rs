//! lapin over AMQPS against a real wharf: the server certificate checked against the development
//! CA made by `wharf certs`, password login, and EXTERNAL with a client certificate (its CN is the
//! user).
//!
//! lapin's TLS is rustls on ring (the broker's provider) through amq-protocol-tcp; the CA is
//! handed over as the connection's `cert_chain`, the client certificate as a PKCS#8 identity.
//!
//! Skipped with `WHARF_TEST_AMQP_URL` (an external broker has no TLS configured by us).

use std::path::Path;
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ErrorKind};
use tokio::time::timeout;
use wharf_tests::{make_dev_certs, skip_for_external_broker, Broker};

const WAIT: Duration = Duration::from_secs(10);

/// A broker with TLS on: client certificates verified when presented (not required), and
/// certificate login.
fn tls_broker(dir: &Path) -> Broker {
    let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let (cert, key, ca) = (d("server.pem"), d("server-key.pem"), d("ca.pem"));
    Broker::start_with_env(&[
        ("WHARF_TLS__CERT_FILE", &cert),
        ("WHARF_TLS__KEY_FILE", &key),
        ("WHARF_TLS__CA_FILE", &ca),
        ("WHARF_TLS__VERIFY_PEER", "true"),
        ("WHARF_TLS__CERT_LOGIN", "true"),
    ])
}

/// The development CA, and `client`'s certificate and key when given.
fn tls_config(dir: &Path, client: Option<&str>) -> OwnedTLSConfig {
    let read = |f: String| std::fs::read(dir.join(f)).expect("read a certs file");
    OwnedTLSConfig {
        identity: client.map(|c| OwnedIdentity::PKCS8 {
            pem: read(format!("client-{c}.pem")),
            key: read(format!("client-{c}-key.pem")),
        }),
        cert_chain: Some(String::from_utf8(read("ca.pem".into())).expect("PEM is text")),
    }
}

async fn connect(url: &str, config: OwnedTLSConfig) -> lapin::Result<Connection> {
    let runtime = lapin::runtime::default_runtime()?;
    timeout(
        WAIT,
        Connection::connect_with_config(url, ConnectionProperties::default(), config, runtime),
    )
    .await
    .expect("AMQPS connect timed out")
}

/// Publishes to a fresh exclusive queue with a confirm and gets the message back.
async fn round_trip(conn: &Connection, body: &[u8]) {
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare")
        .name()
        .clone();
    let confirm = ch
        .basic_publish(
            "".into(),
            q.clone(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack(), "{confirm:?}");
    let got = ch
        .basic_get(q, BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .expect("the message is in the queue");
    assert_eq!(got.delivery.data, body);
    ch.close(200, "done".into()).await.expect("channel.close");
}

#[tokio::test]
async fn lapin_over_amqps_with_password() {
    if skip_for_external_broker() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    make_dev_certs(dir.path(), &["guest", "nobody"]);
    let broker = tls_broker(dir.path());
    let port = broker
        .port_of("amqps")
        .unwrap_or_else(|| panic!("no amqps listener:\n{}", broker.log()));
    let url = format!("amqps://guest:guest@localhost:{port}/%2f");
    let conn = connect(&url, tls_config(dir.path(), None))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", broker.log()));
    round_trip(&conn, b"over amqps").await;
    conn.close(200, "bye".into()).await.expect("close");
}

#[tokio::test]
async fn lapin_external_login_with_a_client_certificate() {
    if skip_for_external_broker() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    make_dev_certs(dir.path(), &["guest", "nobody"]);
    let broker = tls_broker(dir.path());
    let port = broker
        .port_of("amqps")
        .unwrap_or_else(|| panic!("no amqps listener:\n{}", broker.log()));
    // No user name in the URL: the certificate's CN (guest) is the user.
    let url = format!("amqps://localhost:{port}/%2f?auth_mechanism=external");
    let conn = connect(&url, tls_config(dir.path(), Some("guest")))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", broker.log()));
    round_trip(&conn, b"logged in by certificate").await;
    conn.close(200, "bye".into()).await.expect("close");

    // Without a certificate the broker does not offer EXTERNAL (503 COMMAND_INVALID, as
    // RabbitMQ answers an unknown mechanism); a certificate whose CN is no user (nobody) is
    // refused with 403 ACCESS_REFUSED. Neither gets a connection.
    for (client, code) in [(None, 503), (Some("nobody"), 403)] {
        let refused = connect(&url, tls_config(dir.path(), client)).await;
        let err = refused
            .err()
            .unwrap_or_else(|| panic!("EXTERNAL with {client:?} was let in:\n{}", broker.log()));
        match err.kind() {
            ErrorKind::ProtocolError(e) => assert_eq!(e.get_id(), code, "{client:?}: {err}"),
            other => panic!("{client:?}: not a connection.close: {other:?}"),
        }
    }
}
