"""Fixtures: a real wharf process per test module (or per test), or an external broker.

- `broker` (module scope): one wharf process for every test of a module.
- `own_broker` (function scope): a wharf process of the test's own, for tests that restart or kill it.
- `conn`, `ch`: a pika BlockingConnection / channel on `broker`, closed after the test.
- `uname`: unique names, so that tests sharing a broker never see each other's objects.

Escape hatch: with WHARF_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5673/ the tests run against
that broker (e.g. RabbitMQ, to validate the tests themselves) and tests marked `restart` are skipped.
"""

import atexit
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import pika
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[2]
EXTERNAL_URL = os.environ.get("WHARF_TEST_AMQP_URL") or None
LISTEN_RE = re.compile(r"listening protocol=amqp addr=([0-9.]+|\[[0-9a-fA-F:]+\]):(\d+)")
# Every listener: amqp, mqtt, stomp, amqps, mqtts, stomps, ws, wss, http.
ANY_LISTEN_RE = re.compile(r"listening protocol=(\w+) addr=([0-9.]+|\[[0-9a-fA-F:]+\]):(\d+)")
# Listeners on in every test broker; the TLS ones only when a certificate is configured.
PLAIN_PROTOCOLS = ("amqp", "mqtt", "stomp", "ws", "http")
TLS_PROTOCOLS = ("amqps", "mqtts", "stomps", "wss")
ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0

_live_processes = set()


@atexit.register
def _kill_leftovers():
    for proc in list(_live_processes):
        if proc.poll() is None:
            proc.kill()


def wharf_bin():
    return Path(os.environ.get("WHARF_BIN") or REPO / "target" / "release" / "wharf")


class BrokerBase:
    host = "127.0.0.1"
    port = None
    mqtt_port = None
    stomp_port = None
    http_port = None
    vhost = "/"
    user = "guest"
    password = "guest"
    external = False

    def params(self, **kwargs):
        kwargs.setdefault("virtual_host", self.vhost)
        kwargs.setdefault("credentials", pika.PlainCredentials(self.user, self.password))
        kwargs.setdefault("connection_attempts", 1)
        kwargs.setdefault("socket_timeout", 5)
        kwargs.setdefault("blocked_connection_timeout", 30)
        return pika.ConnectionParameters(host=self.host, port=self.port, **kwargs)

    def connect(self, **kwargs):
        return pika.BlockingConnection(self.params(**kwargs))

    @property
    def url(self):
        vhost = urllib.parse.quote(self.vhost, safe="")
        return f"amqp://{self.user}:{self.password}@{self.host}:{self.port}/{vhost}"


class ExternalBroker(BrokerBase):
    """A broker somebody else runs (RabbitMQ for validating the tests): it cannot be restarted."""

    external = True
    data_dir = None

    def __init__(self, url):
        u = urllib.parse.urlparse(url)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 5672
        self.user = urllib.parse.unquote(u.username or "guest")
        self.password = urllib.parse.unquote(u.password or "guest")
        path = u.path[1:] if u.path.startswith("/") else u.path
        self.vhost = urllib.parse.unquote(path) if path else "/"

    def _no(self, *_a, **_k):
        pytest.skip("external broker (WHARF_TEST_AMQP_URL): cannot restart or kill it")

    start = restart = kill9 = terminate = _no

    def log_text(self):
        return ""


class WharfProcess(BrokerBase):
    """One wharf process on an ephemeral port with its own data directory."""

    def __init__(self, data_dir, binary=None, env=None, extra_args=()):
        self.binary = Path(binary or wharf_bin())
        self.data_dir = Path(data_dir)
        # Extra environment (WHARF_TLS__CERT_FILE...): configuration for this broker.
        self.extra_env = dict(env or {})
        # Extra command-line arguments (`--sigv4 off`...).
        self.extra_args = list(extra_args)
        # protocol -> port, from the `listening` lines of the current run.
        self.ports = {}
        self.proc = None
        self.port = None
        self.mqtt_port = None
        self.stomp_port = None
        self.http_port = None
        self._log = []
        self._log_lock = threading.Lock()
        self.starts = 0

    # -- log -------------------------------------------------------------------------------
    def _reader(self, proc, found, port_box):
        for raw in iter(proc.stdout.readline, b""):
            line = ANSI_RE.sub("", raw.decode(errors="replace").rstrip("\n"))
            with self._log_lock:
                self._log.append(line)
            m = ANY_LISTEN_RE.search(line)
            if m:
                self.ports.setdefault(m.group(1), int(m.group(3)))
            if not found.is_set():
                m = LISTEN_RE.search(line)
                if m:
                    port_box.append(int(m.group(2)))
                    found.set()
        proc.stdout.close()

    def log_text(self):
        with self._log_lock:
            return "\n".join(self._log)

    def _note(self, text):
        with self._log_lock:
            self._log.append(f"----- [test harness] {text} -----")

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self):
        assert not self.running, "broker already running"
        if not self.binary.exists():
            pytest.fail(
                f"wharf binary not found at {self.binary}: build it with "
                "`cargo build --release -p wharf`, set WHARF_BIN, or set WHARF_TEST_AMQP_URL"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self._note(f"start #{self.starts}: {self.binary} --data-dir {self.data_dir}")
        env = dict(os.environ)
        env.setdefault("NO_COLOR", "1")
        env.update(self.extra_env)
        self.ports = {}
        proc = subprocess.Popen(
            [
                str(self.binary),
                "--data-dir",
                str(self.data_dir),
                "--amqp-listen",
                "127.0.0.1:0",
                "--mqtt-listen",
                "127.0.0.1:0",
                "--stomp-listen",
                "127.0.0.1:0",
                "--ws-listen",
                "127.0.0.1:0",
                # Off (logged so) unless the environment configures a certificate.
                "--amqps-listen",
                "127.0.0.1:0",
                "--mqtts-listen",
                "127.0.0.1:0",
                "--stomps-listen",
                "127.0.0.1:0",
                "--wss-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                *self.extra_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        _live_processes.add(proc)
        found, port_box = threading.Event(), []
        self._thread = threading.Thread(target=self._reader, args=(proc, found, port_box), daemon=True)
        self._thread.start()
        self.proc = proc
        deadline = time.monotonic() + START_TIMEOUT
        while not found.wait(0.05):
            if proc.poll() is not None:
                self._thread.join(2)
                raise RuntimeError(
                    f"wharf exited with {proc.returncode} before listening:\n{self.log_text()}"
                )
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError(
                    f"wharf did not log 'listening protocol=amqp' within {START_TIMEOUT}s:\n"
                    + self.log_text()
                )
        self.port = port_box[0]
        # Listeners log in start order (amqp first): give the other lines a moment.
        expected = PLAIN_PROTOCOLS + (TLS_PROTOCOLS if self.tls_configured else ())
        rest_deadline = time.monotonic() + 5
        while (
            not all(p in self.ports for p in expected)
            and time.monotonic() < rest_deadline
            and proc.poll() is None
        ):
            time.sleep(0.01)
        self.mqtt_port = self.ports.get("mqtt")
        self.stomp_port = self.ports.get("stomp")
        self.http_port = self.ports.get("http")
        return self

    @property
    def tls_configured(self):
        return bool(self.extra_env.get("WHARF_TLS__CERT_FILE"))

    def _wait(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._note(f"did not exit within {timeout}s: SIGKILL")
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"wharf did not exit within {timeout}s of SIGTERM")
        finally:
            _live_processes.discard(self.proc)
            self._thread.join(5)

    def terminate(self, timeout=STOP_TIMEOUT):
        """SIGTERM (graceful shutdown); returns the exit code."""
        if not self.running:
            return self.proc.returncode if self.proc else None
        self._note("SIGTERM")
        self.proc.send_signal(signal.SIGTERM)
        return self._wait(timeout)

    def kill9(self):
        if not self.running:
            return
        self._note("SIGKILL")
        self.proc.send_signal(signal.SIGKILL)
        self._wait(10)

    def restart(self, kill=False):
        if kill:
            self.kill9()
        else:
            code = self.terminate()
            assert code == 0, f"wharf exited with {code} on SIGTERM"
        return self.start()

    def stop_quietly(self):
        if self.running:
            try:
                self.terminate()
            except AssertionError:
                pass


def pytest_collection_modifyitems(config, items):
    if EXTERNAL_URL:
        skip = pytest.mark.skip(reason="WHARF_TEST_AMQP_URL is set: broker restarts not possible")
        for item in items:
            if "restart" in item.keywords:
                item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for name, value in getattr(item, "funcargs", {}).items():
            if isinstance(value, WharfProcess):
                rep.sections.append((f"wharf log ({name}, port {value.port})", value.log_text()))


def _make_broker(tmp_dir):
    if EXTERNAL_URL:
        return ExternalBroker(EXTERNAL_URL)
    return WharfProcess(tmp_dir).start()


@pytest.fixture(scope="module")
def broker():
    tmp = tempfile.mkdtemp(prefix="wharf-test-")
    b = _make_broker(Path(tmp) / "data")
    try:
        yield b
    finally:
        if isinstance(b, WharfProcess):
            b.stop_quietly()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def own_broker(tmp_path):
    if EXTERNAL_URL:
        pytest.skip("WHARF_TEST_AMQP_URL is set: this test needs a broker of its own")
    b = WharfProcess(tmp_path / "data").start()
    try:
        yield b
    finally:
        b.stop_quietly()


@pytest.fixture
def conn(broker):
    c = broker.connect()
    yield c
    if c.is_open:
        try:
            c.close()
        except Exception:
            pass


@pytest.fixture
def ch(conn):
    return conn.channel()


@pytest.fixture
def uname(request):
    """uname("q") -> a name no other test (or earlier run on the same broker) uses."""
    base = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:60]

    def make(kind="x"):
        return f"wt.{base}.{kind}.{uuid.uuid4().hex[:8]}"

    return make
