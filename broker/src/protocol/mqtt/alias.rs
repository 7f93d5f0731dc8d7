//! Server-to-client topic aliases (MQTT 5 section 3.3.2.3.4), for one network connection.
//!
//! Policy: **first come, kept for the connection.** The first PUBLISH of a topic gets the next
//! free alias (1, 2, ...) and carries both the topic and the alias; later PUBLISHes of that
//! topic carry the alias and an empty topic name. Once every alias is taken, topics without one
//! are sent in full, without an alias. No alias is ever reassigned, so a client never has to
//! track a changing mapping, and lookups are one hash probe (no LRU bookkeeping on the hot
//! path). Aliases never exceed the Topic Alias Maximum the client announced in CONNECT
//! (MQTT-3.3.2-9), capped at [`ALIASES_OUT_MAX`] so that one connection's table stays small;
//! they end with the connection (MQTT-3.3.2-10: aliases are per network connection).

use std::collections::HashMap;

/// At most this many aliases per connection, whatever the client allows: the table holds one
/// topic string per alias, and most devices publish to and receive few topics.
pub(super) const ALIASES_OUT_MAX: u16 = 1024;

/// How the next PUBLISH of a topic is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AliasPlan {
    /// No alias: the full topic name.
    None,
    /// A new alias: the full topic name and the alias; [`OutAliases::commit`] it once sent.
    New(u16),
    /// The alias only, with an empty topic name.
    Known(u16),
}

#[derive(Debug, Default)]
pub(super) struct OutAliases {
    /// The aliases this connection may use (0: none).
    max: u16,
    by_topic: HashMap<String, u16>,
}

impl OutAliases {
    /// `client_max`: the client's Topic Alias Maximum (absent = 0 = no aliases).
    pub(super) fn new(client_max: u16) -> OutAliases {
        OutAliases {
            max: client_max.min(ALIASES_OUT_MAX),
            by_topic: HashMap::new(),
        }
    }

    /// How to send `topic` now. Nothing changes until [`OutAliases::commit`]: a PUBLISH that is
    /// not sent (too large for the client) must not leave an alias the client never learnt.
    pub(super) fn plan(&self, topic: &str) -> AliasPlan {
        if let Some(&alias) = self.by_topic.get(topic) {
            return AliasPlan::Known(alias);
        }
        let used = self.by_topic.len() as u16;
        if used < self.max {
            AliasPlan::New(used + 1)
        } else {
            AliasPlan::None
        }
    }

    /// Records that `topic` was sent with the new alias `alias`.
    pub(super) fn commit(&mut self, topic: &str, plan: AliasPlan) {
        if let AliasPlan::New(alias) = plan {
            self.by_topic.insert(topic.to_string(), alias);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_come_up_to_the_maximum_and_never_reassigned() {
        let mut a = OutAliases::new(2);
        assert_eq!(a.plan("a"), AliasPlan::New(1));
        // Not committed (not sent): the same alias is offered again.
        assert_eq!(a.plan("b"), AliasPlan::New(1));
        a.commit("a", a.plan("a"));
        assert_eq!(a.plan("a"), AliasPlan::Known(1));
        a.commit("b", a.plan("b"));
        assert_eq!(a.plan("b"), AliasPlan::Known(2));
        assert_eq!(a.plan("c"), AliasPlan::None, "the client allows two");
        assert_eq!(a.plan("a"), AliasPlan::Known(1));
    }

    #[test]
    fn no_aliases_when_the_client_allows_none_and_capped() {
        assert_eq!(OutAliases::new(0).plan("a"), AliasPlan::None);
        let mut a = OutAliases::new(u16::MAX);
        for i in 0..ALIASES_OUT_MAX {
            let t = format!("t{i}");
            let p = a.plan(&t);
            assert_eq!(p, AliasPlan::New(i + 1));
            a.commit(&t, p);
        }
        assert_eq!(a.plan("one-more"), AliasPlan::None);
    }
}
