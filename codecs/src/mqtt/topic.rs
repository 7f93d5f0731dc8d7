//! MQTT topic names and filters: validation, and the mapping to AMQP-style routing and binding
//! keys on `amq.topic` (docs/mapping/mqtt.md has the rule and its reasons).
//!
//! The mapping swaps the two separators: MQTT `/` is AMQP `.`, and a `.` inside an MQTT level is
//! `/` inside an AMQP word. For topics without a `.` (and keys without a `/`) this is exactly
//! what RabbitMQ's MQTT plugin does (`a/b` <-> `a.b`); unlike RabbitMQ it is lossless, so
//! `spBv1.0/group` goes out to MQTT subscribers as `spBv1.0/group` and not `spBv1/0/group`.
//! Filters map `+` (a whole level) to `*` and `#` to `#`.

use std::borrow::Cow;

/// The prefix of a shared subscription (MQTT 5 section 4.8.2; accepted on 3.1.1 too).
pub const SHARE_PREFIX: &str = "$share/";

/// A topic name a client may publish to: not empty, no `+` or `#`, no U+0000.
/// (UTF-8 validity is the type's; the length limit is the codec's.)
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// A topic filter a client may subscribe to: not empty, `+` only as a whole level, `#` only as
/// the whole last level, no U+0000; a `$share/{group}/{filter}` needs a non-empty group without
/// `+`, `#` or `/`, and a valid filter after it.
pub fn valid_topic_filter(filter: &str) -> bool {
    if filter.starts_with(SHARE_PREFIX) {
        return match split_shared(filter) {
            Some((group, inner)) => {
                !group.is_empty() && !group.contains(['+', '#']) && valid_plain_filter(inner)
            }
            // `$share/group` with no filter, or `$share/` alone.
            None => false,
        };
    }
    valid_plain_filter(filter)
}

fn valid_plain_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        match level {
            "+" => {}
            "#" if last => {}
            _ if level.contains(['+', '#']) => return false,
            _ => {}
        }
    }
    true
}

/// Splits `$share/{group}/{filter}` into group and filter; `None` when `filter` is not a shared
/// subscription or has no `/` after the group.
pub fn split_shared(filter: &str) -> Option<(&str, &str)> {
    let rest = filter.strip_prefix(SHARE_PREFIX)?;
    rest.split_once('/')
}

/// Whether a topic (or routing key) begins with `$`: such topics are not matched by a filter
/// whose first level is a wildcard (MQTT 5 section 4.7.2), `$SYS/...` among them.
pub fn is_dollar_topic(topic: &str) -> bool {
    topic.starts_with('$')
}

/// Whether a filter's first level is `+` or `#`, so it must not match `$` topics.
pub fn starts_with_wildcard(filter: &str) -> bool {
    matches!(filter.split('/').next(), Some("+") | Some("#"))
}

/// Swaps `/` and `.`; borrows when there is nothing to swap.
fn swap_separators(s: &str) -> Cow<'_, str> {
    if !s.contains(['/', '.']) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| match c {
                '/' => '.',
                '.' => '/',
                c => c,
            })
            .collect(),
    )
}

/// MQTT topic name -> AMQP routing key on `amq.topic`: `a/b` -> `a.b`, `v1.0/x` -> `v1/0.x`.
pub fn topic_to_routing_key(topic: &str) -> Cow<'_, str> {
    swap_separators(topic)
}

/// AMQP routing key -> MQTT topic name, the inverse of [`topic_to_routing_key`]. `None` when the
/// result is not a topic an MQTT client may receive (empty, or with `+`, `#` or U+0000): the
/// session does not deliver such a message to MQTT subscribers.
pub fn routing_key_to_topic(key: &str) -> Option<Cow<'_, str>> {
    let topic = swap_separators(key);
    valid_topic_name(&topic).then_some(topic)
}

/// MQTT topic filter (already validated, without `$share/{group}/`) -> AMQP binding key:
/// separators swapped, a `+` level becomes `*`, `#` stays `#`.
///
/// A level that is literally `*` in an MQTT filter becomes the AMQP wildcard `*` too: AMQP
/// binding keys cannot escape it (RabbitMQ behaves the same). docs/mapping/mqtt.md says so.
pub fn filter_to_binding_key(filter: &str) -> Cow<'_, str> {
    if !filter.contains(['/', '.', '+']) {
        return Cow::Borrowed(filter);
    }
    let mut key = String::with_capacity(filter.len());
    for (i, level) in filter.split('/').enumerate() {
        if i > 0 {
            key.push('.');
        }
        if level == "+" {
            key.push('*');
        } else {
            key.extend(level.chars().map(|c| if c == '.' { '/' } else { c }));
        }
    }
    Cow::Owned(key)
}

/// AMQP binding key -> MQTT topic filter, the inverse of [`filter_to_binding_key`]: a `*` word
/// becomes `+`, `#` stays `#`, separators swapped. `None` when the result is not a valid MQTT
/// filter (a `+` or `#` inside a word, `#` not last).
pub fn binding_key_to_filter(key: &str) -> Option<Cow<'_, str>> {
    let filter: Cow<'_, str> = if !key.contains(['/', '.', '*']) {
        Cow::Borrowed(key)
    } else {
        let mut filter = String::with_capacity(key.len());
        for (i, word) in key.split('.').enumerate() {
            if i > 0 {
                filter.push('/');
            }
            if word == "*" {
                filter.push('+');
            } else {
                filter.extend(word.chars().map(|c| if c == '/' { '.' } else { c }));
            }
        }
        Cow::Owned(filter)
    };
    valid_plain_filter(&filter).then_some(filter)
}
