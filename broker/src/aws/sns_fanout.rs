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

use std::sync::Arc;

use bridge::sns::envelope::{self, EnvelopeAttribute, Notification};
use bytes::Bytes;
use parking_lot::RwLock;

use super::mapping;
use super::sns_meta::TopicStore;
use crate::engine::{Binding, Message, SharedMessage, SnsFanout, Table, Value, GROUP_ID_HEADER};

/// Binding argument: the subscription's ARN (absent on plain AMQP bindings).
pub const ARG_SUBSCRIPTION_ARN: &str = "x-sns-subscription-arn";
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

/// The hook: knows topic settings, where the broker is reachable, and the default account.
#[derive(Debug)]
pub struct TopicFanout {
    pub topics: Arc<TopicStore>,
    /// `http://host:port` of the HTTP listener (UnsubscribeURL).
    pub base_url: Arc<RwLock<String>>,
    pub account_id: String,
    pub region: String,
}

impl TopicFanout {
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

    fn envelope(&self, vhost: &str, topic: &str, args: &Table, msg: &Message) -> String {
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
        let signature_version = self
            .topics
            .get(vhost, topic)
            .attributes
            .get("SignatureVersion")
            .cloned()
            .unwrap_or_else(|| "1".into());
        Notification {
            kind: "Notification",
            message_id: header(msg, HEADER_MESSAGE_ID)
                .or(msg.properties.message_id.as_deref())
                .unwrap_or_default()
                .to_string(),
            sequence_number: header(msg, super::sqs::SEQUENCE_HEADER).map(str::to_string),
            topic_arn: self.topic_arn(vhost, topic),
            subject: header(msg, HEADER_SUBJECT).map(str::to_string),
            message: envelope::message_for(&text, structure, protocol),
            timestamp: envelope::iso8601_ms(
                header(msg, HEADER_TIMESTAMP_MS)
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0),
            ),
            signature_version,
            // Signing lands with bridge::sns::signature; until then no Signature is claimed.
            signature: None,
            signing_cert_url: None,
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
            // Each SQS copy is its own SQS message, with its own id.
            m.properties.message_id = Some(uuid::Uuid::new_v4().to_string());
        } else if let Some(id) = header(msg, HEADER_MESSAGE_ID) {
            m.properties.message_id = Some(id.to_string());
        }
        Some(Arc::new(m))
    }

    fn validate_binding(&self, arguments: &Table) -> Result<(), String> {
        if arguments.contains_key(ARG_FILTER_POLICY) {
            return Err(
                "filter policies (x-sns-filter-policy) are not available in this Wharf yet".into(),
            );
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
