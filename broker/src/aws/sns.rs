//! The SNS backend on the engine (docs/mapping/sns.md): a topic is a durable exchange of kind
//! `sns` in the vhost of its account and region; a subscription is a binding of it whose
//! arguments carry the protocol, endpoint and attributes ([`super::sns_fanout`]).
//!
//! - Publish builds one persistent engine message (body = Message, attributes as headers,
//!   Subject/MessageId/Timestamp in `x-sns-*` headers) and publishes it to the topic's
//!   exchange; the engine fans it out through the [`TopicFanout`] hook, so each SQS
//!   subscription's queue gets its envelope (or the raw message). The 200 leaves once every
//!   copy is fsynced: a confirmed Publish is not lost for SQS subscribers.
//! - FIFO topics (`.fifo`): MessageGroupId is required, deduplication (MessageDeduplicationId
//!   or the body's SHA-256 with ContentBasedDeduplication) is per topic for 5 minutes, in the
//!   same journaled window as SQS FIFO queues ([`DedupStore`], its own file); copies carry the
//!   group, deduplication id and sequence number so the FIFO queues deliver in group order.
//! - Topic attributes and tags live in [`TopicStore`]; subscriptions in the engine's durable
//!   definitions, so both survive a restart and SIGKILL.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use bridge::sns::filter::FilterPolicyScope;
use bridge::sns::validate::{validate_publish, validate_tags, TAGS_MAX};
use bridge::sns::*;
use bridge::sqs::RequestContext;
use bridge::AwsError;
use bytes::Bytes;
use sha2::{Digest, Sha256};

mod http;

use super::dedup::DedupStore;
use super::mapping;
use super::sns_delivery::{self, is_pending};
use super::sns_fanout::*;
use super::sns_http::policy::{SubscriptionDeliveryPolicy, TopicDeliveryPolicy};
use super::sns_meta::{TopicMeta, TopicStore};
use crate::engine::{
    Binding, Destination, Engine, Exchange, ExchangeKind, ExchangeSettings, Message, Table, Value,
    Vhost, GROUP_ID_HEADER,
};

/// Connection id for engine calls: SNS owns no exclusive queue.
const SNS_CONN: u64 = 0;
/// ListTopics and ListSubscriptions pages.
const PAGE: usize = 100;
const DEDUP_FILE: &str = "sns-dedup.jsonl";

fn not_found() -> AwsError {
    AwsError::sns_not_found("Topic does not exist")
}

fn no_subscription() -> AwsError {
    AwsError::sns_not_found("Subscription does not exist")
}

fn invalid(what: impl std::fmt::Display) -> AwsError {
    AwsError::sns_invalid_parameter(format!("Invalid parameter: {what}"))
}

fn internal(e: impl std::fmt::Display) -> AwsError {
    AwsError::sns_internal_error(format!("Internal error ({e})"))
}

/// Delivery-status logging attributes: stored and reported; Wharf writes no CloudWatch logs.
const FEEDBACK_PROTOCOLS: &[&str] = &["Application", "Firehose", "HTTP", "Lambda", "SQS"];
const FEEDBACK_SUFFIXES: &[&str] = &[
    "SuccessFeedbackRoleArn",
    "SuccessFeedbackSampleRate",
    "FailureFeedbackRoleArn",
];

fn is_feedback_attribute(name: &str) -> bool {
    FEEDBACK_PROTOCOLS.iter().any(|p| {
        name.strip_prefix(p)
            .is_some_and(|rest| FEEDBACK_SUFFIXES.contains(&rest))
    })
}

fn bool_attr(name: &str, v: &str) -> Result<bool, AwsError> {
    if v.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if v.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(invalid(format!(
            "Attributes Reason: {name}: Invalid value [{v}]. Must be true or false."
        )))
    }
}

fn json_attr(name: &str, v: &str) -> Result<(), AwsError> {
    match serde_json::from_str::<serde_json::Value>(v) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        _ => Err(invalid(format!(
            "Attributes Reason: {name}: the value is not a JSON object"
        ))),
    }
}

/// Checks one topic attribute; `creating` allows FifoTopic.
fn check_topic_attribute(name: &str, v: &str, fifo: bool, creating: bool) -> Result<(), AwsError> {
    match name {
        "FifoTopic" if creating => bool_attr(name, v).map(|_| ()),
        "FifoTopic" => Err(invalid("AttributeName Reason: FifoTopic cannot be changed")),
        "ContentBasedDeduplication" | "FifoThroughputScope" if !fifo => Err(invalid(format!(
            "Attributes Reason: {name} can only be set for FIFO topics"
        ))),
        "ContentBasedDeduplication" => bool_attr(name, v).map(|_| ()),
        "FifoThroughputScope" if v == "Topic" || v == "MessageGroup" => Ok(()),
        "FifoThroughputScope" => Err(invalid(format!(
            "Attributes Reason: FifoThroughputScope: Invalid value [{v}]. Must be Topic or MessageGroup."
        ))),
        "SignatureVersion" if v == "1" || v == "2" => Ok(()),
        "SignatureVersion" => Err(invalid(format!(
            "Attributes Reason: SignatureVersion: Invalid value [{v}]. Must be 1 or 2."
        ))),
        "TracingConfig" if v == "PassThrough" || v == "Active" => Ok(()),
        "TracingConfig" => Err(invalid(format!(
            "Attributes Reason: TracingConfig: Invalid value [{v}]. Must be PassThrough or Active."
        ))),
        "DeliveryPolicy" => TopicDeliveryPolicy::parse(v)
            .map(|_| ())
            .map_err(|e| AwsError::sns_invalid_parameter(e.to_string())),
        "Policy" | "ArchivePolicy" | "DataProtectionPolicy" => {
            json_attr(name, v)
        }
        "DisplayName" if v.chars().count() <= 100 => Ok(()),
        "DisplayName" => Err(invalid(
            "Attributes Reason: DisplayName must be at most 100 characters",
        )),
        "KmsMasterKeyId" => Ok(()),
        n if n.ends_with("SampleRate") && is_feedback_attribute(n) => {
            match v.parse::<u32>() {
                Ok(r) if r <= 100 => Ok(()),
                _ => Err(invalid(format!(
                    "Attributes Reason: {n}: Invalid value [{v}]. Must be 0 to 100."
                ))),
            }
        }
        n if is_feedback_attribute(n) => Ok(()),
        _ => Err(invalid("AttributeName")),
    }
}

/// Subscription attributes a client may set. `scope` is the FilterPolicyScope the
/// subscription will have, `policy` its FilterPolicy (to check them together).
fn check_subscription_attribute(
    name: &str,
    v: &str,
    policy: Option<&str>,
    scope: Option<&str>,
) -> Result<(), FilterCheck> {
    match name {
        "FilterPolicy" if v.is_empty() => Ok(()),
        "FilterPolicy" => parse_filter(v, scope)
            .map(|_| ())
            .map_err(FilterCheck::Filter),
        "FilterPolicyScope" => match policy.filter(|p| !p.is_empty()) {
            Some(p) => parse_filter(p, Some(v)).map(|_| ()),
            None => FilterPolicyScope::parse(v).map(|_| ()),
        }
        .map_err(FilterCheck::Filter),
        other => check_other_subscription_attribute(other, v).map_err(FilterCheck::Other),
    }
}

/// Why a subscription attribute was refused: a filter policy (whose message depends on the
/// operation) or another attribute.
enum FilterCheck {
    Filter(bridge::sns::filter::FilterPolicyError),
    Other(AwsError),
}

impl FilterCheck {
    fn for_subscribe(self) -> AwsError {
        match self {
            FilterCheck::Filter(e) => AwsError::sns_invalid_parameter(e.subscribe_message()),
            FilterCheck::Other(e) => e,
        }
    }
    fn for_set(self) -> AwsError {
        match self {
            FilterCheck::Filter(e) => AwsError::sns_invalid_parameter(e.to_string()),
            FilterCheck::Other(e) => e,
        }
    }
}

fn check_other_subscription_attribute(name: &str, v: &str) -> Result<(), AwsError> {
    match name {
        "RawMessageDelivery" => bool_attr(name, v).map(|_| ()),
        "RedrivePolicy" => {
            let target = serde_json::from_str::<serde_json::Value>(v)
                .ok()
                .and_then(|p| p.get("deadLetterTargetArn")?.as_str().map(str::to_string));
            match target {
                Some(t) if t.starts_with("arn:aws:sqs:") && t.split(':').count() == 6 => Ok(()),
                _ => Err(invalid(
                    "RedrivePolicy: deadLetterTargetArn must be an SQS queue ARN",
                )),
            }
        }
        "DeliveryPolicy" => SubscriptionDeliveryPolicy::parse(v)
            .map(|_| ())
            .map_err(|e| AwsError::sns_invalid_parameter(e.to_string())),
        _ => Err(invalid("AttributeName")),
    }
}

/// Subscription attribute name -> binding argument.
fn subscription_arg(name: &str) -> Option<&'static str> {
    Some(match name {
        "RawMessageDelivery" => ARG_RAW,
        "FilterPolicy" => ARG_FILTER_POLICY,
        "FilterPolicyScope" => ARG_FILTER_POLICY_SCOPE,
        "RedrivePolicy" => ARG_REDRIVE_POLICY,
        "DeliveryPolicy" => ARG_DELIVERY_POLICY,
        _ => return None,
    })
}

fn arg_str(args: &Table, name: &str) -> Option<String> {
    args.get(name).and_then(Value::as_str).map(str::to_string)
}

/// Whether Subscribe's `attributes` differ from those of the existing subscription `args`
/// (same topic, protocol and endpoint). As on AWS, only the attributes given are compared, each
/// against the subscription's value or, when it has none, the default GetSubscriptionAttributes
/// reports (`RawMessageDelivery` false, `FilterPolicyScope` MessageAttributes, no policy).
fn attributes_differ(args: &Table, attributes: &BTreeMap<String, String>) -> bool {
    attributes.iter().any(|(k, v)| {
        let have = subscription_arg(k).and_then(|a| arg_str(args, a));
        match k.as_str() {
            "RawMessageDelivery" => !have.as_deref().unwrap_or("false").eq_ignore_ascii_case(v),
            "FilterPolicyScope" => have.as_deref().unwrap_or("MessageAttributes") != v,
            _ => have.as_deref().unwrap_or("") != v,
        }
    })
}

/// What Subscribe answers when the endpoint is already subscribed with other attributes.
fn already_subscribed() -> AwsError {
    invalid("Attributes Reason: Subscription already exists with different attributes")
}

/// Attempts at a read-modify-write of a subscription's binding before giving up (another
/// request changed it in between each time).
const REPLACE_ATTEMPTS: usize = 8;

/// A subscription found by its ARN.
struct FoundSubscription {
    vhost: Arc<Vhost>,
    topic: Arc<Exchange>,
    binding: Binding,
}

/// The engine backend of the SNS bridge.
#[derive(Debug)]
pub struct SnsEngine {
    engine: Arc<Engine>,
    topics: Arc<TopicStore>,
    fanout: Arc<TopicFanout>,
    /// FIFO topic deduplication window (5 minutes), journaled.
    dedup: DedupStore,
    /// FIFO sequence numbers, increasing across restarts (seeded by the clock).
    sequence: AtomicU64,
}

impl SnsEngine {
    pub fn open(
        engine: Arc<Engine>,
        data_dir: &std::path::Path,
        account_id: &str,
        region: &str,
    ) -> anyhow::Result<Self> {
        let topics = Arc::new(TopicStore::open(data_dir)?);
        let fanout = Arc::new(TopicFanout::new(
            topics.clone(),
            account_id,
            region,
            data_dir,
        ));
        engine.set_sns_fanout(fanout.clone());
        Ok(SnsEngine {
            engine,
            topics,
            fanout,
            dedup: DedupStore::open_file(data_dir, DEDUP_FILE, now_ms())?,
            sequence: AtomicU64::new(now_ms() * 1_000),
        })
    }

    /// Where subscribers reach the broker (UnsubscribeURL, SigningCertURL): the HTTP
    /// listener's address.
    pub fn set_base_url(&self, url: String) {
        *self.fanout.base_url.write() = url;
    }

    /// Gives the fan-out hook the SQS side (queue retention).
    pub fn attach(&self, ctx: std::sync::Weak<super::AwsContext>) {
        self.fanout.attach(ctx);
    }

    /// The certificate of the signing key, PEM (served at SigningCertURL).
    pub fn signing_certificate(&self) -> Result<String, String> {
        self.fanout
            .signing_key()
            .map(|k| k.certificate_pem().to_string())
    }

    fn vhost_name(ctx: &RequestContext) -> String {
        super::vhost_name(&ctx.account_id, &ctx.region)
    }

    fn topic_arn(ctx: &RequestContext, name: &str) -> String {
        TopicArn::format(&ctx.region, &ctx.account_id, name)
    }

    /// A topic of the caller's account and region, by ARN.
    fn find_topic(
        &self,
        ctx: &RequestContext,
        arn: &str,
        param: &str,
    ) -> Result<(Arc<Vhost>, Arc<Exchange>), AwsError> {
        let t = TopicArn::parse(arn, param)?;
        if t.account != ctx.account_id || t.region != ctx.region {
            return Err(not_found());
        }
        let vhost = self
            .engine
            .vhost(&Self::vhost_name(ctx))
            .ok_or_else(not_found)?;
        let ex = vhost
            .exchange(&t.name)
            .filter(|e| e.settings.kind == ExchangeKind::Sns)
            .ok_or_else(not_found)?;
        Ok((vhost, ex))
    }

    fn find_subscription(
        &self,
        ctx: &RequestContext,
        arn: &str,
    ) -> Result<FoundSubscription, AwsError> {
        let s = SubscriptionArn::parse(arn)?;
        let topic_arn = TopicArn::format(&s.topic.region, &s.topic.account, &s.topic.name);
        let (vhost, topic) = self
            .find_topic(ctx, &topic_arn, "SubscriptionArn")
            .map_err(|e| {
                if e.code == "NotFound" {
                    no_subscription()
                } else {
                    e
                }
            })?;
        let binding = topic
            .with_bindings(|bs| {
                bs.iter()
                    .find(|b| arg_str(&b.arguments, ARG_SUBSCRIPTION_ARN).as_deref() == Some(arn))
                    .cloned()
            })
            .ok_or_else(no_subscription)?;
        Ok(FoundSubscription {
            vhost,
            topic,
            binding,
        })
    }

    fn topics_in(&self, ctx: &RequestContext) -> Vec<Arc<Exchange>> {
        let mut v: Vec<Arc<Exchange>> = self
            .engine
            .vhost(&Self::vhost_name(ctx))
            .map(|v| v.exchanges())
            .unwrap_or_default()
            .into_iter()
            .filter(|e| {
                e.settings.kind == ExchangeKind::Sns
                    && bridge::sns::validate::topic_name_ok(&e.name)
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn create_topic(
        &self,
        ctx: &RequestContext,
        name: String,
        attributes: BTreeMap<String, String>,
        tags: BTreeMap<String, String>,
    ) -> Result<SnsResponse, AwsError> {
        let fifo_asked = match attributes.get("FifoTopic") {
            Some(v) => bool_attr("FifoTopic", v)?,
            None => false,
        };
        if name.ends_with(".fifo") != fifo_asked {
            return Err(invalid(
                "Fifo Topic names must end with .fifo and must be made up of only uppercase and lowercase ASCII letters, numbers, underscores, and hyphens, and must be between 1 and 256 characters long.",
            ));
        }
        for (k, v) in &attributes {
            check_topic_attribute(k, v, fifo_asked, true)?;
        }
        let vname = Self::vhost_name(ctx);
        let arn = Self::topic_arn(ctx, &name);
        let vhost = self.engine.ensure_vhost(&vname).map_err(internal)?;
        if let Some(ex) = vhost.exchange(&name) {
            if ex.settings.kind != ExchangeKind::Sns {
                return Err(invalid(format!(
                    "Name Reason: an exchange named {name} of kind {} already exists in this account and region",
                    ex.settings.kind.as_str()
                )));
            }
            // Same name: the same ARN when the given attributes and tags match, as AWS.
            let meta = self.topics.get(&vname, &name);
            for (k, v) in &attributes {
                if meta.attributes.get(k) != Some(v) {
                    return Err(invalid(
                        "Attributes Reason: Topic already exists with different attributes",
                    ));
                }
            }
            for (k, v) in &tags {
                if meta.tags.get(k) != Some(v) {
                    return Err(invalid(
                        "Tags Reason: Topic already exists with different tags",
                    ));
                }
            }
            return Ok(SnsResponse::TopicArn(arn));
        }
        let settings = ExchangeSettings {
            kind: ExchangeKind::Sns,
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: Table::new(),
        };
        // Metadata first: a crash in between leaves settings without a topic (ignored, and
        // replaced by the next CreateTopic), never a topic with the wrong FIFO mode.
        self.topics
            .update(&vname, &name, |m| {
                *m = TopicMeta {
                    attributes,
                    tags,
                    created_secs: now_ms() / 1000,
                }
            })
            .map_err(internal)?;
        vhost
            .declare_exchange(&name, settings, false)
            .map_err(|e| invalid(format!("Name Reason: {e}")))?;
        Ok(SnsResponse::TopicArn(arn))
    }

    fn topic_attributes(&self, ctx: &RequestContext, topic: &Exchange) -> BTreeMap<String, String> {
        let vname = Self::vhost_name(ctx);
        let meta = self.topics.get(&vname, &topic.name);
        let arn = Self::topic_arn(ctx, &topic.name);
        let mut a = meta.attributes.clone();
        let (confirmed, pending) = topic.with_bindings(|bs| {
            let subscriptions = bs
                .iter()
                .filter(|b| b.arguments.contains_key(ARG_SUBSCRIPTION_ARN));
            let pending = subscriptions.clone().filter(|b| is_pending(&b.arguments));
            (
                subscriptions.count() - pending.clone().count(),
                pending.count(),
            )
        });
        a.insert("TopicArn".into(), arn.clone());
        a.insert("Owner".into(), ctx.account_id.clone());
        a.insert("SubscriptionsConfirmed".into(), confirmed.to_string());
        a.insert("SubscriptionsPending".into(), pending.to_string());
        a.insert("SubscriptionsDeleted".into(), "0".into());
        a.entry("DisplayName".into()).or_default();
        a.entry("Policy".into())
            .or_insert_with(|| default_policy(&arn, &ctx.account_id).to_string());
        a.insert(
            "EffectiveDeliveryPolicy".into(),
            meta.attributes
                .get("DeliveryPolicy")
                .cloned()
                .unwrap_or_else(|| DEFAULT_DELIVERY_POLICY.to_string()),
        );
        if meta.fifo() {
            a.insert("FifoTopic".into(), "true".into());
            a.entry("ContentBasedDeduplication".into())
                .or_insert_with(|| "false".into());
        }
        a
    }

    fn set_topic_attribute(
        &self,
        ctx: &RequestContext,
        arn: &str,
        name: &str,
        value: String,
    ) -> Result<SnsResponse, AwsError> {
        let (_, topic) = self.find_topic(ctx, arn, "TopicArn")?;
        let vname = Self::vhost_name(ctx);
        let fifo = self.topics.get(&vname, &topic.name).fifo();
        check_topic_attribute(name, &value, fifo, false)?;
        self.topics
            .update(&vname, &topic.name, |m| {
                m.attributes.insert(name.to_string(), value);
            })
            .map_err(internal)?;
        Ok(SnsResponse::Empty)
    }

    fn subscribe(
        &self,
        ctx: &RequestContext,
        topic_arn: &str,
        protocol: &str,
        endpoint: Option<String>,
        attributes: BTreeMap<String, String>,
        return_arn: bool,
    ) -> Result<SnsResponse, AwsError> {
        let (vhost, topic) = self.find_topic(ctx, topic_arn, "TopicArn")?;
        let endpoint = endpoint
            .filter(|e| !e.is_empty())
            .ok_or_else(|| invalid("Endpoint"))?;
        match protocol {
            "sqs" => {}
            "http" | "https" => {
                return self.subscribe_http(
                    ctx, &vhost, &topic, topic_arn, protocol, endpoint, attributes, return_arn,
                )
            }
            "email" | "email-json" | "sms" | "application" | "lambda" | "firehose" => {
                return Err(invalid(format!(
                    "Protocol Reason: Wharf does not deliver to {protocol} endpoints"
                )))
            }
            other => {
                return Err(invalid(format!(
                    "Amazon SNS does not support this protocol string: {other}"
                )))
            }
        }
        let policy = attributes.get("FilterPolicy").map(String::as_str);
        let scope = attributes.get("FilterPolicyScope").map(String::as_str);
        for (k, v) in &attributes {
            check_subscription_attribute(k, v, policy, scope)
                .map_err(FilterCheck::for_subscribe)?;
        }
        // The queue: an SQS queue ARN of any account and region that has queues in this
        // broker (each is a vhost `aws:<account>:<region>`).
        let (queue_account, queue_region, queue_name) = {
            let f: Vec<&str> = endpoint.split(':').collect();
            match f.as_slice() {
                ["arn", "aws", "sqs", region, account, name]
                    if !region.is_empty() && !account.is_empty() && !name.is_empty() =>
                {
                    (account.to_string(), region.to_string(), name.to_string())
                }
                _ => return Err(invalid("SQS endpoint ARN")),
            }
        };
        // Subscribed already (and confirmed): the same ARN, even when the queue has been
        // deleted since (the subscription outlives it).
        let confirmed = topic.with_bindings(|bs| {
            bs.iter()
                .find(|b| {
                    arg_str(&b.arguments, ARG_PROTOCOL).as_deref() == Some(protocol)
                        && arg_str(&b.arguments, ARG_ENDPOINT).as_deref() == Some(&endpoint)
                        && b.arguments.contains_key(ARG_SUBSCRIPTION_ARN)
                        && !is_pending(&b.arguments)
                })
                .cloned()
        });
        if let Some(b) = confirmed {
            if attributes_differ(&b.arguments, &attributes) {
                return Err(already_subscribed());
            }
            return Ok(SnsResponse::SubscriptionArn(
                arg_str(&b.arguments, ARG_SUBSCRIPTION_ARN).unwrap_or_default(),
            ));
        }
        let local = queue_account == ctx.account_id && queue_region == ctx.region;
        let queue_vhost = if local {
            vhost.clone()
        } else {
            self.engine
                .vhost(&super::vhost_name(&queue_account, &queue_region))
                .ok_or_else(|| {
                    invalid(format!(
                        "Endpoint Reason: queue {queue_name} does not exist"
                    ))
                })?
        };
        let queue = queue_vhost.queue(&queue_name, SNS_CONN).map_err(|_| {
            invalid(format!(
                "Endpoint Reason: queue {queue_name} does not exist"
            ))
        })?;
        let topic_fifo = self.topics.get(&vhost.name, &topic.name).fifo();
        if topic_fifo != queue_name.ends_with(".fifo") {
            return Err(invalid(if topic_fifo {
                "Invalid parameter: Endpoint Reason: FIFO SNS topics can only deliver to FIFO SQS queues"
            } else {
                "Invalid parameter: Endpoint Reason: Please use FIFO SNS topic to subscribe a FIFO SQS queue"
            }));
        }
        let existing = topic.with_bindings(|bs| {
            bs.iter()
                .find(|b| {
                    arg_str(&b.arguments, ARG_PROTOCOL).as_deref() == Some(protocol)
                        && arg_str(&b.arguments, ARG_ENDPOINT).as_deref() == Some(&endpoint)
                        && b.arguments.contains_key(ARG_SUBSCRIPTION_ARN)
                })
                .cloned()
        });
        if let Some(b) = existing {
            if attributes_differ(&b.arguments, &attributes) {
                return Err(already_subscribed());
            }
            let arn = arg_str(&b.arguments, ARG_SUBSCRIPTION_ARN).unwrap_or_default();
            if !is_pending(&b.arguments) {
                return Ok(SnsResponse::SubscriptionArn(arn));
            }
            // Still pending: the confirmation goes to the queue again, as for HTTP.
            self.confirm_into_queue(
                &queue_vhost,
                &queue.name,
                &vhost.name,
                &topic.name,
                &b.arguments,
            )?;
            return Ok(SnsResponse::SubscriptionArn(if return_arn {
                arn
            } else {
                "pending confirmation".into()
            }));
        }
        let arn = format!("{topic_arn}:{}", uuid::Uuid::new_v4());
        let mut args = Table::new();
        args.insert(ARG_SUBSCRIPTION_ARN.into(), Value::long_string(arn.clone()));
        args.insert(ARG_PROTOCOL.into(), Value::long_string(protocol));
        args.insert(ARG_ENDPOINT.into(), Value::long_string(endpoint));
        args.insert(ARG_OWNER.into(), Value::long_string(ctx.account_id.clone()));
        for (k, v) in attributes {
            if let Some(arg) = subscription_arg(&k) {
                args.insert(arg.into(), Value::long_string(v));
            }
        }
        if local {
            vhost
                .bind_subscription(&topic.name, Destination::Queue(queue.name.clone()), args)
                .map_err(|e| invalid(format!("Attributes Reason: {e}")))?;
            return Ok(SnsResponse::SubscriptionArn(arn));
        }
        // A queue of another region: bound to the topic itself and delivered by the fan-out
        // hook into its vhost. Of another account: pending until the queue's owner confirms
        // with the token of the SubscriptionConfirmation put in the queue, as AWS asks ("if
        // the endpoint and the topic are not in the same AWS account, the endpoint owner must
        // run the ConfirmSubscription action").
        let other_account = queue_account != ctx.account_id;
        if other_account {
            args.insert(
                sns_delivery::ARG_TOKEN.into(),
                Value::long_string(sns_delivery::new_token()),
            );
            args.insert(sns_delivery::ARG_PENDING.into(), Value::long_string("true"));
        }
        vhost
            .bind_subscription(
                &topic.name,
                Destination::Exchange(topic.name.clone()),
                args.clone(),
            )
            .map_err(|e| invalid(format!("Attributes Reason: {e}")))?;
        if other_account {
            self.confirm_into_queue(&queue_vhost, &queue.name, &vhost.name, &topic.name, &args)?;
            if !return_arn {
                return Ok(SnsResponse::SubscriptionArn("pending confirmation".into()));
            }
        }
        Ok(SnsResponse::SubscriptionArn(arn))
    }

    fn subscription_summary(
        &self,
        ctx: &RequestContext,
        topic: &Exchange,
        b: &Binding,
    ) -> Option<SubscriptionSummary> {
        Some(SubscriptionSummary {
            subscription_arn: arg_str(&b.arguments, ARG_SUBSCRIPTION_ARN)?,
            owner: arg_str(&b.arguments, ARG_OWNER).unwrap_or_else(|| ctx.account_id.clone()),
            protocol: arg_str(&b.arguments, ARG_PROTOCOL).unwrap_or_default(),
            endpoint: arg_str(&b.arguments, ARG_ENDPOINT).unwrap_or_default(),
            topic_arn: Self::topic_arn(ctx, &topic.name),
        })
    }

    fn list_subscriptions(
        &self,
        ctx: &RequestContext,
        topics: Vec<Arc<Exchange>>,
        next_token: Option<String>,
    ) -> Result<SnsResponse, AwsError> {
        // Paged by the real ARN, masked after: pending subscriptions all list as
        // "PendingConfirmation", which would make page boundaries ambiguous.
        let mut all: Vec<(SubscriptionSummary, bool)> = topics
            .iter()
            .flat_map(|t| {
                t.with_bindings(|bs| {
                    bs.iter()
                        .filter_map(|b| {
                            let s = self.subscription_summary(ctx, t, b)?;
                            Some((s, is_pending(&b.arguments)))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        all.sort_by(|a, b| a.0.subscription_arn.cmp(&b.0.subscription_arn));
        let (page, next) = paginate(&all, next_token, |s| s.0.subscription_arn.clone())?;
        let page = page
            .into_iter()
            .map(|(mut s, pending)| {
                // As AWS lists a subscription whose ARN the subscriber has not confirmed yet.
                if pending {
                    s.subscription_arn = "PendingConfirmation".into();
                }
                s
            })
            .collect();
        Ok(SnsResponse::Subscriptions {
            subscriptions: page,
            next_token: next,
        })
    }

    fn subscription_attributes(
        &self,
        ctx: &RequestContext,
        f: &FoundSubscription,
    ) -> BTreeMap<String, String> {
        let args = &f.binding.arguments;
        let mut a = BTreeMap::new();
        if let Some(s) = self.subscription_summary(ctx, &f.topic, &f.binding) {
            a.insert("SubscriptionArn".into(), s.subscription_arn);
            a.insert("TopicArn".into(), s.topic_arn);
            a.insert("Owner".into(), s.owner);
            a.insert("Protocol".into(), s.protocol);
            a.insert("Endpoint".into(), s.endpoint);
        }
        a.insert("ConfirmationWasAuthenticated".into(), "true".into());
        a.insert("PendingConfirmation".into(), is_pending(args).to_string());
        if sns_delivery::is_http(arg_str(args, ARG_PROTOCOL).as_deref()) {
            a.insert(
                "EffectiveDeliveryPolicy".into(),
                self.effective_delivery_policy(&f.vhost.name, &f.topic.name, args),
            );
        }
        a.insert(
            "RawMessageDelivery".into(),
            arg_str(args, ARG_RAW).unwrap_or_else(|| "false".into()),
        );
        a.insert(
            "SubscriptionPrincipal".into(),
            format!("arn:aws:iam::{}:root", ctx.account_id),
        );
        if args.contains_key(ARG_FILTER_POLICY) {
            a.insert(
                "FilterPolicyScope".into(),
                arg_str(args, ARG_FILTER_POLICY_SCOPE)
                    .unwrap_or_else(|| "MessageAttributes".into()),
            );
        }
        for (name, arg) in [
            ("FilterPolicy", ARG_FILTER_POLICY),
            ("RedrivePolicy", ARG_REDRIVE_POLICY),
            ("DeliveryPolicy", ARG_DELIVERY_POLICY),
        ] {
            if let Some(v) = arg_str(args, arg) {
                a.insert(name.into(), v);
            }
        }
        a
    }

    fn set_subscription_attribute(
        &self,
        ctx: &RequestContext,
        arn: &str,
        name: &str,
        value: String,
    ) -> Result<SnsResponse, AwsError> {
        // Read, change, swap: when another request (a confirmation, another attribute) swapped
        // the binding in between, the swap finds nothing and the change is made again on the
        // new binding, so that neither change is lost.
        for _ in 0..REPLACE_ATTEMPTS {
            let f = self.find_subscription(ctx, arn)?;
            let args = &f.binding.arguments;
            let policy = arg_str(args, ARG_FILTER_POLICY);
            let scope = arg_str(args, ARG_FILTER_POLICY_SCOPE);
            check_subscription_attribute(name, &value, policy.as_deref(), scope.as_deref())
                .map_err(FilterCheck::for_set)?;
            let arg = subscription_arg(name).ok_or_else(|| invalid("AttributeName"))?;
            let mut new = f.binding.clone();
            if name == "FilterPolicy" && value.is_empty() {
                // An empty FilterPolicy removes the filter: every message is delivered again.
                new.arguments.remove(ARG_FILTER_POLICY);
                new.arguments.remove(ARG_FILTER_POLICY_SCOPE);
            } else {
                new.arguments
                    .insert(arg.into(), Value::long_string(value.clone()));
            }
            if f.vhost
                .replace_binding(&f.topic.name, &f.binding, new)
                .map_err(|e| invalid(format!("Attributes Reason: {e}")))?
            {
                return Ok(SnsResponse::Empty);
            }
        }
        Err(internal("the subscription kept changing; try again"))
    }

    /// The engine message of one publish, before the topic fans it out.
    fn message(
        &self,
        ctx: &RequestContext,
        topic: &str,
        i: &PublishInput,
        message_id: &str,
        fifo: Option<(&str, &str, &str)>,
    ) -> Message {
        let mut m = Message::new(topic, "", Bytes::from(i.message.clone()));
        let p = &mut m.properties;
        p.delivery_mode = Some(2);
        p.message_id = Some(message_id.to_string());
        let now = now_ms();
        p.timestamp = Some(now / 1000);
        p.user_id = Some(
            ctx.access_key_id
                .clone()
                .unwrap_or_else(|| ctx.account_id.clone()),
        );
        let mut h =
            mapping::to_headers(&i.message_attributes, &Default::default()).unwrap_or_default();
        h.insert(
            HEADER_TIMESTAMP_MS.into(),
            Value::long_string(now.to_string()),
        );
        h.insert(HEADER_MESSAGE_ID.into(), Value::long_string(message_id));
        if let Some(s) = &i.subject {
            h.insert(HEADER_SUBJECT.into(), Value::long_string(s.clone()));
        }
        if validate::is_json_structure(i) {
            h.insert(HEADER_STRUCTURE.into(), Value::long_string("json"));
        }
        if let Some((group, dedup, seq)) = fifo {
            h.insert(GROUP_ID_HEADER.into(), Value::long_string(group));
            h.insert(
                super::sqs::DEDUP_ID_HEADER.into(),
                Value::long_string(dedup),
            );
            h.insert(super::sqs::SEQUENCE_HEADER.into(), Value::long_string(seq));
        }
        p.headers = Some(h);
        m
    }

    /// Publishes one message; returns its result and the Lsn to wait for.
    fn publish_one(
        &self,
        ctx: &RequestContext,
        vhost: &Vhost,
        topic: &Exchange,
        meta: &TopicMeta,
        i: &PublishInput,
    ) -> Result<(PublishResult, u64), AwsError> {
        validate_publish(i)?;
        let fifo = meta.fifo();
        if !fifo {
            if i.message_deduplication_id.is_some() {
                return Err(invalid(
                    "MessageDeduplicationId Reason: The request includes MessageDeduplicationId parameter that is not valid for this topic type",
                ));
            }
            if i.message_group_id.is_some() {
                return Err(invalid(
                    "MessageGroupId Reason: The request includes MessageGroupId parameter that is not valid for this topic type",
                ));
            }
            let id = uuid::Uuid::new_v4().to_string();
            let m = self.message(ctx, &topic.name, i, &id, None);
            let out = vhost
                .publish(&topic.name, m)
                .map_err(|e| internal(e.to_string()))?;
            if out.failed {
                return Err(internal(
                    "the message could not be stored for every subscriber",
                ));
            }
            return Ok((
                PublishResult {
                    message_id: id,
                    sequence_number: None,
                },
                out.lsn,
            ));
        }
        let group = i
            .message_group_id
            .as_deref()
            .ok_or_else(|| invalid("The MessageGroupId parameter is required for FIFO topics"))?;
        let dedup_id = match (&i.message_deduplication_id, meta.content_based_deduplication()) {
            (Some(d), _) => d.clone(),
            (None, true) => hex::encode(Sha256::digest(i.message.as_bytes())),
            (None, false) => {
                return Err(invalid(
                    "The topic should either have ContentBasedDeduplication enabled or MessageDeduplicationId provided explicitly",
                ))
            }
        };
        let key = (vhost.name.clone(), topic.name.clone(), dedup_id.clone());
        if let Some((id, seq)) = self.dedup.lookup(&key, now_ms()) {
            return Ok((
                PublishResult {
                    message_id: id,
                    sequence_number: Some(seq),
                },
                0,
            ));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let seq = format!("{:020}", self.sequence.fetch_add(1, Ordering::Relaxed));
        self.dedup
            .insert(key, id.clone(), seq.clone(), now_ms())
            .map_err(internal)?;
        let m = self.message(ctx, &topic.name, i, &id, Some((group, &dedup_id, &seq)));
        let out = vhost
            .publish(&topic.name, m)
            .map_err(|e| internal(e.to_string()))?;
        if out.failed {
            return Err(internal(
                "the message could not be stored for every subscriber",
            ));
        }
        Ok((
            PublishResult {
                message_id: id,
                sequence_number: Some(seq),
            },
            out.lsn,
        ))
    }

    async fn publish(
        &self,
        ctx: &RequestContext,
        arn: &str,
        i: PublishInput,
    ) -> Result<SnsResponse, AwsError> {
        let (vhost, topic) = self.find_topic(ctx, arn, "TopicArn")?;
        let meta = self.topics.get(&vhost.name, &topic.name);
        let (result, lsn) = self.publish_one(ctx, &vhost, &topic, &meta, &i)?;
        // The answer leaves once every subscriber's copy is on disk.
        self.engine.wait_durable(lsn).await;
        Ok(SnsResponse::Published(result))
    }

    async fn publish_batch(
        &self,
        ctx: &RequestContext,
        arn: &str,
        entries: Vec<PublishBatchEntry>,
    ) -> Result<SnsResponse, AwsError> {
        let (vhost, topic) = self.find_topic(ctx, arn, "TopicArn")?;
        let meta = self.topics.get(&vhost.name, &topic.name);
        let mut successful = Vec::new();
        let mut failed = Vec::new();
        let mut lsn = 0;
        for e in entries {
            match self.publish_one(ctx, &vhost, &topic, &meta, &e.input) {
                Ok((r, l)) => {
                    lsn = lsn.max(l);
                    successful.push((e.id, r));
                }
                Err(err) => failed.push(BatchResultErrorEntry::from_error(&e.id, &err)),
            }
        }
        // One wait for the batch: its copies share the group commit.
        self.engine.wait_durable(lsn).await;
        Ok(SnsResponse::PublishedBatch { successful, failed })
    }

    /// The topic a tagging request names (ResourceArn must be a topic ARN).
    fn tagged_topic(&self, ctx: &RequestContext, arn: &str) -> Result<Arc<Exchange>, AwsError> {
        self.find_topic(ctx, arn, "ResourceArn")
            .map(|(_, t)| t)
            .map_err(|e| {
                if e.code == "NotFound" {
                    AwsError::sns_resource_not_found("Resource does not exist")
                } else {
                    e
                }
            })
    }

    fn update_policy(
        &self,
        ctx: &RequestContext,
        arn: &str,
        change: impl FnOnce(&mut Vec<serde_json::Value>) -> Result<(), AwsError>,
    ) -> Result<SnsResponse, AwsError> {
        let (_, topic) = self.find_topic(ctx, arn, "TopicArn")?;
        let vname = Self::vhost_name(ctx);
        let meta = self.topics.get(&vname, &topic.name);
        let mut policy = meta
            .attributes
            .get("Policy")
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
            .unwrap_or_else(|| default_policy(arn, &ctx.account_id));
        let mut statements = policy["Statement"].as_array().cloned().unwrap_or_default();
        change(&mut statements)?;
        policy["Statement"] = serde_json::Value::Array(statements);
        let text = policy.to_string();
        self.topics
            .update(&vname, &topic.name, |m| {
                m.attributes.insert("Policy".into(), text);
            })
            .map_err(internal)?;
        Ok(SnsResponse::Empty)
    }

    async fn dispatch(
        &self,
        ctx: &RequestContext,
        request: SnsRequest,
    ) -> Result<SnsResponse, AwsError> {
        use SnsRequest as R;
        match request {
            R::CreateTopic {
                name,
                attributes,
                tags,
            } => self.create_topic(ctx, name, attributes, tags),
            R::DeleteTopic { topic_arn } => {
                match self.find_topic(ctx, &topic_arn, "TopicArn") {
                    Ok((vhost, topic)) => {
                        vhost
                            .delete_exchange(&topic.name, false)
                            .map_err(internal)?;
                        self.topics
                            .remove(&vhost.name, &topic.name)
                            .map_err(internal)?;
                    }
                    // Deleting a topic that does not exist succeeds, as on AWS.
                    Err(e) if e.code == "NotFound" => {}
                    Err(e) => return Err(e),
                }
                Ok(SnsResponse::Empty)
            }
            R::ListTopics { next_token } => {
                let arns: Vec<String> = self
                    .topics_in(ctx)
                    .iter()
                    .map(|t| Self::topic_arn(ctx, &t.name))
                    .collect();
                let (page, next) = paginate(&arns, next_token, Clone::clone)?;
                Ok(SnsResponse::Topics {
                    topic_arns: page,
                    next_token: next,
                })
            }
            R::GetTopicAttributes { topic_arn } => {
                let (_, topic) = self.find_topic(ctx, &topic_arn, "TopicArn")?;
                Ok(SnsResponse::Attributes(self.topic_attributes(ctx, &topic)))
            }
            R::SetTopicAttributes {
                topic_arn,
                name,
                value,
            } => self.set_topic_attribute(ctx, &topic_arn, &name, value),
            R::Subscribe {
                topic_arn,
                protocol,
                endpoint,
                attributes,
                return_subscription_arn,
            } => self.subscribe(
                ctx,
                &topic_arn,
                &protocol,
                endpoint,
                attributes,
                return_subscription_arn,
            ),
            R::ConfirmSubscription { topic_arn, token } => {
                self.confirm_subscription(ctx, &topic_arn, &token)
            }
            R::Unsubscribe { subscription_arn } => {
                for _ in 0..REPLACE_ATTEMPTS {
                    let f = self.find_subscription(ctx, &subscription_arn)?;
                    // The binding as it is: its queue may have been deleted since (the
                    // subscription outlives it, as on AWS). False: changed meanwhile.
                    if !f
                        .vhost
                        .remove_binding(&f.topic.name, &f.binding)
                        .map_err(internal)?
                    {
                        continue;
                    }
                    if sns_delivery::is_http(arg_str(&f.binding.arguments, ARG_PROTOCOL).as_deref())
                    {
                        // The subscription is gone (durably) whatever happens here: a
                        // failure to keep it restorable or to post the confirmation is
                        // logged, not answered as a failed Unsubscribe.
                        if let Err(e) = self.unsubscribed_http(&f) {
                            tracing::error!(
                                subscription = %subscription_arn,
                                "SNS: unsubscribed, but no UnsubscribeConfirmation: {}",
                                e.message
                            );
                        }
                    }
                    return Ok(SnsResponse::Empty);
                }
                Err(internal("the subscription kept changing; try again"))
            }
            R::ListSubscriptions { next_token } => {
                let topics = self.topics_in(ctx);
                self.list_subscriptions(ctx, topics, next_token)
            }
            R::ListSubscriptionsByTopic {
                topic_arn,
                next_token,
            } => {
                let (_, topic) = self.find_topic(ctx, &topic_arn, "TopicArn")?;
                self.list_subscriptions(ctx, vec![topic], next_token)
            }
            R::GetSubscriptionAttributes { subscription_arn } => {
                let f = self.find_subscription(ctx, &subscription_arn)?;
                Ok(SnsResponse::Attributes(
                    self.subscription_attributes(ctx, &f),
                ))
            }
            R::SetSubscriptionAttributes {
                subscription_arn,
                name,
                value,
            } => self.set_subscription_attribute(ctx, &subscription_arn, &name, value),
            R::Publish { topic_arn, input } => self.publish(ctx, &topic_arn, input).await,
            R::PublishBatch { topic_arn, entries } => {
                self.publish_batch(ctx, &topic_arn, entries).await
            }
            R::TagResource { resource_arn, tags } => {
                let topic = self.tagged_topic(ctx, &resource_arn)?;
                let vname = Self::vhost_name(ctx);
                let mut all = self.topics.get(&vname, &topic.name).tags;
                all.extend(tags.clone());
                if all.len() > TAGS_MAX {
                    return Err(AwsError::sns_tag_limit_exceeded(
                        "Could not complete request: tag quota of per resource exceeded",
                    ));
                }
                validate_tags(&all)?;
                self.topics
                    .update(&vname, &topic.name, |m| m.tags = all)
                    .map_err(internal)?;
                Ok(SnsResponse::Empty)
            }
            R::UntagResource {
                resource_arn,
                tag_keys,
            } => {
                let topic = self.tagged_topic(ctx, &resource_arn)?;
                self.topics
                    .update(&Self::vhost_name(ctx), &topic.name, |m| {
                        for k in &tag_keys {
                            m.tags.remove(k);
                        }
                    })
                    .map_err(internal)?;
                Ok(SnsResponse::Empty)
            }
            R::ListTagsForResource { resource_arn } => {
                let topic = self.tagged_topic(ctx, &resource_arn)?;
                Ok(SnsResponse::Tags(
                    self.topics.get(&Self::vhost_name(ctx), &topic.name).tags,
                ))
            }
            R::AddPermission {
                topic_arn,
                label,
                account_ids,
                actions,
            } => {
                if let Some(bad) = actions.iter().find(|a| !SNS_ACTIONS.contains(&a.as_str())) {
                    return Err(invalid(format!(
                        "Policy statement action out of service scope! ({bad})"
                    )));
                }
                let arn = topic_arn.clone();
                self.update_policy(ctx, &topic_arn, move |statements| {
                    if statements.iter().any(|s| s["Sid"] == label.as_str()) {
                        return Err(invalid("Statement already exists"));
                    }
                    let principals: Vec<String> = account_ids
                        .iter()
                        .map(|a| format!("arn:aws:iam::{a}:root"))
                        .collect();
                    let actions: Vec<String> = actions.iter().map(|a| format!("SNS:{a}")).collect();
                    statements.push(serde_json::json!({
                        "Sid": label, "Effect": "Allow", "Principal": {"AWS": principals},
                        "Action": actions, "Resource": arn,
                    }));
                    Ok(())
                })
            }
            R::RemovePermission { topic_arn, label } => {
                self.update_policy(ctx, &topic_arn, move |statements| {
                    let before = statements.len();
                    statements.retain(|s| s["Sid"] != label.as_str());
                    if statements.len() == before {
                        return Err(invalid(format!("Label Reason: no statement {label}")));
                    }
                    Ok(())
                })
            }
        }
    }
}

/// Actions AddPermission may grant (SNS's topic actions).
const SNS_ACTIONS: &[&str] = &[
    "*",
    "Publish",
    "Subscribe",
    "Receive",
    "GetTopicAttributes",
    "SetTopicAttributes",
    "AddPermission",
    "RemovePermission",
    "DeleteTopic",
    "ListSubscriptionsByTopic",
];

/// The delivery policy SNS reports when none is set (its documented defaults for HTTP/S).
const DEFAULT_DELIVERY_POLICY: &str = r#"{"http":{"defaultHealthyRetryPolicy":{"minDelayTarget":20,"maxDelayTarget":20,"numRetries":3,"numMaxDelayRetries":0,"numNoDelayRetries":0,"numMinDelayRetries":0,"backoffFunction":"linear"},"disableSubscriptionOverrides":false,"defaultRequestPolicy":{"headerContentType":"text/plain; charset=UTF-8"}}}"#;

/// The policy a new topic has on AWS: its owner may do everything.
fn default_policy(arn: &str, account: &str) -> serde_json::Value {
    serde_json::json!({
        "Version": "2008-10-17",
        "Id": "__default_policy_ID",
        "Statement": [{
            "Sid": "__default_statement_ID",
            "Effect": "Allow",
            "Principal": {"AWS": "*"},
            "Action": ["SNS:GetTopicAttributes", "SNS:SetTopicAttributes", "SNS:AddPermission",
                       "SNS:RemovePermission", "SNS:DeleteTopic", "SNS:Subscribe",
                       "SNS:ListSubscriptionsByTopic", "SNS:Publish"],
            "Resource": arn,
            "Condition": {"StringEquals": {"AWS:SourceOwner": account}}
        }]
    })
}

/// One page of `items` (sorted by `key`) after the NextToken, and the next token.
fn paginate<T: Clone>(
    items: &[T],
    next_token: Option<String>,
    key: impl Fn(&T) -> String,
) -> Result<(Vec<T>, Option<String>), AwsError> {
    let after = match next_token {
        Some(t) => Some(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| invalid("NextToken"))?,
        ),
        None => None,
    };
    let start = after.map_or(0, |a| items.partition_point(|i| key(i) <= a));
    let page: Vec<T> = items[start..].iter().take(PAGE).cloned().collect();
    let next = (start + page.len() < items.len())
        .then(|| page.last())
        .flatten()
        .map(|i| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key(i)));
    Ok((page, next))
}

impl SnsBackend for SnsEngine {
    fn call(
        &self,
        ctx: &RequestContext,
        request: SnsRequest,
    ) -> impl std::future::Future<Output = Result<SnsResponse, AwsError>> + Send {
        self.dispatch(ctx, request)
    }
}
