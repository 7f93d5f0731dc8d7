//! SNS subscriptions with protocol `http`/`https`: what the SNS API and the topic fan-out hand
//! to the delivery engine ([`super::sns_http`]).
//!
//! - An HTTP/S subscription is a binding of the topic's exchange to the topic itself: the
//!   engine keeps it in the durable definitions beside the SQS subscriptions, and the fan-out
//!   hook never routes through it (it returns no message for it and enqueues a post instead),
//!   so the self-binding carries no traffic.
//! - Until confirmed it has [`ARG_PENDING`]; [`ARG_TOKEN`] is the token its
//!   SubscriptionConfirmation carried, kept after confirmation so that a second visit of the
//!   SubscribeURL (subscribers retry) answers with the same SubscriptionArn.
//! - Posts are built here (envelope signed with the delivery engine's key, or the raw
//!   message), with the subscription's effective DeliveryPolicy and its RedrivePolicy's
//!   dead-letter queue, collected while the engine walks the topic's bindings and stored
//!   with one fsync ([`SnsHttp::enqueue_all`]) before the Publish answers.
//! - [`SqsDeadLetters`]: where posts go when their retries are spent.

use std::sync::Arc;

use bridge::sns::envelope;
use bridge::sns::signature::{sign_envelope, MessageType, SignatureVersion, SigningKey};
use bytes::Bytes;
use serde_json::{Map, Value as Json};

use super::sns_fanout::{
    TopicFanout, ARG_DELIVERY_POLICY, ARG_ENDPOINT, ARG_PROTOCOL, ARG_RAW, ARG_REDRIVE_POLICY,
    ARG_SUBSCRIPTION_ARN, HEADER_MESSAGE_ID, HEADER_STRUCTURE,
};
use super::sns_http::policy::{SubscriptionDeliveryPolicy, TopicDeliveryPolicy};
use super::sns_http::{DeadLetterSink, DeadLettered, DeliveryPolicy, HttpPost, SnsHttp};
use crate::engine::{Engine, ExchangeKind, Message, SharedMessage, Table, Value};

/// Binding argument: the confirmation token of an HTTP/S subscription.
pub const ARG_TOKEN: &str = "x-sns-confirmation-token";
/// Binding argument, present (`true`) while the subscription awaits confirmation.
pub const ARG_PENDING: &str = "x-sns-pending-confirmation";

pub fn is_http(protocol: Option<&str>) -> bool {
    matches!(protocol, Some("http" | "https"))
}

pub fn is_pending(args: &Table) -> bool {
    args.contains_key(ARG_PENDING)
}

/// A confirmation token: 64 random hex digits (AWS's are opaque hex strings too).
pub fn new_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The subscription's effective policy: AWS's defaults, the topic's `http` part, then the
/// subscription's own sections. Stored policies were validated when set; one that no longer
/// parses counts as absent rather than stopping deliveries.
pub fn effective_policy(topic: Option<&str>, subscription: Option<&str>) -> DeliveryPolicy {
    let topic = topic.and_then(|t| TopicDeliveryPolicy::parse(t).ok());
    let sub = subscription.and_then(|s| SubscriptionDeliveryPolicy::parse(s).ok());
    DeliveryPolicy::effective(topic.as_ref(), sub.as_ref())
}

/// The RedrivePolicy's `deadLetterTargetArn`.
pub fn dead_letter_arn(redrive_policy: Option<&str>) -> Option<String> {
    let p: Json = serde_json::from_str(redrive_policy?).ok()?;
    p.get("deadLetterTargetArn")?.as_str().map(str::to_string)
}

/// `SubscribeURL`: the broker's ConfirmSubscription, answerable by an unsigned GET.
pub fn subscribe_url(base: &str, topic_arn: &str, token: &str) -> String {
    format!(
        "{}/?Action=ConfirmSubscription&TopicArn={}&Token={token}",
        base.trim_end_matches('/'),
        topic_arn.replace(':', "%3A")
    )
}

/// What a SubscriptionConfirmation or UnsubscribeConfirmation post needs.
pub struct Confirmation<'a> {
    pub kind: MessageType,
    pub endpoint: &'a str,
    pub subscription_arn: &'a str,
    pub topic_arn: &'a str,
    pub token: &'a str,
    pub subscribe_url: String,
    pub signing_cert_url: String,
    pub version: SignatureVersion,
    pub delivery_policy: DeliveryPolicy,
}

/// The signed envelope of a confirmation, as AWS words and orders it.
pub fn confirmation_post(key: &SigningKey, c: Confirmation<'_>) -> HttpPost {
    let message_id = uuid::Uuid::new_v4().to_string();
    let message = match c.kind {
        MessageType::UnsubscribeConfirmation => format!(
            "You have chosen to deactivate subscription {}.\nTo cancel this operation and restore the subscription, visit the SubscribeURL included in this message.",
            c.subscription_arn
        ),
        _ => format!(
            "You have chosen to subscribe to the topic {}.\nTo confirm the subscription, visit the SubscribeURL included in this message.",
            c.topic_arn
        ),
    };
    let mut env = Map::new();
    env.insert("Type".into(), c.kind.as_str().into());
    env.insert("MessageId".into(), message_id.clone().into());
    env.insert("Token".into(), c.token.into());
    env.insert("TopicArn".into(), c.topic_arn.into());
    env.insert("Message".into(), message.into());
    env.insert("SubscribeURL".into(), c.subscribe_url.into());
    env.insert(
        "Timestamp".into(),
        envelope::iso8601_ms(super::sns_fanout::now_ms()).into(),
    );
    // Every field it signs was just set, so signing cannot fail on a missing one.
    if let Err(e) = sign_envelope(key, c.version, &mut env) {
        tracing::warn!(error = %e, "SNS: confirmation goes unsigned");
    }
    env.insert("SigningCertURL".into(), c.signing_cert_url.into());
    HttpPost {
        endpoint: c.endpoint.to_string(),
        subscription_arn: c.subscription_arn.to_string(),
        topic_arn: c.topic_arn.to_string(),
        message_type: c.kind,
        message_id,
        body: Json::Object(env).to_string(),
        raw: false,
        delivery_policy: c.delivery_policy,
        dead_letter_arn: None,
    }
}

/// Stores a post; a failure is logged (the caller has already answered or cannot undo).
pub fn enqueue(http: &SnsHttp, post: HttpPost) -> std::io::Result<()> {
    http.enqueue(post).inspect_err(|e| {
        tracing::error!(error = %e, "SNS HTTP: cannot store a post in the outbox");
    })
}

fn arg<'a>(args: &'a Table, name: &str) -> Option<&'a str> {
    args.get(name).and_then(Value::as_str)
}

fn header<'a>(m: &'a Message, name: &str) -> Option<&'a str> {
    m.properties.headers.as_ref()?.get(name)?.as_str()
}

impl TopicFanout {
    /// Stores the post of one message for one HTTP/S subscription, when the subscription is
    /// confirmed and its filter policy lets the message through. Called while the message is
    /// being published, so the post is on disk before the publisher's confirmation leaves
    /// (SNS Publish's 200, an AMQP confirm).
    pub(super) fn post_http(&self, vhost: &str, topic: &str, args: &Table, msg: &SharedMessage) {
        if self.http.get().is_none() {
            return;
        }
        // The delivery engine spawns a task per post; a publish from outside the runtime
        // (none is known) would panic there, so it is logged and the post skipped instead.
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::error!(topic, "SNS HTTP: publish outside the runtime; post skipped");
            return;
        }
        let protocol = arg(args, ARG_PROTOCOL).unwrap_or("http");
        if is_pending(args) || !self.passes_filter(args, msg, protocol) {
            return;
        }
        let (Some(arn), Some(endpoint)) =
            (arg(args, ARG_SUBSCRIPTION_ARN), arg(args, ARG_ENDPOINT))
        else {
            return;
        };
        let raw = arg(args, ARG_RAW).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let body = if raw {
            let structure = header(msg, HEADER_STRUCTURE) == Some("json");
            envelope::message_for(&String::from_utf8_lossy(&msg.body), structure, protocol)
        } else {
            self.envelope(vhost, topic, args, msg)
        };
        let topic_policy = self.topics.attribute(vhost, topic, "DeliveryPolicy");
        let post = HttpPost {
            endpoint: endpoint.to_string(),
            subscription_arn: arn.to_string(),
            topic_arn: self.topic_arn(vhost, topic),
            message_type: MessageType::Notification,
            message_id: header(msg, HEADER_MESSAGE_ID)
                .or(msg.properties.message_id.as_deref())
                .unwrap_or_default()
                .to_string(),
            body,
            raw,
            delivery_policy: effective_policy(
                topic_policy.as_deref(),
                arg(args, ARG_DELIVERY_POLICY),
            ),
            dead_letter_arn: dead_letter_arn(arg(args, ARG_REDRIVE_POLICY)),
        };
        PENDING_POSTS.with(|p| p.borrow_mut().push(post));
    }

    /// Stores the posts `post_http` collected for one message with one fsync (the engine calls
    /// this after the topic's bindings, before the publisher is answered). An error means the
    /// posts are lost, and the publish must not be confirmed.
    pub(super) fn flush_http_posts(&self) -> Result<(), String> {
        let posts = PENDING_POSTS.with(|p| std::mem::take(&mut *p.borrow_mut()));
        if posts.is_empty() {
            return Ok(());
        }
        match self.http.get() {
            Some(http) => http.enqueue_all(posts).map_err(|e| {
                tracing::error!(error = %e, "SNS HTTP: cannot store posts in the outbox");
                format!("cannot store HTTP posts: {e}")
            }),
            None => Ok(()),
        }
    }
}

thread_local! {
    /// Posts of the message being fanned out on this thread, stored together by
    /// [`TopicFanout::flush_http_posts`].
    static PENDING_POSTS: std::cell::RefCell<Vec<HttpPost>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Posts whose retries are spent go to the SQS queue of the subscription's RedrivePolicy (same
/// account and region, so the vhost `aws:<account>:<region>`), as AWS puts them there: the
/// body that was posted (envelope or raw message). AWS's SNS guide documents no message
/// attributes on these copies (`RequestID`, `ErrorCode`, `ErrorMessage` are what Lambda's
/// dead-letter queues carry, not SNS's), so none are added; why the delivery failed is logged.
#[derive(Debug)]
pub struct SqsDeadLetters {
    pub engine: Arc<Engine>,
    /// The SQS side, for the dead-letter queue's retention (the copy's TTL, as a message sent
    /// to that queue gets).
    pub context: std::sync::Weak<super::AwsContext>,
}

impl SqsDeadLetters {
    /// Publishes the copy; the Lsn to wait for, or why it could not be stored.
    fn store(&self, target_arn: &str, post: &HttpPost) -> Result<u64, String> {
        let fields: Vec<&str> = target_arn.split(':').collect();
        let ["arn", "aws", "sqs", region, account, queue] = fields.as_slice() else {
            return Err("the dead-letter target is not an SQS queue ARN".into());
        };
        let vhost = self
            .engine
            .vhost(&super::vhost_name(account, region))
            .ok_or("the dead-letter queue's account and region have no queues")?;
        let mut m = Message::new("", *queue, Bytes::from(post.body.clone()));
        m.properties.expiration = self
            .context
            .upgrade()
            .and_then(|c| c.sqs.retention_ms(&vhost.name, queue))
            .map(|ms| ms.to_string());
        m.properties.delivery_mode = Some(2);
        m.properties.message_id = Some(uuid::Uuid::new_v4().to_string());
        m.properties.timestamp = Some(super::sns_fanout::now_ms() / 1000);
        let out = vhost.publish("", m).map_err(|e| e.to_string())?;
        if !out.routed {
            return Err("the dead-letter queue does not exist".into());
        }
        if out.rejected {
            return Err("the dead-letter queue refused the message".into());
        }
        Ok(out.lsn)
    }
}

impl DeadLetterSink for SqsDeadLetters {
    fn dead_letter(&self, target_arn: &str, post: &HttpPost, reason: &str) -> DeadLettered {
        match self.store(target_arn, post) {
            Ok(lsn) => {
                tracing::info!(
                    target_arn,
                    subscription = %post.subscription_arn,
                    message_id = %post.message_id,
                    "SNS HTTP: delivery failed, message moved to the dead-letter queue: {reason}"
                );
                let engine = self.engine.clone();
                Box::pin(async move { engine.wait_durable(lsn).await })
            }
            Err(why) => {
                // AWS counts these (NumberOfNotificationsFailedToRedriveToDlq) and drops them.
                tracing::warn!(
                    target_arn,
                    subscription = %post.subscription_arn,
                    message_id = %post.message_id,
                    "SNS HTTP: delivery failed ({reason}) and dead-lettering failed ({why}); message dropped"
                );
                Box::pin(async {})
            }
        }
    }

    fn subscribed(&self, subscription_arn: &str) -> bool {
        let Ok(s) = bridge::sns::SubscriptionArn::parse(subscription_arn) else {
            return false;
        };
        let vhost = super::vhost_name(&s.topic.account, &s.topic.region);
        let Some(topic) = self
            .engine
            .vhost(&vhost)
            .and_then(|v| v.exchange(&s.topic.name))
            .filter(|t| t.settings.kind == ExchangeKind::Sns)
        else {
            return false;
        };
        topic.with_bindings(|bs| {
            bs.iter().any(|b| {
                arg(&b.arguments, ARG_SUBSCRIPTION_ARN) == Some(subscription_arn)
                    && !is_pending(&b.arguments)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_policy_sections_override_the_topic_and_bad_json_counts_as_absent() {
        let topic = r#"{"http":{"defaultHealthyRetryPolicy":{"numRetries":7,"minDelayTarget":1,"maxDelayTarget":1}}}"#;
        let sub =
            r#"{"healthyRetryPolicy":{"numRetries":2,"minDelayTarget":1,"maxDelayTarget":1}}"#;
        assert_eq!(
            effective_policy(Some(topic), None)
                .healthy_retry_policy
                .num_retries,
            7
        );
        assert_eq!(
            effective_policy(Some(topic), Some(sub))
                .healthy_retry_policy
                .num_retries,
            2
        );
        assert_eq!(
            effective_policy(Some("{nope"), Some("[]")),
            DeliveryPolicy::default()
        );
    }

    #[test]
    fn dead_letter_target_and_subscribe_url() {
        assert_eq!(
            dead_letter_arn(Some(r#"{"deadLetterTargetArn":"arn:aws:sqs:r:1:q"}"#)).as_deref(),
            Some("arn:aws:sqs:r:1:q")
        );
        assert_eq!(dead_letter_arn(Some("{}")), None);
        assert_eq!(dead_letter_arn(None), None);
        assert_eq!(
            subscribe_url("http://h:1/", "arn:aws:sns:r:1:t", "ab"),
            "http://h:1/?Action=ConfirmSubscription&TopicArn=arn%3Aaws%3Asns%3Ar%3A1%3At&Token=ab"
        );
        assert_eq!(new_token().len(), 64);
    }
}
