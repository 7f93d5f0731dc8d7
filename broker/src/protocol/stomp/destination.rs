//! STOMP destinations as RabbitMQ's STOMP plugin defines them (docs/mapping/stomp.md), parsed
//! and formatted without touching the engine.
//!
//! Names are taken literally except `%2F`, which stands for `/` (RabbitMQ escapes a `/` of a
//! routing key that way when it writes a destination, and unescapes it when it reads one).

use std::borrow::Cow;

/// A parsed destination header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// `/queue/name`: a durable, shared queue the plugin declares on first use.
    Queue(String),
    /// `/amq/queue/name`: a queue that must already exist (never declared).
    AmqQueue(String),
    /// `/topic/pattern`: `amq.topic` with the routing key / binding pattern.
    Topic(String),
    /// `/exchange/name[/key]`: any exchange, with a routing key or binding pattern (may be
    /// empty).
    Exchange { name: String, key: String },
    /// `/temp-queue/name`: a private reply queue of this connection.
    TempQueue(String),
    /// `/reply-queue/name`: a temp queue of another connection, as rewritten in reply-to.
    ReplyQueue(String),
}

/// Why a destination header was refused (the text goes in the ERROR frame's body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationError {
    /// None of the prefixes above.
    Unknown(String),
    /// A known prefix with an empty or malformed rest.
    Invalid(String),
}

impl std::fmt::Display for DestinationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DestinationError::Unknown(d) => write!(
                f,
                "'{d}' is not a valid destination; valid destination types are /exchange, /topic, /queue, /amq/queue, /temp-queue, /reply-queue"
            ),
            DestinationError::Invalid(d) => write!(f, "'{d}' is not a valid destination"),
        }
    }
}

fn unescape(s: &str) -> String {
    s.replace("%2F", "/")
}

/// `/` -> `%2F` and `%` -> `%25`, as RabbitMQ writes routing keys into destinations.
fn escape(s: &str) -> Cow<'_, str> {
    if !s.contains(['/', '%']) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(s.replace('%', "%25").replace('/', "%2F"))
}

/// One non-empty name without `/` (an escaped `%2F` is fine).
fn simple(rest: &str, whole: &str) -> Result<String, DestinationError> {
    if rest.is_empty() || rest.contains('/') {
        return Err(DestinationError::Invalid(whole.into()));
    }
    Ok(unescape(rest))
}

impl Destination {
    pub fn parse(d: &str) -> Result<Destination, DestinationError> {
        if let Some(rest) = d.strip_prefix("/queue/") {
            return simple(rest, d).map(Destination::Queue);
        }
        if let Some(rest) = d.strip_prefix("/amq/queue/") {
            return simple(rest, d).map(Destination::AmqQueue);
        }
        if let Some(rest) = d.strip_prefix("/topic/") {
            return simple(rest, d).map(Destination::Topic);
        }
        if let Some(rest) = d.strip_prefix("/temp-queue/") {
            return simple(rest, d).map(Destination::TempQueue);
        }
        if let Some(rest) = d.strip_prefix("/reply-queue/") {
            // Reply queue names are the broker's own (`amq.gen-...`); taken whole, as RabbitMQ.
            if rest.is_empty() {
                return Err(DestinationError::Invalid(d.into()));
            }
            return Ok(Destination::ReplyQueue(rest.to_string()));
        }
        if let Some(rest) = d.strip_prefix("/exchange/") {
            // The default exchange cannot be named this way: it means something else for SEND
            // and SUBSCRIBE.
            let mut parts = rest.splitn(3, '/');
            let name = parts.next().unwrap_or_default();
            let key = parts.next().unwrap_or_default();
            if name.is_empty() || parts.next().is_some() {
                return Err(DestinationError::Invalid(d.into()));
            }
            return Ok(Destination::Exchange {
                name: unescape(name),
                key: unescape(key),
            });
        }
        Err(DestinationError::Unknown(d.into()))
    }

    /// Where a SEND goes: (exchange, routing key). Temp queues are resolved by the session.
    pub fn publish_target(&self) -> (&str, &str) {
        match self {
            Destination::Queue(q)
            | Destination::AmqQueue(q)
            | Destination::ReplyQueue(q)
            | Destination::TempQueue(q) => ("", q),
            Destination::Topic(k) => ("amq.topic", k),
            Destination::Exchange { name, key } => (name, key),
        }
    }
}

/// The `destination` header of a MESSAGE, from where the message was published (RabbitMQ's
/// `format_destination`): the default exchange is `/queue/key`, `amq.topic` is `/topic/key`,
/// any other exchange `/exchange/name[/key]`.
pub fn format(exchange: &str, routing_key: &str) -> String {
    match (exchange, routing_key) {
        ("", key) => format!("/queue/{}", escape(key)),
        ("amq.topic", key) => format!("/topic/{}", escape(key)),
        (ex, "") => format!("/exchange/{}", escape(ex)),
        (ex, key) => format!("/exchange/{}/{}", escape(ex), escape(key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind() {
        use Destination::*;
        let table = [
            ("/queue/a", Queue("a".into())),
            ("/queue/a%2Fb", Queue("a/b".into())),
            ("/amq/queue/q1", AmqQueue("q1".into())),
            ("/topic/a.b.*", Topic("a.b.*".into())),
            ("/temp-queue/r", TempQueue("r".into())),
            ("/reply-queue/amq.gen-x/y", ReplyQueue("amq.gen-x/y".into())),
            (
                "/exchange/amq.direct/k",
                Exchange {
                    name: "amq.direct".into(),
                    key: "k".into(),
                },
            ),
            (
                "/exchange/ex",
                Exchange {
                    name: "ex".into(),
                    key: String::new(),
                },
            ),
        ];
        for (text, want) in table {
            assert_eq!(Destination::parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn refuses_bad_ones() {
        for bad in [
            "/queue/",
            "/queue/a/b",
            "/topic/",
            "/exchange//k",
            "/exchange/a/b/c",
        ] {
            assert!(
                matches!(Destination::parse(bad), Err(DestinationError::Invalid(_))),
                "{bad}"
            );
        }
        for bad in ["queue/a", "/foo/a", "", "/queues/a"] {
            assert!(
                matches!(Destination::parse(bad), Err(DestinationError::Unknown(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn formats_like_rabbitmq_and_parses_back() {
        assert_eq!(format("", "q"), "/queue/q");
        assert_eq!(format("amq.topic", "a.b"), "/topic/a.b");
        assert_eq!(format("amq.direct", "k"), "/exchange/amq.direct/k");
        assert_eq!(format("fan", ""), "/exchange/fan");
        assert_eq!(format("", "a/b"), "/queue/a%2Fb");
        assert_eq!(
            Destination::parse(&format("", "a/b")),
            Ok(Destination::Queue("a/b".into()))
        );
    }
}
