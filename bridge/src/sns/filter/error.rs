//! Why a filter policy was refused, worded as Amazon SNS words its InvalidParameter errors.

use std::fmt;

/// A refused FilterPolicy or FilterPolicyScope. `Display` gives the message SetSubscriptionAttributes
/// (and SetTopicAttributes-style calls) answer with: `Invalid parameter: FilterPolicy: <reason>`;
/// Subscribe wraps the same reason differently, see [`FilterPolicyError::subscribe_message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterPolicyError {
    /// The part after `Invalid parameter: `, e.g. `FilterPolicy: Filter policy is too complex`.
    reason: String,
}

impl FilterPolicyError {
    /// An error about the policy's content (`FilterPolicy: <detail>`).
    pub(crate) fn policy(detail: impl fmt::Display) -> Self {
        FilterPolicyError {
            reason: format!("FilterPolicy: {detail}"),
        }
    }

    /// An error whose reason AWS does not prefix with the attribute name.
    pub(crate) fn bare(reason: impl Into<String>) -> Self {
        FilterPolicyError {
            reason: reason.into(),
        }
    }

    /// The reason without the `Invalid parameter: ` lead-in.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The message Subscribe answers with when its Attributes carry a bad policy: AWS names the
    /// parameter (`Attributes`) before the reason there.
    pub fn subscribe_message(&self) -> String {
        format!("Invalid parameter: Attributes Reason: {}", self.reason)
    }
}

impl fmt::Display for FilterPolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Invalid parameter: {}", self.reason)
    }
}

impl std::error::Error for FilterPolicyError {}
