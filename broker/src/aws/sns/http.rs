//! HTTP/S subscriptions in the SNS API: Subscribe (pending, with a SubscriptionConfirmation
//! post), ConfirmSubscription (by the API or by a GET of the SubscribeURL) and Unsubscribe (an
//! UnsubscribeConfirmation post). How they are kept and delivered: super::super::sns_delivery.

use bridge::sns::signature::{MessageType, SignatureVersion};
use url::Url;

use super::super::sns_delivery::{self, Confirmation, ARG_PENDING, ARG_TOKEN};
use super::super::sns_http::SnsHttp;
use super::*;

/// What Subscribe answers for an HTTP/S subscription until it is confirmed (AWS's words),
/// unless the caller asked for the ARN.
const PENDING_ARN: &str = "pending confirmation";

impl SnsEngine {
    /// Enables HTTP/S subscriptions, delivered by `http`, whose key then signs every envelope.
    pub fn attach_http(&self, http: SnsHttp) -> Result<(), String> {
        self.fanout.attach_http(http)
    }

    /// Where the HTTP listener serves the signing certificate (SigningCertURL's path).
    pub fn certificate_path(&self) -> &str {
        self.fanout.certificate_path()
    }

    fn signature_version(&self, vhost: &str, topic: &str) -> SignatureVersion {
        self.topics
            .attribute(vhost, topic, "SignatureVersion")
            .and_then(|v| SignatureVersion::parse(&v))
            .unwrap_or(SignatureVersion::V1)
    }

    /// Puts the SubscriptionConfirmation of a subscription of another account's queue into
    /// that queue (what AWS does: the queue's owner reads the SubscribeURL from it).
    pub(super) fn confirm_into_queue(
        &self,
        queue_vhost: &Vhost,
        queue: &str,
        vhost: &str,
        topic: &str,
        args: &Table,
    ) -> Result<(), AwsError> {
        let post = self.confirmation(MessageType::SubscriptionConfirmation, vhost, topic, args)?;
        let mut m = Message::new("", queue, bytes::Bytes::from(post.body));
        m.properties.delivery_mode = Some(2);
        m.properties.message_id = Some(uuid::Uuid::new_v4().to_string());
        if queue.ends_with(".fifo") {
            let mut h = Table::new();
            h.insert(
                GROUP_ID_HEADER.into(),
                Value::long_string("SubscriptionConfirmation"),
            );
            h.insert(
                super::super::sqs::DEDUP_ID_HEADER.into(),
                Value::long_string(post.message_id),
            );
            m.properties.headers = Some(h);
        }
        queue_vhost.publish("", m).map_err(internal)?;
        Ok(())
    }

    /// Stores a SubscriptionConfirmation or UnsubscribeConfirmation post for `args`'s
    /// subscription.
    fn post_confirmation(
        &self,
        http: &SnsHttp,
        kind: MessageType,
        vhost: &str,
        topic: &str,
        args: &Table,
    ) -> Result<(), AwsError> {
        let post = self.confirmation(kind, vhost, topic, args)?;
        sns_delivery::enqueue(http, post).map_err(internal)
    }

    /// The signed confirmation envelope of `args`'s subscription, as a post.
    fn confirmation(
        &self,
        kind: MessageType,
        vhost: &str,
        topic: &str,
        args: &Table,
    ) -> Result<super::super::sns_http::HttpPost, AwsError> {
        let key = self.fanout.signing_key().map_err(internal)?;
        let topic_arn = self.fanout.topic_arn(vhost, topic);
        let token = arg_str(args, ARG_TOKEN).unwrap_or_default();
        let base = self.fanout.base_url.read().clone();
        let topic_policy = self.topics.attribute(vhost, topic, "DeliveryPolicy");
        let post = sns_delivery::confirmation_post(
            &key,
            Confirmation {
                kind,
                endpoint: &arg_str(args, ARG_ENDPOINT).unwrap_or_default(),
                subscription_arn: &arg_str(args, ARG_SUBSCRIPTION_ARN).unwrap_or_default(),
                topic_arn: &topic_arn,
                token: &token,
                subscribe_url: sns_delivery::subscribe_url(&base, &topic_arn, &token),
                signing_cert_url: self.fanout.signing_cert_url(),
                version: self.signature_version(vhost, topic),
                delivery_policy: sns_delivery::effective_policy(
                    topic_policy.as_deref(),
                    arg_str(args, ARG_DELIVERY_POLICY).as_deref(),
                ),
            },
        );
        Ok(post)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn subscribe_http(
        &self,
        ctx: &RequestContext,
        vhost: &Vhost,
        topic: &Exchange,
        topic_arn: &str,
        protocol: &str,
        endpoint: String,
        attributes: BTreeMap<String, String>,
        return_arn: bool,
    ) -> Result<SnsResponse, AwsError> {
        let url = Url::parse(&endpoint)
            .ok()
            .filter(|u| u.scheme() == protocol && u.host_str().is_some_and(|h| !h.is_empty()))
            .ok_or_else(|| {
                invalid(format!(
                    "Endpoint Reason: An {protocol} URL must start with {protocol}://"
                ))
            })?;
        // AWS: "SNS FIFO topics can't deliver messages to customer managed endpoints, such as
        // ... HTTP(S) endpoints ... Attempts to subscribe ... result in errors."
        if self.topics.get(&vhost.name, &topic.name).fifo() {
            return Err(invalid(format!(
                "Protocol Reason: FIFO topics deliver to SQS queues only, not to {protocol} endpoints"
            )));
        }
        let http = self.fanout.http.get().ok_or_else(|| {
            invalid(format!(
                "Protocol Reason: {protocol} delivery is not running in this broker"
            ))
        })?;
        // The allow-list: without it a subscriber could make the broker call any address.
        http.check_endpoint(&url)
            .map_err(|e| invalid(format!("Endpoint Reason: {e}")))?;
        let policy = attributes.get("FilterPolicy").map(String::as_str);
        let scope = attributes.get("FilterPolicyScope").map(String::as_str);
        for (k, v) in &attributes {
            check_subscription_attribute(k, v, policy, scope)
                .map_err(FilterCheck::for_subscribe)?;
        }
        let existing = topic.with_bindings(|bs| {
            bs.iter()
                .find(|b| {
                    arg_str(&b.arguments, ARG_PROTOCOL).as_deref() == Some(protocol)
                        && arg_str(&b.arguments, ARG_ENDPOINT).as_deref() == Some(&endpoint)
                })
                .cloned()
        });
        if let Some(b) = existing {
            if attributes_differ(&b.arguments, &attributes) {
                return Err(already_subscribed());
            }
            let arn = arg_str(&b.arguments, ARG_SUBSCRIPTION_ARN).unwrap_or_default();
            let pending = sns_delivery::is_pending(&b.arguments);
            if pending {
                // As AWS: subscribing again while pending sends the confirmation again (the
                // first may have been lost, or the endpoint was not ready for it).
                self.post_confirmation(
                    http,
                    MessageType::SubscriptionConfirmation,
                    &vhost.name,
                    &topic.name,
                    &b.arguments,
                )?;
            }
            return Ok(SnsResponse::SubscriptionArn(if pending && !return_arn {
                PENDING_ARN.into()
            } else {
                arn
            }));
        }
        let arn = format!("{topic_arn}:{}", uuid::Uuid::new_v4());
        let mut args = Table::new();
        args.insert(ARG_SUBSCRIPTION_ARN.into(), Value::long_string(arn.clone()));
        args.insert(ARG_PROTOCOL.into(), Value::long_string(protocol));
        args.insert(ARG_ENDPOINT.into(), Value::long_string(endpoint));
        args.insert(ARG_OWNER.into(), Value::long_string(ctx.account_id.clone()));
        args.insert(
            ARG_TOKEN.into(),
            Value::long_string(sns_delivery::new_token()),
        );
        args.insert(ARG_PENDING.into(), Value::long_string("true"));
        for (k, v) in attributes {
            if let Some(arg) = subscription_arg(&k) {
                args.insert(arg.into(), Value::long_string(v));
            }
        }
        // Bound to the topic itself: durable with the topic, never routed (sns_delivery.rs).
        vhost
            .bind_subscription(
                &topic.name,
                Destination::Exchange(topic.name.clone()),
                args.clone(),
            )
            .map_err(|e| invalid(format!("Attributes Reason: {e}")))?;
        if let Err(e) = self.post_confirmation(
            http,
            MessageType::SubscriptionConfirmation,
            &vhost.name,
            &topic.name,
            &args,
        ) {
            // No confirmation stored: no subscription either, so that Subscribe can be retried
            // rather than leave one that can never be confirmed.
            let b = Binding {
                destination: Destination::Exchange(topic.name.clone()),
                routing_key: String::new(),
                arguments: args,
            };
            if let Err(undo) = vhost.remove_binding(&topic.name, &b) {
                tracing::error!(error = %undo, "SNS: cannot remove an unconfirmable subscription");
            }
            return Err(e);
        }
        Ok(SnsResponse::SubscriptionArn(if return_arn {
            arn
        } else {
            PENDING_ARN.into()
        }))
    }

    /// ConfirmSubscription: the subscription holding `token` stops being pending. Confirming
    /// again answers the same ARN, as subscribers may visit the SubscribeURL twice.
    pub(super) fn confirm_subscription(
        &self,
        ctx: &RequestContext,
        topic_arn: &str,
        token: &str,
    ) -> Result<SnsResponse, AwsError> {
        let (vhost, topic) = self.find_topic(ctx, topic_arn, "TopicArn")?;
        for _ in 0..REPLACE_ATTEMPTS {
            let found = topic.with_bindings(|bs| {
                bs.iter()
                    .find(|b| arg_str(&b.arguments, ARG_TOKEN).as_deref() == Some(token))
                    .cloned()
            });
            let Some(b) = found else {
                return self.restore_subscription(&vhost, &topic, token);
            };
            let arn = arg_str(&b.arguments, ARG_SUBSCRIPTION_ARN).unwrap_or_default();
            if !sns_delivery::is_pending(&b.arguments) {
                return Ok(SnsResponse::SubscriptionArn(arn));
            }
            let mut confirmed = b.clone();
            confirmed.arguments.remove(ARG_PENDING);
            // False: changed meanwhile (attributes set, unsubscribed): look again.
            if vhost
                .replace_binding(&topic.name, &b, confirmed)
                .map_err(internal)?
            {
                return Ok(SnsResponse::SubscriptionArn(arn));
            }
        }
        Err(internal("the subscription kept changing; try again"))
    }

    /// ConfirmSubscription with the token of an UnsubscribeConfirmation: the subscription comes
    /// back, confirmed, with its ARN and attributes ("To cancel this operation and restore the
    /// subscription, visit the SubscribeURL included in this message", AWS's words). When the
    /// endpoint has been subscribed again since, that subscription is the answer.
    fn restore_subscription(
        &self,
        vhost: &Vhost,
        topic: &Exchange,
        token: &str,
    ) -> Result<SnsResponse, AwsError> {
        let args = self
            .topics
            .take_unsubscribed(&vhost.name, &topic.name, token, now_ms() / 1000)
            .map_err(internal)?
            .ok_or_else(|| invalid("Token"))?;
        let protocol = args.get(ARG_PROTOCOL).cloned();
        let endpoint = args.get(ARG_ENDPOINT).cloned();
        let again = topic.with_bindings(|bs| {
            bs.iter()
                .find(|b| {
                    arg_str(&b.arguments, ARG_PROTOCOL) == protocol
                        && arg_str(&b.arguments, ARG_ENDPOINT) == endpoint
                })
                .and_then(|b| arg_str(&b.arguments, ARG_SUBSCRIPTION_ARN))
        });
        if let Some(arn) = again {
            return Ok(SnsResponse::SubscriptionArn(arn));
        }
        let arn = args.get(ARG_SUBSCRIPTION_ARN).cloned().unwrap_or_default();
        let table: Table = args
            .into_iter()
            .filter(|(k, _)| k != ARG_PENDING)
            .map(|(k, v)| (k, Value::long_string(v)))
            .collect();
        vhost
            .bind_subscription(
                &topic.name,
                Destination::Exchange(topic.name.clone()),
                table,
            )
            .map_err(internal)?;
        tracing::info!(subscription = %arn, "SNS: subscription restored by its UnsubscribeConfirmation");
        Ok(SnsResponse::SubscriptionArn(arn))
    }

    /// After Unsubscribe removed an HTTP/S subscription: a confirmed one is told by an
    /// UnsubscribeConfirmation post, and kept restorable.
    pub(super) fn unsubscribed_http(&self, f: &FoundSubscription) -> Result<(), AwsError> {
        let args = &f.binding.arguments;
        if let (false, Some(http)) = (sns_delivery::is_pending(args), self.fanout.http.get()) {
            // Restorable for three days by the UnsubscribeConfirmation's SubscribeURL.
            if let Some(token) = arg_str(args, ARG_TOKEN) {
                let kept = args
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect();
                self.topics
                    .keep_unsubscribed(&f.vhost.name, &f.topic.name, &token, kept, now_ms() / 1000)
                    .map_err(internal)?;
            }
            self.post_confirmation(
                http,
                MessageType::UnsubscribeConfirmation,
                &f.vhost.name,
                &f.topic.name,
                args,
            )?;
        }
        Ok(())
    }

    /// The subscription's EffectiveDeliveryPolicy (HTTP/S only): the topic's `http` part
    /// layered with its own.
    pub(super) fn effective_delivery_policy(
        &self,
        vhost: &str,
        topic: &str,
        args: &Table,
    ) -> String {
        let topic_policy = self.topics.attribute(vhost, topic, "DeliveryPolicy");
        sns_delivery::effective_policy(
            topic_policy.as_deref(),
            arg_str(args, ARG_DELIVERY_POLICY).as_deref(),
        )
        .to_json()
    }
}
