//! Delivery of SNS messages to HTTP/HTTPS subscribers: durable, retried per the delivery
//! policy, checked against an allow-list, signed with the broker's key.
//!
//! API (for the SNS layer to wire in):
//! - [`SnsHttp::start`]`(data_dir, `[`SnsHttpConfig`]`, dead_letters, shutdown)` loads (or on
//!   first run makes and saves) the signing key in `<data_dir>/sns-http/`, reopens the outbox
//!   there and resumes every post still pending from before a restart. Call it inside the
//!   tokio runtime; posts stop being attempted when `shutdown` is cancelled (they stay in the
//!   outbox for the next start).
//! - [`SnsHttp::check_endpoint`] for Subscribe: `http`/`https` and a host `sns.http_allow`
//!   allows ([`allow`] says how entries match); the error text goes into InvalidParameter.
//! - [`SnsHttp::enqueue`]`(`[`HttpPost`]`)`: the post is on disk (fsynced) when it returns `Ok`,
//!   then attempted at once and retried per its [`DeliveryPolicy`]; [`SnsHttp::enqueue_all`]
//!   stores a Publish's posts for all HTTP/S subscriptions with one fsync. The fsync blocks the
//!   calling thread (as the message store's does), so call it where blocking is allowed or
//!   accept a few milliseconds on the runtime thread. The caller builds the body:
//!   the signed JSON envelope (use [`SnsHttp::signing_key`] with
//!   `bridge::sns::signature::sign_envelope`, and [`SnsHttp::signing_cert_url`] for
//!   `SigningCertURL`), or the bare message for raw delivery. Building it in the SNS layer
//!   means the same envelope goes to SQS and HTTP subscribers.
//! - As in AWS, an answer in 200-499 ends the delivery: 2xx delivered, 3xx and 4xx refused by
//!   the endpoint (logged, neither retried nor dead-lettered: AWS counts an attempt failed only
//!   when the status is outside 200-4xx or no answer comes). Anything else (1xx, 5xx, refused
//!   connections, TLS failures, no answer within `sns.http_timeout_secs`) is retried; when the
//!   policy's retries are spent, a post with a `dead_letter_arn` goes to the [`DeadLetterSink`]
//!   the broker implements (the target is an ARN, not a callback, so that it survives a
//!   restart in the outbox), and one without is logged and dropped, as AWS drops it.
//! - [`SnsHttp::certificate_pem`] and [`SnsHttp::certificate_path`]: what the HTTP listener
//!   serves, and where (`/SimpleNotificationService-<hash>.pem`, named as AWS names its own).
//! - [`policy`]: DeliveryPolicy parsing and validation for Set{Subscription,Topic}Attributes and
//!   the effective policy of a subscription.
//!
//! Each post carries AWS's headers: `x-amz-sns-message-type`, `x-amz-sns-message-id`,
//! `x-amz-sns-topic-arn`, `x-amz-sns-subscription-arn` (not on a SubscriptionConfirmation: the
//! subscription is still pending), `x-amz-sns-rawdelivery: true` for raw delivery,
//! `Content-Type` from the policy's `requestPolicy` (`text/plain; charset=UTF-8` by default) and
//! `User-Agent: Amazon Simple Notification Service Agent`, and `Authorization: Basic` when the
//! endpoint carries a user and password (`https://user:pass@host/`), as AWS does. A policy's
//! `throttlePolicy` spaces attempts to one subscription `1 / maxReceivesPerSecond` apart
//! (throttle.rs).
//!
//! Not kept across a restart: how many attempts a post already had; a resumed post starts its
//! retry schedule again (at-least-once, like every SNS delivery). Each pending post is one
//! tokio task holding the post, so a backlog (an endpoint down while publishes continue, for
//! up to the policy's hour of retries) costs its bodies in memory.

pub mod allow;
mod client;
mod outbox;
pub mod policy;
#[cfg(test)]
mod tests;
mod throttle;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bridge::sns::signature::{MessageType, SigningKey};
use bytes::Bytes;
use http::StatusCode;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

pub use allow::AllowList;
pub use policy::DeliveryPolicy;

use client::Client;
use outbox::Outbox;
use throttle::Pacer;

/// The `User-Agent` AWS sends, which some receivers check.
pub const USER_AGENT: &str = "Amazon Simple Notification Service Agent";
/// Common name of the broker's signing certificate.
const CERTIFICATE_CN: &str = "wharf SNS message signing";
/// Posts in flight at once, across all endpoints.
const IN_FLIGHT_MAX: usize = 64;

/// The `[sns]` settings the delivery engine needs.
#[derive(Debug, Clone)]
pub struct SnsHttpConfig {
    pub allow: AllowList,
    /// Extra CA certificates (PEM) trusted for `https` endpoints.
    pub https_ca_file: Option<PathBuf>,
    /// How long one attempt may take, connect to response head.
    pub timeout: Duration,
    /// fsync the outbox before `enqueue` returns (the broker's `fsync` setting).
    pub fsync: bool,
}

/// One message for one HTTP/S subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpPost {
    pub endpoint: String,
    pub subscription_arn: String,
    pub topic_arn: String,
    #[serde(with = "message_type_name")]
    pub message_type: MessageType,
    pub message_id: String,
    /// What is posted: the signed JSON envelope, or the bare message when `raw`.
    pub body: String,
    pub raw: bool,
    /// The subscription's effective policy when the message was published.
    pub delivery_policy: DeliveryPolicy,
    /// The subscription's RedrivePolicy `deadLetterTargetArn`, for when retries run out.
    pub dead_letter_arn: Option<String>,
}

mod message_type_name {
    use bridge::sns::signature::MessageType;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &MessageType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(t.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<MessageType, D::Error> {
        let name = String::deserialize(d)?;
        MessageType::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown message type {name:?}")))
    }
}

/// What [`DeadLetterSink::dead_letter`] returns: resolves once the dead-letter copy is durable
/// (or could not be stored, which the sink logs).
pub type DeadLettered = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The broker's side of deliveries: where posts go when their retries are spent (an SQS queue
/// named by the ARN), and whether a subscription still exists. Called from delivery tasks;
/// neither may block for long.
pub trait DeadLetterSink: Send + Sync + 'static {
    /// Stores `post` in the dead-letter queue `target_arn`. The outbox drops the post only
    /// after the returned future resolves, so a crash in between delivers it to the dead-letter
    /// queue again rather than losing it.
    fn dead_letter(&self, target_arn: &str, post: &HttpPost, reason: &str) -> DeadLettered;

    /// Whether the subscription still exists: a Notification post of one that was
    /// unsubscribed (or whose topic was deleted) since it was queued is not attempted again.
    fn subscribed(&self, _subscription_arn: &str) -> bool {
        true
    }
}

/// The HTTP/S delivery engine; cheap to clone.
#[derive(Clone)]
pub struct SnsHttp {
    inner: Arc<Inner>,
}

struct Inner {
    config: SnsHttpConfig,
    outbox: Mutex<Outbox>,
    client: Client,
    signing_key: SigningKey,
    certificate_path: String,
    dead_letters: Arc<dyn DeadLetterSink>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    in_flight: Semaphore,
    pacer: Mutex<Pacer>,
}

impl std::fmt::Debug for SnsHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnsHttp")
            .field("certificate_path", &self.inner.certificate_path)
            .finish_non_exhaustive()
    }
}

fn other(context: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{context}: {e}"))
}

/// Loads the signing key and certificate from `dir`, or makes and saves them.
fn load_or_make_key(dir: &Path) -> io::Result<SigningKey> {
    let key_path = dir.join("signing-key.pem");
    let cert_path = dir.join("signing-cert.pem");
    if key_path.exists() && cert_path.exists() {
        let key = fs::read_to_string(&key_path)?;
        let cert = fs::read_to_string(&cert_path)?;
        return SigningKey::from_pem(&key, &cert)
            .map_err(|e| other(&format!("SNS signing key in {}", dir.display()), e));
    }
    let key = SigningKey::generate(CERTIFICATE_CN).map_err(|e| other("SNS signing key", e))?;
    write_synced(&cert_path, key.certificate_pem(), 0o644)?;
    // The key last: a certificate without its key is never taken for a pair.
    write_synced(&key_path, key.key_pem(), 0o600)?;
    fs::File::open(dir)?.sync_all()?;
    tracing::info!(dir = %dir.display(), "SNS: made a new message signing key and certificate");
    Ok(key)
}

fn write_synced(path: &Path, text: &str, mode: u32) -> io::Result<()> {
    let tmp = path.with_extension("pem.tmp");
    {
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        let mut file = options.open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)
}

impl SnsHttp {
    /// Opens `<data_dir>/sns-http/`, resumes pending posts and returns the engine.
    pub fn start(
        data_dir: &Path,
        config: SnsHttpConfig,
        dead_letters: Arc<dyn DeadLetterSink>,
        shutdown: CancellationToken,
    ) -> io::Result<SnsHttp> {
        let dir = data_dir.join("sns-http");
        fs::create_dir_all(&dir)?;
        let signing_key = load_or_make_key(&dir)?;
        let digest = hex::encode(Sha256::digest(signing_key.certificate_pem().as_bytes()));
        let certificate_path = format!("/SimpleNotificationService-{}.pem", &digest[..32]);
        let client = Client::new(config.https_ca_file.as_deref(), config.timeout)
            .map_err(io::Error::other)?;
        let (outbox, pending) = Outbox::open(&dir, config.fsync)?;
        if !pending.is_empty() {
            tracing::info!(
                posts = pending.len(),
                "SNS HTTP: resuming pending deliveries"
            );
        }
        let http = SnsHttp {
            inner: Arc::new(Inner {
                config,
                outbox: Mutex::new(outbox),
                client,
                signing_key,
                certificate_path,
                dead_letters,
                shutdown,
                tasks: TaskTracker::new(),
                in_flight: Semaphore::new(IN_FLIGHT_MAX),
                pacer: Mutex::new(Pacer::default()),
            }),
        };
        for (id, post) in pending {
            http.spawn(id, post);
        }
        Ok(http)
    }

    /// Whether Subscribe may accept this endpoint.
    pub fn check_endpoint(&self, url: &Url) -> Result<(), String> {
        self.inner.config.allow.check(url)
    }

    /// Stores the post (fsynced), then delivers it in the background.
    pub fn enqueue(&self, post: HttpPost) -> io::Result<()> {
        self.enqueue_all(vec![post])
    }

    /// Stores several posts with one fsync (a Publish to a topic with many HTTP/S
    /// subscriptions), then delivers them in the background. All or none are stored.
    pub fn enqueue_all(&self, posts: Vec<HttpPost>) -> io::Result<()> {
        let ids = self.inner.outbox.lock().append_all(&posts)?;
        for (id, post) in ids.into_iter().zip(posts) {
            self.spawn(id, post);
        }
        Ok(())
    }

    /// The key the SNS layer signs envelopes with.
    pub fn signing_key(&self) -> &SigningKey {
        &self.inner.signing_key
    }

    /// The signing certificate, PEM, to serve at [`SnsHttp::certificate_path`].
    pub fn certificate_pem(&self) -> &str {
        self.inner.signing_key.certificate_pem()
    }

    /// The URL path the certificate is served at, on the HTTP listener.
    pub fn certificate_path(&self) -> &str {
        &self.inner.certificate_path
    }

    /// `SigningCertURL` for envelopes: `base` is how subscribers reach the HTTP listener
    /// (`http://localhost:4566`).
    pub fn signing_cert_url(&self, base: &str) -> String {
        format!(
            "{}{}",
            base.trim_end_matches('/'),
            self.inner.certificate_path
        )
    }

    /// Posts not yet delivered nor dead-lettered.
    pub fn pending(&self) -> usize {
        self.inner.outbox.lock().pending_count()
    }

    /// Waits for the delivery tasks to stop, after the shutdown token is cancelled.
    pub async fn closed(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    fn spawn(&self, id: u64, post: HttpPost) {
        let inner = self.inner.clone();
        self.inner.tasks.spawn(async move {
            inner.deliver(id, post).await;
        });
    }
}

/// `Authorization: Basic` for an endpoint with credentials in it
/// (`https://user:password@host/path`), which AWS sends the same way.
fn basic_auth(endpoint: &str) -> Option<String> {
    use base64::Engine;
    let url = Url::parse(endpoint).ok()?;
    if url.username().is_empty() {
        return None;
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let pair = format!(
        "{}:{}",
        decode(url.username()),
        decode(url.password().unwrap_or(""))
    );
    Some(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    ))
}

/// The endpoint as logs show it: never the password it may carry.
fn without_credentials(endpoint: &str) -> String {
    match Url::parse(endpoint) {
        Ok(mut url) => {
            let _ = url.set_password(None);
            let _ = url.set_username("");
            url.to_string()
        }
        Err(_) => "(unparsable endpoint)".to_string(),
    }
}

/// How a post's delivery ended.
enum Outcome {
    Delivered,
    /// The endpoint answered 3xx or 4xx: AWS neither retries nor dead-letters that.
    Refused(StatusCode),
    Failed(String),
    /// Shut down before it ended: the post stays pending for the next start.
    Interrupted,
    /// The subscription no longer exists.
    Unsubscribed,
}

impl Inner {
    fn headers(&self, post: &HttpPost) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            (
                "x-amz-sns-message-type",
                post.message_type.as_str().to_string(),
            ),
            ("x-amz-sns-message-id", post.message_id.clone()),
            ("x-amz-sns-topic-arn", post.topic_arn.clone()),
        ];
        if post.message_type != MessageType::SubscriptionConfirmation {
            headers.push(("x-amz-sns-subscription-arn", post.subscription_arn.clone()));
        }
        if post.raw {
            headers.push(("x-amz-sns-rawdelivery", "true".to_string()));
        }
        headers.push((
            "content-type",
            post.delivery_policy
                .request_policy
                .header_content_type
                .clone(),
        ));
        headers.push(("user-agent", USER_AGENT.to_string()));
        if let Some(credentials) = basic_auth(&post.endpoint) {
            headers.push(("authorization", credentials));
        }
        headers
    }

    /// One attempt: `Ok` with the status when the answer ends the delivery (200-499), `Err`
    /// when it is to be retried.
    async fn attempt(&self, url: &Url, post: &HttpPost) -> Result<StatusCode, String> {
        // Checked at every attempt: the allow-list may have shrunk since the post was queued.
        self.config.allow.check(url)?;
        if let Some(throttle) = post.delivery_policy.throttle_policy {
            let slot = self.pacer.lock().reserve(
                &post.subscription_arn,
                throttle.max_receives_per_second,
                tokio::time::Instant::now().into_std(),
            );
            tokio::time::sleep_until(slot.into()).await;
        }
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| "shutting down".to_string())?;
        let status = self
            .client
            .post(url, &self.headers(post), Bytes::from(post.body.clone()))
            .await?;
        if (200..500).contains(&status.as_u16()) {
            Ok(status)
        } else {
            Err(format!("answered {status}"))
        }
    }

    async fn run(&self, post: &HttpPost) -> Outcome {
        let url = match Url::parse(&post.endpoint) {
            Ok(url) => url,
            Err(e) => return Outcome::Failed(format!("endpoint {:?}: {e}", post.endpoint)),
        };
        let retry_policy = post.delivery_policy.healthy_retry_policy;
        let mut retry = 0;
        loop {
            // Unsubscribed since it was queued (or during the retries): AWS stops delivering
            // to it. Confirmations are posts about the subscription itself and always go.
            if post.message_type == MessageType::Notification
                && !self.dead_letters.subscribed(&post.subscription_arn)
            {
                return Outcome::Unsubscribed;
            }
            let result = tokio::select! {
                _ = self.shutdown.cancelled() => return Outcome::Interrupted,
                result = self.attempt(&url, post) => result,
            };
            let reason = match result {
                Ok(status) if status.is_success() => return Outcome::Delivered,
                Ok(status) => return Outcome::Refused(status),
                Err(reason) => reason,
            };
            retry += 1;
            let Some(delay) = retry_policy.delay_before(retry) else {
                return Outcome::Failed(format!("{reason} (after {retry} attempts)"));
            };
            tracing::debug!(
                endpoint = %without_credentials(&post.endpoint),
                message_id = %post.message_id,
                retry,
                ?delay,
                "SNS HTTP: attempt failed: {reason}"
            );
            if !delay.is_zero() {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return Outcome::Interrupted,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }

    async fn deliver(&self, id: u64, post: HttpPost) {
        match self.run(&post).await {
            Outcome::Interrupted => return,
            Outcome::Delivered => {}
            Outcome::Unsubscribed => tracing::info!(
                subscription = %post.subscription_arn,
                message_id = %post.message_id,
                "SNS HTTP: subscription gone; its pending post is dropped"
            ),
            Outcome::Refused(status) => tracing::warn!(
                endpoint = %without_credentials(&post.endpoint),
                subscription = %post.subscription_arn,
                message_id = %post.message_id,
                "SNS HTTP: the endpoint answered {status}; not retried (as AWS)"
            ),
            Outcome::Failed(reason) => match &post.dead_letter_arn {
                Some(arn) => {
                    // Durable in the queue before the outbox lets go of it.
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        _ = self.dead_letters.dead_letter(arn, &post, &reason) => {}
                    }
                }
                None => tracing::warn!(
                    endpoint = %without_credentials(&post.endpoint),
                    subscription = %post.subscription_arn,
                    message_id = %post.message_id,
                    "SNS HTTP: delivery failed and no dead-letter queue is set; dropped: {reason}"
                ),
            },
        }
        if let Err(e) = self.outbox.lock().complete(id) {
            tracing::error!("SNS HTTP outbox: cannot mark post {id} done: {e}");
        }
    }
}
