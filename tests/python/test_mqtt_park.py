"""Parked MQTT connections (broker/src/net/park.rs): an idle plain-TCP connection gives up its
task and socket registration; everything a connection does must still work while it is parked.

The broker runs with `mqtt.park_after_secs = 1` and logs `MQTT connection parked` /
`MQTT connection resumed` (debug, with the client id) so that each test first proves the
connection really was parked, then exercises it.
"""

import re
import socket
import struct
import time
import uuid

import pika
import pytest

from conftest import EXTERNAL_URL, WharfProcess
from test_mqtt import V3, V5, WAIT, Mq, cid, mqtt_str, read_all

pytestmark = pytest.mark.skipif(bool(EXTERNAL_URL), reason="MQTT tests need a wharf of their own")

PARK_ENV = {"WHARF_MQTT__PARK_AFTER_SECS": "1", "WHARF_MQTT__SYS_INTERVAL_SECS": "1"}
LOG_ARGS = ["--log", "info,wharf::protocol::mqtt::connection=debug"]


@pytest.fixture
def pb(tmp_path):
    b = WharfProcess(tmp_path / "data", env=PARK_ENV, extra_args=LOG_ARGS).start()
    try:
        yield b
    finally:
        b.stop_quietly()


@pytest.fixture
def clients(pb):
    made = []

    def make(**kw):
        m = Mq(pb, **kw)
        made.append(m)
        return m

    yield make
    for m in made:
        try:
            m.close()
        except Exception:
            pass


def count(b, what, client_id):
    pat = re.compile(rf"MQTT connection {what} .*client_id={re.escape(client_id)}(\s|$)")
    return sum(1 for line in b.log_text().splitlines() if pat.search(line))


def wait_count(b, what, client_id, at_least=1, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while count(b, what, client_id) < at_least:
        assert time.monotonic() < deadline, f"{client_id} not {what} {at_least} time(s)"
        time.sleep(0.05)


def wait_parked(b, client_id, at_least=1, timeout=WAIT):
    """Waits until `client_id` was parked `at_least` times and is parked now."""
    wait_count(b, "parked", client_id, at_least, timeout)
    deadline = time.monotonic() + timeout
    while count(b, "parked", client_id) <= count(b, "resumed", client_id):
        assert time.monotonic() < deadline, f"{client_id} not parked now"
        time.sleep(0.05)
    return count(b, "parked", client_id)


def raw_connect(b, client_id, keepalive=60, proto=4, will=None):
    """A raw CONNECT (3.1.1 or 5) as guest; returns the socket after CONNACK."""
    flags = 0x02 | 0x80 | 0x40
    payload = mqtt_str(client_id)
    if will:
        topic, message = will
        flags |= 0x04
        payload += (b"\x00" if proto == 5 else b"") + mqtt_str(topic) + mqtt_str(message)
    payload += mqtt_str("guest") + mqtt_str("guest")
    var = mqtt_str("MQTT") + bytes([proto, flags]) + struct.pack(">H", keepalive)
    if proto == 5:
        var += b"\x00"
    body = var + payload
    s = socket.create_connection((b.host, b.mqtt_port), timeout=WAIT)
    s.sendall(bytes([0x10, len(body)]) + body)
    ack = b""
    while len(ack) < 4:
        chunk = s.recv(4 - len(ack))
        assert chunk, "closed before CONNACK"
        ack += chunk
    assert ack[0] == 0x20 and ack[3] == 0, ack
    if proto == 5:
        # The CONNACK's properties.
        rest = ack[1] - 2
        while rest:
            chunk = s.recv(rest)
            assert chunk
            rest -= len(chunk)
    return s


def test_parked_connection_answers_ping_and_the_lot_counts_it(pb, clients):
    ident = cid("ping")
    s = raw_connect(pb, ident)
    wait_parked(pb, ident)
    s.sendall(b"\xc0\x00")
    s.settimeout(WAIT)
    assert s.recv(2) == b"\xd0\x00"
    wait_count(pb, "resumed", ident)
    # Parked again once quiet; $SYS says how many are parked and how many were resumed.
    wait_parked(pb, ident, at_least=2)
    obs = clients(proto=V3)
    obs.connect()
    obs.subscribe("$SYS/broker/clients/+", 0)
    # Published every second when they change: the retained values may be older.
    got = {}
    deadline = time.monotonic() + WAIT
    while not (got.get("parked", 0) >= 1 and got.get("resumed", 0) >= 1):
        assert time.monotonic() < deadline, got
        m = obs.get()
        got[m.topic.rsplit("/", 1)[1]] = int(m.payload)
    s.close()


def test_busy_connection_parks_after_idle_then_publishes(pb, clients):
    topic = f"park/{uuid.uuid4().hex[:6]}"
    sub = clients(proto=V3)
    sub.connect()
    sub.subscribe(topic, 1)
    pub = clients(proto=V3)
    pub.connect()
    pub.publish(topic, b"first", 1)
    assert sub.get().payload == b"first"
    # It has published: it parks only after the idle time, then a QoS 1 publish resumes it.
    parked = wait_parked(pb, pub.client_id)
    pub.publish(topic, b"second", 1)
    assert sub.get().payload == b"second"
    wait_count(pb, "resumed", pub.client_id, parked)


@pytest.mark.parametrize("proto", [V3, V5])
def test_parked_subscriber_receives_from_mqtt_and_amqp(pb, clients, proto):
    word = uuid.uuid4().hex[:6]
    sub = clients(proto=proto)
    sub.connect()
    sub.subscribe(f"park/{word}/#", 1)
    n = wait_parked(pb, sub.client_id)
    pub = clients(proto=V3)
    pub.connect()
    pub.publish(f"park/{word}/mqtt", b"from mqtt", 1)
    m = sub.get()
    assert (m.topic, m.payload) == (f"park/{word}/mqtt", b"from mqtt")
    wait_count(pb, "resumed", sub.client_id, n)
    # Parked again (after the idle time now that it has had a delivery), then AMQP publishes.
    n = wait_parked(pb, sub.client_id, at_least=n + 1)
    conn = pika.BlockingConnection(pb.params())
    try:
        conn.channel().basic_publish("amq.topic", f"park.{word}.amqp", b"from amqp")
    finally:
        conn.close()
    m = sub.get()
    assert (m.topic, m.payload) == (f"park/{word}/amqp", b"from amqp")
    wait_count(pb, "resumed", sub.client_id, n)


def test_parked_session_taken_over_gets_0x8e(pb, clients):
    ident = cid("take")
    a = clients(proto=V5, client_id=ident)
    a.connect()
    wait_parked(pb, ident)
    b = clients(proto=V5, client_id=ident)
    b.connect()
    rc = a.disconnects.get(timeout=WAIT)
    assert rc.value == 0x8E, rc
    b.subscribe("take/over/parked", 1)
    b.publish("take/over/parked", b"still fine", 1)
    assert b.get().payload == b"still fine"


def test_parked_connection_closed_at_keepalive_expiry_with_its_will(pb, clients):
    topic = f"kawill/{uuid.uuid4().hex[:6]}"
    sub = clients(proto=V3)
    sub.connect()
    sub.subscribe(topic, 1)
    ident = cid("ka")
    start = time.monotonic()
    s = raw_connect(pb, ident, keepalive=2, will=(topic, "expired"))
    wait_parked(pb, ident, timeout=2)
    data, closed = read_all(s, timeout=6)
    assert closed and data == b""
    # 1.5 x keep-alive, plus up to one sweep.
    assert 2.8 < time.monotonic() - start < 5
    assert sub.get().payload == b"expired"
    wait_count(pb, "resumed", ident)


def test_parked_connection_hang_up_publishes_will(pb, clients):
    topic = f"hup/{uuid.uuid4().hex[:6]}"
    sub = clients(proto=V3)
    sub.connect()
    sub.subscribe(topic, 1)
    ident = cid("hup")
    s = raw_connect(pb, ident, will=(topic, "gone"))
    wait_parked(pb, ident)
    s.close()
    assert sub.get().payload == b"gone"
    wait_count(pb, "resumed", ident)


def test_parked_connections_get_0x8b_on_shutdown(pb):
    idents = [cid("down") for _ in range(3)]
    socks = [raw_connect(pb, i, proto=5) for i in idents]
    for i in idents:
        wait_parked(pb, i)
    pb.terminate()
    for s in socks:
        data, closed = read_all(s, timeout=WAIT)
        assert closed
        # DISCONNECT with reason 0x8B (server shutting down).
        assert data[:1] == b"\xe0" and data[2] == 0x8B, data


def test_parked_persistent_session_qos2_both_ways(pb, clients):
    topic = f"park2/{uuid.uuid4().hex[:6]}"
    sub = clients(proto=V3, clean=False)
    sub.connect()
    sub.subscribe(topic, 2)
    pub = clients(proto=V3)
    pub.connect()
    wait_parked(pb, sub.client_id)
    wait_parked(pb, pub.client_id)
    # The publisher's PUBLISH/PUBREL and the subscriber's PUBREC/PUBCOMP each resume one.
    pub.publish(topic, b"exactly once", 2)
    m = sub.get()
    assert (m.payload, m.qos) == (b"exactly once", 2)
    sub.nothing(0.5)
    wait_count(pb, "resumed", sub.client_id)
    wait_count(pb, "resumed", pub.client_id)
    # Parked again, then a message queued while it is parked reaches it too.
    n = wait_parked(pb, sub.client_id, at_least=2)
    pub.publish(topic, b"again", 1)
    m = sub.get()
    assert (m.payload, m.qos) == (b"again", 1)
    wait_count(pb, "resumed", sub.client_id, n)
