"""STOMP 1.0, 1.1 and 1.2 with stomp.py against a real wharf; across to AMQP (pika) and MQTT
(paho); and bad input on a raw socket. Destinations and headers as RabbitMQ's STOMP plugin
(docs/mapping/stomp.md)."""

import queue
import select
import socket
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pika
import pytest
import stomp
from stomp.exception import ConnectFailedException

from conftest import EXTERNAL_URL, WharfProcess

pytestmark = pytest.mark.skipif(bool(EXTERNAL_URL), reason="STOMP tests need a wharf of their own")

VERSIONS = ["1.0", "1.1", "1.2"]
WAIT = 5.0


def name(prefix="s"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Listener(stomp.ConnectionListener):
    def __init__(self):
        self.messages = queue.Queue()
        self.errors = queue.Queue()
        self.receipts = queue.Queue()
        self.disconnected = threading.Event()

    def on_message(self, frame):
        self.messages.put(frame)

    def on_error(self, frame):
        self.errors.put(frame)

    def on_receipt(self, frame):
        self.receipts.put(frame.headers["receipt-id"])

    def on_disconnected(self):
        self.disconnected.set()


class Client:
    """A stomp.py connection of one version with its events in queues."""

    def __init__(self, broker, version="1.2", login="guest", passcode="guest", heartbeats=(0, 0)):
        self.version = version
        hosts = [(broker.host, broker.stomp_port)]
        if version == "1.0":
            self.c = stomp.Connection10(hosts, reconnect_attempts_max=1)
        else:
            cls = stomp.Connection11 if version == "1.1" else stomp.Connection12
            # host names the vhost, as RabbitMQ reads it.
            self.c = cls(hosts, heartbeats=heartbeats, vhost="/", reconnect_attempts_max=1)
        self.l = Listener()
        self.c.set_listener("", self.l)
        self.c.connect(login, passcode, wait=True)

    def subscribe(self, dest, sid, ack="auto", **headers):
        r = name("r")
        self.c.subscribe(dest, id=sid, ack=ack, headers=dict(headers, receipt=r))
        self.receipt(r)

    def send(self, dest, body, **headers):
        r = name("r")
        self.c.send(dest, body, headers=dict(headers, receipt=r))
        self.receipt(r)

    def receipt(self, r):
        assert self.l.receipts.get(timeout=WAIT) == r

    def message(self):
        return self.l.messages.get(timeout=WAIT)

    def no_message(self, wait=0.3):
        with pytest.raises(queue.Empty):
            self.l.messages.get(timeout=wait)

    def ack(self, frame, sub):
        if self.version == "1.2":
            self.c.ack(frame.headers["ack"])
        elif self.version == "1.1":
            self.c.ack(frame.headers["message-id"], sub)
        else:
            self.c.ack(frame.headers["message-id"])

    def nack(self, frame, sub, **headers):
        if self.version == "1.2":
            self.c.nack(frame.headers["ack"], **headers)
        else:
            self.c.nack(frame.headers["message-id"], sub, **headers)

    def close(self):
        if self.c.is_connected():
            self.c.disconnect()


@pytest.fixture
def clients(broker):
    made = []

    def make(version="1.2", **kw):
        c = Client(broker, version, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        try:
            c.close()
        except Exception:
            pass


# -- destinations ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_queue_destination(clients, version):
    c = clients(version)
    q = name("q")
    c.subscribe(f"/queue/{q}", "1")
    c.send(f"/queue/{q}", "hello", **{"content-type": "text/plain"})
    m = c.message()
    assert m.body == "hello"
    assert m.headers["destination"] == f"/queue/{q}"
    assert m.headers["subscription"] == "1"
    assert m.headers["content-type"] == "text/plain"


@pytest.mark.parametrize("version", VERSIONS)
def test_topic_destination_fans_out(clients, version):
    a, b = clients(version), clients(version)
    a.subscribe("/topic/news.*", "a")
    b.subscribe("/topic/news.#", "b")
    a.send("/topic/news.today", "extra")
    assert a.message().body == "extra"
    m = b.message()
    assert m.body == "extra"
    assert m.headers["destination"] == "/topic/news.today"


@pytest.mark.parametrize("version", VERSIONS)
def test_exchange_destination(clients, version):
    c = clients(version)
    key = name("k")
    c.subscribe(f"/exchange/amq.direct/{key}", "x")
    c.send(f"/exchange/amq.direct/{key}", "direct")
    m = c.message()
    assert m.body == "direct"
    assert m.headers["destination"] == f"/exchange/amq.direct/{key}"


@pytest.mark.parametrize("version", VERSIONS)
def test_amq_queue_is_an_existing_queue(clients, ch, version):
    q = name("amqp-made")
    ch.queue_declare(q, auto_delete=True)
    c = clients(version)
    c.subscribe(f"/amq/queue/{q}", "1")
    c.send(f"/amq/queue/{q}", "to an AMQP queue")
    assert c.message().body == "to an AMQP queue"


def test_amq_queue_is_never_declared(broker):
    s = raw_connect(broker)
    s.sendall(b"SUBSCRIBE\ndestination:/amq/queue/" + name("nope").encode() + b"\nid:1\n\n\0")
    headers, _ = expect_error_and_close(s)
    assert "Subscription refused" in headers["message"]


def test_temp_queue_reply_to(clients):
    server, client = clients("1.2"), clients("1.2")
    rpc = name("rpc")
    server.subscribe(f"/queue/{rpc}", "s")
    client.c.send(f"/queue/{rpc}", "question", headers={"reply-to": "/temp-queue/answers"})
    req = server.message()
    assert req.headers["reply-to"].startswith("/reply-queue/amq.gen-")
    server.send(req.headers["reply-to"], "answer")
    m = client.message()
    assert m.body == "answer"
    assert m.headers["subscription"] == "/temp-queue/answers"


# -- acknowledgements, transactions, receipts --------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_client_ack_is_cumulative(broker, clients, version):
    c = clients(version)
    q = name("ack")
    for i in range(3):
        c.send(f"/queue/{q}", f"m{i}")
    c.subscribe(f"/queue/{q}", "1", ack="client", **{"prefetch-count": "10"})
    ms = [c.message() for _ in range(3)]
    c.ack(ms[1], "1")
    c.close()
    # m0 and m1 were acknowledged together; m2 returns.
    d = clients(version)
    d.subscribe(f"/queue/{q}", "1", ack="client")
    again = d.message()
    assert again.body == "m2"
    assert again.headers["redelivered"] == "true"
    d.no_message()


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_client_individual_ack(clients, version):
    c = clients(version)
    q = name("ind")
    for i in range(3):
        c.send(f"/queue/{q}", f"m{i}")
    c.subscribe(f"/queue/{q}", "1", ack="client-individual")
    ms = [c.message() for _ in range(3)]
    c.ack(ms[2], "1")
    c.close()
    d = clients(version)
    d.subscribe(f"/queue/{q}", "1", ack="client-individual")
    assert sorted([d.message().body, d.message().body]) == ["m0", "m1"]
    d.no_message()


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_nack_requeues_or_drops(clients, version):
    c = clients(version)
    q = name("nack")
    c.send(f"/queue/{q}", "again")
    c.subscribe(f"/queue/{q}", "1", ack="client-individual")
    m = c.message()
    c.nack(m, "1")
    m2 = c.message()
    assert m2.body == "again" and m2.headers["redelivered"] == "true"
    c.nack(m2, "1", requeue="false")
    c.no_message()


def test_prefetch_count(clients):
    c = clients("1.2")
    q = name("pf")
    for i in range(5):
        c.send(f"/queue/{q}", str(i))
    c.subscribe(f"/queue/{q}", "1", ack="client-individual", **{"prefetch-count": "2"})
    first = c.message()
    c.message()
    c.no_message()
    c.ack(first, "1")
    assert c.message().body == "2"


@pytest.mark.parametrize("version", VERSIONS)
def test_transactions(clients, version):
    c = clients(version)
    q = name("tx")
    c.subscribe(f"/queue/{q}", "1")
    tx = c.c.begin()
    c.c.send(f"/queue/{q}", "committed", transaction=tx)
    c.no_message()
    c.c.commit(tx)
    assert c.message().body == "committed"
    tx = c.c.begin()
    c.c.send(f"/queue/{q}", "aborted", transaction=tx)
    c.c.abort(tx)
    c.no_message()


def test_ack_in_a_transaction(clients):
    c = clients("1.2")
    q = name("txack")
    c.send(f"/queue/{q}", "x")
    c.subscribe(f"/queue/{q}", "1", ack="client-individual")
    m = c.message()
    tx = c.c.begin()
    c.c.ack(m.headers["ack"], transaction=tx)
    c.c.abort(tx)
    c.close()
    # The ACK was aborted: the message comes back.
    d = clients("1.2")
    d.subscribe(f"/queue/{q}", "1")
    assert d.message().body == "x"


@pytest.mark.parametrize("version", VERSIONS)
def test_disconnect_with_receipt(broker, version):
    c = Client(broker, version)
    r = name("bye")
    c.c.disconnect(receipt=r)
    assert c.l.receipts.get(timeout=WAIT) == r


# -- heart-beats -----------------------------------------------------------------------------


def test_heartbeats_keep_an_idle_client_alive(clients):
    c = clients("1.2", heartbeats=(1000, 1000))
    time.sleep(3.5)
    assert c.c.is_connected()
    q = name("hb")
    c.subscribe(f"/queue/{q}", "1")
    c.send(f"/queue/{q}", "alive")
    assert c.message().body == "alive"


def test_a_client_that_stops_beating_is_closed(broker):
    s = socket.create_connection((broker.host, broker.stomp_port), timeout=WAIT)
    s.sendall(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n"
              b"heart-beat:1000,0\n\n\0")
    connected = read_frame(s)
    assert connected.startswith(b"CONNECTED") and b"heart-beat:1000,1000" in connected
    started = time.monotonic()
    headers, _ = expect_error_and_close(s, timeout=10)
    assert "Heart-beat" in headers["message"]
    assert 1.5 < time.monotonic() - started < 6


# -- durable subscriptions -------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_durable_topic_subscription_survives_disconnect(clients, version):
    sid = name("dur")
    topic = f"/topic/{name('t')}"
    c = clients(version)
    c.subscribe(topic, sid, persistent="true")
    c.close()
    p = clients(version)
    p.send(topic, "while away", persistent="true")
    back = clients(version)
    back.subscribe(topic, sid, persistent="true")
    assert back.message().body == "while away"


def test_activemq_durable_subscription(clients, ch):
    sub = name("amqsub")
    topic = f"/topic/{name('t')}"
    c = clients("1.1")
    c.subscribe(topic, "1", **{"activemq.subscriptionName": sub})
    c.close()
    ch.queue_declare(f"stomp-subscription-{sub}", passive=True)
    clients("1.1").send(topic, "kept")
    back = clients("1.1")
    back.subscribe(topic, "1", **{"activemq.subscriptionName": sub})
    assert back.message().body == "kept"


# -- login -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_login_refused(broker, version):
    with pytest.raises(ConnectFailedException):
        Client(broker, version, passcode="wrong")


def test_login_refused_raw(broker):
    s = socket.create_connection((broker.host, broker.stomp_port), timeout=WAIT)
    s.sendall(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:nope\n\n\0")
    headers, body = expect_error_and_close(s)
    assert headers["message"] == "Bad CONNECT"
    assert b"Access refused" in body


def test_host_that_is_not_a_vhost_is_refused(broker):
    s = socket.create_connection((broker.host, broker.stomp_port), timeout=WAIT)
    s.sendall(b"CONNECT\naccept-version:1.2\nhost:no-such-vhost\nlogin:guest\npasscode:guest\n\n\0")
    headers, body = expect_error_and_close(s)
    assert b"no-such-vhost" in body


# -- across protocols ------------------------------------------------------------------------


def test_stomp_to_amqp_with_headers_mapped(clients, ch):
    q = name("to-amqp")
    ch.queue_declare(q, auto_delete=False)
    c = clients("1.2")
    c.send(f"/amq/queue/{q}", "from stomp", **{
        "content-type": "application/json", "content-encoding": "utf-8",
        "persistent": "true", "priority": "4", "correlation-id": "corr-1",
        "reply-to": "replies", "expiration": "60000", "amqp-message-id": "mid-1",
        "type": "order", "app-id": "shop", "timestamp": "1700000000", "user-id": "guest",
        "x-colour": "blue",
    })
    method, props, body = ch.basic_get(q, auto_ack=True)
    assert body == b"from stomp"
    assert props.content_type == "application/json"
    assert props.content_encoding == "utf-8"
    assert props.delivery_mode == 2
    assert props.priority == 4
    assert props.correlation_id == "corr-1"
    assert props.reply_to == "replies"
    assert props.expiration == "60000"
    assert props.message_id == "mid-1"
    assert props.type == "order"
    assert props.app_id == "shop"
    assert props.timestamp == 1700000000
    assert props.user_id == "guest"
    assert props.headers == {"x-colour": b"blue"} or props.headers == {"x-colour": "blue"}
    ch.queue_delete(q)


def test_amqp_to_stomp_with_properties_mapped(clients, ch):
    q = name("from-amqp")
    c = clients("1.2")
    c.subscribe(f"/queue/{q}", "1")
    props = pika.BasicProperties(
        content_type="text/plain", delivery_mode=2, priority=7, correlation_id="c-7",
        reply_to="back", message_id="amqp-7", type="kind", app_id="pika",
        timestamp=1700000001, headers={"x-n": 42, "x-s": "text", "x-t": {"nested": 1}},
    )
    ch.basic_publish("", q, b"from amqp", props)
    m = c.message()
    h = m.headers
    assert m.body == "from amqp"
    assert h["destination"] == f"/queue/{q}"
    assert h["content-type"] == "text/plain"
    assert h["persistent"] == "true"
    assert h["priority"] == "7"
    assert h["correlation-id"] == "c-7"
    assert h["reply-to"] == "back"
    assert h["amqp-message-id"] == "amqp-7"
    assert h["type"] == "kind"
    assert h["app-id"] == "pika"
    assert h["timestamp"] == "1700000001"
    assert h["x-n"] == "42" and h["x-s"] == "text"
    # A table has no text form: dropped by rule.
    assert "x-t" not in h


def mqtt_client(broker, msgs=None):
    m = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                    client_id=name("mq"), protocol=mqtt.MQTTv311)
    m.username_pw_set("guest", "guest")
    if msgs is not None:
        m.on_message = lambda c, u, msg: msgs.put(msg)
    m.connect(broker.host, broker.mqtt_port, 30)
    m.loop_start()
    return m


def test_mqtt_to_stomp_via_topic(broker, clients):
    c = clients("1.2")
    base = name("sensors")
    c.subscribe(f"/topic/{base}.*", "1")
    m = mqtt_client(broker)
    try:
        m.publish(f"{base}/kitchen", b"21.5", qos=1).wait_for_publish(WAIT)
        got = c.message()
        assert got.body == "21.5"
        assert got.headers["destination"] == f"/topic/{base}.kitchen"
    finally:
        m.loop_stop()
        m.disconnect()


def test_stomp_to_mqtt_via_topic(broker, clients):
    base = name("sensors")
    msgs = queue.Queue()
    subscribed = threading.Event()
    m = mqtt_client(broker, msgs)
    m.on_subscribe = lambda *a: subscribed.set()
    try:
        m.subscribe(f"{base}/+", qos=1)
        assert subscribed.wait(WAIT)
        c = clients("1.1")
        c.send(f"/topic/{base}.hall", "19.0", persistent="true")
        got = msgs.get(timeout=WAIT)
        assert got.topic == f"{base}/hall"
        assert got.payload == b"19.0"
        assert got.qos == 1
    finally:
        m.loop_stop()
        m.disconnect()


# -- bad input on a raw socket ---------------------------------------------------------------


def read_frame(s, timeout=WAIT):
    """One frame (to its NUL), heart-beat EOLs before it skipped."""
    s.settimeout(timeout)
    data = b""
    while b"\0" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
        data = data.lstrip(b"\r\n")
    return data


def raw_connect(broker, version="1.2"):
    s = socket.create_connection((broker.host, broker.stomp_port), timeout=WAIT)
    s.sendall(f"CONNECT\naccept-version:{version}\nhost:/\nlogin:guest\npasscode:guest\n\n\0".encode())
    assert read_frame(s).startswith(b"CONNECTED")
    return s


def expect_error_and_close(s, timeout=WAIT):
    """An ERROR frame with a message header, then the server closes the socket."""
    s.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    data = data.lstrip(b"\r\n")
    assert data.startswith(b"ERROR\n"), data[:200]
    head, _, rest = data.partition(b"\n\n")
    headers = {}
    for line in head.decode().split("\n")[1:]:
        k, v = line.split(":", 1)
        # STOMP 1.1/1.2 escaping (the connections here are 1.2).
        v = v.replace("\\c", ":").replace("\\n", "\n").replace("\\r", "\r").replace("\\\\", "\\")
        headers.setdefault(k, v)
    assert headers.get("message"), headers
    return headers, rest.rstrip(b"\0")


def send_all(s, data):
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may close before the last bytes are in


BAD_FRAMES = {
    "malformed_header": (b"SEND\ndestination:/queue/a\nno colon here\n\nx\0", "without ':'"),
    "unknown_command": (b"FLY\ndestination:/queue/a\n\n\0", "unknown STOMP command"),
    "send_without_destination": (b"SEND\n\nbody\0", "Missing destination"),
    "invalid_escape_1_2": (b"SEND\ndestination:/queue/a\nk:a\\tb\n\n\0", "invalid escape"),
    "bad_content_length": (b"SEND\ndestination:/queue/a\ncontent-length:ten\n\n\0",
                           "invalid content-length"),
    "server_frame": (b"MESSAGE\ndestination:/queue/a\n\n\0", "Illegal command"),
}


@pytest.fixture
def bystander(broker):
    """An open stomp.py connection that must keep working through someone else's bad input."""
    c = Client(broker, "1.2")
    q = name("bystander")
    c.subscribe(f"/queue/{q}", "1")
    yield c
    c.send(f"/queue/{q}", "still fine")
    assert c.message().body == "still fine"
    c.close()


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
def test_bad_frame_gets_error_then_close(broker, bystander, case):
    frame, want = BAD_FRAMES[case]
    s = raw_connect(broker)
    send_all(s, frame)
    headers, _ = expect_error_and_close(s)
    assert want in headers["message"], headers


def test_frames_before_connect(broker, bystander):
    s = socket.create_connection((broker.host, broker.stomp_port), timeout=WAIT)
    s.sendall(b"SEND\ndestination:/queue/a\n\nearly\0")
    headers, body = expect_error_and_close(s)
    assert headers["message"] == "Illegal command"
    assert b"CONNECT" in body


def test_missing_nul_within_the_limit_then_oversized(broker, bystander):
    s = raw_connect(broker)
    s.sendall(b"SEND\ndestination:/queue/a\n\n" + b"x" * (1 << 20))
    # Within the 4 MiB frame limit the server waits for the rest.
    r, _, _ = select.select([s], [], [], 0.5)
    assert not r, "the server answered a frame that is not complete yet"
    send_all(s, b"x" * (4 << 20))
    headers, _ = expect_error_and_close(s, timeout=10)
    assert "frame larger than 4194304 bytes" in headers["message"]


def test_declared_oversized_body_is_refused_at_once(broker, bystander):
    s = raw_connect(broker)
    send_all(s, b"SEND\ndestination:/queue/a\ncontent-length:999999999\n\n")
    headers, _ = expect_error_and_close(s)
    assert "frame larger than" in headers["message"]


def test_invalid_escape_is_fine_in_1_0(broker, bystander):
    """1.0 has no escaping: the same header is taken literally."""
    s = raw_connect(broker, "1.0")
    q = name("esc")
    s.sendall(f"SUBSCRIBE\ndestination:/queue/{q}\nid:1\nreceipt:r\n\n\0".encode())
    assert b"receipt-id:r" in read_frame(s)
    s.sendall(f"SEND\ndestination:/queue/{q}\nk:a\\tb\n\nx\0".encode())
    msg = read_frame(s)
    assert msg.startswith(b"MESSAGE") and b"k:a\\tb" in msg
    s.close()


# -- memory alarm ----------------------------------------------------------------------------


@pytest.fixture
def low_memory_broker(tmp_path, monkeypatch):
    monkeypatch.setenv("WHARF_MEMORY_HIGH_WATERMARK_BYTES", "200000")
    b = WharfProcess(tmp_path / "data").start()
    try:
        yield b
    finally:
        b.stop_quietly()


def test_memory_alarm_blocks_stomp_publishers(low_memory_broker):
    b = low_memory_broker
    q = name("mem")
    pub = Client(b, "1.2")
    body = "x" * 1024
    for _ in range(300):
        pub.c.send(f"/queue/{q}", body)
    # Over the high-water mark: the publisher is not read from, so this receipt waits.
    pub.c.send(f"/queue/{q}", "blocked", headers={"receipt": "late"})
    with pytest.raises(queue.Empty):
        pub.l.receipts.get(timeout=1.5)
    assert "memory alarm: STOMP publisher blocked" in b.log_text()
    # A connection that does not publish still works and drains the queue.
    drain = Client(b, "1.2")
    drain.subscribe(f"/queue/{q}", "1")
    got = 0
    while True:
        m = drain.l.messages.get(timeout=20)
        got += 1
        if m.body == "blocked":
            break
    assert got == 301
    # The alarm cleared: the publisher was read again and gets its receipt.
    assert pub.l.receipts.get(timeout=WAIT) == "late"
    assert "memory alarm: STOMP publisher unblocked" in b.log_text()
    pub.close()
    drain.close()
