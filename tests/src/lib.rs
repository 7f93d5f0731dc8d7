//! Test harness: starts a real wharf process on ephemeral ports.
//!
//! [`Broker::start`] runs `$WHARF_BIN` (default `<repo>/target/release/wharf`) with a fresh data
//! directory with every plain listener on `127.0.0.1:0` (`--http-listen off`), and reads the ports
//! from the `listening protocol=amqp addr=IP:PORT` and `listening protocol=mqtt addr=IP:PORT`
//! lines on its stderr. The log is kept and printed when a
//! test panics while the broker is alive.
//!
//! With `WHARF_TEST_AMQP_URL` set (e.g. `amqp://guest:guest@127.0.0.1:5673/%2f`) the tests use
//! that broker instead (RabbitMQ, to validate the tests); it cannot be restarted, so tests that
//! restart the broker check [`Broker::is_external`] and skip, and so do the MQTT tests (the URL
//! names no MQTT port): [`Broker::mqtt_port`] is `None` then.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The environment variable naming an external broker to test instead of a wharf process.
pub const EXTERNAL_URL_VAR: &str = "WHARF_TEST_AMQP_URL";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A broker under test: a wharf child process, or an external broker from `WHARF_TEST_AMQP_URL`.
pub struct Broker {
    external_url: Option<String>,
    binary: PathBuf,
    data_dir: Option<tempfile::TempDir>,
    child: Option<Child>,
    port: u16,
    mqtt_port: u16,
    log: Arc<Mutex<Vec<String>>>,
    /// Extra environment for the process (`WHARF_TLS__CERT_FILE`...).
    env: Vec<(String, String)>,
    /// protocol -> port, from every `listening` line of the current run.
    ports: Arc<Mutex<BTreeMap<String, u16>>>,
}

/// `<repo>/target/release/wharf` unless `WHARF_BIN` says otherwise.
pub fn wharf_bin() -> PathBuf {
    match std::env::var_os("WHARF_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("release")
            .join("wharf"),
    }
}

/// Whether the tests run against an external broker (`WHARF_TEST_AMQP_URL`); says so on stderr,
/// for the tests that need a wharf of their own (TLS, WebSocket, restarts) and skip then.
pub fn skip_for_external_broker() -> bool {
    let set = std::env::var_os(EXTERNAL_URL_VAR).is_some_and(|v| !v.is_empty());
    if set {
        eprintln!("skipped: {EXTERNAL_URL_VAR} is set");
    }
    set
}

/// Makes the development CA, a server certificate and one certificate per `clients` name in
/// `dir` with `wharf certs` (certs/README.md lists the files).
pub fn make_dev_certs(dir: &Path, clients: &[&str]) {
    let mut cmd = Command::new(wharf_bin());
    cmd.args(["certs", "--out"]).arg(dir);
    for c in clients {
        cmd.args(["--client", c]);
    }
    let out = cmd.output().expect("run wharf certs");
    assert!(out.status.success(), "wharf certs: {out:?}");
}

/// (protocol, port) of any `listening protocol=<protocol> addr=IP:PORT` log line.
pub fn parse_any_listen_line(line: &str) -> Option<(String, u16)> {
    const KEY: &str = "listening protocol=";
    let rest = &line[line.find(KEY)? + KEY.len()..];
    let protocol = rest.split_whitespace().next()?;
    Some((protocol.to_string(), parse_listen_line_for(protocol, line)?))
}

/// Finds the port in a `listening protocol=amqp addr=IP:PORT` log line.
pub fn parse_listen_line(line: &str) -> Option<u16> {
    parse_listen_line_for("amqp", line)
}

/// Finds the port in a `listening protocol=<protocol> addr=IP:PORT` log line.
pub fn parse_listen_line_for(protocol: &str, line: &str) -> Option<u16> {
    let key = format!("listening protocol={protocol} addr=");
    let rest = &line[line.find(&key)? + key.len()..];
    let addr = rest.split_whitespace().next()?;
    let addr = addr.trim_end_matches(|c: char| !c.is_ascii_digit());
    addr.rsplit(':').next()?.parse().ok()
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Broker {
    /// Starts a wharf process (or uses `WHARF_TEST_AMQP_URL`). Panics with the log on failure.
    pub fn start() -> Broker {
        Broker::start_with_env(&[])
    }

    /// Starts a wharf process with extra environment variables (configuration such as
    /// `WHARF_TLS__CERT_FILE`); the TLS listeners are asked for on port 0 too (they start only
    /// with a certificate).
    pub fn start_with_env(env: &[(&str, &str)]) -> Broker {
        let external_url = std::env::var(EXTERNAL_URL_VAR)
            .ok()
            .filter(|u| !u.is_empty());
        let mut broker = Broker {
            data_dir: if external_url.is_none() {
                Some(
                    tempfile::Builder::new()
                        .prefix("wharf-test-")
                        .tempdir()
                        .expect("create a temporary data dir"),
                )
            } else {
                None
            },
            external_url,
            binary: wharf_bin(),
            child: None,
            port: 0,
            mqtt_port: 0,
            log: Arc::new(Mutex::new(Vec::new())),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ports: Arc::new(Mutex::new(BTreeMap::new())),
        };
        if broker.external_url.is_none() {
            broker.spawn();
        }
        broker
    }

    /// True when the tests run against `WHARF_TEST_AMQP_URL` (no restarts possible).
    pub fn is_external(&self) -> bool {
        self.external_url.is_some()
    }

    /// The AMQP URL to connect to (guest/guest on vhost `/`).
    pub fn amqp_url(&self) -> String {
        match &self.external_url {
            Some(url) => url.clone(),
            None => format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port),
        }
    }

    /// The AMQP port of the running wharf process (0 for an external broker).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The MQTT port of the running wharf process; `None` on an external broker (tests skip).
    pub fn mqtt_port(&self) -> Option<u16> {
        (!self.is_external()).then_some(self.mqtt_port)
    }

    /// The data directory of the wharf process.
    pub fn data_dir(&self) -> Option<PathBuf> {
        self.data_dir.as_ref().map(|d| d.path().join("data"))
    }

    /// The port of a listener (`amqps`, `mqtts`, `ws`, `wss`...) of the running process, waiting
    /// a moment for its line; `None` if it did not log one (off, or an external broker).
    pub fn port_of(&self, protocol: &str) -> Option<u16> {
        if self.is_external() {
            return None;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(p) = self
                .ports
                .lock()
                .ok()
                .and_then(|p| p.get(protocol).copied())
            {
                return Some(p);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything the process logged so far (all incarnations).
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    fn note(&self, text: &str) {
        if let Ok(mut l) = self.log.lock() {
            l.push(format!("----- [test harness] {text} -----"));
        }
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let data_dir = self.data_dir().expect("data dir");
        assert!(
            self.binary.exists(),
            "wharf binary not found at {}: run `cargo build --release -p wharf`, set WHARF_BIN, \
             or set {EXTERNAL_URL_VAR}",
            self.binary.display()
        );
        self.note(&format!(
            "start {} --data-dir {}",
            self.binary.display(),
            data_dir.display()
        ));
        let mut child = Command::new(&self.binary)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--amqp-listen")
            .arg("127.0.0.1:0")
            .arg("--mqtt-listen")
            .arg("127.0.0.1:0")
            // Never the fixed 61613: tests run several brokers at once.
            .arg("--stomp-listen")
            .arg("127.0.0.1:0")
            // Not used here, but on by default: a fixed port would clash between test brokers.
            .arg("--ws-listen")
            .arg("127.0.0.1:0")
            .args(["--amqps-listen", "127.0.0.1:0"])
            .args(["--mqtts-listen", "127.0.0.1:0"])
            .args(["--stomps-listen", "127.0.0.1:0"])
            .args(["--wss-listen", "127.0.0.1:0"])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            // Not used by these tests; off so that parallel brokers do not contend for 4566.
            .arg("--http-listen")
            .arg("off")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::clone(&self.log);
        let ports = Arc::clone(&self.ports);
        if let Ok(mut p) = ports.lock() {
            p.clear();
        }
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut tx = Some(tx);
            let (mut amqp, mut mqtt) = (None, None);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let line = strip_ansi(&line);
                amqp = amqp.or_else(|| parse_listen_line_for("amqp", &line));
                mqtt = mqtt.or_else(|| parse_listen_line_for("mqtt", &line));
                if let Some((protocol, port)) = parse_any_listen_line(&line) {
                    if let Ok(mut p) = ports.lock() {
                        p.entry(protocol).or_insert(port);
                    }
                }
                if let (Some(amqp), Some(mqtt)) = (amqp, mqtt) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send((amqp, mqtt));
                    }
                }
                if let Ok(mut l) = log.lock() {
                    l.push(line);
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok((port, mqtt_port)) => {
                    self.port = port;
                    self.mqtt_port = mqtt_port;
                    self.child = Some(child);
                    return;
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = child.try_wait() {
                        thread::sleep(Duration::from_millis(100));
                        panic!(
                            "wharf exited with {status} before listening:\n{}",
                            self.log()
                        );
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "wharf did not log `listening protocol=amqp` and `=mqtt` within {START_TIMEOUT:?}:\n{}",
                        self.log()
                    );
                }
            }
        }
    }

    fn external_guard(&self, what: &str) {
        assert!(
            !self.is_external(),
            "{what}: not possible on an external broker ({EXTERNAL_URL_VAR}); skip this test"
        );
    }

    /// SIGTERM (graceful shutdown) and wait; returns the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.external_guard("terminate");
        let mut child = self.child.take().expect("broker not running");
        self.note("SIGTERM");
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&child),
            rustix::process::Signal::TERM,
        )
        .expect("send SIGTERM to wharf");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait for wharf") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "wharf did not exit within {STOP_TIMEOUT:?} of SIGTERM:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (a crash) and wait.
    pub fn kill9(&mut self) {
        self.external_guard("kill9");
        let mut child = self.child.take().expect("broker not running");
        self.note("SIGKILL");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the process again on the same data directory (a new port).
    pub fn start_again(&mut self) {
        self.external_guard("start");
        self.spawn();
    }

    /// Graceful restart (SIGTERM, which must exit 0, then start); `kill` = SIGKILL instead.
    pub fn restart(&mut self, kill: bool) {
        if kill {
            self.kill9();
        } else {
            let status = self.terminate();
            assert!(
                status.success(),
                "wharf exited with {status} on SIGTERM:\n{}",
                self.log()
            );
        }
        self.start_again();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if thread::panicking() {
                eprintln!("===== wharf log (port {}) =====\n{}", self.port, self.log());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_line() {
        assert_eq!(
            parse_listen_line(
                "2026-01-01T00:00:00Z  INFO wharf::net: listening protocol=amqp addr=127.0.0.1:40123"
            ),
            Some(40123)
        );
        assert_eq!(
            parse_listen_line("listening protocol=amqp addr=[::1]:5672 extra=1"),
            Some(5672)
        );
        assert_eq!(
            parse_listen_line("listening protocol=mqtt addr=127.0.0.1:1883"),
            None
        );
        assert_eq!(parse_listen_line("starting"), None);
        assert_eq!(
            parse_listen_line_for(
                "mqtt",
                "2026-01-01T00:00:00Z  INFO wharf::net: listening protocol=mqtt addr=127.0.0.1:1883"
            ),
            Some(1883)
        );
        assert_eq!(
            parse_listen_line_for("mqtt", "listening protocol=amqp addr=127.0.0.1:5672"),
            None
        );
    }

    #[test]
    fn parses_any_listen_line() {
        assert_eq!(
            parse_any_listen_line(" INFO wharf::net: listening protocol=mqtts addr=127.0.0.1:8883"),
            Some(("mqtts".to_string(), 8883))
        );
        assert_eq!(parse_any_listen_line("listener off protocol=wss"), None);
    }

    #[test]
    fn strips_ansi() {
        assert_eq!(
            strip_ansi("\x1b[32m INFO\x1b[0m listening protocol=amqp addr=127.0.0.1:1"),
            " INFO listening protocol=amqp addr=127.0.0.1:1"
        );
    }
}
