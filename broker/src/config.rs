//! Configuration: every option declared once, with its default and its doc comment, then layered.
//!
//! Layers, lowest first (DESIGN.md "Running it"):
//! 1. the embedded defaults declared below;
//! 2. a TOML file (`--config FILE`, or `WHARF_CONFIG`);
//! 3. `WHARF_*` environment variables: `WHARF_DATA_DIR`, and `__` for nesting
//!    (`WHARF_AMQP__HEARTBEAT_SECS` sets `amqp.heartbeat_secs`);
//! 4. command-line flags (`--data-dir`, `--amqp-listen`, `--log`).
//!
//! The file is strict (`deny_unknown_fields`): a misspelt key is an error, not a silently ignored
//! line. [`Config::validate`] then reports every semantic problem at once. The result is handed
//! out as an `Arc<Config>` snapshot; nothing here is global.
//!
//! docs/configuration.md carries a table generated from these declarations; a unit test fails
//! when it drifts (`WHARF_BLESS=1 cargo test -p wharf config` rewrites it).
//!
//! Adding a listener (MQTT, STOMP, ...): declare its `<name>_listen: Listen` field in [`Config`]
//! and add a row to [`LISTENERS`]. The `--<name>-listen` flag, the `WHARF_<NAME>_LISTEN`
//! variable, validation and the reference docs follow from those two lines.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::{Arg, ArgAction, CommandFactory, FromArgMatches, Parser};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::engine::{EngineConfig, User};
use crate::net::tls::TlsSettings;
use crate::protocol::amqp::AmqpConfig;
use crate::protocol::mqtt::MqttConfig;
use crate::protocol::stomp::StompConfig;

/// One declared field: what the reference docs and the flag help are generated from.
#[derive(Debug, Clone, Copy)]
pub struct FieldDoc {
    /// The key inside its section (`heartbeat_secs`).
    pub name: &'static str,
    /// The field's doc comment, one string per line.
    pub doc: &'static [&'static str],
    /// How the default is shown in docs when the value depends on the machine.
    pub default_shown: Option<&'static str>,
}

impl FieldDoc {
    /// The doc comment as one line of text.
    pub fn text(&self) -> String {
        self.doc
            .iter()
            .map(|l| l.trim())
            .collect::<Vec<_>>()
            .join(" ")
            .trim()
            .to_string()
    }

    /// The first sentence of the doc comment, without its period (for `--help`).
    pub fn summary(&self) -> String {
        let text = self.text();
        let first = text.find(". ").map_or(text.as_str(), |i| &text[..i]);
        first.trim_end_matches('.').to_string()
    }
}

/// Declares a section of the configuration once: the struct with each field's doc comment, its
/// `Default`, and a `FIELDS` table for generated docs and help. `=> "text"` after a default says
/// how to show it when it is computed on the machine.
macro_rules! section {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])+
                pub $field:ident : $ty:ty = $default:expr $(=> $shown:literal)?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[doc = $doc])+ pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl $name {
            /// One row per field, in declaration order.
            pub const FIELDS: &'static [FieldDoc] = &[
                $( FieldDoc {
                    name: stringify!($field),
                    doc: &[$($doc),+],
                    default_shown: section!(@shown $($shown)?),
                }, )*
            ];
        }
    };
    (@shown) => { None };
    (@shown $shown:literal) => { Some($shown) };
}

section! {
    /// The whole configuration of a `wharf` process.
    ///
    /// Plain values come first and tables (`[[users]]`, `[amqp]`) last, so that the TOML printed
    /// by `--print-config` is valid.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Config {
        /// Directory holding the message store and the durable definitions; created on first run.
        /// A relative path is relative to the working directory.
        pub data_dir: PathBuf = PathBuf::from("wharf-data"),
        /// AMQP 0-9-1 listener address: `IP:PORT`, a bare `PORT` (all IPv4 interfaces), or `off`.
        /// Port 0 picks a free port; the log line `listening protocol=amqp addr=IP:PORT` tells
        /// which.
        pub amqp_listen: Listen = Listen::Addr(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 5672))),
        /// MQTT 3.1/3.1.1/5.0 listener address: `IP:PORT`, a bare `PORT`, or `off`. Port 0 picks
        /// a free port; the log line `listening protocol=mqtt addr=IP:PORT` tells which.
        pub mqtt_listen: Listen = Listen::Addr(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 1883))),
        /// STOMP 1.0/1.1/1.2 listener address: `IP:PORT`, a bare `PORT`, or `off`. Port 0 picks
        /// a free port; the log line `listening protocol=stomp addr=IP:PORT` tells which.
        pub stomp_listen: Listen = Listen::Addr(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 61613))),
        /// AMQP 0-9-1 over TLS (AMQPS) listener address, as `amqp_listen`. Starts only when
        /// `tls.cert_file` and `tls.key_file` are set; logs `listening protocol=amqps`.
        pub amqps_listen: Listen = Listen::Addr(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 5671))),
        /// MQTT over TLS listener address, as `mqtt_listen`. Starts only when `tls.cert_file`
        /// and `tls.key_file` are set; logs `listening protocol=mqtts`.
        pub mqtts_listen: Listen = Listen::Addr(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8883))),
        /// STOMP over TLS listener address, as `stomp_listen`. Starts only when `tls.cert_file`
        /// and `tls.key_file` are set; logs `listening protocol=stomps`.
        pub stomps_listen: Listen = Listen::Addr(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 61614))),
        /// WebSocket listener address (RabbitMQ's Web STOMP port): one listener for every
        /// protocol over WebSocket, on the path `/ws`, picked by the client's subprotocol
        /// (`mqtt`, `mqttv3.1`, `v10.stomp`, `v11.stomp`, `v12.stomp`). Logs `listening protocol=ws`.
        pub ws_listen: Listen = Listen::Addr(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 15674))),
        /// WebSocket over TLS listener address (RabbitMQ's Web STOMP TLS port), as `ws_listen`.
        /// Starts only when `tls.cert_file` and `tls.key_file` are set; logs
        /// `listening protocol=wss`.
        pub wss_listen: Listen = Listen::Addr(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 15673))),
        /// HTTP listener for the AWS APIs (SQS, JSON and Query protocols): `IP:PORT`, a bare
        /// `PORT`, or `off`. 4566 is the port AWS emulators use. Port 0 picks a free port; the log
        /// line `listening protocol=http addr=IP:PORT` tells which.
        pub http_listen: Listen = Listen::Addr(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 4566))),
        /// Verify the AWS Signature Version 4 of every HTTP API request against the users'
        /// access keys (`on`/`off`). Off only for local testing: any request is then accepted,
        /// and a 12-digit access key id names the account.
        pub sigv4: bool = true,
        /// Virtual hosts that exist at start (more may come from the durable definitions).
        /// In the environment: comma-separated.
        pub vhosts: Vec<String> = vec!["/".to_string()],
        /// Bytes of message data held in memory above which publishers are blocked (AMQP
        /// connection.blocked) until consumers catch up. Same default as RabbitMQ's relative
        /// watermark 0.4.
        pub memory_high_watermark_bytes: u64 = default_memory_high_watermark_bytes()
            => "40% of physical RAM (or of the cgroup memory limit); 1 GiB if unknown",
        /// fsync the message store before a persistent message is confirmed. Turn off only for
        /// tests and benchmarks: confirmed messages can then be lost on power loss.
        pub fsync: bool = true,
        /// Size at which a message store segment file is closed and the next one started.
        pub segment_bytes_max: u64 = 64 << 20,
        /// Let the kernel back the broker's memory with transparent huge pages (2 MiB), when the
        /// system's THP mode allows it. Off by default (Linux: prctl `PR_SET_THP_DISABLE` at
        /// start, as Redis and most databases advise): the allocator's huge pages stay resident
        /// whole once touched, so resident memory grew in 2 MiB steps and kept pages mostly
        /// freed (10,000 idle MQTT connections: 850-1,480 B each with huge pages, about 670
        /// without; docs/benchmarks.md).
        pub transparent_huge_pages: bool = false,
        /// Log filter in tracing's `EnvFilter` syntax (`info`, `warn,wharf::net=debug`). Logs go
        /// to stderr; `RUST_LOG` is not read.
        pub log: String = "info".to_string(),
        /// On SIGTERM or SIGINT, how long open connections get to close (they are sent AMQP
        /// connection.close 320 first) before the broker stops anyway.
        pub shutdown_timeout_secs: u64 = 5,
        /// Users who may log in, one `[[users]]` table each in the file. Setting any replaces
        /// the default `guest` user. File only: not settable from the environment.
        pub users: Vec<UserConfig> = vec![UserConfig::guest()],
        /// AMQP 0-9-1 protocol settings (the `[amqp]` table).
        pub amqp: AmqpSection = AmqpSection::default(),
        /// MQTT protocol settings (the `[mqtt]` table).
        pub mqtt: MqttSection = MqttSection::default(),
        /// STOMP protocol settings (the `[stomp]` table).
        pub stomp: StompSection = StompSection::default(),
        /// TLS settings of the TLS listeners (the `[tls]` table).
        pub tls: TlsSection = TlsSection::default(),
        /// AWS API settings (the `[aws]` table).
        pub aws: AwsSection = AwsSection::default(),
        /// SNS delivery to HTTP/HTTPS subscribers (the `[sns]` table).
        pub sns: SnsSection = SnsSection::default(),
    }
}

section! {
    /// The `[tls]` table: the certificate of the TLS listeners (`amqps_listen`, `mqtts_listen`,
    /// `stomps_listen`, `wss_listen`) and how client certificates are checked. Development certificates:
    /// `wharf certs` (certs/README.md).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct TlsSection {
        /// Server certificate, PEM; intermediate certificates may follow the server's own. With
        /// `key_file`, turns the TLS listeners on; empty: they are off.
        pub cert_file: PathBuf = PathBuf::new(),
        /// Private key of `cert_file`, PEM (PKCS#8, PKCS#1 or SEC1), unencrypted.
        pub key_file: PathBuf = PathBuf::new(),
        /// CA certificates, PEM, that client certificates are verified against (mutual TLS).
        /// Needed by `verify_peer`.
        pub ca_file: PathBuf = PathBuf::new(),
        /// Ask clients for a certificate and verify it against `ca_file`; a client may still
        /// connect without one unless `fail_if_no_peer_cert` is set (RabbitMQ's
        /// `verify_peer`).
        pub verify_peer: bool = false,
        /// Refuse the TLS handshake of a client without a valid certificate. Needs
        /// `verify_peer`.
        pub fail_if_no_peer_cert: bool = false,
        /// Log in as the subject CN of the verified client certificate: AMQP offers EXTERNAL,
        /// an MQTT CONNECT without user name logs in as that user (RabbitMQ's
        /// `ssl_cert_login`). The user must exist. Needs `verify_peer`.
        pub cert_login: bool = false,
        /// Seconds a client gets to complete the TLS handshake (and the WebSocket upgrade)
        /// before the connection is dropped.
        pub handshake_timeout_secs: u64 = 10,
    }
}

section! {
    /// The `[aws]` table: where AWS API resources live in the engine.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct AwsSection {
        /// The 12-digit account id queue URLs and ARNs carry, for signed requests and for
        /// unsigned ones without a 12-digit access key id. Resources of account A in region R
        /// live in the vhost `aws:A:R`, created on first use.
        pub account_id: String = "000000000000".to_string(),
        /// Region used when a request carries no SigV4 credential scope.
        pub region: String = "us-east-1".to_string(),
    }
}

section! {
    /// The `[sns]` table: delivery of SNS messages to HTTP/HTTPS subscriptions.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct SnsSection {
        /// Where HTTP/HTTPS subscription endpoints may point: IP networks (`10.0.0.0/8`),
        /// addresses, host names, `*.domain`, or `*` for anywhere. An endpoint lets whoever may
        /// call Subscribe make the broker send requests to that address, internal services
        /// included (server-side request forgery), so the default is this machine only. A host
        /// name is allowed by name only, never through a network entry.
        pub http_allow: Vec<String> = crate::aws::sns_http::allow::DEFAULT_ALLOW
            .iter()
            .map(|s| s.to_string())
            .collect(),
        /// CA certificates (PEM) trusted for `https` endpoints besides the system's; empty: the
        /// system's only.
        pub https_ca_file: PathBuf = PathBuf::new(),
        /// How long one delivery attempt may take, connect to response, before it counts as
        /// failed and is retried per the delivery policy (AWS waits 15 seconds).
        pub http_timeout_secs: u64 = 15,
    }
}

section! {
    /// The `[amqp]` table: limits offered in connection.tune and enforced by the sessions.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct AmqpSection {
        /// Largest frame accepted, and offered in connection.tune. At least 4096 (the AMQP
        /// minimum frame size).
        pub frame_max_bytes: u32 = 131_072,
        /// Highest channel number offered in connection.tune, 1 to 65535.
        pub channel_max: u16 = 2047,
        /// Heartbeat interval offered in connection.tune. 0 disables heartbeats.
        pub heartbeat_secs: u16 = 60,
        /// Largest message body accepted. At most 512 MiB, RabbitMQ's own ceiling.
        pub message_bytes_max: u64 = 128 << 20,
    }
}

section! {
    /// The `[mqtt]` table: how MQTT clients map onto the engine, and their limits.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct MqttSection {
        /// Vhost every MQTT connection uses (as RabbitMQ's `mqtt.vhost`).
        pub vhost: String = "/".to_string(),
        /// User a CONNECT without a user name logs in as (RabbitMQ's `mqtt.default_user`). Empty:
        /// such a CONNECT is refused with 0x86 (3.1.x return code 4).
        pub anonymous_user: String = String::new(),
        /// Largest MQTT packet accepted, fixed header included; announced to MQTT 5 clients as
        /// Maximum Packet Size. 16 MiB, RabbitMQ's default. Over WebSocket also the largest
        /// message (a larger one is closed with 1009).
        pub packet_bytes_max: u32 = 16 << 20,
        /// Unacknowledged QoS 1/2 messages sent to a client that does not set MQTT 5's Receive
        /// Maximum (every 3.1.x client), and the Receive Maximum announced to MQTT 5 clients.
        pub receive_maximum: u16 = 100,
        /// Seconds between publishes of the `$SYS/broker/...` statistics (retained, as
        /// Mosquitto's `sys_interval`). 0: no `$SYS/` topics.
        pub sys_interval_secs: u64 = 10,
        /// Seconds a plain TCP connection may be idle (nothing read, written or delivered,
        /// nothing in flight waiting for the disk) before it parks: it gives up its task and
        /// its socket registration, and one epoll instance watches it until a packet, a
        /// delivery, a takeover, its keep-alive expiry or the shutdown resumes it (as RabbitMQ
        /// hibernates idle connections; about 0.9 KB less per idle connection). A connection
        /// that has not carried a message yet (it connected, perhaps subscribed) parks as soon
        /// as it is quiet. TLS and WebSocket connections do not park. 0: never.
        pub park_after_secs: u64 = 5,
    }
}

section! {
    /// The `[stomp]` table: how STOMP clients log in, their limits and defaults (the names
    /// follow RabbitMQ's STOMP plugin where it has the setting).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct StompSection {
        /// Vhost of a CONNECT without a `host` header (RabbitMQ's `stomp.default_vhost`). A
        /// `host` header names the vhost itself, and one that is not a vhost is refused.
        pub vhost: String = "/".to_string(),
        /// User a CONNECT without `login` logs in as (RabbitMQ's `stomp.default_user`). Empty:
        /// such a CONNECT is refused with an ERROR frame.
        pub default_user: String = String::new(),
        /// Largest frame accepted, command line to NUL (RabbitMQ's `stomp.max_frame_size`). Over
        /// WebSocket also the largest message, plus 16 bytes for heart-beat EOLs (a larger one
        /// is closed with 1009).
        pub frame_bytes_max: u64 = 4 << 20,
        /// Most headers in one frame (RabbitMQ's `stomp.max_headers`).
        pub header_count_max: u32 = 1000,
        /// Longest command or header line (RabbitMQ's `stomp.max_header_length`).
        pub header_line_bytes_max: u32 = 100 << 10,
        /// Heart-beat interval offered in CONNECTED (both values): the server sends and expects
        /// heart-beats at the larger of this and what the client asked for; a client silent
        /// for twice the agreed interval is closed. 0 disables heart-beats.
        pub heartbeat_ms: u32 = 1000,
        /// Unacknowledged messages per subscription when SUBSCRIBE has no `prefetch-count`
        /// header. 0 means no limit (ack auto subscriptions are still held to 1000 in flight).
        pub prefetch_count: u32 = 1000,
    }
}

section! {
    /// One `[[users]]` entry.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct UserConfig {
        /// Login name.
        pub name: String = String::new(),
        /// Password, in plain text: keep the file readable by the broker's user only.
        pub password: String = String::new(),
        /// Allowed to connect from loopback addresses only, RabbitMQ's rule for `guest`.
        pub loopback_only: bool = false,
        /// Vhosts this user may open. Empty means all of them.
        pub vhosts: Vec<String> = Vec::new(),
        /// AWS access key id for the HTTP APIs (SigV4). Empty: this user has no AWS key.
        pub access_key_id: String = String::new(),
        /// The secret of `access_key_id`, in plain text like `password`.
        pub secret_access_key: String = String::new(),
    }
}

impl UserConfig {
    /// RabbitMQ's default user: guest/guest, from localhost only; its development AWS key
    /// pair is guest/guest too (the AWS CLI and SDKs accept any non-empty strings).
    fn guest() -> Self {
        UserConfig {
            name: "guest".into(),
            password: "guest".into(),
            loopback_only: true,
            vhosts: Vec::new(),
            access_key_id: "guest".into(),
            secret_access_key: "guest".into(),
        }
    }
}

/// Where a listener binds, or that it is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Off,
    Addr(SocketAddr),
}

impl Listen {
    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            Listen::Off => None,
            Listen::Addr(a) => Some(a),
        }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Off => f.write_str("off"),
            Listen::Addr(a) => write!(f, "{a}"),
        }
    }
}

/// Why a listen address did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a listen address: expected IP:PORT (0.0.0.0:5672, [::]:5672), PORT, or off")]
pub struct ListenParseError(String);

impl FromStr for Listen {
    type Err = ListenParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("off") {
            return Ok(Listen::Off);
        }
        if let Ok(addr) = t.parse::<SocketAddr>() {
            return Ok(Listen::Addr(addr));
        }
        // A bare port, as RabbitMQ's `listeners.tcp.default = 5672` accepts.
        if let Ok(port) = t.parse::<u16>() {
            return Ok(Listen::Addr(SocketAddr::from((
                Ipv4Addr::UNSPECIFIED,
                port,
            ))));
        }
        Err(ListenParseError(s.to_string()))
    }
}

impl Serialize for Listen {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Through String, so that `amqp_listen = 5672` (an integer in TOML) reads as a port too.
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One listener: the protocol it serves and where its address lives in [`Config`].
#[derive(Debug, Clone, Copy)]
pub struct ListenerSpec {
    /// Protocol name as logged (`listening protocol=<name>`).
    pub protocol: &'static str,
    /// The config key, `<protocol>_listen` (env `WHARF_<PROTOCOL>_LISTEN`).
    pub key: &'static str,
    /// The flag, `<protocol>-listen`.
    pub flag: &'static str,
    pub listen: fn(&Config) -> Listen,
    /// A TLS listener: started only when the configuration has a certificate.
    pub tls: bool,
}

/// Every listener, in start order. Planned row: management 15672. main.rs has the serve arm of
/// each.
pub const LISTENERS: &[ListenerSpec] = &[
    ListenerSpec {
        protocol: "amqp",
        key: "amqp_listen",
        flag: "amqp-listen",
        listen: |c| c.amqp_listen,
        tls: false,
    },
    ListenerSpec {
        protocol: "mqtt",
        key: "mqtt_listen",
        flag: "mqtt-listen",
        listen: |c| c.mqtt_listen,
        tls: false,
    },
    ListenerSpec {
        protocol: "stomp",
        key: "stomp_listen",
        flag: "stomp-listen",
        listen: |c| c.stomp_listen,
        tls: false,
    },
    ListenerSpec {
        protocol: "amqps",
        key: "amqps_listen",
        flag: "amqps-listen",
        listen: |c| c.amqps_listen,
        tls: true,
    },
    ListenerSpec {
        protocol: "mqtts",
        key: "mqtts_listen",
        flag: "mqtts-listen",
        listen: |c| c.mqtts_listen,
        tls: true,
    },
    ListenerSpec {
        protocol: "stomps",
        key: "stomps_listen",
        flag: "stomps-listen",
        listen: |c| c.stomps_listen,
        tls: true,
    },
    ListenerSpec {
        protocol: "ws",
        key: "ws_listen",
        flag: "ws-listen",
        listen: |c| c.ws_listen,
        tls: false,
    },
    ListenerSpec {
        protocol: "wss",
        key: "wss_listen",
        flag: "wss-listen",
        listen: |c| c.wss_listen,
        tls: true,
    },
    ListenerSpec {
        protocol: "http",
        key: "http_listen",
        flag: "http-listen",
        listen: |c| c.http_listen,
        tls: false,
    },
];

/// Flags that set a config key, besides the listeners': (key, flag, value name).
const FLAG_OPTIONS: &[(&str, &str, &str)] = &[
    ("data_dir", "data-dir", "DIR"),
    ("log", "log", "FILTER"),
    ("sigv4", "sigv4", "on|off"),
];

/// Prefix of the environment variables read as configuration.
const ENV_PREFIX: &str = "WHARF_";

/// `WHARF_*` variables that are not config keys and are skipped without a warning: the config
/// file path, and the names the test tooling uses (`tests/` passes its environment on).
const ENV_NOT_KEYS: &[&str] = &["WHARF_CONFIG", "WHARF_BIN"];
const ENV_NOT_KEYS_PREFIX: &str = "WHARF_TEST_";

/// The AMQP minimum frame size (spec 4.2.3, frame-min-size).
const AMQP_FRAME_MIN_BYTES: u32 = 4096;
/// RabbitMQ refuses `max_message_size` above 512 MiB; we keep the same ceiling.
const AMQP_MESSAGE_BYTES_CEILING: u64 = 512 << 20;
/// Smaller segments are almost surely a unit mistake (MiB written as bytes).
const SEGMENT_BYTES_MIN: u64 = 4096;
/// AMQP short strings (vhost names travel in one) hold at most 255 bytes.
const SHORTSTR_BYTES_MAX: usize = 255;

/// The fixed flags; the ones that set config keys are added from [`FLAG_OPTIONS`] and
/// [`LISTENERS`] by [`command`].
#[derive(Debug, Parser)]
#[command(
    name = "wharf",
    version,
    about = "Wharf: one message broker for AMQP 0-9-1 (MQTT, STOMP and the AWS messaging APIs to come).",
    after_help = "Configuration layers, lowest first: embedded defaults, the --config file, \
                  WHARF_* environment variables (WHARF_AMQP__HEARTBEAT_SECS sets \
                  amqp.heartbeat_secs), these flags. Every option: docs/configuration.md, or \
                  `wharf --print-config` for the effective values.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// TOML configuration file layered over the defaults [env: WHARF_CONFIG]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit
    #[arg(long)]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Subcommand>,
}

/// Commands other than running the broker. They take none of the broker's flags.
#[derive(Debug, clap::Subcommand)]
enum Subcommand {
    /// Write a development CA, a server certificate and client certificates as PEM files (for
    /// tests and local TLS; never for production). See certs/README.md
    Certs(wharf_certs::CertsArgs),
}

/// The `wharf` command line: the derived flags plus one per config-key flag.
pub fn command() -> clap::Command {
    let mut cmd = Cli::command();
    for (key, flag, value_name) in flag_options() {
        let field = field_doc(key).expect("every flag names a declared key");
        let mut arg = Arg::new(key)
            .long(flag)
            .value_name(value_name)
            .action(ArgAction::Set)
            .help(format!("{} [env: {}]", field.summary(), env_name(key)));
        if LISTENERS.iter().any(|l| l.key == key) {
            arg = arg.value_parser(|s: &str| s.parse::<Listen>());
        }
        cmd = cmd.arg(arg);
    }
    cmd
}

/// (key, flag, value name) of every flag that sets a config key.
fn flag_options() -> Vec<(&'static str, &'static str, &'static str)> {
    let mut out = FLAG_OPTIONS.to_vec();
    out.extend(LISTENERS.iter().map(|l| (l.key, l.flag, "ADDR|off")));
    out
}

/// What the command line asked for.
#[derive(Debug)]
// Built once at startup: the size of the Run variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Loaded {
    /// Run the broker with this configuration; `warnings` are for the log once it is up.
    Run {
        config: Config,
        warnings: Vec<String>,
    },
    /// `--print-config`: the effective configuration, as TOML.
    PrintConfig { toml: String, warnings: Vec<String> },
    /// `wharf certs ...`: make development certificates; no configuration is read.
    Certs(wharf_certs::CertsArgs),
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Bad flags, or `--help`/`--version` (clap prints those and picks the exit code).
    #[error(transparent)]
    Cli(#[from] clap::Error),
    /// Every problem found, one per entry.
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// Parses the command line and layers defaults, file, environment and flags.
///
/// `env` is passed in rather than read here so that tests do not touch the process environment.
///
/// # Errors
/// [`LoadError::Cli`] for bad flags or `--help`; [`LoadError::Invalid`] with every problem
/// found otherwise.
pub fn load<I, T>(
    args: I,
    env: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Loaded, LoadError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = command().try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    if let Some(Subcommand::Certs(args)) = cli.command {
        return Ok(Loaded::Certs(args));
    }

    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in env {
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(ENV_PREFIX) {
            continue;
        }
        match value.into_string() {
            Ok(v) => {
                vars.insert(name.to_string(), v);
            }
            Err(_) => errors.push(format!("environment variable {name} is not valid UTF-8")),
        }
    }

    let file = cli.config.clone().or_else(|| {
        vars.get("WHARF_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });

    let env_layer = env_layer(&vars, &mut warnings, &mut errors);

    let mut overrides = Vec::new();
    for (key, flag, _) in flag_options() {
        if let Some(mut raw) = matches.get_raw(key) {
            let Some(value) = raw.next_back() else {
                continue;
            };
            match value.to_str() {
                Some(v) => overrides.push((key.to_string(), v.to_string())),
                None => errors.push(format!("--{flag}: value is not valid UTF-8")),
            }
        }
    }
    if !errors.is_empty() {
        return Err(LoadError::Invalid(errors));
    }

    let config =
        build(file.as_deref(), env_layer, &overrides).map_err(|e| LoadError::Invalid(vec![e]))?;
    config.validate().map_err(LoadError::Invalid)?;
    if cli.print_config {
        return Ok(Loaded::PrintConfig {
            toml: config.to_toml(),
            warnings,
        });
    }
    Ok(Loaded::Run { config, warnings })
}

/// Stacks the layers with the `config` crate and deserializes the result.
fn build(
    file: Option<&Path>,
    env: EnvLayer,
    overrides: &[(String, String)],
) -> Result<Config, String> {
    let mut builder = config::Config::builder()
        .add_source(config::Config::try_from(&Config::default()).map_err(|e| e.to_string())?);
    if let Some(path) = file {
        let text = read_file_layer(path)?;
        builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
    }
    builder = builder.add_source(env);
    for (key, value) in overrides {
        builder = builder
            .set_override(key.as_str(), value.as_str())
            .map_err(|e| e.to_string())?;
    }
    builder
        .build()
        .and_then(config::Config::try_deserialize)
        .map_err(|e| e.to_string())
}

/// Reads the config file and checks it on its own first, so that a typo or a wrong type is
/// reported as `FILE:LINE: problem`: the merged layers no longer know which line it came from.
fn read_file_layer(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read configuration file {}: {e}", path.display()))?;
    if let Err(e) = toml::from_str::<Config>(&text) {
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        let at = line.map(|l| format!(":{l}")).unwrap_or_default();
        return Err(format!(
            "{}{at}: {}",
            path.display(),
            e.message().trim_end()
        ));
    }
    Ok(text)
}

/// The environment layer: `WHARF_*` variables that name a key, with their origin kept so that an
/// error says which variable was wrong.
#[derive(Debug, Clone, Default)]
struct EnvLayer {
    /// (dotted key, variable name, value).
    entries: Vec<(String, String, String)>,
    /// Keys whose value is a list: split on commas.
    list_keys: BTreeSet<String>,
}

impl config::Source for EnvLayer {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        let mut map = config::Map::new();
        for (key, var, value) in &self.entries {
            let origin = format!("environment variable {var}");
            let kind = if self.list_keys.contains(key) {
                config::ValueKind::Array(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| config::Value::new(Some(&origin), s.to_string()))
                        .collect(),
                )
            } else {
                config::ValueKind::String(value.clone())
            };
            map.insert(key.clone(), config::Value::new(Some(&origin), kind));
        }
        Ok(map)
    }
}

/// How a key can be set from the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EnvKind {
    Scalar,
    List,
    /// Tables of tables (`[[users]]`): the file only.
    FileOnly,
}

/// Every settable key (dotted) and how the environment may set it, from the declared defaults.
fn env_keys() -> BTreeMap<String, EnvKind> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, EnvKind>) {
        for (k, v) in table {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(t) => walk(&key, t, out),
                toml::Value::Array(items) if items.iter().any(toml::Value::is_table) => {
                    out.insert(key, EnvKind::FileOnly);
                }
                toml::Value::Array(_) => {
                    out.insert(key, EnvKind::List);
                }
                _ => {
                    out.insert(key, EnvKind::Scalar);
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", &defaults_table(), &mut out);
    out
}

/// `amqp.heartbeat_secs` -> `WHARF_AMQP__HEARTBEAT_SECS`.
pub fn env_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}

fn env_layer(
    vars: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
    errors: &mut Vec<String>,
) -> EnvLayer {
    let keys = env_keys();
    let mut layer = EnvLayer::default();
    for (var, value) in vars {
        if ENV_NOT_KEYS.contains(&var.as_str()) || var.starts_with(ENV_NOT_KEYS_PREFIX) {
            continue;
        }
        // An empty value counts as unset, so `WHARF_LOG= wharf` behaves like no variable.
        if value.is_empty() {
            continue;
        }
        let key = var[ENV_PREFIX.len()..]
            .to_ascii_lowercase()
            .replace("__", ".");
        match keys.get(&key) {
            // Parsed here rather than at deserialization, where the error would lose the
            // variable's name.
            Some(EnvKind::Scalar) if LISTENERS.iter().any(|l| l.key == key) => {
                match value.parse::<Listen>() {
                    Ok(_) => layer.entries.push((key, var.clone(), value.clone())),
                    Err(e) => errors.push(format!("{var}: {e}")),
                }
            }
            Some(EnvKind::Scalar) => layer.entries.push((key, var.clone(), value.clone())),
            Some(EnvKind::List) => {
                layer.list_keys.insert(key.clone());
                layer.entries.push((key, var.clone(), value.clone()));
            }
            Some(EnvKind::FileOnly) => {
                errors.push(format!(
                    "{var}: `{key}` can only be set in the configuration file"
                ));
            }
            // Not an error: the environment is shared with other tools. But a typo should show.
            None => warnings.push(format!(
                "ignoring environment variable {var}: no configuration key `{key}`"
            )),
        }
    }
    layer
}

impl Config {
    /// Checks what types alone cannot, and reports every problem at once.
    ///
    /// # Errors
    /// One message per problem.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if self.data_dir.as_os_str().is_empty() {
            errors.push("data_dir: must not be empty".to_string());
        }
        if self.vhosts.is_empty() {
            errors.push("vhosts: at least one vhost is needed".to_string());
        }
        let mut seen = BTreeSet::new();
        for v in &self.vhosts {
            if v.is_empty() || v.len() > SHORTSTR_BYTES_MAX {
                errors.push(format!(
                    "vhosts: {v:?} must be 1 to {SHORTSTR_BYTES_MAX} bytes long"
                ));
            } else if !seen.insert(v.as_str()) {
                errors.push(format!("vhosts: {v:?} is listed twice"));
            }
        }
        let mut names = BTreeSet::new();
        for (i, u) in self.users.iter().enumerate() {
            if u.name.is_empty() {
                errors.push(format!("users[{i}].name: must not be empty"));
            } else if !names.insert(u.name.as_str()) {
                errors.push(format!(
                    "users[{i}].name: user {:?} is declared twice",
                    u.name
                ));
            }
            if u.access_key_id.is_empty() != u.secret_access_key.is_empty() {
                errors.push(format!(
                    "users[{i}]: access_key_id and secret_access_key go together (user {:?})",
                    u.name
                ));
            }
            if u.password.is_empty() {
                errors.push(format!(
                    "users[{i}].password: must not be empty (user {:?})",
                    u.name
                ));
            }
        }
        if self.aws.account_id.len() != 12
            || !self.aws.account_id.bytes().all(|b| b.is_ascii_digit())
        {
            errors.push(format!(
                "aws.account_id: {:?} must be 12 digits",
                self.aws.account_id
            ));
        }
        if self.aws.region.is_empty() {
            errors.push("aws.region: must not be empty".to_string());
        }
        if let Err(e) = crate::aws::sns_http::AllowList::parse(&self.sns.http_allow) {
            errors.push(format!("sns.http_allow: {e}"));
        }
        if self.sns.http_timeout_secs == 0 {
            errors.push("sns.http_timeout_secs: must be at least 1".to_string());
        }
        if self.memory_high_watermark_bytes == 0 {
            errors.push("memory_high_watermark_bytes: must be above 0".to_string());
        }
        if self.segment_bytes_max < SEGMENT_BYTES_MIN {
            errors.push(format!(
                "segment_bytes_max: {} is below the minimum {SEGMENT_BYTES_MIN} (the value is in bytes)",
                self.segment_bytes_max
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            errors.push(format!("log: {:?} is not a valid filter: {e}", self.log));
        }
        if self.amqp.frame_max_bytes < AMQP_FRAME_MIN_BYTES {
            errors.push(format!(
                "amqp.frame_max_bytes: {} is below the AMQP minimum {AMQP_FRAME_MIN_BYTES}",
                self.amqp.frame_max_bytes
            ));
        }
        if self.mqtt.receive_maximum == 0 {
            errors.push("mqtt.receive_maximum: must be 1 to 65535".to_string());
        }
        if self.mqtt.packet_bytes_max < 64 {
            errors.push(format!(
                "mqtt.packet_bytes_max: {} is below the minimum 64",
                self.mqtt.packet_bytes_max
            ));
        }
        if self.stomp.frame_bytes_max < 64 {
            errors.push(format!(
                "stomp.frame_bytes_max: {} is below the minimum 64",
                self.stomp.frame_bytes_max
            ));
        }
        if self.stomp.header_count_max == 0 {
            errors.push("stomp.header_count_max: must be at least 1".to_string());
        }
        if self.stomp.header_line_bytes_max < 64 {
            errors.push(format!(
                "stomp.header_line_bytes_max: {} is below the minimum 64",
                self.stomp.header_line_bytes_max
            ));
        }
        if self.amqp.channel_max == 0 {
            errors.push("amqp.channel_max: must be 1 to 65535".to_string());
        }
        if self.amqp.message_bytes_max == 0
            || self.amqp.message_bytes_max > AMQP_MESSAGE_BYTES_CEILING
        {
            errors.push(format!(
                "amqp.message_bytes_max: {} must be 1 to {AMQP_MESSAGE_BYTES_CEILING} (512 MiB)",
                self.amqp.message_bytes_max
            ));
        }
        let tls = &self.tls;
        let set = |p: &Path| !p.as_os_str().is_empty();
        if set(&tls.cert_file) != set(&tls.key_file) {
            errors.push(
                "tls: cert_file and key_file go together: set both (TLS listeners on) or neither"
                    .to_string(),
            );
        }
        if tls.verify_peer && !set(&tls.ca_file) {
            errors.push(
                "tls.verify_peer: needs tls.ca_file, the CA client certificates are checked against"
                    .to_string(),
            );
        }
        if tls.fail_if_no_peer_cert && !tls.verify_peer {
            errors.push("tls.fail_if_no_peer_cert: needs tls.verify_peer = true".to_string());
        }
        if tls.cert_login && !tls.verify_peer {
            errors.push("tls.cert_login: needs tls.verify_peer = true".to_string());
        }
        if (tls.verify_peer || set(&tls.ca_file)) && !set(&tls.cert_file) {
            errors.push(
                "tls: client certificate settings are set but tls.cert_file is not (no TLS listener would start)"
                    .to_string(),
            );
        }
        if tls.handshake_timeout_secs == 0 {
            errors.push("tls.handshake_timeout_secs: must be above 0".to_string());
        }
        // Two listeners on one fixed address would fail at bind; say so before anything starts.
        let mut bound: BTreeMap<SocketAddr, &str> = BTreeMap::new();
        for l in LISTENERS {
            if let Some(addr) = (l.listen)(self).addr() {
                if addr.port() == 0 {
                    continue;
                }
                if let Some(other) = bound.insert(addr, l.key) {
                    errors.push(format!("{}: {addr} is also the address of {other}", l.key));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The configuration as TOML, as `--print-config` shows it (a valid config file).
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).expect("the config types serialize to TOML");
        format!(
            "# Effective configuration of wharf {} (defaults < file < WHARF_* < flags).\n\
             # Every option: docs/configuration.md\n\n{body}",
            env!("CARGO_PKG_VERSION")
        )
    }

    /// The engine's part of the configuration.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            data_dir: self.data_dir.clone(),
            vhosts: self.vhosts.clone(),
            users: self
                .users
                .iter()
                .map(|u| User {
                    name: u.name.clone(),
                    password: u.password.clone(),
                    loopback_only: u.loopback_only,
                    vhosts: u.vhosts.clone(),
                    access_key_id: u.access_key_id.clone(),
                    secret_access_key: u.secret_access_key.clone(),
                })
                .collect(),
            memory_high_watermark_bytes: self.memory_high_watermark_bytes,
            fsync: self.fsync,
            segment_bytes_max: self.segment_bytes_max,
        }
    }

    /// The AMQP sessions' part of the configuration.
    pub fn amqp_config(&self) -> AmqpConfig {
        AmqpConfig {
            frame_max_bytes: self.amqp.frame_max_bytes,
            channel_max: self.amqp.channel_max,
            heartbeat_secs: self.amqp.heartbeat_secs,
            message_bytes_max: self.amqp.message_bytes_max,
        }
    }

    /// The AWS APIs' part of the configuration.
    pub fn aws_config(&self) -> crate::aws::AwsConfig {
        crate::aws::AwsConfig {
            sigv4: self.sigv4,
            account_id: self.aws.account_id.clone(),
            region: self.aws.region.clone(),
        }
    }

    /// The SNS HTTP/HTTPS delivery engine's part of the configuration (after [`Config::validate`]).
    pub fn sns_http_config(&self) -> crate::aws::sns_http::SnsHttpConfig {
        crate::aws::sns_http::SnsHttpConfig {
            allow: crate::aws::sns_http::AllowList::parse(&self.sns.http_allow).unwrap_or_default(),
            https_ca_file: (!self.sns.https_ca_file.as_os_str().is_empty())
                .then(|| self.sns.https_ca_file.clone()),
            timeout: std::time::Duration::from_secs(self.sns.http_timeout_secs),
            fsync: self.fsync,
        }
    }

    /// The MQTT sessions' part of the configuration.
    pub fn mqtt_config(&self) -> MqttConfig {
        MqttConfig {
            vhost: self.mqtt.vhost.clone(),
            anonymous_user: (!self.mqtt.anonymous_user.is_empty())
                .then(|| self.mqtt.anonymous_user.clone()),
            packet_bytes_max: self.mqtt.packet_bytes_max,
            receive_maximum: self.mqtt.receive_maximum,
            data_dir: self.data_dir.clone(),
            sys_interval_secs: self.mqtt.sys_interval_secs,
            fsync: self.fsync,
            park_after_ms: self.mqtt.park_after_secs.saturating_mul(1000),
        }
    }

    /// The TLS listeners' settings, or `None` when no certificate is configured (they are off).
    pub fn tls_settings(&self) -> Option<TlsSettings> {
        let t = &self.tls;
        if t.cert_file.as_os_str().is_empty() || t.key_file.as_os_str().is_empty() {
            return None;
        }
        Some(TlsSettings {
            cert_file: t.cert_file.clone(),
            key_file: t.key_file.clone(),
            ca_file: (!t.ca_file.as_os_str().is_empty()).then(|| t.ca_file.clone()),
            verify_peer: t.verify_peer,
            fail_if_no_peer_cert: t.fail_if_no_peer_cert,
            cert_login: t.cert_login,
            handshake_timeout: std::time::Duration::from_secs(t.handshake_timeout_secs),
        })
    }

    /// How long a WebSocket client gets for the upgrade request.
    pub fn ws_handshake_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.tls.handshake_timeout_secs)
    }

    /// The largest WebSocket message each protocol takes: its own packet or frame limit.
    pub fn ws_message_limits(&self) -> crate::net::ws::MessageLimits {
        crate::net::ws::MessageLimits::new(
            self.mqtt.packet_bytes_max as usize,
            usize::try_from(self.stomp.frame_bytes_max).unwrap_or(usize::MAX),
        )
    }

    /// The STOMP sessions' part of the configuration.
    pub fn stomp_config(&self) -> StompConfig {
        StompConfig {
            vhost: self.stomp.vhost.clone(),
            default_user: (!self.stomp.default_user.is_empty())
                .then(|| self.stomp.default_user.clone()),
            limits: codecs::stomp::Limits {
                frame_bytes_max: usize::try_from(self.stomp.frame_bytes_max).unwrap_or(usize::MAX),
                header_count_max: self.stomp.header_count_max as usize,
                header_line_bytes_max: self.stomp.header_line_bytes_max as usize,
            },
            heartbeat_ms: self.stomp.heartbeat_ms,
            prefetch_count: self.stomp.prefetch_count,
        }
    }

    pub fn shutdown_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.shutdown_timeout_secs)
    }
}

/// RabbitMQ's default high watermark: 0.4 of the memory the process may use. That is the
/// smaller of physical RAM and a cgroup v2 limit, so that a container is not over-committed.
pub fn default_memory_high_watermark_bytes() -> u64 {
    const FALLBACK_BYTES: u64 = 1 << 30;
    let ram = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| parse_meminfo_total_bytes(&s));
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    match (ram, cgroup) {
        (Some(r), Some(c)) => r.min(c) / 5 * 2,
        (Some(m), None) | (None, Some(m)) => m / 5 * 2,
        (None, None) => FALLBACK_BYTES,
    }
}

/// `MemTotal:  24580044 kB` -> bytes.
fn parse_meminfo_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut parts = line["MemTotal:".len()..].split_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

/// The defaults as a TOML table (the source of the key list and of the documented defaults).
fn defaults_table() -> toml::Table {
    toml::Table::try_from(Config::default()).expect("the config types serialize to TOML")
}

/// The declared field for a dotted key (`amqp.heartbeat_secs`).
/// The `[section]` tables of plain options, in the order the reference docs list them.
const SECTIONS: &[(&str, &[FieldDoc])] = &[
    ("amqp", AmqpSection::FIELDS),
    ("mqtt", MqttSection::FIELDS),
    ("stomp", StompSection::FIELDS),
    ("tls", TlsSection::FIELDS),
    ("aws", AwsSection::FIELDS),
    ("sns", SnsSection::FIELDS),
];

fn field_doc(key: &str) -> Option<&'static FieldDoc> {
    let (fields, name) = match key.split_once('.') {
        Some((section, rest)) => (SECTIONS.iter().find(|(s, _)| *s == section)?.1, rest),
        None => (Config::FIELDS, key),
    };
    fields.iter().find(|f| f.name == name)
}

/// The option tables of docs/configuration.md, generated from the declarations above.
pub fn reference_markdown() -> String {
    let defaults = defaults_table();
    let cmd = command();
    let flag_of = |key: &str| -> String {
        cmd.get_arguments()
            .find(|a| a.get_id().as_str() == key)
            .and_then(|a| {
                let long = a.get_long()?;
                let value = a
                    .get_value_names()
                    .and_then(|v| v.first())
                    .map(|v| format!(" {v}"))
                    .unwrap_or_default();
                Some(format!("`--{long}{value}`"))
            })
            .unwrap_or_else(|| "—".to_string())
    };
    let keys = env_keys();
    let env_of = |key: &str| -> String {
        match keys.get(key) {
            Some(EnvKind::Scalar) => format!("`{}`", env_name(key)),
            Some(EnvKind::List) => format!("`{}` (comma-separated)", env_name(key)),
            _ => "— (file only)".to_string(),
        }
    };
    let shown = |f: &FieldDoc, value: Option<&toml::Value>| -> String {
        if let Some(s) = f.default_shown {
            return s.to_string();
        }
        match value {
            Some(toml::Value::Integer(n)) if f.name.contains("bytes") => {
                format!("`{n}`{}", human_bytes(*n))
            }
            Some(v) => format!("`{v}`"),
            None => "—".to_string(),
        }
    };
    let cell = |s: String| s.replace('|', "\\|");

    let mut out = String::new();
    out.push_str("| Key | Default | Environment | Flag | Meaning |\n");
    out.push_str("| --- | --- | --- | --- | --- |\n");
    for f in Config::FIELDS {
        let value = defaults.get(f.name);
        let default = match value {
            Some(toml::Value::Table(_)) => continue, // sections get their own table below
            Some(toml::Value::Array(a)) if a.iter().any(toml::Value::is_table) => {
                "one user: `guest`/`guest`, loopback only".to_string()
            }
            _ => shown(f, value),
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            f.name,
            cell(default),
            env_of(f.name),
            cell(flag_of(f.name)),
            cell(f.text())
        ));
    }

    for (section, fields) in SECTIONS {
        out.push_str(&format!("\n### `[{section}]`\n\n"));
        out.push_str("| Key | Default | Environment | Meaning |\n");
        out.push_str("| --- | --- | --- | --- |\n");
        let table = defaults.get(*section).and_then(toml::Value::as_table);
        for f in *fields {
            let key = format!("{section}.{}", f.name);
            out.push_str(&format!(
                "| `{key}` | {} | {} | {} |\n",
                cell(shown(f, table.and_then(|t| t.get(f.name)))),
                env_of(&key),
                cell(f.text())
            ));
        }
    }

    out.push_str("\n### `[[users]]`\n\n");
    out.push_str("| Key | Default | Meaning |\n");
    out.push_str("| --- | --- | --- |\n");
    let user_defaults = toml::Table::try_from(UserConfig::default()).expect("serializes");
    for f in UserConfig::FIELDS {
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            f.name,
            cell(shown(f, user_defaults.get(f.name))),
            cell(f.text())
        ));
    }
    out
}

/// ` (64 MiB)` for whole KiB/MiB/GiB amounts, else nothing.
fn human_bytes(n: i64) -> String {
    for (unit, size) in [("GiB", 1_i64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n >= size && n % size == 0 {
            return format!(" ({} {unit})", n / size);
        }
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn os(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<(Config, Vec<String>), LoadError> {
        let mut argv = vec!["wharf"];
        argv.extend_from_slice(args);
        match load(argv, os(env))? {
            Loaded::Run { config, warnings } => Ok((config, warnings)),
            Loaded::PrintConfig { .. } => panic!("unexpected --print-config"),
            Loaded::Certs(_) => panic!("unexpected certs subcommand"),
        }
    }

    fn cfg(args: &[&str], env: &[(&str, &str)]) -> Config {
        run(args, env)
            .unwrap_or_else(|e| panic!("load failed: {e}"))
            .0
    }

    fn invalid(args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
        match run(args, env) {
            Err(LoadError::Invalid(errors)) => errors,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn file(contents: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(contents.as_bytes()).unwrap();
        f
    }

    #[test]
    fn sns_http_allow_list_defaults_to_this_machine_and_is_checked() {
        let c = cfg(&[], &[]);
        assert_eq!(c.sns.http_allow, ["localhost", "127.0.0.0/8", "::1/128"]);
        let http = c.sns_http_config();
        let ok = |u: &str| http.allow.check(&url::Url::parse(u).unwrap()).is_ok();
        assert!(ok("http://127.0.0.1:8080/hook"));
        assert!(ok("https://localhost/hook"));
        assert!(!ok("http://10.0.0.1/hook"));
        assert!(!ok("http://169.254.169.254/latest/meta-data"));
        let c = cfg(
            &[],
            &[("WHARF_SNS__HTTP_ALLOW", "10.0.0.0/8,*.example.com")],
        );
        let http = c.sns_http_config();
        let ok = |u: &str| http.allow.check(&url::Url::parse(u).unwrap()).is_ok();
        assert!(ok("http://10.1.2.3/hook"));
        assert!(ok("https://hooks.example.com/x"));
        assert!(!ok("http://127.0.0.1/hook"));
        let errors = invalid(
            &[],
            &[("WHARF_SNS__HTTP_ALLOW", "10.0.0.0/99,ok.example.com,a b")],
        );
        assert!(
            errors.iter().any(|e| e.starts_with("sns.http_allow: ")
                && e.contains("10.0.0.0/99")
                && e.contains("a b")),
            "{errors:?}"
        );
        let errors = invalid(&[], &[("WHARF_SNS__HTTP_TIMEOUT_SECS", "0")]);
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("sns.http_timeout_secs")),
            "{errors:?}"
        );
    }

    #[test]
    fn defaults() {
        let c = cfg(&[], &[]);
        assert_eq!(c, Config::default());
        assert_eq!(c.data_dir, PathBuf::from("wharf-data"));
        assert_eq!(c.amqp_listen, "0.0.0.0:5672".parse().unwrap());
        assert_eq!(c.vhosts, vec!["/"]);
        assert_eq!(c.users, vec![UserConfig::guest()]);
        assert!(c.users[0].loopback_only);
        assert!(c.fsync);
        assert_eq!(c.segment_bytes_max, 64 * 1024 * 1024);
        assert_eq!(c.log, "info");
        assert_eq!(c.shutdown_timeout_secs, 5);
        assert_eq!(c.amqp.frame_max_bytes, 131_072);
        assert_eq!(c.amqp.channel_max, 2047);
        assert_eq!(c.amqp.heartbeat_secs, 60);
        assert_eq!(c.amqp.message_bytes_max, 128 * 1024 * 1024);
        assert!(c.memory_high_watermark_bytes > 0);
        // The AMQP defaults agree with the session's own.
        let a = c.amqp_config();
        let d = AmqpConfig::default();
        assert_eq!(
            (
                a.frame_max_bytes,
                a.channel_max,
                a.heartbeat_secs,
                a.message_bytes_max
            ),
            (
                d.frame_max_bytes,
                d.channel_max,
                d.heartbeat_secs,
                d.message_bytes_max
            )
        );
    }

    #[test]
    fn file_overrides_defaults() {
        let f = file(
            "data_dir = \"/var/lib/wharf\"\n\
             amqp_listen = \"127.0.0.1:5673\"\n\
             fsync = false\n\
             vhosts = [\"/\", \"prod\"]\n\
             [amqp]\n\
             heartbeat_secs = 30\n\
             [[users]]\n\
             name = \"alice\"\n\
             password = \"secret\"\n",
        );
        let c = cfg(&["--config", f.path().to_str().unwrap()], &[]);
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/wharf"));
        assert_eq!(c.amqp_listen, "127.0.0.1:5673".parse().unwrap());
        assert!(!c.fsync);
        assert_eq!(c.vhosts, vec!["/", "prod"]);
        assert_eq!(c.amqp.heartbeat_secs, 30);
        // Untouched keys of a partly given table keep their defaults.
        assert_eq!(c.amqp.frame_max_bytes, 131_072);
        // The file's users replace the default guest; fields left out take the user defaults,
        // not guest's (no element-wise merge with the default list).
        assert_eq!(
            c.users,
            vec![UserConfig {
                name: "alice".into(),
                password: "secret".into(),
                loopback_only: false,
                vhosts: vec![],
                access_key_id: String::new(),
                secret_access_key: String::new(),
            }]
        );
    }

    #[test]
    fn config_file_from_env() {
        let f = file("log = \"debug\"\n");
        let c = cfg(&[], &[("WHARF_CONFIG", f.path().to_str().unwrap())]);
        assert_eq!(c.log, "debug");
    }

    #[test]
    fn env_overrides_file() {
        let f = file("data_dir = \"from-file\"\nlog = \"warn\"\n[amqp]\nheartbeat_secs = 30\n");
        let c = cfg(
            &["--config", f.path().to_str().unwrap()],
            &[
                ("WHARF_DATA_DIR", "from-env"),
                ("WHARF_AMQP__HEARTBEAT_SECS", "10"),
                ("WHARF_FSYNC", "false"),
                ("WHARF_VHOSTS", "/, a,b"),
                ("WHARF_AMQP_LISTEN", "off"),
                ("PATH", "/usr/bin"),
            ],
        );
        assert_eq!(c.data_dir, PathBuf::from("from-env"));
        assert_eq!(c.log, "warn");
        assert_eq!(c.amqp.heartbeat_secs, 10);
        assert!(!c.fsync);
        assert_eq!(c.vhosts, vec!["/", "a", "b"]);
        assert_eq!(c.amqp_listen, Listen::Off);
    }

    #[test]
    fn flag_overrides_env() {
        let c = cfg(
            &[
                "--data-dir",
                "from-flag",
                "--amqp-listen",
                "127.0.0.1:0",
                "--log",
                "debug",
            ],
            &[
                ("WHARF_DATA_DIR", "from-env"),
                ("WHARF_AMQP_LISTEN", "0.0.0.0:1"),
                ("WHARF_LOG", "warn"),
            ],
        );
        assert_eq!(c.data_dir, PathBuf::from("from-flag"));
        assert_eq!(c.amqp_listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.log, "debug");
    }

    #[test]
    fn listen_off_and_forms() {
        assert_eq!(cfg(&["--amqp-listen", "off"], &[]).amqp_listen, Listen::Off);
        assert_eq!(cfg(&["--amqp-listen", "OFF"], &[]).amqp_listen, Listen::Off);
        assert_eq!(
            cfg(&["--amqp-listen", "5673"], &[]).amqp_listen,
            "0.0.0.0:5673".parse().unwrap()
        );
        assert_eq!(
            cfg(&["--amqp-listen", "[::1]:0"], &[]).amqp_listen,
            Listen::Addr("[::1]:0".parse().unwrap())
        );
        let f = file("amqp_listen = \"off\"\n");
        let c = cfg(&["--config", f.path().to_str().unwrap()], &[]);
        assert_eq!(c.amqp_listen, Listen::Off);
        assert!(matches!(
            run(&["--amqp-listen", "localhost"], &[]),
            Err(LoadError::Cli(_))
        ));
        let errors = invalid(&[], &[("WHARF_AMQP_LISTEN", "nowhere")]);
        assert!(errors[0].contains("WHARF_AMQP_LISTEN"), "{errors:?}");
    }

    #[test]
    fn unknown_key_rejected() {
        let f = file("fsynk = false\n");
        let errors = invalid(&["--config", f.path().to_str().unwrap()], &[]);
        assert!(errors[0].contains("unknown field `fsynk`"), "{errors:?}");
        let f = file("[amqp]\nheartbeat = 5\n");
        let errors = invalid(&["--config", f.path().to_str().unwrap()], &[]);
        assert!(errors[0].contains("`heartbeat`"), "{errors:?}");
        let f = file("[[users]]\nname = \"a\"\npasword = \"b\"\n");
        let path = f.path().to_str().unwrap();
        let errors = invalid(&["--config", path], &[]);
        assert!(errors[0].contains("`pasword`"), "{errors:?}");
        // The file and the line are named.
        assert!(errors[0].starts_with(&format!("{path}:3: ")), "{errors:?}");
    }

    #[test]
    fn wrong_type_in_file_names_the_line() {
        let f = file("log = \"info\"\n\n[amqp]\nheartbeat_secs = \"soon\"\n");
        let path = f.path().to_str().unwrap();
        let errors = invalid(&["--config", path], &[]);
        assert!(errors[0].starts_with(&format!("{path}:4: ")), "{errors:?}");
    }

    #[test]
    fn unknown_env_var_warns_and_tooling_vars_are_quiet() {
        let (_, warnings) = run(
            &[],
            &[
                ("WHARF_DATADIR", "x"),
                ("WHARF_BIN", "/bin/wharf"),
                ("WHARF_TEST_AMQP_URL", "u"),
            ],
        )
        .unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("WHARF_DATADIR"));
    }

    #[test]
    fn users_are_file_only() {
        let errors = invalid(&[], &[("WHARF_USERS", "x")]);
        assert!(errors[0].contains("configuration file"), "{errors:?}");
    }

    #[test]
    fn bad_type_names_its_origin() {
        let errors = invalid(&[], &[("WHARF_AMQP__HEARTBEAT_SECS", "soon")]);
        assert!(
            errors[0].contains("WHARF_AMQP__HEARTBEAT_SECS"),
            "{errors:?}"
        );
    }

    #[test]
    fn missing_file_is_an_error() {
        let errors = invalid(&["--config", "/nonexistent/wharf.toml"], &[]);
        assert!(
            errors[0].starts_with("cannot read configuration file /nonexistent/wharf.toml"),
            "{errors:?}"
        );
    }

    #[test]
    fn validation_errors_listed_together() {
        let f = file(
            "vhosts = [\"/\", \"/\"]\n\
             segment_bytes_max = 64\n\
             log = \"wharf=loud\"\n\
             [amqp]\n\
             frame_max_bytes = 100\n\
             channel_max = 0\n\
             message_bytes_max = 1073741824\n\
             [[users]]\n\
             name = \"\"\n\
             password = \"\"\n",
        );
        let errors = invalid(&["--config", f.path().to_str().unwrap()], &[]);
        for needle in [
            "vhosts",
            "segment_bytes_max",
            "log",
            "amqp.frame_max_bytes",
            "amqp.channel_max",
            "amqp.message_bytes_max",
            "users[0].name",
            "users[0].password",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(needle)),
                "no error for {needle}: {errors:?}"
            );
        }
        assert_eq!(errors.len(), 8, "{errors:?}");
    }

    #[test]
    fn print_config_round_trips() {
        let argv = [
            "wharf",
            "--print-config",
            "--amqp-listen",
            "off",
            "--data-dir",
            "d",
        ];
        let Loaded::PrintConfig { toml, .. } = load(argv, Vec::new()).unwrap() else {
            panic!("expected PrintConfig");
        };
        let f = file(&toml);
        let c = cfg(&["--config", f.path().to_str().unwrap()], &[]);
        assert_eq!(c.amqp_listen, Listen::Off);
        assert_eq!(c.data_dir, PathBuf::from("d"));
        assert_eq!(c.users, Config::default().users);
    }

    #[test]
    fn meminfo_parsing() {
        let s = "MemFree: 1 kB\nMemTotal:       24580044 kB\n";
        assert_eq!(parse_meminfo_total_bytes(s), Some(24_580_044 * 1024));
        assert_eq!(parse_meminfo_total_bytes("nothing"), None);
    }

    #[test]
    fn listener_table_is_consistent() {
        let keys = env_keys();
        for l in LISTENERS {
            assert_eq!(l.key, format!("{}_listen", l.protocol));
            assert_eq!(l.flag, format!("{}-listen", l.protocol));
            assert_eq!(
                keys.get(l.key),
                Some(&EnvKind::Scalar),
                "{} is not declared",
                l.key
            );
        }
    }

    #[test]
    fn every_key_is_documented() {
        for key in env_keys().keys() {
            assert!(field_doc(key).is_some(), "no FieldDoc for {key}");
        }
    }

    /// docs/configuration.md holds the generated tables between two markers.
    #[test]
    fn docs_configuration_md_is_current() {
        const BEGIN: &str = "<!-- BEGIN GENERATED: options (broker/src/config.rs) -->\n";
        const END: &str = "<!-- END GENERATED -->";
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let text = std::fs::read_to_string(&path).expect("docs/configuration.md");
        let start = text.find(BEGIN).expect("begin marker") + BEGIN.len();
        let end = text.find(END).expect("end marker");
        let expected = reference_markdown();
        if text[start..end] != expected {
            if std::env::var_os("WHARF_BLESS").is_some() {
                let updated = format!("{}{}{}", &text[..start], expected, &text[end..]);
                std::fs::write(&path, updated).unwrap();
            } else {
                panic!(
                    "docs/configuration.md is out of date: run \
                     `WHARF_BLESS=1 cargo test -p wharf config` and commit the result"
                );
            }
        }
    }
}
