//! One HTTP/1.1 POST over a fresh connection, plain or TLS: hyper's client connection on a
//! tokio TCP stream, wrapped in tokio-rustls for `https`.
//!
//! A connection per post, no pool: deliveries to one endpoint are spread over retries minutes
//! apart, and a fresh connection never sends to a peer that closed a kept-alive one meanwhile.
//! HTTPS trusts the system's CA certificates (rustls-native-certs) plus `sns.https_ca_file`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use url::{Host, Url};

pub(crate) struct Client {
    tls: TlsConnector,
    timeout: Duration,
}

impl Client {
    pub(crate) fn new(ca_file: Option<&Path>, timeout: Duration) -> Result<Client, String> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            // A system certificate rustls cannot use is skipped, as browsers do.
            let _ = roots.add(cert);
        }
        if let Some(path) = ca_file {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| format!("sns.https_ca_file: cannot read {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "sns.https_ca_file: {} holds no PEM certificate",
                    path.display()
                ));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("sns.https_ca_file: {}: {e}", path.display()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("sns https client: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Client {
            tls: TlsConnector::from(Arc::new(config)),
            timeout,
        })
    }

    /// POSTs `body` to `url` with `headers`; the answer's status, or why there was none. The
    /// whole exchange (connect, TLS, request, response head) is bounded by the timeout.
    pub(crate) async fn post(
        &self,
        url: &Url,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<StatusCode, String> {
        match tokio::time::timeout(self.timeout, self.exchange(url, headers, body)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    async fn exchange(
        &self,
        url: &Url,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<StatusCode, String> {
        let port = url
            .port_or_known_default()
            .ok_or_else(|| "endpoint without a port".to_string())?;
        let (stream, server_name) = match url.host() {
            Some(Host::Domain(name)) => (
                TcpStream::connect((name, port)).await,
                ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?,
            ),
            Some(Host::Ipv4(ip)) => (
                TcpStream::connect((ip, port)).await,
                ServerName::IpAddress(std::net::IpAddr::V4(ip).into()),
            ),
            Some(Host::Ipv6(ip)) => (
                TcpStream::connect((ip, port)).await,
                ServerName::IpAddress(std::net::IpAddr::V6(ip).into()),
            ),
            None => return Err("endpoint without a host".into()),
        };
        let stream = stream.map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut host = url.host_str().unwrap_or_default().to_string();
        if let Some(p) = url.port() {
            host = format!("{host}:{p}");
        }
        let mut target = url.path().to_string();
        if let Some(q) = url.query() {
            target = format!("{target}?{q}");
        }
        let mut request = Request::post(target).header(http::header::HOST, host);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| format!("request: {e}"))?;
        if url.scheme() == "https" {
            let tls = self
                .tls
                .connect(server_name, stream)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            send(tls, request).await
        } else {
            send(stream, request).await
        }
    }
}

async fn send<S>(stream: S, request: Request<Full<Bytes>>) -> Result<StatusCode, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    // The connection future drives the socket; it ends when the response is read and the
    // sender dropped.
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let result = sender
        .send_request(request)
        .await
        .map(|response| response.status())
        .map_err(|e| format!("HTTP: {e}"));
    drop(sender);
    driver.abort();
    result
}
