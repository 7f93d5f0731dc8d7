"""MQTT 3.1.1 and 5.0 with paho-mqtt against a real wharf, and across to AMQP with pika."""

import queue
import socket
import struct
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pika
import pytest
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.subscribeoptions import SubscribeOptions

from conftest import EXTERNAL_URL, WharfProcess

pytestmark = pytest.mark.skipif(bool(EXTERNAL_URL), reason="MQTT tests need a wharf of their own")

V3, V5 = mqtt.MQTTv311, mqtt.MQTTv5
WAIT = 5.0


def cid(prefix="c"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Mq:
    """A paho client with its events in queues; no automatic reconnect."""

    def __init__(self, broker, client_id=None, proto=V3, clean=True, user="guest",
                 password="guest", will=None, keepalive=30, connect_props=None):
        self.broker, self.proto, self.clean = broker, proto, clean
        self.keepalive, self.connect_props = keepalive, connect_props
        self.client_id = cid() if client_id is None else client_id
        kwargs = dict(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                      client_id=self.client_id, protocol=proto, reconnect_on_failure=False)
        if proto != V5:
            kwargs["clean_session"] = clean
        self.c = mqtt.Client(**kwargs)
        if user is not None:
            self.c.username_pw_set(user, password)
        if will:
            self.c.will_set(**will)
        self.msgs = queue.Queue()
        self.connacks = queue.Queue()
        self.disconnects = queue.Queue()
        self.subacks = {}
        self.c.on_connect = lambda c, u, flags, rc, props: self.connacks.put((flags, rc, props))
        self.c.on_message = lambda c, u, m: self.msgs.put(m)
        self.c.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(rc)
        self.c.on_subscribe = lambda c, u, mid, rcs, props: self.subacks.__setitem__(mid, rcs)

    def connect(self, expect_ok=True):
        if self.proto == V5:
            self.c.connect(self.broker.host, self.broker.mqtt_port, self.keepalive,
                           clean_start=self.clean, properties=self.connect_props)
        else:
            self.c.connect(self.broker.host, self.broker.mqtt_port, self.keepalive)
        self.c.loop_start()
        flags, rc, props = self.connacks.get(timeout=WAIT)
        if expect_ok:
            assert not rc.is_failure, rc
        return flags, rc, props

    def subscribe(self, topic, qos=0, **kw):
        res, mid = self.c.subscribe(topic, qos, **kw)
        assert res == mqtt.MQTT_ERR_SUCCESS
        deadline = time.monotonic() + WAIT
        while mid not in self.subacks:
            assert time.monotonic() < deadline, "no SUBACK"
            time.sleep(0.01)
        return self.subacks[mid]

    def publish(self, topic, payload, qos=0, retain=False, properties=None):
        info = self.c.publish(topic, payload, qos, retain, properties)
        if qos:
            info.wait_for_publish(WAIT)
            assert info.is_published()
        return info

    def get(self, timeout=WAIT):
        return self.msgs.get(timeout=timeout)

    def nothing(self, timeout=0.5):
        with pytest.raises(queue.Empty):
            self.msgs.get(timeout=timeout)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()

    def abort(self):
        """Drop the TCP connection without DISCONNECT."""
        self.c.loop_stop()
        self.c.socket().close()


@pytest.fixture
def clients(broker):
    if broker.mqtt_port is None:
        pytest.skip("no MQTT listener")
    made = []

    def make(**kw):
        m = Mq(broker, **kw)
        made.append(m)
        return m

    yield make
    for m in made:
        try:
            m.close()
        except Exception:
            pass


def raw(broker):
    s = socket.create_connection((broker.host, broker.mqtt_port), timeout=WAIT)
    return s


def mqtt_str(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def raw_connect_v5(client_id):
    var = mqtt_str("MQTT") + bytes([5, 0xC2]) + struct.pack(">H", 60) + b"\x00"
    payload = mqtt_str(client_id) + mqtt_str("guest") + mqtt_str("guest")
    body = var + payload
    return bytes([0x10, len(body)]) + body


def read_all(s, timeout=WAIT):
    s.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return data, True
            data += chunk
    except socket.timeout:
        return data, False


# -- connect ---------------------------------------------------------------------------------

@pytest.mark.parametrize("proto", [V3, V5])
def test_connect_and_ping(clients, proto):
    m = clients(proto=proto)
    flags, rc, _ = m.connect()
    assert not flags.session_present


@pytest.mark.parametrize("proto", [V3, V5])
def test_bad_password_refused(clients, proto):
    m = clients(proto=proto, password="wrong")
    _, rc, props = m.connect(expect_ok=False)
    assert rc.is_failure
    assert rc.value in (4, 0x86), rc
    if proto == V5:
        assert "wrong password" in props.ReasonString


@pytest.mark.parametrize("proto", [V3, V5])
def test_no_credentials_refused(clients, proto):
    m = clients(proto=proto, user=None)
    _, rc, _ = m.connect(expect_ok=False)
    assert rc.value in (4, 0x86), rc


def test_v5_empty_client_id_gets_assigned_one(clients):
    m = clients(proto=V5, client_id="")
    _, rc, props = m.connect()
    assert props.AssignedClientIdentifier.startswith("wharf-")


def test_v311_empty_client_id_without_clean_session_rejected(broker, clients):
    # paho refuses to send this, so it is written by hand: clean session 0, empty client id.
    var = mqtt_str("MQTT") + bytes([4, 0xC0]) + struct.pack(">H", 60)
    body = var + mqtt_str("") + mqtt_str("guest") + mqtt_str("guest")
    s = raw(broker)
    s.sendall(bytes([0x10, len(body)]) + body)
    data, closed = read_all(s)
    assert data == b"\x20\x02\x00\x02"  # identifier rejected
    assert closed


def test_takeover_v5_gets_0x8e(clients):
    ident = cid("same")
    a = clients(proto=V5, client_id=ident)
    a.connect()
    b = clients(proto=V5, client_id=ident)
    b.connect()
    rc = a.disconnects.get(timeout=WAIT)
    assert rc.value == 0x8E, rc
    b.subscribe("take/over", 1)
    b.publish("take/over", b"still fine", 1)
    assert b.get().payload == b"still fine"


# -- publish / subscribe ---------------------------------------------------------------------

@pytest.mark.parametrize("proto", [V3, V5])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_pub_sub_qos(clients, proto, qos):
    topic = f"ps/{uuid.uuid4().hex[:6]}/x"
    sub = clients(proto=proto)
    sub.connect()
    granted = sub.subscribe(topic.rsplit("/", 1)[0] + "/+", qos)
    assert [g.value if hasattr(g, "value") else g for g in granted] == [qos]
    pub = clients(proto=proto)
    pub.connect()
    for i in range(5):
        pub.publish(topic, f"m{i}".encode(), qos)
    got = [sub.get() for _ in range(5)]
    assert [m.payload for m in got] == [f"m{i}".encode() for i in range(5)]
    assert all(m.qos == qos and m.topic == topic for m in got)
    sub.nothing(0.3)


def test_delivered_qos_is_the_minimum(clients):
    sub = clients(proto=V3)
    sub.connect()
    sub.subscribe("minq/#", 1)
    pub = clients(proto=V3)
    pub.connect()
    pub.publish("minq/a", b"two", 2)
    pub.publish("minq/b", b"zero", 0)
    got = {m.payload: m.qos for m in (sub.get(), sub.get())}
    assert got == {b"two": 1, b"zero": 0}


def test_dollar_topics_not_matched_by_leading_wildcard(clients):
    sub = clients(proto=V5)
    sub.connect()
    sub.subscribe("#", 0)
    sub2 = clients(proto=V5)
    sub2.connect()
    sub2.subscribe("$internal/#", 0)
    pub = clients(proto=V5)
    pub.connect()
    pub.publish("$internal/x", b"dollar", 1)
    assert sub2.get().payload == b"dollar"
    while True:
        try:
            m = sub.get(timeout=0.5)
        except queue.Empty:
            break
        assert not m.topic.startswith("$"), m.topic


def test_v5_properties_round_trip(clients):
    sub = clients(proto=V5)
    sub.connect()
    sub.subscribe("props/t", 1)
    pub = clients(proto=V5)
    pub.connect()
    p = Properties(PacketTypes.PUBLISH)
    p.ContentType = "text/plain"
    p.CorrelationData = b"corr-1"
    p.ResponseTopic = "reply/here"
    p.UserProperty = [("k1", "v1"), ("k2", "v2")]
    pub.publish("props/t", b"x", 1, properties=p)
    m = sub.get()
    assert m.properties.ContentType == "text/plain"
    assert m.properties.CorrelationData == b"corr-1"
    assert m.properties.ResponseTopic == "reply/here"
    assert sorted(m.properties.UserProperty) == [("k1", "v1"), ("k2", "v2")]


# -- shared subscriptions --------------------------------------------------------------------

def drain(m, timeout=0.7):
    out = []
    while True:
        try:
            out.append(m.get(timeout=timeout))
        except queue.Empty:
            return out


def shared_queue_name(group, filt):
    h = 0xCBF29CE484222325
    for byte in filt.encode():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"mqtt-shared-{group}-{h:016x}"


@pytest.mark.parametrize("proto", [V3, V5])
def test_shared_subscription_splits_between_members(clients, proto):
    group = f"g{uuid.uuid4().hex[:6]}"
    base = f"sh/{uuid.uuid4().hex[:6]}"
    a, b = clients(proto=proto), clients(proto=proto)
    for m in (a, b):
        m.connect()
        granted = m.subscribe(f"$share/{group}/{base}/+", 1)
        assert [g.value if hasattr(g, "value") else g for g in granted] == [1]
    everyone = clients(proto=proto)
    everyone.connect()
    everyone.subscribe(f"{base}/+", 1)
    pub = clients(proto=V3)
    pub.connect()
    n = 20
    for i in range(n):
        pub.publish(f"{base}/x", f"m{i}".encode(), 1)
    all_msgs = [everyone.get().payload for _ in range(n)]
    assert sorted(all_msgs) == sorted(f"m{i}".encode() for i in range(n))
    got_a = [m.payload for m in drain(a)]
    got_b = [m.payload for m in drain(b)]
    assert got_a and got_b, (got_a, got_b)
    assert not set(got_a) & set(got_b)
    assert sorted(got_a + got_b) == sorted(all_msgs)
    # A member that leaves: the other one gets everything.
    a.c.unsubscribe(f"$share/{group}/{base}/+")
    time.sleep(0.3)
    for i in range(4):
        pub.publish(f"{base}/x", f"n{i}".encode(), 1)
    assert sorted(m.payload for m in drain(b)) == [f"n{i}".encode() for i in range(4)]
    a.nothing(0.2)


def test_shared_subscription_qos_per_member_and_queue_deleted(broker, clients, ch):
    group = f"g{uuid.uuid4().hex[:6]}"
    topic = f"shq/{uuid.uuid4().hex[:6]}"
    a, b = clients(proto=V5), clients(proto=V3)
    a.connect()
    b.connect()
    a.subscribe(f"$share/{group}/{topic}", 0)
    b.subscribe(f"$share/{group}/{topic}", 2)
    pub = clients(proto=V3)
    pub.connect()
    for i in range(6):
        pub.publish(topic, f"m{i}".encode(), 2)
    got_a, got_b = drain(a), drain(b)
    got = got_a + got_b
    assert sorted(m.payload for m in got) == [f"m{i}".encode() for i in range(6)]
    # Each member gets min(its granted QoS, 2); while both are members the queue exists.
    assert got_a and got_b
    assert {m.qos for m in got_a} == {0} and {m.qos for m in got_b} == {2}
    ch.queue_declare(shared_queue_name(group, topic), passive=True)
    a.close()
    b.close()
    time.sleep(0.3)
    # The group's queue went with its last member: nothing is routed any more.
    qname = shared_queue_name(group, topic)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        ch.queue_declare(qname, passive=True)
    for i in range(3):
        pub.publish(topic, b"late", 1)
    c = clients(proto=V3)
    c.connect()
    c.subscribe(f"$share/{group}/{topic}", 1)
    c.nothing(0.5)


def test_shared_subscription_kept_by_persistent_session(clients):
    group = f"g{uuid.uuid4().hex[:6]}"
    topic = f"shp/{uuid.uuid4().hex[:6]}"
    ident = cid("shp")
    a = clients(proto=V3, client_id=ident, clean=False)
    a.connect()
    a.subscribe(f"$share/{group}/{topic}", 1)
    a.close()
    time.sleep(0.2)
    b = clients(proto=V3, client_id=ident, clean=False)
    flags, _, _ = b.connect()
    assert flags.session_present
    pub = clients(proto=V3)
    pub.connect()
    pub.publish(topic, b"again", 1)
    assert b.get().payload == b"again"
    b.close()
    # A clean session forgets it.
    c = clients(proto=V3, client_id=ident, clean=True)
    flags, _, _ = c.connect()
    assert not flags.session_present
    pub.publish(topic, b"gone", 1)
    c.nothing(0.5)


# -- MQTT 5 subscription options and reason strings ----------------------------------------

def test_v5_no_local(clients):
    topic = f"nl/{uuid.uuid4().hex[:6]}"
    me = clients(proto=V5)
    me.connect()
    me.subscribe(topic, options=SubscribeOptions(qos=1, noLocal=True))
    other = clients(proto=V5)
    other.connect()
    other.subscribe(topic, 1)
    me.publish(topic, b"mine", 1)
    assert other.get().payload == b"mine"
    me.nothing(0.5)
    other.publish(topic, b"theirs", 1)
    assert me.get().payload == b"theirs"
    # Without No Local a client gets its own messages.
    other.publish(topic, b"own", 1)
    got = [other.get().payload, me.get().payload]
    assert got == [b"theirs", b"own"] or sorted(got) == [b"own", b"theirs"]


def test_v5_retain_as_published(clients):
    topic = f"rap/{uuid.uuid4().hex[:6]}"
    keep = clients(proto=V5)
    keep.connect()
    keep.subscribe(topic, options=SubscribeOptions(qos=1, retainAsPublished=True))
    plain = clients(proto=V5)
    plain.connect()
    plain.subscribe(topic, 1)
    v3 = clients(proto=V3)
    v3.connect()
    v3.subscribe(topic, 1)
    pub = clients(proto=V5)
    pub.connect()
    pub.publish(topic, b"r", 1, retain=True)
    pub.publish(topic, b"n", 1, retain=False)
    assert [(m.payload, m.retain) for m in (keep.get(), keep.get())] == [(b"r", True), (b"n", False)]
    for m in (plain, v3):
        assert [(x.payload, x.retain) for x in (m.get(), m.get())] == [(b"r", False), (b"n", False)]
    pub.publish(topic, b"", 1, retain=True)


def test_v5_reason_strings_on_acknowledgements(clients):
    pub = clients(proto=V5)
    acks = queue.Queue()
    pub.c.on_publish = lambda c, u, mid, rc, props: acks.put((mid, rc, props))
    unsubacks = queue.Queue()
    pub.c.on_unsubscribe = lambda c, u, mid, rcs, props: unsubacks.put((rcs, props))
    pub.connect()
    info = pub.publish(f"nobody/{uuid.uuid4().hex[:6]}", b"x", 1)
    mid, rc, props = acks.get(timeout=WAIT)
    assert mid == info.mid
    assert rc.value == 0x10
    assert "no subscription" in props.ReasonString
    pub.c.unsubscribe("never/subscribed")
    rcs, props = unsubacks.get(timeout=WAIT)
    assert [r.value for r in rcs] == [0x11]
    assert props.ReasonString
    # Request Problem Information 0: no Reason String.
    p = Properties(PacketTypes.CONNECT)
    p.RequestProblemInformation = 0
    quiet = clients(proto=V5, connect_props=p)
    acks2 = queue.Queue()
    quiet.c.on_publish = lambda c, u, mid, rc, props: acks2.put((rc, props))
    quiet.connect()
    quiet.publish(f"nobody/{uuid.uuid4().hex[:6]}", b"x", 1)
    rc, props = acks2.get(timeout=WAIT)
    assert rc.value == 0x10
    assert not hasattr(props, "ReasonString")


# -- retained, will, sessions -----------------------------------------------------------------

def test_retained_delivered_on_subscribe_and_cleared(clients):
    topic = f"ret/{uuid.uuid4().hex[:6]}"
    pub = clients(proto=V3)
    pub.connect()
    pub.publish(topic, b"kept", 1, retain=True)
    sub = clients(proto=V5)
    sub.connect()
    sub.subscribe(topic, 1)
    m = sub.get()
    assert (m.payload, m.retain) == (b"kept", True)
    pub.publish(topic, b"", 1, retain=True)
    sub2 = clients(proto=V3)
    sub2.connect()
    sub2.subscribe(topic, 1)
    sub2.nothing(0.5)


def test_will_published_on_abrupt_close(clients):
    topic = f"will/{uuid.uuid4().hex[:6]}"
    sub = clients(proto=V3)
    sub.connect()
    sub.subscribe(topic, 1)
    dying = clients(proto=V3, will=dict(topic=topic, payload=b"gone", qos=1))
    dying.connect()
    dying.abort()
    m = sub.get()
    assert m.payload == b"gone"


def test_no_will_on_normal_disconnect(clients):
    topic = f"will/{uuid.uuid4().hex[:6]}"
    sub = clients(proto=V3)
    sub.connect()
    sub.subscribe(topic, 1)
    polite = clients(proto=V3, will=dict(topic=topic, payload=b"gone", qos=1))
    polite.connect()
    polite.close()
    sub.nothing(0.5)


def test_will_on_keepalive_timeout(broker, clients):
    topic = f"kawill/{uuid.uuid4().hex[:6]}"
    sub = clients(proto=V3)
    sub.connect()
    sub.subscribe(topic, 0)
    # A raw 3.1.1 CONNECT with keep-alive 1 s and a will, then silence.
    flags = 0x02 | 0x04 | 0x80 | 0x40
    var = mqtt_str("MQTT") + bytes([4, flags]) + struct.pack(">H", 1)
    payload = mqtt_str(cid("ka")) + mqtt_str(topic) + mqtt_str("timeout") + mqtt_str("guest") + mqtt_str("guest")
    body = var + payload
    s = raw(broker)
    s.sendall(bytes([0x10, len(body)]) + body)
    start = time.monotonic()
    data, closed = read_all(s, timeout=5)
    assert data[:4] == b"\x20\x02\x00\x00"
    assert closed
    assert 1.2 < time.monotonic() - start < 4
    assert sub.get().payload == b"timeout"


def test_persistent_session_gets_queued_messages(clients):
    ident = cid("persist")
    topic = f"persist/{uuid.uuid4().hex[:6]}"
    a = clients(proto=V3, client_id=ident, clean=False)
    a.connect()
    a.subscribe(topic, 1)
    a.close()
    pub = clients(proto=V3)
    pub.connect()
    for i in range(3):
        pub.publish(topic, f"q{i}".encode(), 1)
    b = clients(proto=V3, client_id=ident, clean=False)
    flags, _, _ = b.connect()
    assert flags.session_present
    assert sorted(b.get().payload for _ in range(3)) == [b"q0", b"q1", b"q2"]
    b.close()
    # A clean session discards it.
    c = clients(proto=V3, client_id=ident, clean=True)
    flags, _, _ = c.connect()
    assert not flags.session_present


def test_v5_message_expiry_honoured_while_queued(clients):
    ident = cid("expiry")
    topic = f"exp/{uuid.uuid4().hex[:6]}"
    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = 300
    a = clients(proto=V5, client_id=ident, clean=True, connect_props=p)
    a.connect()
    a.subscribe(topic, 1)
    a.close()
    pub = clients(proto=V5)
    pub.connect()
    short = Properties(PacketTypes.PUBLISH)
    short.MessageExpiryInterval = 1
    pub.publish(topic, b"short", 1, properties=short)
    long = Properties(PacketTypes.PUBLISH)
    long.MessageExpiryInterval = 20
    pub.publish(topic, b"long", 1, properties=long)
    pub.publish(topic, b"forever", 1)
    time.sleep(2.5)
    p2 = Properties(PacketTypes.CONNECT)
    p2.SessionExpiryInterval = 300
    b = clients(proto=V5, client_id=ident, clean=False, connect_props=p2)
    flags, _, _ = b.connect()
    assert flags.session_present
    got = [b.get(), b.get()]
    assert [m.payload for m in got] == [b"long", b"forever"]
    # The interval sent is what is left: 20 s minus the ~2.5 s spent queued.
    assert 15 <= got[0].properties.MessageExpiryInterval <= 18
    assert not hasattr(got[1].properties, "MessageExpiryInterval")
    b.nothing(0.3)
    # Also for a retained message.
    rt = f"expr/{uuid.uuid4().hex[:6]}"
    pub.publish(rt, b"ret", 1, retain=True, properties=short)
    time.sleep(1.5)
    c = clients(proto=V5)
    c.connect()
    c.subscribe(rt, 1)
    c.nothing(0.5)


@pytest.mark.restart
@pytest.mark.parametrize("kill", [False, True])
def test_persistent_session_and_retained_survive_restart(own_broker, kill):
    b = own_broker
    ident = cid("durable")
    a = Mq(b, client_id=ident, clean=False)
    a.connect()
    a.subscribe("dur/t", 1)
    a.close()
    pub = Mq(b)
    pub.connect()
    pub.publish("dur/t", b"offline", 1)
    pub.publish("dur/r", b"retained", 1, retain=True)
    pub.close()
    b.restart(kill=kill)
    again = Mq(b, client_id=ident, clean=False)
    flags, _, _ = again.connect()
    assert flags.session_present
    assert again.get().payload == b"offline"
    again.subscribe("dur/r", 1)
    m = again.get()
    assert (m.payload, m.retain) == (b"retained", True)
    again.close()


# -- across protocols -------------------------------------------------------------------------

def test_mqtt_publish_reaches_amqp_consumer(broker, clients, ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "amq.topic", "xp.b")
    q2 = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q2, "amq.topic", "xp.*")
    pub = clients(proto=V5)
    pub.connect()
    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = [("origin", "mqtt")]
    pub.publish("xp/b", b"to amqp", 1, properties=p)
    for name in (q, q2):
        deadline = time.monotonic() + WAIT
        while True:
            method, props, body = ch.basic_get(name, auto_ack=True)
            if method or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert body == b"to amqp"
        assert method.routing_key == "xp.b"
        assert props.delivery_mode == 2
        assert props.headers["origin"] in ("mqtt", b"mqtt")


def test_amqp_publish_reaches_mqtt_subscriber(clients, ch):
    sub = clients(proto=V3)
    sub.connect()
    sub.subscribe("ax/+", 1)
    ch.basic_publish("amq.topic", "ax.b", b"from amqp",
                     pika.BasicProperties(delivery_mode=2))
    ch.basic_publish("amq.topic", "ax.c", b"transient")
    got = {m.payload: (m.topic, m.qos) for m in (sub.get(), sub.get())}
    assert got == {b"from amqp": ("ax/b", 1), b"transient": ("ax/c", 0)}


# -- bad input ----------------------------------------------------------------------------------

def test_first_packet_not_connect_is_closed(broker, clients):
    s = raw(broker)
    s.sendall(b"\xc0\x00")  # PINGREQ
    data, closed = read_all(s)
    assert (data, closed) == (b"", True)


def test_malformed_packet_is_closed(broker, clients):
    s = raw(broker)
    s.sendall(b"\x10\xff\xff\xff\xff\x01")  # remaining length over four bytes
    data, closed = read_all(s)
    assert closed


def test_wildcard_publish_topic_v5_disconnect_0x82_others_unaffected(broker, clients):
    other = clients(proto=V5)
    other.connect()
    other.subscribe("ok/t", 0)
    s = raw(broker)
    s.sendall(raw_connect_v5(cid("bad")))
    s.settimeout(WAIT)
    connack = s.recv(2)
    assert connack[0] == 0x20
    s.recv(connack[1])
    s.sendall(bytes([0x30, 0x06]) + mqtt_str("a/#") + b"\x00")
    data, closed = read_all(s)
    assert closed
    assert data[0] == 0xE0 and data[2] == 0x82, data
    other.publish("ok/t", b"alive", 1)
    assert other.get().payload == b"alive"


def test_wildcard_publish_topic_v311_closes(broker, clients):
    m = clients(proto=V3)
    m.connect()
    s = raw(broker)
    var = mqtt_str("MQTT") + bytes([4, 0xC2]) + struct.pack(">H", 60)
    body = var + mqtt_str(cid("bad3")) + mqtt_str("guest") + mqtt_str("guest")
    s.sendall(bytes([0x10, len(body)]) + body)
    s.settimeout(WAIT)
    assert s.recv(4) == b"\x20\x02\x00\x00"
    s.sendall(bytes([0x30, 0x05]) + mqtt_str("a/+"))
    data, closed = read_all(s)
    assert (data, closed) == (b"", True)


# -- $SYS statistics ------------------------------------------------------------------------------

@pytest.fixture
def sys_broker(tmp_path, monkeypatch):
    monkeypatch.setenv("WHARF_MQTT__SYS_INTERVAL_SECS", "1")
    b = WharfProcess(tmp_path / "data").start()
    try:
        yield b
    finally:
        b.stop_quietly()


SYS_TOPICS = [
    "$SYS/broker/version",
    "$SYS/broker/uptime",
    "$SYS/broker/clients/connected",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/subscriptions/count",
    "$SYS/broker/retained messages/count",
]


def test_sys_topics_published_retained(sys_broker):
    b = sys_broker
    wild = Mq(b, proto=V5)
    wild.connect()
    wild.subscribe("#", 0)
    sub = Mq(b, proto=V3)
    sub.connect()
    time.sleep(1.2)
    sub.subscribe("$SYS/#", 0)
    got = {}
    deadline = time.monotonic() + WAIT
    while not set(SYS_TOPICS) <= set(got) and time.monotonic() < deadline:
        m = sub.get()
        got[m.topic] = m
    assert set(SYS_TOPICS) <= set(got), sorted(got)
    assert all(got[t].retain for t in SYS_TOPICS)
    assert got["$SYS/broker/version"].payload.startswith(b"wharf version ")
    assert got["$SYS/broker/uptime"].payload.endswith(b" seconds")
    assert int(got["$SYS/broker/clients/connected"].payload) >= 2
    assert int(got["$SYS/broker/messages/received"].payload) >= 3
    assert int(got["$SYS/broker/subscriptions/count"].payload) >= 1
    # Published periodically: the uptime moves on, to subscribers that are there already.
    first = int(got["$SYS/broker/uptime"].payload.split()[0])
    deadline = time.monotonic() + WAIT
    while True:
        m = sub.get()
        if m.topic == "$SYS/broker/uptime" and int(m.payload.split()[0]) > first:
            assert not m.retain
            break
        assert time.monotonic() < deadline
    # `#` does not match `$SYS/...`.
    for m in drain(wild, 0.2):
        assert not m.topic.startswith("$"), m.topic
    sub.close()
    wild.close()


@pytest.fixture
def no_sys_broker(tmp_path, monkeypatch):
    monkeypatch.setenv("WHARF_MQTT__SYS_INTERVAL_SECS", "0")
    b = WharfProcess(tmp_path / "data").start()
    try:
        yield b
    finally:
        b.stop_quietly()


def test_sys_topics_off(no_sys_broker):
    sub = Mq(no_sys_broker, proto=V3)
    sub.connect()
    sub.subscribe("$SYS/#", 0)
    sub.nothing(1.5)
    sub.close()


# -- memory alarm ---------------------------------------------------------------------------------

@pytest.fixture
def low_memory_broker(tmp_path, monkeypatch):
    monkeypatch.setenv("WHARF_MEMORY_HIGH_WATERMARK_BYTES", "200000")
    b = WharfProcess(tmp_path / "data").start()
    try:
        yield b
    finally:
        b.stop_quietly()


def test_memory_alarm_blocks_mqtt_publishers(low_memory_broker):
    b = low_memory_broker
    ident = cid("slow")
    topic = f"mem/{uuid.uuid4().hex[:6]}"
    slow = Mq(b, client_id=ident, clean=False)
    slow.connect()
    slow.subscribe(topic, 1)
    slow.close()
    pub = Mq(b, proto=V3)
    pub.connect()
    body = b"x" * 1024
    for _ in range(300):
        pub.publish(topic, body, 0)
    # Over the high-water mark: the publisher is not read from, so its QoS 1 publish waits.
    info = pub.c.publish(topic, b"blocked", 1)
    time.sleep(1.5)
    assert not info.is_published()
    assert "memory alarm: MQTT publisher blocked" in b.log_text()
    # A client that does not publish still works.
    drain_client = Mq(b, client_id=ident, clean=False)
    drain_client.connect()
    got = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            m = drain_client.get(timeout=2)
        except queue.Empty:
            break
        got += 1
        if m.payload == b"blocked":
            break
    # Draining the queue clears the alarm: the publisher is read again.
    info.wait_for_publish(WAIT)
    assert info.is_published()
    assert got >= 300
    assert "memory alarm: MQTT publisher unblocked" in b.log_text()
    pub.close()
    drain_client.close()


# -- raw MQTT 5 / 3.1.1 packets (to see packet ids, DUP and topic aliases on the wire) -----------

def varint(n):
    out = b""
    while True:
        b, n = n % 128, n // 128
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def props_bytes(props):
    return varint(len(props)) + props


class Raw:
    """A hand-written MQTT client: packets as (type, flags, body) so tests see every bit."""

    def __init__(self, broker, client_id, version=5, clean=True, connect_props=b""):
        self.version = version
        self.s = socket.create_connection((broker.host, broker.mqtt_port), timeout=WAIT)
        self.buf = b""
        flags = 0xC0 | (0x02 if clean else 0)
        var = mqtt_str("MQTT") + bytes([version, flags]) + struct.pack(">H", 60)
        if version == 5:
            var += props_bytes(connect_props)
        self.s.sendall(packet(0x10, var + mqtt_str(client_id) + mqtt_str("guest") + mqtt_str("guest")))
        kind, _, body = self.recv()
        assert kind == 2, kind
        self.session_present = bool(body[0] & 1)
        assert body[1] == 0, f"CONNACK code {body[1]}"

    def recv(self, timeout=WAIT):
        """The next packet as (type, flags, body); None when closed or nothing came in time."""
        self.s.settimeout(timeout)
        while True:
            if len(self.buf) >= 2:
                n, mult, i = 0, 1, 1
                while i < len(self.buf) and i <= 4:
                    n += (self.buf[i] & 0x7F) * mult
                    mult *= 128
                    if not self.buf[i] & 0x80:
                        break
                    i += 1
                else:
                    i = None
                if i is not None and len(self.buf) >= i + 1 + n:
                    first, body = self.buf[0], self.buf[i + 1:i + 1 + n]
                    self.buf = self.buf[i + 1 + n:]
                    return first >> 4, first & 0x0F, body
            try:
                chunk = self.s.recv(65536)
            except socket.timeout:
                return None
            if not chunk:
                return None
            self.buf += chunk

    def subscribe(self, filt, qos, pid=1):
        body = struct.pack(">H", pid) + (b"\x00" if self.version == 5 else b"") + mqtt_str(filt) + bytes([qos])
        self.s.sendall(packet(0x82, body))
        kind, _, _ = self.recv()
        assert kind == 9, kind

    def publish_packet(self, topic, payload, qos, pid=0, dup=False, props=b""):
        body = mqtt_str(topic) + (struct.pack(">H", pid) if qos else b"")
        if self.version == 5:
            body += props_bytes(props)
        self.s.sendall(packet(0x30 | (0x08 if dup else 0) | (qos << 1), body + payload))

    def ack(self, kind, pid):
        """PUBACK (4), PUBREC (5), PUBREL (6, flags 2), PUBCOMP (7)."""
        self.s.sendall(packet((kind << 4) | (2 if kind == 6 else 0), struct.pack(">H", pid)))

    def publishes(self, n, timeout=WAIT):
        """The next n PUBLISH packets (other packets are skipped), parsed."""
        out = []
        while len(out) < n:
            p = self.recv(timeout)
            assert p is not None, f"only {len(out)} PUBLISH packets: {out}"
            if p[0] == 3:
                out.append(parse_publish(p[1], p[2], self.version))
        return out

    def close(self):
        try:
            self.s.sendall(b"\xe0\x00")
        except OSError:
            pass
        self.s.close()

    def drop(self):
        """Close the TCP connection without DISCONNECT."""
        self.s.close()


def parse_props(b):
    """MQTT 5 properties we look at: {id: value}, user properties as a list under 0x26."""
    out, i = {"user": []}, 0
    while i < len(b):
        pid = b[i]
        i += 1
        if pid in (0x01,):
            out[pid], i = b[i], i + 1
        elif pid in (0x23,):
            out[pid], i = struct.unpack(">H", b[i:i + 2])[0], i + 2
        elif pid in (0x02,):
            out[pid], i = struct.unpack(">I", b[i:i + 4])[0], i + 4
        elif pid == 0x0B:
            n, mult = 0, 1
            while True:
                n += (b[i] & 0x7F) * mult
                mult *= 128
                i += 1
                if not b[i - 1] & 0x80:
                    break
            out[pid] = n
        elif pid in (0x03, 0x08, 0x09):
            ln = struct.unpack(">H", b[i:i + 2])[0]
            out[pid], i = b[i + 2:i + 2 + ln], i + 2 + ln
        elif pid == 0x26:
            kl = struct.unpack(">H", b[i:i + 2])[0]
            k = b[i + 2:i + 2 + kl].decode()
            i += 2 + kl
            vl = struct.unpack(">H", b[i:i + 2])[0]
            v = b[i + 2:i + 2 + vl].decode()
            i += 2 + vl
            out["user"].append((k, v))
        else:
            raise AssertionError(f"property {pid:#x} not parsed by this test")
    return out


def parse_publish(flags, body, version):
    tl = struct.unpack(">H", body[:2])[0]
    topic, i = body[2:2 + tl].decode(), 2 + tl
    qos = (flags >> 1) & 3
    pid = None
    if qos:
        pid, i = struct.unpack(">H", body[i:i + 2])[0], i + 2
    props = {"user": []}
    if version == 5:
        n, mult = 0, 1
        while True:
            n += (body[i] & 0x7F) * mult
            mult *= 128
            i += 1
            if not body[i - 1] & 0x80:
                break
        props = parse_props(body[i:i + n])
        i += n
    return dict(topic=topic, qos=qos, pid=pid, dup=bool(flags & 8), retain=bool(flags & 1),
                alias=props.get(0x23), props=props, payload=body[i:])


def connect_props_v5(session_expiry=None, alias_max=None):
    p = b""
    if session_expiry is not None:
        p += b"\x11" + struct.pack(">I", session_expiry)
    if alias_max is not None:
        p += b"\x22" + struct.pack(">H", alias_max)
    return p


# -- topic aliases server -> client (MQTT 5) ------------------------------------------------------

def test_v5_outbound_topic_aliases_paho(clients):
    """paho does not resolve incoming aliases itself: the application does, as here."""
    p = Properties(PacketTypes.CONNECT)
    p.TopicAliasMaximum = 2
    sub = clients(proto=V5, connect_props=p)
    sub.connect()
    sub.subscribe("ta/#", 1)
    pub = clients(proto=V5)
    pub.connect()
    topics = ["ta/a", "ta/a", "ta/b", "ta/c", "ta/b", "ta/a", "ta/c"]
    for t in topics:
        pub.publish(t, t.encode(), 1)
    known, wire, resolved = {}, [], []
    for _ in topics:
        m = sub.get()
        alias = getattr(m.properties, "TopicAlias", None)
        wire.append((m.topic, alias))
        if alias is not None and m.topic:
            known[alias] = m.topic
        resolved.append(m.topic or known[alias])
        assert resolved[-1].encode() == m.payload
    assert resolved == topics
    assert wire == [("ta/a", 1), ("", 1), ("ta/b", 2), ("ta/c", None), ("", 2), ("", 1),
                    ("ta/c", None)]
    # A client that announces no maximum gets full topics only.
    plain = clients(proto=V5)
    plain.connect()
    plain.subscribe("ta/#", 0)
    pub.publish("ta/a", b"1", 1)
    pub.publish("ta/a", b"2", 1)
    for _ in range(2):
        m = plain.get()
        assert (m.topic, getattr(m.properties, "TopicAlias", None)) == ("ta/a", None)


def test_v5_outbound_topic_alias_on_the_wire_and_reset_per_connection(broker, clients):
    ident = cid("alias")
    r = Raw(broker, ident, connect_props=connect_props_v5(alias_max=5))
    r.subscribe("tw/#", 0)
    pub = clients(proto=V5)
    pub.connect()
    pub.publish("tw/x", b"first", 1)
    pub.publish("tw/x", b"second", 1)
    first, second = r.publishes(2)
    assert (first["topic"], first["alias"], first["payload"]) == ("tw/x", 1, b"first")
    assert (second["topic"], second["alias"], second["payload"]) == ("", 1, b"second")
    r.close()
    # A new connection: the alias is sent with the topic again.
    r2 = Raw(broker, ident, connect_props=connect_props_v5(alias_max=5))
    r2.subscribe("tw/#", 0)
    pub.publish("tw/x", b"third", 1)
    (third,) = r2.publishes(1)
    assert (third["topic"], third["alias"]) == ("tw/x", 1)
    r2.close()


# -- user properties: order and repeated names (MQTT-3.3.2-18) -----------------------------------

UPROPS = [("a", "1"), ("b", "2"), ("a", "3")]


def uprops_publish_props():
    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = list(UPROPS)
    return p


def test_v5_user_properties_keep_order_and_repeats(clients, ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "amq.topic", "up.t")
    sub = clients(proto=V5)
    sub.connect()
    sub.subscribe("up/t", 1)
    pub = clients(proto=V5)
    pub.connect()
    pub.publish("up/t", b"x", 1, properties=uprops_publish_props())
    assert sub.get().properties.UserProperty == UPROPS
    # AMQP consumers see headers (one value per name: the last one).
    deadline = time.monotonic() + WAIT
    while True:
        method, props, body = ch.basic_get(q, auto_ack=True)
        if method or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert body == b"x"
    h = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in props.headers.items()}
    assert (h["a"], h["b"]) == ("3", "2")


@pytest.mark.restart
@pytest.mark.parametrize("kill", [False, True])
def test_v5_user_properties_order_survives_restart(own_broker, kill):
    b = own_broker
    ident = cid("uprops")
    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = 600
    a = Mq(b, client_id=ident, proto=V5, clean=True, connect_props=p)
    a.connect()
    a.subscribe("upr/t", 1)
    a.close()
    pub = Mq(b, proto=V5)
    pub.connect()
    pub.publish("upr/t", b"queued", 1, properties=uprops_publish_props())
    pub.close()
    b.restart(kill=kill)
    again = Mq(b, client_id=ident, proto=V5, clean=False, connect_props=p)
    flags, _, _ = again.connect()
    assert flags.session_present
    m = again.get()
    assert (m.payload, m.properties.UserProperty) == (b"queued", UPROPS)
    again.close()


# -- resend with the original packet ids, QoS 2 state across reconnects and restarts ------------

def pid_of(body):
    return struct.unpack(">H", body[:2])[0]


def next_packets(r, n):
    """The next n packets as (type, parsed PUBLISH or packet id)."""
    out = []
    for _ in range(n):
        p = r.recv()
        assert p is not None, f"only {out}"
        kind, flags, body = p
        out.append((kind, parse_publish(flags, body, r.version) if kind == 3 else pid_of(body)))
    return out


def persistent_raw(b, ident, version, clean=False):
    """A persistent session: MQTT 5 with a Session Expiry Interval (`clean`: Clean Start),
    3.1.1 with clean session 0 (the client ids are new, so nothing is left from before)."""
    if version == 5:
        return Raw(b, ident, version=5, clean=clean, connect_props=connect_props_v5(session_expiry=600))
    return Raw(b, ident, version=4, clean=False)


@pytest.mark.restart
@pytest.mark.parametrize("version,how", [(4, "reconnect"), (5, "reconnect"), (4, "restart"),
                                         (5, "kill"), (4, "kill")])
def test_inflight_resent_with_original_packet_ids_and_dup(own_broker, version, how):
    b = own_broker
    ident = cid("resend")
    r = persistent_raw(b, ident, version, clean=True)
    r.subscribe("rs/t", 2)
    pub = Mq(b, proto=V5)
    pub.connect()
    # Two messages acknowledged first, so the ids in flight are not the ones a fresh
    # connection would hand out (1, 2...).
    pub.publish("rs/t", b"w1", 1)
    pub.publish("rs/t", b"w2", 1)
    for w in r.publishes(2):
        r.ack(4, w["pid"])
    pub.publish("rs/t", b"m1", 1)
    pub.publish("rs/t", b"m2", 2)
    pub.publish("rs/t", b"m3", 2)
    pub.close()
    m1, m2, m3 = r.publishes(3)
    assert [(m["payload"], m["qos"], m["dup"]) for m in (m1, m2, m3)] == [
        (b"m1", 1, False), (b"m2", 2, False), (b"m3", 2, False)]
    assert min(m["pid"] for m in (m1, m2, m3)) > 2
    # m3: PUBREC, so the broker sends PUBREL and awaits PUBCOMP; m1 and m2 stay unacknowledged.
    r.ack(5, m3["pid"])
    assert r.recv()[:1] == (6,)
    r.drop()
    if how == "restart":
        b.restart()
    elif how == "kill":
        b.restart(kill=True)
    else:
        time.sleep(0.2)
    r = persistent_raw(b, ident, version)
    assert r.session_present
    # MQTT-4.4.0-1: PUBREL again, and the unacknowledged PUBLISHes with their ids, DUP set,
    # in the order they were first sent; m3 is not sent again.
    got = next_packets(r, 3)
    assert got[0] == (6, m3["pid"])
    assert [(k, p["payload"], p["pid"], p["dup"], p["qos"]) for k, p in got[1:]] == [
        (3, b"m1", m1["pid"], True, 1), (3, b"m2", m2["pid"], True, 2)]
    r.ack(4, m1["pid"])
    r.ack(5, m2["pid"])
    assert next_packets(r, 1) == [(6, m2["pid"])]
    r.ack(7, m2["pid"])
    r.ack(7, m3["pid"])
    assert r.recv(timeout=0.7) is None, "nothing else is sent"
    r.close()
    # All settled: the next reconnect resends nothing.
    r = persistent_raw(b, ident, version)
    assert r.recv(timeout=0.7) is None
    r.close()


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_queued_message_does_not_keep_its_read_buffer_alive(own_broker):
    """A busy publisher's packets arrive in one big read buffer; one small message of each
    buffer stays queued for an offline session while the rest is dropped. Each kept message must
    cost about its own size, not the buffer's (64 KiB): 400 buffers would pin ~25 MiB."""
    b = own_broker
    ident = cid("offline")
    r = persistent_raw(b, ident, 4)
    r.subscribe("keep/#", 1)
    r.close()
    pub = Raw(b, cid("busy"), version=4)
    kept = packet(0x30 | (1 << 1), mqtt_str("keep/x") + struct.pack(">H", 1) + b"k" * 100)
    dropped = packet(0x30, mqtt_str("drop/y") + b"d" * 100)
    burst = kept + dropped * 600  # ~66 KB: the broker's reads grow to 64 KiB
    before = rss_bytes(b.proc.pid)
    for i in range(400):
        pub.s.sendall(burst)
        assert next_packets(pub, 1) == [(4, 1)]  # PUBACK: this burst is in the store
    after = rss_bytes(b.proc.pid)
    pub.close()
    assert after - before < 8 * 1024 * 1024, f"RSS grew {after - before} bytes for 400 kept messages"
    # And they are all there (acknowledged as they come: the in-flight window is smaller).
    r = persistent_raw(b, ident, 4)
    payloads = set()
    for _ in range(400):
        (m,) = r.publishes(1)
        payloads.add(m["payload"])
        r.ack(4, m["pid"])
    assert payloads == {b"k" * 100}
    r.close()


@pytest.mark.restart
@pytest.mark.parametrize("version,how", [(4, "reconnect"), (5, "reconnect"), (5, "kill"), (4, "kill")])
def test_retained_sent_on_subscribe_resent_with_original_packet_id(own_broker, version, how):
    """MQTT-4.4.0-1 holds for retained messages sent on SUBSCRIBE too: a persistent session that
    did not acknowledge one gets it again with the same packet id, DUP and RETAIN set."""
    b = own_broker
    topic = f"rr/{cid('t')}"
    pub = Mq(b, proto=V5)
    pub.connect()
    pub.publish(topic, b"kept", 1, retain=True)
    pub.close()
    ident = cid("rresend")
    r = persistent_raw(b, ident, version, clean=True)
    r.subscribe(topic, 1)
    (m,) = r.publishes(1)
    assert (m["payload"], m["qos"], m["retain"], m["dup"]) == (b"kept", 1, True, False)
    # A QoS 1 PUBLISH does not wait for its journal record (docs/mapping/mqtt.md); a PUBREC
    # does, and the journal commits in order: once it came, the copy's packet id is on disk.
    r.publish_packet(f"{topic}/barrier", b"b", 2, pid=900)
    assert next_packets(r, 1) == [(5, 900)]
    r.drop()  # no PUBACK
    if how == "kill":
        b.restart(kill=True)
    else:
        time.sleep(0.2)
    r = persistent_raw(b, ident, version)
    assert r.session_present
    (again,) = r.publishes(1)
    assert (again["payload"], again["pid"], again["dup"], again["retain"], again["qos"]) == (
        b"kept", m["pid"], True, True, 1)
    if version == 5:
        assert again["props"]["user"] == [], "no broker-internal header leaks as a user property"
    r.ack(4, again["pid"])
    assert r.recv(timeout=0.7) is None, "nothing else is sent"
    r.close()
    # Acknowledged: the next reconnect sends nothing.
    r = persistent_raw(b, ident, version)
    assert r.recv(timeout=0.7) is None
    r.close()


@pytest.mark.restart
@pytest.mark.parametrize("version,kill", [(4, False), (4, True), (5, True)])
def test_qos2_inbound_exactly_once_across_restart(own_broker, version, kill):
    b = own_broker
    sub_id = cid("x-sub")
    sub = Mq(b, client_id=sub_id, clean=False)
    sub.connect()
    sub.subscribe("ex/t", 2)
    sub.close()
    ident = cid("x-pub")
    r = persistent_raw(b, ident, version, clean=True)
    r.publish_packet("ex/t", b"once", 2, pid=42)
    assert next_packets(r, 1) == [(5, 42)]
    r.drop()  # no PUBREL: the client will send the PUBLISH again
    b.restart(kill=kill)
    r = persistent_raw(b, ident, version)
    assert r.session_present
    r.publish_packet("ex/t", b"once", 2, pid=42, dup=True)
    assert next_packets(r, 1) == [(5, 42)]
    r.ack(6, 42)
    assert next_packets(r, 1) == [(7, 42)]
    # The id is free again: a new message with it is a new message.
    r.publish_packet("ex/t", b"next", 2, pid=42)
    assert next_packets(r, 1) == [(5, 42)]
    r.ack(6, 42)
    assert next_packets(r, 1) == [(7, 42)]
    r.close()
    sub = Mq(b, client_id=sub_id, clean=False)
    sub.connect()
    assert [m.payload for m in drain(sub, 1.0)] == [b"once", b"next"]
    sub.close()
