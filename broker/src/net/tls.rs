//! TLS for the listeners (AMQPS, MQTTS, WSS): the rustls server configuration made from the
//! `[tls]` settings, and the per-connection handshake.
//!
//! rustls with the ring provider; TLS 1.2 and 1.3 only. The handshake runs inside the connection's
//! own task with a timeout (never in the accept loop: one slow client must not stall accepts).
//! A failed handshake (a plain-text client, an unknown or expired client certificate under
//! `fail_if_no_peer_cert`) is logged at INFO and the connection dropped.
//!
//! With `verify_peer` and `cert_login`, the verified client certificate's subject CN becomes
//! [`Peer::cert_login`]: AMQP then offers EXTERNAL, MQTT logs a CONNECT without user name in as
//! that user.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::Peer;

/// The `[tls]` settings the listeners need (config.rs makes them from the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: Option<PathBuf>,
    pub verify_peer: bool,
    pub fail_if_no_peer_cert: bool,
    pub cert_login: bool,
    pub handshake_timeout: Duration,
}

/// A TLS setting that cannot be used: a missing or unreadable file, no PEM in it, a key that does
/// not match the certificate. A configuration error (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsConfigError(String);

/// What the TLS listeners share: the acceptor and what to do after the handshake.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    cert_login: bool,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert_login", &self.cert_login)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

fn load_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| TlsConfigError(format!("{key}: cannot read {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsConfigError(format!(
            "{key}: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certs)
}

impl Tls {
    /// Reads the PEM files and builds the server configuration.
    ///
    /// # Errors
    /// A [`TlsConfigError`] naming the setting and the file.
    pub fn load(settings: &TlsSettings) -> Result<Tls, TlsConfigError> {
        let chain = load_certs("tls.cert_file", &settings.cert_file)?;
        let key = PrivateKeyDer::from_pem_file(&settings.key_file).map_err(|e| {
            TlsConfigError(format!(
                "tls.key_file: cannot read a private key from {}: {e}",
                settings.key_file.display()
            ))
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsConfigError(format!("tls: {e}")))?;
        let builder = if settings.verify_peer {
            let ca_file = settings
                .ca_file
                .as_deref()
                .ok_or_else(|| TlsConfigError("tls.verify_peer: needs tls.ca_file".to_string()))?;
            let mut roots = RootCertStore::empty();
            for cert in load_certs("tls.ca_file", ca_file)? {
                roots.add(cert).map_err(|e| {
                    TlsConfigError(format!(
                        "tls.ca_file: {} holds a certificate rustls cannot use as a CA: {e}",
                        ca_file.display()
                    ))
                })?;
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if !settings.fail_if_no_peer_cert {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|e| TlsConfigError(format!("tls.ca_file: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        // Checks that the key belongs to the certificate.
        let config = builder.with_single_cert(chain, key).map_err(|e| {
            TlsConfigError(format!(
                "tls.cert_file/tls.key_file: {} and {} do not make a usable certificate: {e}",
                settings.cert_file.display(),
                settings.key_file.display()
            ))
        })?;
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            cert_login: settings.verify_peer && settings.cert_login,
            handshake_timeout: settings.handshake_timeout,
        })
    }

    /// Runs the server handshake on `tcp`, within the handshake timeout and until `shutdown`.
    /// `None` when it failed (logged here); the caller just returns.
    pub async fn accept(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
        shutdown: &CancellationToken,
    ) -> Option<(TlsStream<TcpStream>, Peer)> {
        let handshake = tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(tcp));
        let result = tokio::select! {
            () = shutdown.cancelled() => return None,
            r = handshake => r,
        };
        let stream = match result {
            Err(_) => {
                tracing::info!(
                    peer = %addr,
                    timeout_secs = self.handshake_timeout.as_secs_f64(),
                    "TLS handshake timed out"
                );
                return None;
            }
            Ok(Err(e)) => {
                tracing::info!(peer = %addr, error = %e, "TLS handshake failed");
                return None;
            }
            Ok(Ok(s)) => s,
        };
        let conn = stream.get_ref().1;
        let client_cert = conn.peer_certificates().and_then(|c| c.first());
        let cert_login = if self.cert_login {
            client_cert.and_then(|der| match common_name(der) {
                Some(cn) => Some(cn),
                None => {
                    tracing::info!(peer = %addr, "client certificate has no subject CN: no certificate login");
                    None
                }
            })
        } else {
            None
        };
        tracing::debug!(
            version = ?conn.protocol_version(),
            cipher = ?conn.negotiated_cipher_suite().map(|c| c.suite()),
            client_cert = client_cert.is_some(),
            cert_login = cert_login.as_deref().unwrap_or(""),
            "TLS handshake done"
        );
        Some((stream, Peer { addr, cert_login }))
    }
}

/// The first subject CN of a certificate, if it is a string.
fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn make_certs(dir: &Path) -> wharf_certs::Written {
        wharf_certs::generate(&wharf_certs::CertsArgs {
            out: dir.to_path_buf(),
            server_names: vec![],
            clients: vec!["alice".into()],
            expired_clients: vec![],
            days: 1,
        })
        .unwrap()
    }

    fn settings(w: &wharf_certs::Written) -> TlsSettings {
        TlsSettings {
            cert_file: w.server_cert.clone(),
            key_file: w.server_key.clone(),
            ca_file: Some(w.ca_cert.clone()),
            verify_peer: true,
            fail_if_no_peer_cert: true,
            cert_login: true,
            handshake_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn common_name_of_a_client_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let w = make_certs(dir.path());
        let certs = load_certs("x", &w.clients[0].1).unwrap();
        assert_eq!(common_name(&certs[0]).as_deref(), Some("alice"));
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let w = make_certs(dir.path());
        assert!(Tls::load(&settings(&w)).is_ok());

        let mut s = settings(&w);
        s.cert_file = dir.path().join("missing.pem");
        let e = Tls::load(&s).unwrap_err().to_string();
        assert!(e.starts_with("tls.cert_file: cannot read"), "{e}");
        assert!(e.contains("missing.pem"), "{e}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::File::create(&garbage)
            .unwrap()
            .write_all(b"not a pem file\n")
            .unwrap();
        let mut s = settings(&w);
        s.cert_file = garbage.clone();
        let e = Tls::load(&s).unwrap_err().to_string();
        assert!(e.contains("holds no PEM certificate"), "{e}");

        let mut s = settings(&w);
        s.key_file = garbage;
        let e = Tls::load(&s).unwrap_err().to_string();
        assert!(e.starts_with("tls.key_file:"), "{e}");

        // A key that is not the certificate's.
        let mut s = settings(&w);
        s.key_file = w.clients[0].2.clone();
        let e = Tls::load(&s).unwrap_err().to_string();
        assert!(e.starts_with("tls.cert_file/tls.key_file:"), "{e}");

        let mut s = settings(&w);
        s.ca_file = Some(w.server_key.clone());
        let e = Tls::load(&s).unwrap_err().to_string();
        assert!(e.starts_with("tls.ca_file:"), "{e}");
    }

    /// A plain-text client on a TLS port: the handshake fails, the connection is closed, and the
    /// accept returns None (no panic).
    #[tokio::test]
    async fn plain_text_client_fails_the_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let w = make_certs(dir.path());
        let tls = Tls::load(&settings(&w)).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
            let mut buf = Vec::new();
            // The server answers with an alert (or nothing) and closes.
            let _ = c.read_to_end(&mut buf).await;
            buf
        });
        let (tcp, peer) = listener.accept().await.unwrap();
        let token = CancellationToken::new();
        assert!(tls.accept(tcp, peer, &token).await.is_none());
        let reply = client.await.unwrap();
        assert!(!reply.starts_with(b"AMQP"), "{reply:?}");
    }

    /// Connects with rustls as the client; `client` names the certificate to present.
    async fn handshake(tls: &Tls, w: &wharf_certs::Written, client: Option<usize>) -> Option<Peer> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots
            .add(load_certs("ca", &w.ca_cert).unwrap().remove(0))
            .unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match client {
            Some(i) => builder
                .with_client_auth_cert(
                    load_certs("c", &w.clients[i].1).unwrap(),
                    PrivateKeyDer::from_pem_file(&w.clients[i].2).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            if let Ok(mut s) = connector.connect(name, tcp).await {
                // TLS 1.3: a refused client certificate shows on the first read.
                let mut buf = [0u8; 1];
                let _ = s.read(&mut buf).await;
            }
        });
        let (tcp, peer) = listener.accept().await.unwrap();
        let peer = tls
            .accept(tcp, peer, &CancellationToken::new())
            .await
            .map(|(_stream, p)| p);
        client.abort();
        peer
    }

    #[tokio::test]
    async fn verified_client_certificate_logs_in_as_its_cn() {
        let dir = tempfile::tempdir().unwrap();
        let w = make_certs(dir.path());
        let tls = Tls::load(&settings(&w)).unwrap();
        let peer = handshake(&tls, &w, Some(0)).await.expect("handshake");
        assert_eq!(peer.cert_login.as_deref(), Some("alice"));
        // fail_if_no_peer_cert: no certificate, no connection.
        assert!(handshake(&tls, &w, None).await.is_none());

        // cert_login off: verified, but no login from it.
        let mut s = settings(&w);
        s.cert_login = false;
        let tls = Tls::load(&s).unwrap();
        let peer = handshake(&tls, &w, Some(0)).await.expect("handshake");
        assert_eq!(peer.cert_login, None);

        // Optional client certificates: without one the handshake succeeds, with no login.
        let mut s = settings(&w);
        s.fail_if_no_peer_cert = false;
        let tls = Tls::load(&s).unwrap();
        let peer = handshake(&tls, &w, None).await.expect("handshake");
        assert_eq!(peer.cert_login, None);
    }

    #[tokio::test]
    async fn a_silent_client_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let w = make_certs(dir.path());
        let mut s = settings(&w);
        s.handshake_timeout = Duration::from_millis(100);
        let tls = Tls::load(&s).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (tcp, peer) = listener.accept().await.unwrap();
        let started = std::time::Instant::now();
        assert!(tls
            .accept(tcp, peer, &CancellationToken::new())
            .await
            .is_none());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
