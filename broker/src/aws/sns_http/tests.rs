//! The delivery engine against a local hyper server: post shape and headers, retries,
//! dead-lettering, the allow-list, restart recovery, HTTPS, and the signature a subscriber
//! checks. Waits are for events (a request arriving, the outbox emptying), never for time.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bridge::sns::signature::{sign_envelope, verify_envelope, SignatureVersion};
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::policy::{HealthyRetryPolicy, SubscriptionDeliveryPolicy, TopicDeliveryPolicy};
use super::*;

const TOPIC: &str = "arn:aws:sns:us-east-1:000000000000:orders";
const SUBSCRIPTION: &str =
    "arn:aws:sns:us-east-1:000000000000:orders:5f1c0a4e-0000-4000-8000-0000000000aa";

/// A request as the endpoint saw it.
#[derive(Debug)]
struct Seen {
    method: Method,
    target: String,
    headers: HeaderMap,
    body: String,
}

/// An endpoint answering with the scripted statuses in turn, then 200.
struct Endpoint {
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    async fn start(script: &[u16]) -> Endpoint {
        Self::start_on(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            script,
            None,
        )
        .await
    }

    async fn start_on(
        listener: TcpListener,
        script: &[u16],
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Endpoint {
        let addr = listener.local_addr().unwrap();
        let (tx, seen) = mpsc::unbounded_channel();
        let script = Arc::new(parking_lot::Mutex::new(
            script.iter().copied().collect::<VecDeque<u16>>(),
        ));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (tx, script, tls) = (tx.clone(), script.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (tx, script) = (tx.clone(), script.clone());
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            let _ = tx.send(Seen {
                                method: parts.method,
                                target: parts.uri.to_string(),
                                headers: parts.headers,
                                body: String::from_utf8(body.to_vec()).unwrap(),
                            });
                            let status = script.lock().pop_front().unwrap_or(200);
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(status)
                                    .body(Full::new(bytes::Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        Endpoint { addr, seen, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn next(&mut self) -> Seen {
        self.seen.recv().await.expect("the endpoint is running")
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Records dead-lettered posts.
#[derive(Default)]
struct Sink {
    posts: parking_lot::Mutex<Vec<(String, HttpPost, String)>>,
    notify: tokio::sync::Notify,
    /// Set: every subscription is gone (unsubscribed).
    unsubscribed: std::sync::atomic::AtomicBool,
    /// Set: a dead letter is durable only once `durable` is notified.
    hold: std::sync::atomic::AtomicBool,
    durable: Arc<tokio::sync::Notify>,
}

impl DeadLetterSink for Sink {
    fn dead_letter(&self, target_arn: &str, post: &HttpPost, reason: &str) -> DeadLettered {
        self.posts
            .lock()
            .push((target_arn.to_string(), post.clone(), reason.to_string()));
        self.notify.notify_one();
        if self.hold.load(std::sync::atomic::Ordering::SeqCst) {
            let durable = self.durable.clone();
            return Box::pin(async move { durable.notified().await });
        }
        Box::pin(async {})
    }

    fn subscribed(&self, _subscription_arn: &str) -> bool {
        !self.unsubscribed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn config(allow: &[&str]) -> SnsHttpConfig {
    SnsHttpConfig {
        allow: AllowList::parse(allow).unwrap(),
        https_ca_file: None,
        timeout: Duration::from_secs(30),
        fsync: true,
    }
}

/// A policy that retries `retries` times without waiting.
fn immediate(retries: u32) -> DeliveryPolicy {
    DeliveryPolicy {
        healthy_retry_policy: HealthyRetryPolicy {
            num_retries: retries,
            num_no_delay_retries: retries,
            ..HealthyRetryPolicy::default()
        },
        ..DeliveryPolicy::default()
    }
}

fn post(endpoint: &str, message_type: MessageType, body: String) -> HttpPost {
    HttpPost {
        endpoint: endpoint.to_string(),
        subscription_arn: SUBSCRIPTION.to_string(),
        topic_arn: TOPIC.to_string(),
        message_type,
        message_id: "8a2e9a33-5b5c-4f0e-9c51-7f3d1a0b2c4d".to_string(),
        body,
        raw: false,
        delivery_policy: immediate(3),
        dead_letter_arn: None,
    }
}

async fn wait_until_delivered(http: &SnsHttp) {
    while http.pending() > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn start(dir: &Path, allow: &[&str], sink: Arc<Sink>) -> (SnsHttp, CancellationToken) {
    let shutdown = CancellationToken::new();
    let http = SnsHttp::start(dir, config(allow), sink, shutdown.clone()).unwrap();
    (http, shutdown)
}

/// What the SNS layer would send: a signed SubscriptionConfirmation envelope.
fn confirmation_envelope(http: &SnsHttp) -> Map<String, Value> {
    let mut envelope = json!({
        "Type": "SubscriptionConfirmation",
        "MessageId": "8a2e9a33-5b5c-4f0e-9c51-7f3d1a0b2c4d",
        "Token": "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92",
        "TopicArn": TOPIC,
        "Message": "You have chosen to subscribe to the topic.\nTo confirm the subscription, visit the SubscribeURL included in this message.",
        "SubscribeURL": "http://localhost:4566/?Action=ConfirmSubscription&TopicArn=x&Token=2336412f",
        "Timestamp": "2026-11-26T12:00:00.000Z",
        "SigningCertURL": http.signing_cert_url("http://localhost:4566"),
    })
    .as_object()
    .unwrap()
    .clone();
    sign_envelope(http.signing_key(), SignatureVersion::V2, &mut envelope).unwrap();
    envelope
}

#[tokio::test]
async fn confirmation_post_has_aws_shape_headers_and_a_verifiable_signature() {
    let dir = tempfile::tempdir().unwrap();
    let mut endpoint = Endpoint::start(&[]).await;
    let (http, _shutdown) = start(dir.path(), &["127.0.0.0/8"], Arc::default());
    let envelope = confirmation_envelope(&http);
    let body = serde_json::to_string(&envelope).unwrap();
    let url = endpoint.url("/sns/hook?source=wharf");
    http.enqueue(post(
        &url,
        MessageType::SubscriptionConfirmation,
        body.clone(),
    ))
    .unwrap();
    let seen = endpoint.next().await;
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.target, "/sns/hook?source=wharf");
    let h = &seen.headers;
    assert_eq!(h["x-amz-sns-message-type"], "SubscriptionConfirmation");
    assert_eq!(
        h["x-amz-sns-message-id"],
        "8a2e9a33-5b5c-4f0e-9c51-7f3d1a0b2c4d"
    );
    assert_eq!(h["x-amz-sns-topic-arn"], TOPIC);
    // The subscription is not confirmed yet: AWS names none.
    assert!(h.get("x-amz-sns-subscription-arn").is_none());
    assert!(h.get("x-amz-sns-rawdelivery").is_none());
    assert_eq!(h["content-type"], "text/plain; charset=UTF-8");
    assert_eq!(h["user-agent"], "Amazon Simple Notification Service Agent");
    assert_eq!(h["host"], endpoint.addr.to_string().as_str());
    assert_eq!(seen.body, body);
    // The subscriber checks the signature with the certificate the broker serves.
    let received: Map<String, Value> = serde_json::from_str(&seen.body).unwrap();
    verify_envelope(http.certificate_pem(), &received).unwrap();
    assert!(http
        .certificate_path()
        .starts_with("/SimpleNotificationService-"));
    assert!(http.certificate_path().ends_with(".pem"));
    assert_eq!(
        received["SigningCertURL"],
        format!("http://localhost:4566{}", http.certificate_path())
    );
    wait_until_delivered(&http).await;
}

#[tokio::test]
async fn notification_and_raw_posts_name_the_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let mut endpoint = Endpoint::start(&[]).await;
    let (http, _shutdown) = start(dir.path(), &["localhost"], Arc::default());
    let url = format!("http://localhost:{}/n", endpoint.addr.port());
    let mut notification = post(&url, MessageType::Notification, "{}".into());
    notification.delivery_policy = DeliveryPolicy::effective(
        None,
        Some(
            &SubscriptionDeliveryPolicy::parse(
                r#"{"requestPolicy": {"headerContentType": "application/json"}}"#,
            )
            .unwrap(),
        ),
    );
    http.enqueue(notification).unwrap();
    let seen = endpoint.next().await;
    assert_eq!(seen.headers["x-amz-sns-message-type"], "Notification");
    assert_eq!(seen.headers["x-amz-sns-subscription-arn"], SUBSCRIPTION);
    assert_eq!(seen.headers["content-type"], "application/json");
    assert!(seen.headers.get("authorization").is_none());
    let mut raw = post(&url, MessageType::Notification, "just the message".into());
    raw.raw = true;
    http.enqueue(raw).unwrap();
    let seen = endpoint.next().await;
    assert_eq!(seen.headers["x-amz-sns-rawdelivery"], "true");
    assert_eq!(seen.body, "just the message");
    wait_until_delivered(&http).await;
    // Credentials in the endpoint become basic authentication, percent-decoded.
    let with_user = format!(
        "http://sns%40app:p%3Ass+w@localhost:{}/n",
        endpoint.addr.port()
    );
    http.enqueue(post(&with_user, MessageType::Notification, "auth".into()))
        .unwrap();
    let seen = endpoint.next().await;
    // base64("sns@app:p:ss+w")
    assert_eq!(seen.headers["authorization"], "Basic c25zQGFwcDpwOnNzK3c=");
    assert_eq!(seen.target, "/n");
    wait_until_delivered(&http).await;
    // A Publish to several subscriptions stores all its posts at once; each is delivered.
    let batch: Vec<HttpPost> = (0..5)
        .map(|i| post(&url, MessageType::Notification, format!("fan-out {i}")))
        .collect();
    http.enqueue_all(batch).unwrap();
    let mut bodies = Vec::new();
    for _ in 0..5 {
        bodies.push(endpoint.next().await.body);
    }
    bodies.sort();
    assert_eq!(
        bodies,
        (0..5).map(|i| format!("fan-out {i}")).collect::<Vec<_>>()
    );
    wait_until_delivered(&http).await;
}

#[tokio::test]
async fn failed_attempts_are_retried_until_a_2xx() {
    let dir = tempfile::tempdir().unwrap();
    let mut endpoint = Endpoint::start(&[500, 503, 502]).await;
    let sink = Arc::new(Sink::default());
    let (http, _shutdown) = start(dir.path(), &["127.0.0.1"], sink.clone());
    let mut p = post(&endpoint.url("/"), MessageType::Notification, "m".into());
    p.dead_letter_arn = Some("arn:aws:sqs:us-east-1:000000000000:dlq".into());
    http.enqueue(p).unwrap();
    for _ in 0..4 {
        let seen = endpoint.next().await;
        assert_eq!(
            seen.headers["x-amz-sns-message-id"],
            "8a2e9a33-5b5c-4f0e-9c51-7f3d1a0b2c4d"
        );
        assert_eq!(seen.body, "m");
    }
    wait_until_delivered(&http).await;
    assert!(sink.posts.lock().is_empty());
    assert!(
        endpoint.seen.try_recv().is_err(),
        "no attempt after the 2xx"
    );
}

/// AWS counts an attempt failed only outside 200-499: a 3xx or 4xx answer ends the delivery,
/// without retry or dead-lettering.
#[tokio::test]
async fn answers_in_3xx_and_4xx_are_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let mut endpoint = Endpoint::start(&[404, 301, 429]).await;
    let sink = Arc::new(Sink::default());
    let (http, _shutdown) = start(dir.path(), &["127.0.0.1"], sink.clone());
    for body in ["a", "b", "c"] {
        let mut p = post(&endpoint.url("/"), MessageType::Notification, body.into());
        p.dead_letter_arn = Some("arn:aws:sqs:us-east-1:000000000000:dlq".into());
        http.enqueue(p).unwrap();
        assert_eq!(endpoint.next().await.body, body);
        wait_until_delivered(&http).await;
    }
    assert!(endpoint.seen.try_recv().is_err(), "one attempt each");
    assert!(sink.posts.lock().is_empty());
}

#[tokio::test]
async fn spent_retries_go_to_the_dead_letter_sink() {
    let dir = tempfile::tempdir().unwrap();
    let mut endpoint = Endpoint::start(&[500; 10]).await;
    let sink = Arc::new(Sink::default());
    let (http, _shutdown) = start(dir.path(), &["127.0.0.1"], sink.clone());
    let mut p = post(&endpoint.url("/"), MessageType::Notification, "lost".into());
    p.delivery_policy = immediate(2);
    p.dead_letter_arn = Some("arn:aws:sqs:us-east-1:000000000000:dlq".into());
    http.enqueue(p.clone()).unwrap();
    // The first attempt and two retries.
    for _ in 0..3 {
        endpoint.next().await;
    }
    while sink.posts.lock().is_empty() {
        sink.notify.notified().await;
    }
    wait_until_delivered(&http).await;
    {
        let posts = sink.posts.lock();
        assert_eq!(posts.len(), 1);
        assert_eq!(posts[0].0, "arn:aws:sqs:us-east-1:000000000000:dlq");
        assert_eq!(posts[0].1, p);
        assert!(posts[0].2.contains("500"), "{}", posts[0].2);
        assert!(endpoint.seen.try_recv().is_err(), "exactly 3 attempts");
    }

    // Without a dead-letter queue the post is dropped (and leaves the outbox).
    let mut p = post(
        &endpoint.url("/"),
        MessageType::Notification,
        "dropped".into(),
    );
    p.delivery_policy = immediate(0);
    http.enqueue(p).unwrap();
    endpoint.next().await;
    wait_until_delivered(&http).await;
    assert_eq!(sink.posts.lock().len(), 1);
}

#[tokio::test]
async fn the_outbox_keeps_a_dead_letter_until_it_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut endpoint = Endpoint::start(&[500; 10]).await;
    let sink = Arc::new(Sink::default());
    sink.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    let (http, _shutdown) = start(dir.path(), &["127.0.0.1"], sink.clone());
    let mut p = post(&endpoint.url("/"), MessageType::Notification, "lost".into());
    p.delivery_policy = immediate(0);
    p.dead_letter_arn = Some("arn:aws:sqs:us-east-1:000000000000:dlq".into());
    http.enqueue(p).unwrap();
    endpoint.next().await;
    while sink.posts.lock().is_empty() {
        sink.notify.notified().await;
    }
    // Handed to the dead-letter queue but not yet durable there: still in the outbox, so a
    // crash now dead-letters it again after the restart instead of losing it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(http.pending(), 1);
    sink.durable.notify_one();
    wait_until_delivered(&http).await;
}

#[tokio::test]
async fn posts_of_a_subscription_unsubscribed_meanwhile_stop() {
    let dir = tempfile::tempdir().unwrap();
    let mut endpoint = Endpoint::start(&[500; 50]).await;
    let sink = Arc::new(Sink::default());
    let (http, _shutdown) = start(dir.path(), &["127.0.0.1"], sink.clone());
    let mut p = post(&endpoint.url("/"), MessageType::Notification, "late".into());
    // Retries a second apart: the unsubscribe lands between two of them.
    p.delivery_policy.healthy_retry_policy = HealthyRetryPolicy {
        min_delay_target: 1,
        max_delay_target: 1,
        num_retries: 40,
        ..HealthyRetryPolicy::default()
    };
    p.dead_letter_arn = Some("arn:aws:sqs:us-east-1:000000000000:dlq".into());
    http.enqueue(p).unwrap();
    endpoint.next().await;
    sink.unsubscribed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    wait_until_delivered(&http).await;
    // At most the attempt already under way, and nothing dead-lettered.
    let mut more = 0;
    while endpoint.seen.try_recv().is_ok() {
        more += 1;
    }
    assert!(more <= 1, "{more} attempts after the unsubscribe");
    assert!(sink.posts.lock().is_empty());
}

#[tokio::test]
async fn endpoints_outside_the_allow_list_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(Sink::default());
    let (http, _shutdown) = start(
        dir.path(),
        &["127.0.0.0/8", "hooks.example.com"],
        sink.clone(),
    );
    let check = |u: &str| http.check_endpoint(&Url::parse(u).unwrap());
    assert!(check("http://127.0.0.1:9/x").is_ok());
    assert!(check("https://HOOKS.example.com/x").is_ok());
    for refused in [
        "http://10.0.0.1/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/x",
        "http://[::ffff:10.0.0.1]/x",
        "http://evil.example.com/x",
        "http://hooks.example.com.evil.org/x",
        "ftp://127.0.0.1/x",
        "file:///etc/passwd",
    ] {
        let err = check(refused).unwrap_err();
        assert!(!err.is_empty(), "{refused}");
    }
    assert!(check("http://[::ffff:127.0.0.1]/x").is_ok());
    assert_eq!(
        check("http://10.0.0.1/x").unwrap_err(),
        "endpoint host 10.0.0.1 is not in sns.http_allow"
    );
    // A post whose endpoint is no longer allowed is never sent: it is dead-lettered at once.
    let mut p = post("http://10.0.0.1/x", MessageType::Notification, "m".into());
    p.dead_letter_arn = Some("arn:aws:sqs:us-east-1:000000000000:dlq".into());
    http.enqueue(p).unwrap();
    while sink.posts.lock().is_empty() {
        sink.notify.notified().await;
    }
    assert!(sink.posts.lock()[0].2.contains("sns.http_allow"));
    wait_until_delivered(&http).await;
}

#[tokio::test]
async fn pending_posts_are_resumed_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // First attempt fails, the retry is 20 s away (AWS's default policy): shut down first.
    let mut endpoint = Endpoint::start(&[500]).await;
    let (http, shutdown) = start(dir.path(), &["127.0.0.1"], Arc::default());
    let certificate = http.certificate_pem().to_string();
    let mut p = post(
        &endpoint.url("/again"),
        MessageType::Notification,
        "survivor".into(),
    );
    p.delivery_policy = DeliveryPolicy::default();
    http.enqueue(p).unwrap();
    assert_eq!(endpoint.next().await.body, "survivor");
    shutdown.cancel();
    http.closed().await;
    assert_eq!(http.pending(), 1);
    drop(http);
    // An unfinished write after it, as a crash leaves: dropped on open.
    let log = dir.path().join("sns-http/outbox.log");
    let mut file = fs::OpenOptions::new().append(true).open(&log).unwrap();
    file.write_all(&[1, 9, 9, 9]).unwrap();
    drop(file);

    let (http, _shutdown) = start(dir.path(), &["127.0.0.1"], Arc::default());
    assert_eq!(
        http.certificate_pem(),
        certificate,
        "the signing key is kept"
    );
    let seen = endpoint.next().await;
    assert_eq!(seen.body, "survivor");
    assert_eq!(seen.target, "/again");
    wait_until_delivered(&http).await;
    drop(http);
    // Delivered posts stay delivered.
    let (http, _shutdown) = start(dir.path(), &["127.0.0.1"], Arc::default());
    assert_eq!(http.pending(), 0);
}

#[test]
fn outbox_compacts_when_done_marks_outnumber_pending_posts() {
    let dir = tempfile::tempdir().unwrap();
    let (mut outbox, pending) = Outbox::open(dir.path(), false).unwrap();
    assert!(pending.is_empty());
    let p = post(
        "http://127.0.0.1/",
        MessageType::Notification,
        "x".repeat(100),
    );
    let ids: Vec<u64> = (0..outbox::COMPACT_MIN_DONE + 10)
        .map(|_| outbox.append_all(std::slice::from_ref(&p)).unwrap()[0])
        .collect();
    let log = dir.path().join("outbox.log");
    let full = fs::metadata(&log).unwrap().len();
    for id in &ids[..ids.len() - 1] {
        outbox.complete(*id).unwrap();
    }
    let compacted = fs::metadata(&log).unwrap().len();
    assert!(compacted < full / 10, "{compacted} of {full}");
    drop(outbox);
    let (outbox, pending) = Outbox::open(dir.path(), false).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].0, *ids.last().unwrap());
    assert_eq!(pending[0].1, p);
    assert_eq!(outbox.pending_count(), 1);
}

#[tokio::test]
async fn https_endpoints_are_verified_against_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let written = wharf_certs::generate(&wharf_certs::CertsArgs {
        out: dir.path().join("certs"),
        server_names: vec![],
        clients: vec![],
        expired_clients: vec![],
        days: 2,
    })
    .unwrap();
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(&written.server_cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&written.server_key).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut endpoint = Endpoint::start_on(listener, &[], Some(acceptor)).await;
    let url = format!("https://localhost:{}/secure", endpoint.addr.port());

    // Without the CA the certificate is not trusted: the attempt fails and is dead-lettered.
    let sink = Arc::new(Sink::default());
    let (http, _shutdown) = start(&dir.path().join("a"), &["localhost"], sink.clone());
    let mut p = post(&url, MessageType::Notification, "secret".into());
    p.delivery_policy = immediate(0);
    p.dead_letter_arn = Some("arn:aws:sqs:us-east-1:000000000000:dlq".into());
    http.enqueue(p.clone()).unwrap();
    while sink.posts.lock().is_empty() {
        sink.notify.notified().await;
    }
    assert!(
        sink.posts.lock()[0].2.contains("TLS"),
        "{}",
        sink.posts.lock()[0].2
    );

    // With sns.https_ca_file it is, and the post arrives over TLS.
    let mut with_ca = config(&["localhost"]);
    with_ca.https_ca_file = Some(written.ca_cert.clone());
    let http = SnsHttp::start(
        &dir.path().join("b"),
        with_ca,
        sink.clone(),
        CancellationToken::new(),
    )
    .unwrap();
    http.enqueue(p).unwrap();
    let seen = endpoint.next().await;
    assert_eq!(seen.body, "secret");
    assert_eq!(seen.target, "/secure");
    wait_until_delivered(&http).await;
    assert_eq!(sink.posts.lock().len(), 1);
}

#[test]
fn retry_delays_follow_the_four_phases() {
    let d = |p: &HealthyRetryPolicy, r| p.delay_before(r).map(|d| d.as_millis());
    // AWS's default: 3 retries 20 s apart.
    let default = HealthyRetryPolicy::default();
    assert_eq!(
        (1..=4).map(|r| d(&default, r)).collect::<Vec<_>>(),
        [Some(20_000), Some(20_000), Some(20_000), None]
    );
    let p = HealthyRetryPolicy {
        min_delay_target: 1,
        max_delay_target: 60,
        num_retries: 10,
        num_no_delay_retries: 2,
        num_min_delay_retries: 2,
        num_max_delay_retries: 2,
        backoff_function: policy::Backoff::Linear,
    };
    let delays: Vec<_> = (1..=11).map(|r| d(&p, r)).collect();
    assert_eq!(
        delays,
        [
            Some(0),
            Some(0),
            Some(1_000),
            Some(1_000),
            Some(15_750),
            Some(30_500),
            Some(45_250),
            Some(60_000),
            Some(60_000),
            Some(60_000),
            None
        ]
    );
    // Every backoff function rises from min to max and ends on max.
    for backoff in [
        policy::Backoff::Linear,
        policy::Backoff::Arithmetic,
        policy::Backoff::Geometric,
        policy::Backoff::Exponential,
    ] {
        let p = HealthyRetryPolicy {
            backoff_function: backoff,
            ..p
        };
        let backoff_delays: Vec<u128> = (5..=8).map(|r| d(&p, r).unwrap()).collect();
        assert!(
            backoff_delays.windows(2).all(|w| w[0] <= w[1]),
            "{backoff:?} {backoff_delays:?}"
        );
        assert!(backoff_delays[0] >= 1_000, "{backoff:?}");
        assert_eq!(*backoff_delays.last().unwrap(), 60_000, "{backoff:?}");
    }
}

#[test]
fn delivery_policies_are_validated_with_aws_limits() {
    let ok = SubscriptionDeliveryPolicy::parse(
        r#"{"healthyRetryPolicy": {"minDelayTarget": 5, "maxDelayTarget": 10, "numRetries": 6,
            "backoffFunction": "EXPONENTIAL"}, "throttlePolicy": {"maxReceivesPerSecond": 10},
            "requestPolicy": {"headerContentType": "application/json; charset=UTF-8"}}"#,
    )
    .unwrap();
    let retry = ok.healthy_retry_policy.unwrap();
    assert_eq!(
        (
            retry.min_delay_target,
            retry.max_delay_target,
            retry.num_retries
        ),
        (5, 10, 6)
    );
    assert_eq!(retry.backoff_function, policy::Backoff::Exponential);
    // Fields left out take AWS's defaults.
    let partial =
        SubscriptionDeliveryPolicy::parse(r#"{"healthyRetryPolicy": {"numRetries": 5}}"#).unwrap();
    assert_eq!(partial.healthy_retry_policy.unwrap().min_delay_target, 20);
    for (json, reason) in [
        ("{", "failed to parse JSON"),
        ("[]", "DeliveryPolicy must be a JSON object"),
        (r#"{"sicklyRetryPolicy": {}}"#, "unknown key"),
        (
            r#"{"healthyRetryPolicy": {"numRetries": 101}}"#,
            "numRetries must be between 0 and 100",
        ),
        (
            r#"{"healthyRetryPolicy": {"numRetries": -1}}"#,
            "numRetries must be a non-negative integer",
        ),
        (
            r#"{"healthyRetryPolicy": {"maxDelayTarget": 3601}}"#,
            "maxDelayTarget must be between 1 and 3600",
        ),
        (
            r#"{"healthyRetryPolicy": {"minDelayTarget": 30, "maxDelayTarget": 20}}"#,
            "minDelayTarget must be between 1 and maxDelayTarget",
        ),
        (
            r#"{"healthyRetryPolicy": {"minDelayTarget": 0}}"#,
            "minDelayTarget must be between 1",
        ),
        (
            r#"{"healthyRetryPolicy": {"numRetries": 2, "numNoDelayRetries": 3}}"#,
            "must not exceed numRetries",
        ),
        (
            r#"{"healthyRetryPolicy": {"numRetries": 100, "minDelayTarget": 60, "maxDelayTarget": 60}}"#,
            "more than the 3600 allowed",
        ),
        (
            r#"{"healthyRetryPolicy": {"backoffFunction": "cubic"}}"#,
            "backoffFunction must be",
        ),
        (
            r#"{"throttlePolicy": {"maxReceivesPerSecond": 0}}"#,
            "maxReceivesPerSecond must be at least 1",
        ),
        (
            r#"{"requestPolicy": {"headerContentType": "image/png"}}"#,
            "headerContentType must be one of",
        ),
    ] {
        let err = SubscriptionDeliveryPolicy::parse(json).unwrap_err();
        assert!(err.0.contains(reason), "{json}: {err}");
        assert!(err
            .to_string()
            .starts_with("Invalid parameter: DeliveryPolicy: "));
    }
}

#[test]
fn effective_policy_layers_topic_and_subscription() {
    let topic = TopicDeliveryPolicy::parse(
        r#"{"http": {"defaultHealthyRetryPolicy": {"numRetries": 7, "minDelayTarget": 2,
            "maxDelayTarget": 30}, "defaultRequestPolicy": {"headerContentType": "text/xml"}}}"#,
    )
    .unwrap();
    let sub =
        SubscriptionDeliveryPolicy::parse(r#"{"healthyRetryPolicy": {"numRetries": 1}}"#).unwrap();
    assert_eq!(
        DeliveryPolicy::effective(None, None),
        DeliveryPolicy::default()
    );
    let from_topic = DeliveryPolicy::effective(Some(&topic), None);
    assert_eq!(from_topic.healthy_retry_policy.num_retries, 7);
    assert_eq!(from_topic.request_policy.header_content_type, "text/xml");
    let both = DeliveryPolicy::effective(Some(&topic), Some(&sub));
    assert_eq!(both.healthy_retry_policy.num_retries, 1);
    assert_eq!(both.request_policy.header_content_type, "text/xml");
    let locked = TopicDeliveryPolicy {
        disable_subscription_overrides: true,
        ..topic.clone()
    };
    assert_eq!(
        DeliveryPolicy::effective(Some(&locked), Some(&sub))
            .healthy_retry_policy
            .num_retries,
        7
    );
    assert!(TopicDeliveryPolicy::parse(r#"{"sqs": {}}"#).is_err());
    let json: Value = serde_json::from_str(&both.to_json()).unwrap();
    assert_eq!(json["healthyRetryPolicy"]["numRetries"], 1);
    assert_eq!(json["healthyRetryPolicy"]["backoffFunction"], "linear");
}

#[test]
fn throttle_spaces_attempts_per_subscription() {
    let mut pacer = throttle::Pacer::default();
    let t0 = std::time::Instant::now();
    let ms = |i: std::time::Instant| (i - t0).as_millis();
    // 4 per second: 250 ms apart, in the order asked.
    let slots: Vec<u128> = (0..4).map(|_| ms(pacer.reserve("a", 4, t0))).collect();
    assert_eq!(slots, [0, 250, 500, 750]);
    // Another subscription has its own slots.
    assert_eq!(ms(pacer.reserve("b", 4, t0)), 0);
    // Idle long enough, a subscription starts again at once.
    let later = t0 + Duration::from_secs(5);
    assert_eq!(ms(pacer.reserve("a", 4, later)), 5_000);
    assert_eq!(ms(pacer.reserve("a", 4, later)), 5_250);
}

#[test]
fn logged_endpoints_carry_no_credentials() {
    assert_eq!(
        without_credentials("https://user:secret@hooks.example.com:8443/in?x=1"),
        "https://hooks.example.com:8443/in?x=1"
    );
    assert_eq!(
        without_credentials("http://127.0.0.1/n"),
        "http://127.0.0.1/n"
    );
    assert_eq!(basic_auth("http://127.0.0.1/n"), None);
}
