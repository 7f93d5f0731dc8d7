//! The HTTP listener for the AWS APIs: it mounts `bridge/` on the engine.
//!
//! One hyper HTTP/1.1 server (keep-alive) per connection. Each request is:
//! 1. routed by `X-Amz-Target` (`AmazonSQS.*`), the SigV4 credential scope's service (`sqs`,
//!    `sns`, `sts`), or, unsigned, the `Action=` (Query protocol);
//! 2. authenticated: SigV4 against the users' access keys (`[[users]]` access_key_id /
//!    secret_access_key), unless `sigv4 = false`;
//! 3. placed in an account and region: the vhost `aws:<account>:<region>` (created on first
//!    use), so resources live per account and region as in AWS;
//! 4. served by the bridge with the engine backend ([`sqs::SqsEngine`], [`sns::SnsEngine`]).
//!
//! Layout: [`sqs`] the SQS backend, [`meta`] the SQS-only queue settings kept beside the
//! engine, [`mapping`] SQS messages to and from engine messages, [`receive_attempts`] the
//! FIFO ReceiveRequestAttemptId answers; [`sns`] the SNS backend, [`sns_meta`] topic settings,
//! [`sns_fanout`] what each subscription receives, [`sns_http`] HTTP(S) delivery.

pub mod dedup;
pub mod mapping;
pub mod meta;
pub mod receive_attempts;
pub mod sns;
pub mod sns_delivery;
pub mod sns_fanout;
pub mod sns_http;
pub mod sns_meta;
pub mod sqs;
pub mod tasks;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bridge::sqs::RequestContext;
use bridge::{sigv4, AwsError};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::net::Peer;

/// Largest request body read. SQS caps a request at its message size ceiling (1 MiB) plus
/// encoding overhead; anything larger is refused before it is buffered.
pub const REQUEST_BYTES_MAX: usize = 3 << 20;

/// The AWS APIs' part of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsConfig {
    pub sigv4: bool,
    pub account_id: String,
    pub region: String,
}

/// The vhost that holds the resources of an account in a region.
pub fn vhost_name(account_id: &str, region: &str) -> String {
    format!("aws:{account_id}:{region}")
}

/// What every HTTP connection shares.
#[derive(Debug)]
pub struct AwsContext {
    pub engine: Arc<Engine>,
    pub config: AwsConfig,
    pub sqs: sqs::SqsEngine,
    pub sns: sns::SnsEngine,
    /// SigV4 signing keys already derived, by secret and credential scope.
    pub signing_keys: sigv4::SigningKeys,
}

impl AwsContext {
    pub fn new(
        engine: Arc<Engine>,
        config: AwsConfig,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<Arc<Self>> {
        let sqs = sqs::SqsEngine::open(engine.clone(), data_dir)?;
        let sns =
            sns::SnsEngine::open(engine.clone(), data_dir, &config.account_id, &config.region)?;
        let ctx = Arc::new(AwsContext {
            engine,
            config,
            sqs,
            sns,
            signing_keys: sigv4::SigningKeys::default(),
        });
        ctx.sns.attach(Arc::downgrade(&ctx));
        Ok(ctx)
    }
}

/// Serves one HTTP connection until the peer closes it or shutdown asks it to finish.
pub async fn serve<S>(
    stream: S,
    peer: impl Into<Peer>,
    ctx: Arc<AwsContext>,
    token: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = peer.into().addr;
    let service = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(&ctx, req, peer).await) }
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
        }
        _ = token.cancelled() => {
            // Finishes the request in progress, then closes.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Which API a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Sqs,
    Sns,
    /// GetCallerIdentity only (bridge::sts).
    Sts,
    /// Another AWS service's target or signing scope: not served here.
    Other,
}

fn service_of(parts: &http::request::Parts, body: &[u8], scope: Option<&sigv4::Scope>) -> Service {
    if let Some(target) = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
    {
        return if target.starts_with("AmazonSQS.") {
            Service::Sqs
        } else {
            Service::Other
        };
    }
    let service = scope.map(|s| s.service.as_str());
    if bridge::sts::is_sts(service, parts, body) {
        return Service::Sts;
    }
    if bridge::sns::is_sns(service, parts, body) {
        return Service::Sns;
    }
    match service {
        None | Some("sqs") => Service::Sqs,
        Some(_) => Service::Other,
    }
}

async fn handle(
    ctx: &AwsContext,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let request_id = uuid::Uuid::new_v4().to_string();
    if parts.method == http::Method::GET && parts.uri.path() == ctx.sns.certificate_path() {
        return signing_certificate(ctx);
    }
    let protocol = bridge::sqs::protocol_of(&parts);
    let fail = |e: AwsError| bridge::sqs::error_response(protocol, &e, &request_id).map(Full::new);
    let body = match Limited::new(body, REQUEST_BYTES_MAX).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return fail(AwsError::batch_request_too_long(format!(
                "Request body is larger than {REQUEST_BYTES_MAX} bytes."
            )))
        }
    };
    let signed = match sigv4::parse(&parts) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if signed.is_none() && parts.method == http::Method::GET {
        if let Some(arn) = unsubscribe_link(&parts) {
            return unsubscribe_by_link(ctx, &parts, &arn, request_id).await;
        }
        if let Some((topic_arn, token)) = confirm_link(&parts) {
            return confirm_by_link(ctx, &parts, topic_arn, token, request_id).await;
        }
    }
    let service = service_of(&parts, &body, signed.as_ref().map(|s| &s.scope));
    if service == Service::Other {
        let op = parts
            .headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        return fail(bridge::sqs::unknown_operation(protocol, op));
    }
    let caller = match authenticate(ctx, &parts, &body, signed, peer) {
        Ok(who) => who,
        Err(e) if service == Service::Sts => {
            return bridge::sts::error_response(&e, &request_id).map(Full::new)
        }
        Err(e) if service == Service::Sns => {
            return bridge::sns::error_response(&e, &request_id).map(Full::new)
        }
        Err(e) => return fail(e),
    };
    if service == Service::Sts {
        let who = bridge::sts::Identity {
            arn: match &caller.user {
                Some(u) => format!("arn:aws:iam::{}:user/{u}", caller.account_id),
                None => format!("arn:aws:iam::{}:root", caller.account_id),
            },
            user_id: caller
                .access_key_id
                .clone()
                .unwrap_or_else(|| caller.account_id.clone()),
            account: caller.account_id,
        };
        return bridge::sts::handle(&parts, &body, &who, &request_id).map(Full::new);
    }
    let Caller {
        account_id,
        region,
        access_key_id,
        ..
    } = caller;
    let rctx = RequestContext {
        account_id,
        region,
        base_url: base_url(&parts),
        access_key_id,
        request_id: request_id.clone(),
    };
    let resp = if service == Service::Sns {
        bridge::sns::handle(&ctx.sns, &rctx, &parts, &body).await
    } else {
        bridge::sqs::handle(&ctx.sqs, &rctx, &parts, &body).await
    };
    if resp.status().is_server_error() {
        tracing::warn!(%peer, status = %resp.status(), ?service, "aws request failed");
    }
    resp.map(Full::new)
}

/// The subscription ARN of an envelope's UnsubscribeURL (`GET /?Action=Unsubscribe&
/// SubscriptionArn=...`, unsigned), if this request is one.
fn unsubscribe_link(parts: &http::request::Parts) -> Option<String> {
    let params = bridge::sqs::query_params(parts, &[]);
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    (get("Action").as_deref() == Some("Unsubscribe")).then_some(())?;
    get("SubscriptionArn")
}

/// Follows an UnsubscribeURL. As on AWS, the link needs no signature: the subscription ARN's
/// random part is the credential, and the link reaches only the subscriber, inside the
/// envelope. It can do nothing but remove that one subscription.
async fn unsubscribe_by_link(
    ctx: &AwsContext,
    parts: &http::request::Parts,
    arn: &str,
    request_id: String,
) -> Response<Full<Bytes>> {
    let sub = match bridge::sns::SubscriptionArn::parse(arn) {
        Ok(s) => s,
        Err(e) => return bridge::sns::error_response(&e, &request_id).map(Full::new),
    };
    let rctx = RequestContext {
        account_id: sub.topic.account.clone(),
        region: sub.topic.region.clone(),
        base_url: base_url(parts),
        access_key_id: None,
        request_id,
    };
    let request = bridge::sns::SnsRequest::Unsubscribe {
        subscription_arn: arn.to_string(),
    };
    use bridge::sns::SnsBackend as _;
    let resp = match ctx.sns.call(&rctx, request).await {
        Ok(r) => bridge::sns::success_response("Unsubscribe", &r, &rctx.request_id),
        Err(e) => bridge::sns::error_response(&e, &rctx.request_id),
    };
    resp.map(Full::new)
}

/// The URL clients reach this listener at, from their Host header: queue URLs, SubscribeURL
/// and UnsubscribeURL are built on it.
fn base_url(parts: &http::request::Parts) -> String {
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost:4566");
    format!("http://{host}")
}

/// The topic ARN and token of a SubscriptionConfirmation's SubscribeURL (`GET
/// /?Action=ConfirmSubscription&TopicArn=...&Token=...`, unsigned), if this request is one.
fn confirm_link(parts: &http::request::Parts) -> Option<(String, String)> {
    let params = bridge::sqs::query_params(parts, &[]);
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    (get("Action").as_deref() == Some("ConfirmSubscription")).then_some(())?;
    Some((get("TopicArn")?, get("Token")?))
}

/// Follows a SubscribeURL, as HTTP subscribers do. Unsigned, as on AWS: the token, which only
/// the endpoint received, is the credential, and it can only confirm that one subscription.
async fn confirm_by_link(
    ctx: &AwsContext,
    parts: &http::request::Parts,
    topic_arn: String,
    token: String,
    request_id: String,
) -> Response<Full<Bytes>> {
    let topic = match bridge::sns::TopicArn::parse(&topic_arn, "TopicArn") {
        Ok(t) => t,
        Err(e) => return bridge::sns::error_response(&e, &request_id).map(Full::new),
    };
    let rctx = RequestContext {
        account_id: topic.account.clone(),
        region: topic.region.clone(),
        base_url: base_url(parts),
        access_key_id: None,
        request_id,
    };
    let request = bridge::sns::SnsRequest::ConfirmSubscription { topic_arn, token };
    use bridge::sns::SnsBackend as _;
    let resp = match ctx.sns.call(&rctx, request).await {
        Ok(r) => bridge::sns::success_response("ConfirmSubscription", &r, &rctx.request_id),
        Err(e) => bridge::sns::error_response(&e, &rctx.request_id),
    };
    resp.map(Full::new)
}

/// The SNS signing certificate (SigningCertURL): public, so served without a signature, as
/// AWS serves its own.
fn signing_certificate(ctx: &AwsContext) -> Response<Full<Bytes>> {
    let (status, body) = match ctx.sns.signing_certificate() {
        Ok(pem) => (http::StatusCode::OK, pem),
        Err(e) => {
            tracing::warn!(error = %e, "SNS signing certificate unavailable");
            (http::StatusCode::SERVICE_UNAVAILABLE, String::new())
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-pem-file"),
    );
    r
}

/// Who made a request, once authenticated.
struct Caller {
    account_id: String,
    region: String,
    access_key_id: Option<String>,
    /// The Wharf user holding the key (SigV4 on).
    user: Option<String>,
}

/// Checks the signature (when on) and says which account, region and key the request is for.
fn authenticate(
    ctx: &AwsContext,
    parts: &http::request::Parts,
    body: &[u8],
    signed: Option<sigv4::SignedRequest>,
    peer: SocketAddr,
) -> Result<Caller, AwsError> {
    let cfg = &ctx.config;
    if !cfg.sigv4 {
        // The convention AWS emulators follow: a 12-digit access key id names the account.
        return Ok(match signed {
            Some(s) => {
                let key = s.scope.access_key_id;
                let account = if key.len() == 12 && key.bytes().all(|b| b.is_ascii_digit()) {
                    key.clone()
                } else {
                    cfg.account_id.clone()
                };
                Caller {
                    account_id: account,
                    region: s.scope.region,
                    access_key_id: Some(key),
                    user: None,
                }
            }
            None => Caller {
                account_id: cfg.account_id.clone(),
                region: cfg.region.clone(),
                access_key_id: None,
                user: None,
            },
        });
    }
    let signed = signed.ok_or_else(|| {
        AwsError::missing_authentication_token("Request is missing Authentication Token")
    })?;
    let user = ctx
        .engine
        .user_by_access_key(&signed.scope.access_key_id)
        .ok_or_else(|| {
            AwsError::invalid_client_token_id(
                "The security token included in the request is invalid.",
            )
        })?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    sigv4::verify_cached(
        parts,
        body,
        &signed,
        &user.secret_access_key,
        now,
        &ctx.signing_keys,
    )?;
    if user.loopback_only && !peer.ip().is_loopback() {
        return Err(AwsError::access_denied(format!(
            "User {} may only connect from a loopback address.",
            user.name
        )));
    }
    let vhost = vhost_name(&cfg.account_id, &signed.scope.region);
    if !ctx.engine.may_access(&user, &vhost) {
        return Err(AwsError::access_denied(format!(
            "User {} is not allowed to access vhost {vhost}.",
            user.name
        )));
    }
    Ok(Caller {
        account_id: cfg.account_id.clone(),
        region: signed.scope.region,
        access_key_id: Some(signed.scope.access_key_id),
        user: Some(user.name),
    })
}
