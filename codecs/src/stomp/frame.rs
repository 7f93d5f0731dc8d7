//! STOMP frames as the codec hands them out: command, headers in wire order, body.

use bytes::Bytes;

/// The protocol version a connection negotiated. It decides header escaping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V1_0,
    V1_1,
    V1_2,
}

impl Version {
    /// As written in `accept-version` and `version` headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    pub fn parse(s: &str) -> Option<Version> {
        match s.trim() {
            "1.0" => Some(Version::V1_0),
            "1.1" => Some(Version::V1_1),
            "1.2" => Some(Version::V1_2),
            _ => None,
        }
    }
}

macro_rules! commands {
    ($($variant:ident = $name:literal,)*) => {
        /// Every command of STOMP 1.0 to 1.2, client and server frames alike.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Command { $($variant,)* }

        impl Command {
            pub fn as_str(self) -> &'static str {
                match self { $(Command::$variant => $name,)* }
            }

            /// Every command, for tests and seeds.
            pub const ALL: &'static [Command] = &[$(Command::$variant,)*];

            /// Exact, case-sensitive, as the specification spells them.
            pub fn parse(s: &[u8]) -> Option<Command> {
                Self::ALL.iter().copied().find(|c| c.as_str().as_bytes() == s)
            }
        }
    };
}

commands! {
    Connect = "CONNECT",
    Stomp = "STOMP",
    Connected = "CONNECTED",
    Send = "SEND",
    Subscribe = "SUBSCRIBE",
    Unsubscribe = "UNSUBSCRIBE",
    Ack = "ACK",
    Nack = "NACK",
    Begin = "BEGIN",
    Commit = "COMMIT",
    Abort = "ABORT",
    Disconnect = "DISCONNECT",
    Message = "MESSAGE",
    Receipt = "RECEIPT",
    Error = "ERROR",
}

impl Command {
    /// CONNECT, STOMP and CONNECTED headers are never escaped (STOMP 1.2 "Value Encoding"),
    /// so that a 1.0 peer can read them before a version is agreed.
    pub fn escapes_headers(self) -> bool {
        !matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }
}

/// One frame. Headers keep their wire order and repetitions (forwarded as they came); lookups
/// return the first occurrence, as the specification says the first one wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub command: Command,
    /// Decoded (unescaped) names and values.
    pub headers: Vec<(String, String)>,
    /// Split from the read buffer without a copy; may contain NUL when a content-length said so.
    pub body: Bytes,
}

impl Frame {
    pub fn new(command: Command) -> Frame {
        Frame {
            command,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Builder: appends a header.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Frame {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Builder: sets the body.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Frame {
        self.body = body.into();
        self
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.headers.push((name.into(), value.into()));
    }
}

/// What one decode step yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Frame(Frame),
    /// One end-of-line between frames: a heart-beat (or the optional EOLs after a NUL).
    Heartbeat,
}
