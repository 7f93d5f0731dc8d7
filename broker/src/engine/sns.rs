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
    /// subscriptions with one fsync) is done here.
    fn bindings_done(&self) {}

    /// Checks the arguments of a binding being added to a topic (filter policy...); the
    /// message is the reason given to the client.
    fn validate_binding(&self, arguments: &Table) -> Result<(), String>;
}
