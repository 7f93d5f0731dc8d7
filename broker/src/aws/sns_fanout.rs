//! What each subscription of an SNS topic receives: the engine's [`SnsFanout`] hook.
//!
//! A subscription is a binding of the topic's exchange; its arguments (the `x-sns-*` names
//! below) say who it is and how it wants messages. For each message reaching the topic:
//! - `sqs` subscriptions get the JSON notification envelope (bridge::sns::envelope) as the
//!   body, or with `RawMessageDelivery` the message itself with its attributes as headers
//!   (which SQS receivers see as message attributes); each delivered copy has its own SQS
//!   MessageId, as on AWS;
//! - other bindings (an AMQP `queue.bind`, an exchange such as `amq.topic` for MQTT
//!   subscribers) get the message raw unless their arguments ask for the envelope
//!   (`x-sns-raw-message-delivery: false`).
//!
//! A message published over AMQP, MQTT or STOMP to the topic's exchange is first given what
//! SNS Publish would have given it (MessageId, timestamp, attributes from its headers), so
//! its subscribers see the same as for an SNS Publish.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};

use bridge::sns::envelope::{self, EnvelopeAttribute, Notification};
use bridge::sns::filter::{AttrValue, FilterPolicy, FilterPolicyError, FilterPolicyScope};
use bridge::sns::signature::{self, MessageType, SignatureVersion, SignedFields, SigningKey};
use bytes::Bytes;
use parking_lot::RwLock;

use super::mapping;
use super::sns_delivery;
use super::sns_http::SnsHttp;
use super::sns_meta::TopicStore;
use crate::engine::{Binding, Message, SharedMessage, SnsFanout, Table, Value, GROUP_ID_HEADER};

/// Binding argument: the subscription's ARN (absent on plain AMQP bindings).
pub const ARG_SUBSCRIPTION_ARN: &str = crate::engine::sns::SUBSCRIPTION_ARN_ARG;
pub const ARG_PROTOCOL: &str = "x-sns-protocol";
pub const ARG_ENDPOINT: &str = "x-sns-endpoint";
pub const ARG_OWNER: &str = "x-sns-owner";
/// `true`: the message as published; `false`: the envelope.
pub const ARG_RAW: &str = "x-sns-raw-message-delivery";
pub const ARG_FILTER_POLICY: &str = "x-sns-filter-policy";
pub const ARG_FILTER_POLICY_SCOPE: &str = "x-sns-filter-policy-scope";
pub const ARG_REDRIVE_POLICY: &str = "x-sns-redrive-policy";
pub const ARG_DELIVERY_POLICY: &str = "x-sns-delivery-policy";

/// Message headers SNS Publish sets; subscribers never see them as attributes.
pub const HEADER_SUBJECT: &str = "x-sns-subject";
/// Publish time, ms since the epoch (the envelope's Timestamp).
pub const HEADER_TIMESTAMP_MS: &str = "x-sns-timestamp-ms";
/// `json`: the body holds per-protocol messages.
pub const HEADER_STRUCTURE: &str = "x-sns-message-structure";
/// The SNS MessageId (the engine `message_id` of delivered copies is the SQS one).
pub const HEADER_MESSAGE_ID: &str = "x-sns-message-id";

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn arg<'a>(args: &'a Table, name: &str) -> Option<&'a str> {
    args.get(name).and_then(Value::as_str)
}

fn header<'a>(m: &'a Message, name: &str) -> Option<&'a str> {
    m.properties.headers.as_ref()?.get(name)?.as_str()
}

/// Path of the signing certificate on the HTTP listener (SigningCertURL); AWS serves its
/// own as `SimpleNotificationService-<id>.pem` too.
pub const SIGNING_CERT_PATH: &str = "/SimpleNotificationService-wharf.pem";
const SIGNING_KEY_FILE: &str = "sns-signing-key.pem";
const SIGNING_CERT_FILE: &str = "sns-signing-cert.pem";
/// Parsed filter policies kept; beyond this the cache starts over (policies are few).
const POLICY_CACHE_MAX: usize = 4096;

/// A binding's filter policy, checked: `FilterPolicy` JSON and its scope.
pub fn parse_filter(policy: &str, scope: Option<&str>) -> Result<FilterPolicy, FilterPolicyError> {
    let scope = match scope {
        Some(s) => FilterPolicyScope::parse(s)?,
        None => FilterPolicyScope::default(),
    };
    FilterPolicy::parse(policy, scope)
}

thread_local! {
    /// The last string signed on this thread and its signature: every envelope subscription
    /// of one message signs the same string, and RSA PKCS#1 v1.5 signatures are deterministic,
    /// so a fan-out to ten queues signs once.
    static LAST_SIGNATURE: RefCell<(String, String)> = const { RefCell::new((String::new(), String::new())) };
}

/// The hook: knows topic settings, where the broker is reachable, the default account, the
/// signing key and the filter policies in use.
#[derive(Debug)]
pub struct TopicFanout {
    pub topics: Arc<TopicStore>,
    /// `http://host:port` of the HTTP listener (UnsubscribeURL, SigningCertURL).
    pub base_url: Arc<RwLock<String>>,
    pub account_id: String,
    pub region: String,
    /// Where the signing key and certificate are kept.
    pub data_dir: PathBuf,
    /// Loaded, or made and saved, on first use: brokers that never deliver an envelope never
    /// pay for an RSA key.
    signing_key: OnceLock<Result<Arc<SigningKey>, String>>,
    /// Filter policies by (scope, JSON), parsed once.
    policies: RwLock<HashMap<(String, String), Arc<FilterPolicy>>>,
    /// HTTP/S delivery, once the broker started it (sns_delivery.rs); its key signs every
    /// envelope.
    pub(super) http: OnceLock<SnsHttp>,
    /// The SQS side, for the retention of subscribed queues (set once the context exists).
    context: OnceLock<Weak<super::AwsContext>>,
}

impl TopicFanout {
    pub fn new(
        topics: Arc<TopicStore>,
        account_id: &str,
        region: &str,
        data_dir: &std::path::Path,
    ) -> Self {
        TopicFanout {
            topics,
            base_url: Arc::new(RwLock::new("http://localhost:4566".into())),
            account_id: account_id.to_string(),
            region: region.to_string(),
            data_dir: data_dir.to_path_buf(),
            signing_key: OnceLock::new(),
            policies: RwLock::new(HashMap::new()),
            http: OnceLock::new(),
            context: OnceLock::new(),
        }
    }

    /// Hands HTTP/S subscriptions to `http` and signs every envelope (SQS ones too) with its
    /// key, so that one certificate, at its path, verifies all of them.
    pub fn attach_http(&self, http: SnsHttp) -> Result<(), String> {
        let key = SigningKey::from_pem(http.signing_key().key_pem(), http.certificate_pem())
            .map_err(|e| format!("SNS HTTP signing key: {e}"))?;
        if self.signing_key.set(Ok(Arc::new(key))).is_err() {
            return Err("SNS signing key already in use before HTTP delivery started".into());
        }
        let _ = self.http.set(http);
        Ok(())
    }

    /// Where the HTTP listener serves the signing certificate.
    pub fn certificate_path(&self) -> &str {
        self.http
            .get()
            .map_or(SIGNING_CERT_PATH, |h| h.certificate_path())
    }

    pub fn attach(&self, ctx: Weak<super::AwsContext>) {
        let _ = self.context.set(ctx);
    }

    /// The MessageRetentionPeriod of an SQS queue, ms.
    fn retention_ms(&self, vhost: &str, queue: &str) -> Option<u64> {
        self.context
            .get()?
            .upgrade()?
            .sqs
            .retention_ms(vhost, queue)
    }

    /// The broker's SNS signing key: read from the data directory, or made and written there
    /// (the key readable by the broker's user only), so SigningCertURL serves the same
    /// certificate across restarts.
    pub fn signing_key(&self) -> Result<Arc<SigningKey>, String> {
        self.signing_key
            .get_or_init(|| {
                let key_path = self.data_dir.join(SIGNING_KEY_FILE);
                let cert_path = self.data_dir.join(SIGNING_CERT_FILE);
                if let (Ok(k), Ok(c)) = (
                    std::fs::read_to_string(&key_path),
                    std::fs::read_to_string(&cert_path),
                ) {
                    return SigningKey::from_pem(&k, &c)
                        .map(Arc::new)
                        .map_err(|e| format!("{}: {e}", key_path.display()));
                }
                let key = SigningKey::generate("wharf SNS signing")
                    .map_err(|e| format!("SNS signing key: {e}"))?;
                write_private(&key_path, key.key_pem())
                    .and_then(|_| std::fs::write(&cert_path, key.certificate_pem()))
                    .map_err(|e| format!("saving the SNS signing key: {e}"))?;
                tracing::info!(path = %cert_path.display(), "SNS signing key created");
                Ok(Arc::new(key))
            })
            .clone()
    }

    pub fn signing_cert_url(&self) -> String {
        format!("{}{}", self.base_url.read(), self.certificate_path())
    }

    fn policy(&self, json: &str, scope: Option<&str>) -> Option<Arc<FilterPolicy>> {
        let key = (scope.unwrap_or("").to_string(), json.to_string());
        if let Some(p) = self.policies.read().get(&key) {
            return Some(p.clone());
        }
        // Checked when the binding was made; one that no longer parses filters everything
        // out rather than delivering what the subscriber asked not to get.
        let p = Arc::new(parse_filter(json, scope).ok()?);
        let mut cache = self.policies.write();
        if cache.len() >= POLICY_CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, p.clone());
        Some(p)
    }

    /// Whether the binding's filter policy (if any) lets `msg` through.
    pub(super) fn passes_filter(&self, args: &Table, msg: &Message, protocol: &str) -> bool {
        let Some(json) = arg(args, ARG_FILTER_POLICY) else {
            return true;
        };
        let Some(policy) = self.policy(json, arg(args, ARG_FILTER_POLICY_SCOPE)) else {
            return false;
        };
        let attributes = mapping::from_headers(msg.properties.headers.as_ref());
        let values: Vec<(&str, AttrValue<'_>)> = attributes
            .iter()
            .map(|(k, v)| {
                let text = v.string_value.as_deref().unwrap_or("");
                // Binary attributes are ignored by policies (the filter module's rule).
                (k.as_str(), AttrValue::typed(&v.data_type, text, &[]))
            })
            .collect();
        let structure = header(msg, HEADER_STRUCTURE) == Some("json");
        let body = envelope::message_for(&String::from_utf8_lossy(&msg.body), structure, protocol);
        policy.matches(&values, &body)
    }

    /// The signature of a notification, signed once per distinct string on this thread.
    fn sign(&self, version: SignatureVersion, fields: &SignedFields<'_>) -> Option<String> {
        let key = match self.signing_key() {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "SNS envelopes go unsigned");
                return None;
            }
        };
        let text = signature::string_to_sign(fields);
        let cache_key = format!("{}{text}", version.as_str());
        LAST_SIGNATURE.with(|last| {
            let mut last = last.borrow_mut();
            if last.0 != cache_key {
                let sig = key.sign(version, &text);
                *last = (cache_key, sig);
            }
            Some(last.1.clone())
        })
    }

    /// The topic ARN of exchange `name` in `vhost` (`aws:<account>:<region>`, else the
    /// configured account and region).
    pub fn topic_arn(&self, vhost: &str, name: &str) -> String {
        let mut parts = vhost.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("aws"), Some(account), Some(region)) => {
                bridge::sns::TopicArn::format(region, account, name)
            }
            _ => bridge::sns::TopicArn::format(&self.region, &self.account_id, name),
        }
    }

    pub fn unsubscribe_url(&self, subscription_arn: &str) -> String {
        // ARNs hold letters, digits, `-`, `_`, `.` and `:`; only `:` needs escaping.
        let arn = subscription_arn.replace(':', "%3A");
        format!(
            "{}/?Action=Unsubscribe&SubscriptionArn={arn}",
            self.base_url.read()
        )
    }

    pub(super) fn envelope(&self, vhost: &str, topic: &str, args: &Table, msg: &Message) -> String {
        let protocol = arg(args, ARG_PROTOCOL).unwrap_or("default");
        let text = String::from_utf8_lossy(&msg.body);
        let structure = header(msg, HEADER_STRUCTURE) == Some("json");
        let message_attributes = mapping::from_headers(msg.properties.headers.as_ref())
            .into_iter()
            .map(|(k, v)| {
                let value = v.string_value.or(v.binary_value).unwrap_or_default();
                (
                    k,
                    EnvelopeAttribute {
                        data_type: v.data_type,
                        value,
                    },
                )
            })
            .collect();
        let version = self
            .topics
            .attribute(vhost, topic, "SignatureVersion")
            .and_then(|v| SignatureVersion::parse(&v))
            .unwrap_or(SignatureVersion::V1);
        let message_id = header(msg, HEADER_MESSAGE_ID)
            .or(msg.properties.message_id.as_deref())
            .unwrap_or_default()
            .to_string();
        let topic_arn = self.topic_arn(vhost, topic);
        let subject = header(msg, HEADER_SUBJECT).map(str::to_string);
        let message = envelope::message_for(&text, structure, protocol);
        let timestamp = envelope::iso8601_ms(
            header(msg, HEADER_TIMESTAMP_MS)
                .and_then(|t| t.parse().ok())
                .unwrap_or(0),
        );
        let signature = self.sign(
            version,
            &SignedFields {
                message_type: MessageType::Notification,
                message: &message,
                message_id: &message_id,
                subject: subject.as_deref(),
                subscribe_url: None,
                token: None,
                timestamp: &timestamp,
                topic_arn: &topic_arn,
            },
        );
        // No certificate URL for an envelope that could not be signed.
        let signing_cert_url = signature.as_ref().map(|_| self.signing_cert_url());
        Notification {
            kind: "Notification",
            message_id,
            sequence_number: header(msg, super::sqs::SEQUENCE_HEADER).map(str::to_string),
            topic_arn,
            subject,
            message,
            timestamp,
            signature_version: version.as_str().to_string(),
            signature,
            signing_cert_url,
            unsubscribe_url: arg(args, ARG_SUBSCRIPTION_ARN)
                .map(|a| self.unsubscribe_url(a))
                .unwrap_or_default(),
            message_attributes,
        }
        .to_json()
    }
}

/// Headers a delivered copy keeps: FIFO ordering and deduplication travel on; SNS's own
/// bookkeeping does not.
fn keep_header(name: &str, envelope: bool) -> bool {
    if name.starts_with("x-sns-") {
        return false;
    }
    if envelope {
        // The envelope carries the attributes; only the FIFO headers stay on the message.
        return name == GROUP_ID_HEADER
            || name == super::sqs::DEDUP_ID_HEADER
            || name == super::sqs::SEQUENCE_HEADER;
    }
    true
}

impl SnsFanout for TopicFanout {
    fn prepare(&self, msg: &SharedMessage) -> SharedMessage {
        if header(msg, HEADER_TIMESTAMP_MS).is_some() {
            return msg.clone();
        }
        let mut m = (**msg).clone();
        let now = now_ms();
        let id = m
            .properties
            .message_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let h = m.properties.headers.get_or_insert_with(Table::new);
        h.insert(
            HEADER_TIMESTAMP_MS.into(),
            Value::long_string(now.to_string()),
        );
        h.insert(HEADER_MESSAGE_ID.into(), Value::long_string(id));
        Arc::new(m)
    }

    fn message_for(
        &self,
        vhost: &str,
        exchange: &str,
        binding: &Binding,
        msg: &SharedMessage,
    ) -> Option<SharedMessage> {
        let args = &binding.arguments;
        let subscription = arg(args, ARG_SUBSCRIPTION_ARN).is_some();
        let raw = match arg(args, ARG_RAW) {
            Some(v) => v.eq_ignore_ascii_case("true"),
            // A plain AMQP binding takes the message as published.
            None => !subscription,
        };
        let sqs = arg(args, ARG_PROTOCOL) == Some("sqs");
        if sns_delivery::is_http(arg(args, ARG_PROTOCOL)) {
            // Posted by the delivery engine, never routed through the (self-)binding.
            self.post_http(vhost, exchange, args, msg);
            return None;
        }
        if sns_delivery::is_pending(args) {
            // A subscription of another account's queue, not confirmed yet.
            return None;
        }
        if !self.passes_filter(args, msg, arg(args, ARG_PROTOCOL).unwrap_or("default")) {
            return None;
        }
        let mut m = Message::new(msg.exchange.clone(), msg.routing_key.clone(), Bytes::new());
        m.properties = msg.properties.clone();
        m.body = if raw {
            let structure = header(msg, HEADER_STRUCTURE) == Some("json");
            if structure {
                let protocol = arg(args, ARG_PROTOCOL).unwrap_or("default");
                Bytes::from(envelope::message_for(
                    &String::from_utf8_lossy(&msg.body),
                    true,
                    protocol,
                ))
            } else {
                msg.body.clone()
            }
        } else {
            Bytes::from(self.envelope(vhost, exchange, args, msg))
        };
        if let Some(h) = m.properties.headers.as_mut() {
            h.retain(|k, _| keep_header(k, !raw));
            if h.is_empty() {
                m.properties.headers = None;
            }
        }
        m.properties
            .user_properties
            .retain(|(k, _)| keep_header(k, !raw));
        if sqs {
            // Each SQS copy is its own SQS message, with its own id, and expires with the
            // queue's retention as a message sent to it would.
            m.properties.message_id = Some(uuid::Uuid::new_v4().to_string());
            let target = match &binding.destination {
                crate::engine::Destination::Queue(q) => Some((vhost.to_string(), q.clone())),
                crate::engine::Destination::Exchange(_) => self.foreign_queue(binding),
            };
            if let Some(ms) = target.and_then(|(v, q)| self.retention_ms(&v, &q)) {
                m.properties.expiration = Some(ms.to_string());
            }
        } else if let Some(id) = header(msg, HEADER_MESSAGE_ID) {
            m.properties.message_id = Some(id.to_string());
        }
        Some(Arc::new(m))
    }

    fn bindings_done(&self) -> Result<(), String> {
        self.flush_http_posts()
    }

    fn dead_letter_copy(&self, vhost: &str, queue: &str, msg: SharedMessage) -> SharedMessage {
        let Some(ms) = self.retention_ms(vhost, queue) else {
            return msg;
        };
        let mut m = (*msg).clone();
        m.properties.expiration = Some(ms.to_string());
        Arc::new(m)
    }

    fn foreign_queue(&self, binding: &Binding) -> Option<(String, String)> {
        let args = &binding.arguments;
        if arg(args, ARG_PROTOCOL) != Some("sqs")
            || !matches!(binding.destination, crate::engine::Destination::Exchange(_))
        {
            return None;
        }
        let fields: Vec<&str> = arg(args, ARG_ENDPOINT)?.split(':').collect();
        match fields.as_slice() {
            ["arn", "aws", "sqs", region, account, queue] => {
                Some((super::vhost_name(account, region), queue.to_string()))
            }
            _ => None,
        }
    }

    fn dead_letter_queue(&self, binding: &Binding) -> Option<String> {
        // The RedrivePolicy's queue; validated as an SQS ARN when set, and (as AWS requires)
        // of the subscription's own account and region, which is this vhost.
        let arn = sns_delivery::dead_letter_arn(arg(&binding.arguments, ARG_REDRIVE_POLICY))?;
        let owner = arg(&binding.arguments, ARG_SUBSCRIPTION_ARN)?;
        let fields: Vec<&str> = arn.split(':').collect();
        let topic: Vec<&str> = owner.split(':').collect();
        match (fields.as_slice(), topic.as_slice()) {
            (["arn", "aws", "sqs", region, account, queue], [_, _, _, r, a, ..])
                if region == r && account == a =>
            {
                Some(queue.to_string())
            }
            _ => None,
        }
    }

    fn validate_binding(&self, arguments: &Table) -> Result<(), String> {
        let text = |name: &str| match arguments.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| format!("{name} must be a string")),
        };
        let scope = text(ARG_FILTER_POLICY_SCOPE)?;
        match text(ARG_FILTER_POLICY)? {
            Some(policy) => {
                parse_filter(policy, scope).map_err(|e| e.to_string())?;
            }
            None => {
                if let Some(s) = scope {
                    FilterPolicyScope::parse(s).map_err(|e| e.to_string())?;
                }
            }
        }
        if let Some(v) = arguments.get(ARG_RAW) {
            match v.as_str() {
                Some(s) if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false") => {}
                _ => return Err(format!("{ARG_RAW} must be the string true or false")),
            }
        }
        Ok(())
    }
}

/// Writes a private key readable by its owner only.
fn write_private(path: &std::path::Path, pem: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path)?;
    f.write_all(pem.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Destination, Properties};

    fn fanout(dir: &std::path::Path) -> TopicFanout {
        let topics = Arc::new(TopicStore::open(dir).unwrap());
        TopicFanout::new(topics, "000000000000", "us-east-1", dir)
    }

    fn binding(args: &[(&str, &str)]) -> Binding {
        Binding {
            destination: Destination::Queue("q".into()),
            routing_key: String::new(),
            arguments: args
                .iter()
                .map(|(k, v)| (k.to_string(), Value::long_string(*v)))
                .collect(),
        }
    }

    fn published(body: &str, colour: &str) -> SharedMessage {
        let mut m = Message::new("orders", "", Bytes::from(body.to_string()));
        let mut h = Table::new();
        h.insert("colour".into(), Value::long_string(colour));
        m.properties = Properties {
            headers: Some(h),
            message_id: Some("amqp-id".into()),
            ..Default::default()
        };
        Arc::new(m)
    }

    const SUB: &str =
        "arn:aws:sns:us-east-1:000000000000:orders:0f8c3a52-4c4b-4f8e-9a59-8f0c1e2d3b4a";

    #[test]
    fn prepare_stamps_an_amqp_publish_once() {
        let dir = tempfile::tempdir().unwrap();
        let f = fanout(dir.path());
        let m = f.prepare(&published("b", "red"));
        assert_eq!(header(&m, HEADER_MESSAGE_ID), Some("amqp-id"));
        assert!(header(&m, HEADER_TIMESTAMP_MS).is_some());
        // Already stamped (SNS Publish, or a second topic): passed on as it is.
        assert!(Arc::ptr_eq(&f.prepare(&m), &m));
    }

    #[test]
    fn sqs_subscriptions_get_a_signed_envelope_and_raw_ones_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let f = fanout(dir.path());
        let m = f.prepare(&published("order 42", "red"));
        let sub = binding(&[(ARG_SUBSCRIPTION_ARN, SUB), (ARG_PROTOCOL, "sqs")]);
        let out = f
            .message_for("aws:000000000000:us-east-1", "orders", &sub, &m)
            .unwrap();
        let env: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(env["Type"], "Notification");
        assert_eq!(env["Message"], "order 42");
        assert_eq!(env["MessageId"], "amqp-id");
        assert_eq!(env["TopicArn"], "arn:aws:sns:us-east-1:000000000000:orders");
        assert_eq!(env["MessageAttributes"]["colour"]["Value"], "red");
        let key = f.signing_key().unwrap();
        signature::verify_envelope(key.certificate_pem(), env.as_object().unwrap()).unwrap();
        // The SQS copy has its own id and carries the attributes only in the envelope.
        assert_ne!(out.properties.message_id.as_deref(), Some("amqp-id"));
        assert!(out.properties.headers.is_none());
        let raw = binding(&[
            (ARG_SUBSCRIPTION_ARN, SUB),
            (ARG_PROTOCOL, "sqs"),
            (ARG_RAW, "true"),
        ]);
        let out = f
            .message_for("aws:000000000000:us-east-1", "orders", &raw, &m)
            .unwrap();
        assert_eq!(&out.body[..], b"order 42");
        let h = out.properties.headers.as_ref().unwrap();
        assert_eq!(h["colour"], Value::long_string("red"));
        assert!(h.keys().all(|k| !k.starts_with("x-sns-")));
        // A plain AMQP binding takes the message as published, SNS id and all.
        let out = f
            .message_for("aws:000000000000:us-east-1", "orders", &binding(&[]), &m)
            .unwrap();
        assert_eq!(&out.body[..], b"order 42");
        assert_eq!(out.properties.message_id.as_deref(), Some("amqp-id"));
    }

    #[test]
    fn filter_policies_drop_what_does_not_match_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = fanout(dir.path());
        let b = binding(&[(ARG_FILTER_POLICY, r#"{"colour": ["red"]}"#)]);
        let v = "aws:000000000000:us-east-1";
        assert!(f
            .message_for(v, "orders", &b, &f.prepare(&published("x", "red")))
            .is_some());
        assert!(f
            .message_for(v, "orders", &b, &f.prepare(&published("x", "blue")))
            .is_none());
        let body = binding(&[
            (ARG_FILTER_POLICY, r#"{"kind": ["retail"]}"#),
            (ARG_FILTER_POLICY_SCOPE, "MessageBody"),
        ]);
        let retail = f.prepare(&published(r#"{"kind": "retail"}"#, "-"));
        assert!(f.message_for(v, "orders", &body, &retail).is_some());
        let other = f.prepare(&published(r#"{"kind": "other"}"#, "-"));
        assert!(f.message_for(v, "orders", &body, &other).is_none());
        let args = |pairs: &[(&str, &str)]| binding(pairs).arguments;
        assert!(f
            .validate_binding(&args(&[(ARG_FILTER_POLICY, "{nope")]))
            .is_err());
        assert!(f
            .validate_binding(&args(&[(ARG_FILTER_POLICY_SCOPE, "Elsewhere")]))
            .is_err());
        assert!(f.validate_binding(&args(&[(ARG_RAW, "maybe")])).is_err());
        assert!(f
            .validate_binding(&args(&[(ARG_FILTER_POLICY, r#"{"a": ["b"]}"#)]))
            .is_ok());
    }
}
