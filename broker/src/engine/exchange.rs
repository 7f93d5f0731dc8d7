//! Exchanges: where publishes land, and how each kind picks the bindings a message follows.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::error::{EngineError, EngineResult};
use super::message::{Table, Value};
use super::topic::TopicTrie;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
    /// An SNS topic: every binding is a subscription; the broker's [`super::SnsFanout`]
    /// builds what each one receives (envelope or raw, after its filter policy).
    Sns,
}

impl ExchangeKind {
    pub fn parse(s: &str) -> Option<ExchangeKind> {
        Some(match s {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            "sns" => ExchangeKind::Sns,
            _ => return None,
        })
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
            ExchangeKind::Sns => "sns",
        }
    }
}

/// What a binding points at. Names, not pointers: the vhost resolves them at routing time, so a
/// deleted queue can never be reached through a stale binding.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Destination {
    Queue(String),
    Exchange(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub destination: Destination,
    pub routing_key: String,
    pub arguments: Table,
}

/// Declared settings of an exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeSettings {
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: Table,
}

#[derive(Debug)]
pub struct Exchange {
    pub name: String,
    pub settings: ExchangeSettings,
    bindings: RwLock<Bindings>,
}

/// All bindings of one exchange, with the index its kind routes by.
#[derive(Debug, Default)]
struct Bindings {
    all: Vec<Binding>,
    direct: HashMap<String, Vec<Destination>>,
    topic: TopicTrie<Destination>,
}

impl Exchange {
    pub fn new(name: impl Into<String>, settings: ExchangeSettings) -> Arc<Exchange> {
        Arc::new(Exchange {
            name: name.into(),
            settings,
            bindings: RwLock::new(Bindings::default()),
        })
    }

    pub fn alternate_exchange(&self) -> Option<&str> {
        self.settings
            .arguments
            .get("alternate-exchange")
            .and_then(Value::as_str)
    }

    /// Adds a binding; returns false when an identical one already exists.
    pub fn bind(&self, binding: Binding) -> bool {
        let mut b = self.bindings.write();
        if b.all.contains(&binding) {
            return false;
        }
        match self.settings.kind {
            ExchangeKind::Direct => b
                .direct
                .entry(binding.routing_key.clone())
                .or_default()
                .push(binding.destination.clone()),
            ExchangeKind::Topic => b
                .topic
                .insert(&binding.routing_key, binding.destination.clone()),
            ExchangeKind::Fanout | ExchangeKind::Headers | ExchangeKind::Sns => {}
        }
        b.all.push(binding);
        true
    }

    /// Removes a binding; returns false when there was none.
    pub fn unbind(&self, binding: &Binding) -> bool {
        let mut b = self.bindings.write();
        let Some(pos) = b.all.iter().position(|x| x == binding) else {
            return false;
        };
        b.all.remove(pos);
        Self::unindex(&mut b, self.settings.kind, binding);
        true
    }

    fn unindex(b: &mut Bindings, kind: ExchangeKind, binding: &Binding) {
        // The same destination may still be bound with the same key but other arguments.
        let still = b
            .all
            .iter()
            .any(|x| x.destination == binding.destination && x.routing_key == binding.routing_key);
        if still {
            return;
        }
        match kind {
            ExchangeKind::Direct => {
                if let Some(v) = b.direct.get_mut(&binding.routing_key) {
                    v.retain(|d| d != &binding.destination);
                    if v.is_empty() {
                        b.direct.remove(&binding.routing_key);
                    }
                }
            }
            ExchangeKind::Topic => b.topic.remove(&binding.routing_key, &binding.destination),
            ExchangeKind::Fanout | ExchangeKind::Headers | ExchangeKind::Sns => {}
        }
    }

    /// Removes every binding to `destination`; returns how many went.
    pub fn unbind_destination(&self, destination: &Destination) -> usize {
        self.unbind_destination_except(destination, |_| false)
    }

    /// Removes every binding to `destination` but those `keep` keeps; returns how many went.
    pub fn unbind_destination_except(
        &self,
        destination: &Destination,
        keep: impl Fn(&Binding) -> bool,
    ) -> usize {
        let mut b = self.bindings.write();
        let gone: Vec<Binding> = b
            .all
            .iter()
            .filter(|x| &x.destination == destination && !keep(x))
            .cloned()
            .collect();
        b.all.retain(|x| &x.destination != destination || keep(x));
        for binding in &gone {
            Self::unindex(&mut b, self.settings.kind, binding);
        }
        gone.len()
    }

    pub fn bindings(&self) -> Vec<Binding> {
        self.bindings.read().all.clone()
    }

    /// Runs `f` over the bindings under the read lock (no copy of them).
    pub fn with_bindings<R>(&self, f: impl FnOnce(&[Binding]) -> R) -> R {
        f(&self.bindings.read().all)
    }

    pub fn has_bindings(&self) -> bool {
        !self.bindings.read().all.is_empty()
    }

    /// Calls `f` for each destination the message's key and headers select.
    pub fn route(
        &self,
        routing_key: &str,
        headers: Option<&Table>,
        mut f: impl FnMut(&Destination),
    ) {
        let b = self.bindings.read();
        match self.settings.kind {
            ExchangeKind::Direct => {
                if let Some(v) = b.direct.get(routing_key) {
                    v.iter().for_each(f);
                }
            }
            // Sns: the vhost fans out through the SnsFanout hook; without one, as fanout.
            ExchangeKind::Fanout | ExchangeKind::Sns => {
                b.all.iter().for_each(|x| f(&x.destination))
            }
            ExchangeKind::Topic => b.topic.for_each_match(routing_key, f),
            ExchangeKind::Headers => {
                for x in &b.all {
                    if headers_match(&x.arguments, headers) {
                        f(&x.destination);
                    }
                }
            }
        }
    }
}

/// Checks binding arguments as RabbitMQ does when a binding is added: on a headers exchange,
/// `x-match` must be one of the four modes (406 otherwise).
pub fn validate_binding(kind: ExchangeKind, arguments: &Table) -> EngineResult<()> {
    if kind != ExchangeKind::Headers {
        return Ok(());
    }
    match arguments.get("x-match") {
        None => Ok(()),
        Some(v) => match v.as_str() {
            Some("all" | "any" | "all-with-x" | "any-with-x") => Ok(()),
            other => Err(EngineError::precondition(format!(
                "Invalid x-match field value {}; expected all, any, all-with-x, or any-with-x",
                other.map_or_else(|| format!("{v:?}"), |s| format!("<<\"{s}\">>"))
            ))),
        },
    }
}

/// The headers exchange's rule: `x-match` is `all` (default), `any`, `all-with-x` or
/// `any-with-x`; binding arguments starting with `x-` take part only in the `-with-x` forms.
/// A binding argument of type void matches on the presence of the header alone.
pub fn headers_match(binding_args: &Table, headers: Option<&Table>) -> bool {
    let mode = binding_args
        .get("x-match")
        .and_then(Value::as_str)
        .unwrap_or("all");
    let (any, with_x) = match mode {
        "any" => (true, false),
        "all-with-x" => (false, true),
        "any-with-x" => (true, true),
        _ => (false, false),
    };
    let empty = Table::new();
    let headers = headers.unwrap_or(&empty);
    let mut considered = binding_args
        .iter()
        .filter(|(k, _)| k.as_str() != "x-match" && (with_x || !k.starts_with("x-")));
    let matches_one = |(k, v): (&String, &Value)| match headers.get(k) {
        None => false,
        Some(_) if matches!(v, Value::Void) => true,
        Some(h) => values_equal(h, v),
    };
    if any {
        considered.any(matches_one)
    } else {
        considered.all(matches_one)
    }
}

/// Header equality across the string and integer encodings clients pick freely.
fn values_equal(a: &Value, b: &Value) -> bool {
    if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x == y;
    }
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, Value)]) -> Table {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn headers_match_modes() {
        let h = table(&[
            ("a", Value::long_string("1")),
            ("b", Value::I32(2)),
            ("x-c", Value::long_string("3")),
        ]);
        let all = table(&[
            ("x-match", Value::long_string("all")),
            ("a", Value::long_string("1")),
            ("b", Value::I64(2)),
        ]);
        assert!(headers_match(&all, Some(&h)));
        let all_miss = table(&[
            ("a", Value::long_string("1")),
            ("z", Value::long_string("9")),
        ]);
        assert!(!headers_match(&all_miss, Some(&h)));
        let any = table(&[
            ("x-match", Value::long_string("any")),
            ("a", Value::long_string("nope")),
            ("b", Value::I32(2)),
        ]);
        assert!(headers_match(&any, Some(&h)));
        let x_only = table(&[
            ("x-match", Value::long_string("any")),
            ("x-c", Value::long_string("3")),
        ]);
        assert!(!headers_match(&x_only, Some(&h)), "x- keys ignored by any");
        let x_with = table(&[
            ("x-match", Value::long_string("any-with-x")),
            ("x-c", Value::long_string("3")),
        ]);
        assert!(headers_match(&x_with, Some(&h)));
        let presence = table(&[("b", Value::Void)]);
        assert!(headers_match(&presence, Some(&h)));
        assert!(!headers_match(&all, None));
    }
}
