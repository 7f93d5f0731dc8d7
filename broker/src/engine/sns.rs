//! The engine's side of SNS topics (exchanges of kind `sns`): a hook the broker installs to
//! decide what each binding (subscription) of a topic receives.
//!
//! Why a hook: an SNS subscriber does not get the published message as is. An SQS subscription
//! gets a JSON envelope (or the raw message), each with its own UnsubscribeURL; a filter policy
//! may drop the message for one subscription and not another. That is SNS's wire format and
//! belongs with the AWS code (broker/src/aws/sns_fanout.rs); the engine only routes what the
//! hook returns, so a publish over AMQP, MQTT or STOMP to the topic's exchange reaches the
//! subscribers exactly as an SNS Publish does.

use std::fmt::Debug;

use super::exchange::Binding;
use super::message::{SharedMessage, Table};

/// Binding argument that makes a binding of a topic an SNS subscription (its ARN).
pub const SUBSCRIPTION_ARN_ARG: &str = "x-sns-subscription-arn";

/// `x-sns-*` binding arguments a client (AMQP queue.bind/exchange.bind) may give on a topic:
/// a filter policy and raw delivery (docs/mapping/sns.md). Every other `x-sns-*` argument
/// belongs to an SNS subscription (ARN, protocol, endpoint, owner, policies, confirmation
/// state) and only the SNS API may write it: a client forging them could make the broker post
/// to any address past `sns.http_allow`, or remove someone else's subscription.
const CLIENT_ARGS: [&str; 3] = [
    "x-sns-filter-policy",
    "x-sns-filter-policy-scope",
    "x-sns-raw-message-delivery",
];

/// The first `x-sns-*` argument of `args` a client may not give, if any.
pub fn reserved_argument(args: &Table) -> Option<&str> {
    args.keys()
        .map(String::as_str)
        .find(|k| k.starts_with("x-sns-") && !CLIENT_ARGS.contains(k))
}

/// Whether `binding` is an SNS subscription (made by the SNS API), which outlives the deletion
/// of its queue as on AWS.
pub fn is_subscription(binding: &Binding) -> bool {
    binding.arguments.contains_key(SUBSCRIPTION_ARN_ARG)
}

pub trait SnsFanout: Send + Sync + Debug {
    /// Called once per message reaching a topic, before its bindings: gives a message that
    /// did not come through SNS Publish (AMQP, MQTT, STOMP) what every subscriber must see
    /// the same (one MessageId, one Timestamp).
    fn prepare(&self, msg: &SharedMessage) -> SharedMessage;

    /// The message `binding` of the topic `exchange` in `vhost` delivers for `msg`; `None`
    /// when its filter policy does not match.
    fn message_for(
        &self,
        vhost: &str,
        exchange: &str,
        binding: &Binding,
        msg: &SharedMessage,
    ) -> Option<SharedMessage>;

    /// Called after `message_for` has seen every binding of the topic for one message, before
    /// the publish is answered: work `message_for` deferred (storing the posts of all HTTP
    /// subscriptions with one fsync) is done here. An error means that work is lost: the
    /// publish is refused (AMQP nack, SNS InternalError) rather than confirmed.
    fn bindings_done(&self) -> Result<(), String> {
        Ok(())
    }

    /// Where a copy goes when the queue `binding` names does not exist (deleted after it was
    /// subscribed): a queue of the same vhost (the subscription's RedrivePolicy dead-letter
    /// queue), or `None` to drop it.
    fn dead_letter_queue(&self, _binding: &Binding) -> Option<String> {
        None
    }

    /// The (vhost, queue) a binding of the topic to itself delivers to when it is a
    /// subscription of a queue in another vhost (an SQS queue of another account or region);
    /// `None` for every other binding.
    fn foreign_queue(&self, _binding: &Binding) -> Option<(String, String)> {
        None
    }

    /// The copy as the dead-letter queue `queue` of `vhost` takes it (its retention as the
    /// copy's TTL, as a message sent to that queue gets).
    fn dead_letter_copy(&self, _vhost: &str, _queue: &str, msg: SharedMessage) -> SharedMessage {
        msg
    }

    /// Checks the arguments of a binding being added to a topic (filter policy...); the
    /// message is the reason given to the client.
    fn validate_binding(&self, arguments: &Table) -> Result<(), String>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Value;

    #[test]
    fn clients_may_give_filter_and_raw_arguments_only() {
        let table = |keys: &[&str]| -> Table {
            keys.iter()
                .map(|k| (k.to_string(), Value::long_string("x")))
                .collect()
        };
        assert_eq!(reserved_argument(&table(&CLIENT_ARGS)), None);
        assert_eq!(reserved_argument(&table(&["x-match", "other"])), None);
        for forged in [
            "x-sns-subscription-arn",
            "x-sns-protocol",
            "x-sns-endpoint",
            "x-sns-owner",
            "x-sns-redrive-policy",
            "x-sns-delivery-policy",
            "x-sns-confirmation-token",
            "x-sns-pending-confirmation",
            "x-sns-anything-new",
        ] {
            assert_eq!(reserved_argument(&table(&[forged])), Some(forged));
        }
    }
}
