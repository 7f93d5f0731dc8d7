"""basic.*: qos, consume, cancel, publish/return, get, ack/nack/reject, recover, expiration,
properties and headers."""

import datetime
import decimal
import struct
import time

import pika
import pika.exceptions as pe
import pytest

import amqp_raw as raw
from helpers import assert_channel_error, wait_until


@pytest.fixture
def pub(conn):
    """A channel in confirm mode: when basic_publish returns, the queues have the message."""
    ch = conn.channel()
    ch.confirm_delivery()
    return ch


def fill(pub, q, n, prefix="m"):
    for i in range(n):
        pub.basic_publish("", q, f"{prefix}{i}".encode())


def excl_queue(ch, **kw):
    return ch.queue_declare("", exclusive=True, **kw).method.queue


class Collector:
    """A consumer callback that records deliveries (and can ack them later)."""

    def __init__(self):
        self.deliveries = []

    def __call__(self, ch, method, props, body):
        self.deliveries.append((method, props, body))

    @property
    def bodies(self):
        return [d[2] for d in self.deliveries]

    def __len__(self):
        return len(self.deliveries)


def settle(conn, seconds=0.3):
    """Let deliveries that are going to arrive arrive."""
    conn.process_data_events(time_limit=seconds)


# ---------------------------------------------------------------------------------------------
# qos


def test_prefetch_per_consumer(conn, pub):
    """RabbitMQ: basic.qos global=false limits each consumer of the channel separately."""
    ch = conn.channel()
    q1, q2 = excl_queue(ch), excl_queue(ch)
    fill(pub, q1, 5)
    fill(pub, q2, 5)
    ch.basic_qos(prefetch_count=2)
    c1, c2 = Collector(), Collector()
    ch.basic_consume(q1, c1)
    ch.basic_consume(q2, c2)
    settle(conn)
    assert (len(c1), len(c2)) == (2, 2)
    # acking one frees one slot of that consumer only
    ch.basic_ack(c1.deliveries[0][0].delivery_tag)
    settle(conn)
    assert (len(c1), len(c2)) == (3, 2)


def test_prefetch_global_per_channel(conn, pub):
    """RabbitMQ: basic.qos global=true is one limit shared by all consumers of the channel."""
    ch = conn.channel()
    q1, q2 = excl_queue(ch), excl_queue(ch)
    fill(pub, q1, 5)
    fill(pub, q2, 5)
    ch.basic_qos(prefetch_count=3, global_qos=True)
    c1, c2 = Collector(), Collector()
    ch.basic_consume(q1, c1)
    ch.basic_consume(q2, c2)
    settle(conn)
    assert len(c1) + len(c2) == 3
    tags = [d[0].delivery_tag for d in c1.deliveries + c2.deliveries]
    ch.basic_ack(max(tags), multiple=True)
    assert wait_until(lambda: len(c1) + len(c2) >= 6, timeout=3, conn=conn)
    settle(conn)
    assert len(c1) + len(c2) == 6


def test_prefetch_global_and_per_consumer_together(conn, pub):
    ch = conn.channel()
    q1, q2 = excl_queue(ch), excl_queue(ch)
    fill(pub, q1, 5)
    fill(pub, q2, 5)
    # RabbitMQ's documented order (per-consumer first, then global). NB: RabbitMQ 3.10 with the
    # opposite order (global first) delivers 2+2=4 here, above the global limit: not asserted.
    ch.basic_qos(prefetch_count=2, global_qos=False)
    ch.basic_qos(prefetch_count=3, global_qos=True)
    c1, c2 = Collector(), Collector()
    ch.basic_consume(q1, c1)
    ch.basic_consume(q2, c2)
    settle(conn)
    assert len(c1) <= 2 and len(c2) <= 2
    assert len(c1) + len(c2) == 3


def test_prefetch_applies_to_consumers_created_after_it(conn, pub):
    ch = conn.channel()
    q1, q2 = excl_queue(ch), excl_queue(ch)
    fill(pub, q1, 5)
    fill(pub, q2, 5)
    ch.basic_qos(prefetch_count=1)
    c1 = Collector()
    ch.basic_consume(q1, c1)
    ch.basic_qos(prefetch_count=3)
    c2 = Collector()
    ch.basic_consume(q2, c2)
    settle(conn)
    assert (len(c1), len(c2)) == (1, 3)


def test_prefetch_zero_is_unlimited(conn, pub):
    ch = conn.channel()
    q = excl_queue(ch)
    fill(pub, q, 20)
    ch.basic_qos(prefetch_count=0)
    c = Collector()
    ch.basic_consume(q, c)
    assert wait_until(lambda: len(c) == 20, timeout=3, conn=conn)


def test_prefetch_does_not_limit_no_ack_consumers(conn, pub):
    ch = conn.channel()
    q = excl_queue(ch)
    fill(pub, q, 10)
    ch.basic_qos(prefetch_count=1)
    c = Collector()
    ch.basic_consume(q, c, auto_ack=True)
    assert wait_until(lambda: len(c) == 10, timeout=3, conn=conn)


def test_prefetch_is_shared_round_robin(conn, pub):
    """Two consumers of one queue with prefetch 1 each: deliveries alternate as they ack."""
    ch = conn.channel()
    q = excl_queue(ch)
    ch.basic_qos(prefetch_count=1)
    seen = []
    ch.basic_consume(q, lambda c, m, p, b: (seen.append(("A", b)), c.basic_ack(m.delivery_tag)))
    ch.basic_consume(q, lambda c, m, p, b: (seen.append(("B", b)), c.basic_ack(m.delivery_tag)))
    fill(pub, q, 10)
    assert wait_until(lambda: len(seen) == 10, timeout=3, conn=conn)
    assert [b for _, b in seen] == [f"m{i}".encode() for i in range(10)]
    assert {who for who, _ in seen} == {"A", "B"}


# ---------------------------------------------------------------------------------------------
# consume


def test_consume_delivers_in_order_with_tags(conn, pub):
    ch = conn.channel()
    q = excl_queue(ch)
    c = Collector()
    tag = ch.basic_consume(q, c, consumer_tag="my-tag")
    assert tag == "my-tag"
    fill(pub, q, 5)
    assert wait_until(lambda: len(c) == 5, timeout=3, conn=conn)
    assert c.bodies == [f"m{i}".encode() for i in range(5)]
    tags = [m.delivery_tag for m, _, _ in c.deliveries]
    assert tags == sorted(tags) and len(set(tags)) == 5 and tags[0] >= 1
    assert all(m.consumer_tag == "my-tag" and not m.redelivered for m, _, _ in c.deliveries)
    assert all(m.exchange == "" and m.routing_key == q for m, _, _ in c.deliveries)


def test_server_generated_consumer_tag(conn):
    ch = conn.channel()
    q = excl_queue(ch)
    tag = ch.basic_consume(q, Collector())
    assert tag  # pika generates its own tag; the broker must accept it
    raw_tag = None
    with raw.RawConnection("127.0.0.1", conn._impl.params.port) as r:
        r.handshake(vhost=conn._impl.params.virtual_host)
        r.open_channel(1)
        rq = r.declare_exclusive_queue(1)
        args = struct.pack("!H", 0) + raw.shortstr(rq) + raw.shortstr("") + b"\x00" + raw.EMPTY_TABLE
        r.send(raw.method_frame(1, (60, 20), args))
        f = r.expect_method((60, 21), channel=1)
        raw_tag = f.payload[5 : 5 + f.payload[4]].decode()
    assert raw_tag.startswith("amq.ctag-"), raw_tag


def test_duplicate_consumer_tag_is_530(broker):
    # RabbitMQ: reusing a consumer tag on a channel is a connection error 530 NOT_ALLOWED
    # (raw frames: pika refuses a duplicate tag itself before sending anything)
    with raw.RawConnection(broker.host, broker.port) as r:
        r.handshake(vhost=broker.vhost)
        r.open_channel(1)
        q = r.declare_exclusive_queue(1)
        args = struct.pack("!H", 0) + raw.shortstr(q) + raw.shortstr("dup") + b"\x00" + raw.EMPTY_TABLE
        r.send(raw.method_frame(1, (60, 20), args))
        r.expect_method((60, 21), channel=1)
        r.send(raw.method_frame(1, (60, 20), args))
        close = r.expect_connection_close()
        assert close.reply_code == 530, close
        assert (close.class_id, close.method_id) == (60, 20), close


def test_exclusive_consume(conn):
    ch = conn.channel()
    q = excl_queue(ch)
    ch.basic_consume(q, Collector(), exclusive=True)
    other = conn.channel()
    assert_channel_error(lambda: other.basic_consume(q, Collector()), 403, "ACCESS_REFUSED")


def test_exclusive_consume_on_queue_with_consumers(conn):
    ch = conn.channel()
    q = excl_queue(ch)
    ch.basic_consume(q, Collector())
    other = conn.channel()
    assert_channel_error(lambda: other.basic_consume(q, Collector(), exclusive=True), 403)


def test_no_ack_consume(conn, pub):
    ch = conn.channel()
    q = excl_queue(ch)
    fill(pub, q, 3)
    c = Collector()
    ch.basic_consume(q, c, auto_ack=True)
    assert wait_until(lambda: len(c) == 3, timeout=3, conn=conn)
    ch.close()
    check = conn.channel()
    assert check.queue_declare(q, passive=True).method.message_count == 0


def test_consumer_priority(conn, pub):
    ch = conn.channel()
    q = excl_queue(ch)
    low, high = Collector(), Collector()
    ch.basic_consume(q, low, auto_ack=True, arguments={"x-priority": 1})
    ch.basic_consume(q, high, auto_ack=True, arguments={"x-priority": 10})
    fill(pub, q, 10)
    assert wait_until(lambda: len(high) == 10, timeout=3, conn=conn)
    assert len(low) == 0


def test_consumer_priority_falls_back_when_blocked(conn, pub):
    ch = conn.channel()
    ch.basic_qos(prefetch_count=2)
    q = excl_queue(ch)
    low, high = Collector(), Collector()
    ch.basic_consume(q, low, arguments={"x-priority": -5})
    ch.basic_consume(q, high, arguments={"x-priority": 5})
    fill(pub, q, 5)
    settle(conn)
    assert (len(high), len(low)) == (2, 2)


def test_cancel_stops_deliveries_and_keeps_unacked(conn, pub):
    ch = conn.channel()
    q = excl_queue(ch)
    c = Collector()
    tag = ch.basic_consume(q, c)
    fill(pub, q, 2)
    assert wait_until(lambda: len(c) == 2, timeout=3, conn=conn)
    ch.basic_cancel(tag)
    fill(pub, q, 2, prefix="after")
    settle(conn)
    assert len(c) == 2
    # unacked deliveries of a cancelled consumer can still be acked
    ch.basic_ack(c.deliveries[1][0].delivery_tag, multiple=True)
    assert ch.queue_declare(q, passive=True).method.message_count == 2
    assert ch.is_open


def test_cancel_unknown_tag_is_ok(conn):
    ch = conn.channel()
    ch.basic_cancel("never-registered")
    assert ch.is_open


def test_server_cancels_consumer_when_queue_deleted(conn, uname):
    q = uname("q")
    ch = conn.channel()
    ch.queue_declare(q)
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = ch.basic_consume(q, Collector())
    conn.channel().queue_delete(q)
    assert wait_until(lambda: cancelled, timeout=3, conn=conn)
    assert cancelled == [tag]
    assert ch.is_open


def test_consume_generator(conn, pub):
    ch = conn.channel()
    q = excl_queue(ch)
    fill(pub, q, 3)
    got = []
    for method, props, body in ch.consume(q, auto_ack=True, inactivity_timeout=1):
        if method is None:
            break
        got.append(body)
        if len(got) == 3:
            break
    ch.cancel()
    assert got == [b"m0", b"m1", b"m2"]


# ---------------------------------------------------------------------------------------------
# publish / return


def test_mandatory_unroutable_is_returned_312(conn, uname):
    ch = conn.channel()
    returned = []
    ch.add_on_return_callback(lambda c, method, props, body: returned.append((method, props, body)))
    ch.basic_publish(
        "amq.direct", uname("nobody"), b"lost", pika.BasicProperties(message_id="r1"), mandatory=True
    )
    assert wait_until(lambda: returned, timeout=3, conn=conn)
    method, props, body = returned[0]
    assert method.reply_code == 312
    assert method.reply_text == "NO_ROUTE"
    assert method.exchange == "amq.direct"
    assert method.routing_key.startswith("wt.")
    assert body == b"lost"
    assert props.message_id == "r1"


def test_mandatory_with_confirms_returns_then_acks(conn, uname):
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pe.UnroutableError) as err:
        ch.basic_publish("amq.direct", uname("nobody"), b"lost", mandatory=True)
    msgs = err.value.messages
    assert len(msgs) == 1 and msgs[0].body == b"lost"
    assert msgs[0].method.reply_code == 312


def test_not_mandatory_unroutable_is_dropped_and_confirmed(conn, uname):
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("amq.direct", uname("nobody"), b"dropped")  # ack, no return, no error
    assert ch.is_open


def test_mandatory_routed_is_not_returned(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    q = excl_queue(ch)
    ch.basic_publish("", q, b"m", mandatory=True)
    assert ch.basic_get(q, auto_ack=True)[2] == b"m"


def test_immediate_flag_is_not_implemented_540(broker):
    # RabbitMQ 3 dropped basic.publish immediate=true: connection.close 540 NOT_IMPLEMENTED
    with raw.RawConnection(broker.host, broker.port) as r:
        r.handshake(vhost=broker.vhost)
        r.open_channel(1)
        args = struct.pack("!H", 0) + raw.shortstr("") + raw.shortstr("x") + b"\x02"
        r.send(raw.method_frame(1, raw.BASIC_PUBLISH, args))
        r.send(raw.header_frame(1, 1))
        r.send(raw.body_frame(1, b"x"))
        close = r.expect_connection_close()
        assert close.reply_code == 540, close


def test_empty_and_large_bodies(conn, pub):
    ch = conn.channel()
    q = excl_queue(ch)
    big = bytes(range(256)) * 4096  # 1 MiB: many body frames
    pub.basic_publish("", q, b"")
    pub.basic_publish("", q, big)
    assert ch.basic_get(q, auto_ack=True)[2] == b""
    assert ch.basic_get(q, auto_ack=True)[2] == big


# ---------------------------------------------------------------------------------------------
# get / ack / nack / reject


def test_get_and_get_empty_with_message_count(conn, pub):
    ch = conn.channel()
    q = excl_queue(ch)
    assert ch.basic_get(q) == (None, None, None)  # get-empty
    fill(pub, q, 3)
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"m0"
    assert method.message_count == 2  # messages left after this one
    assert not method.redelivered
    assert method.exchange == "" and method.routing_key == q
    method, _, _ = ch.basic_get(q, auto_ack=True)
    assert method.message_count == 1


def test_ack_multiple(conn, pub):
    ch = conn.channel()
    q = excl_queue(ch)
    fill(pub, q, 4)
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(4)]
    ch.basic_ack(tags[2], multiple=True)  # acks 1..3
    ch.close()
    ch = conn.channel()
    method, body = wait_until(lambda: ch.basic_get(q, auto_ack=True)[0:3:2], timeout=3)
    assert body == b"m3" and method.redelivered
    assert ch.basic_get(q)[0] is None


def test_ack_multiple_zero_acks_all(conn, pub):
    ch = conn.channel()
    q = excl_queue(ch)
    fill(pub, q, 3)
    for _ in range(3):
        ch.basic_get(q)
    ch.basic_ack(0, multiple=True)
    ch.close()
    ch = conn.channel()
    time.sleep(0.2)
    assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_nack_multiple_requeue_keeps_order_and_sets_redelivered(conn, pub):
    ch = conn.channel()
    q = excl_queue(ch)
    fill(pub, q, 3)
    ch.basic_get(q)
    m2, _, _ = ch.basic_get(q)
    ch.basic_nack(m2.delivery_tag, multiple=True, requeue=True)
    got = [ch.basic_get(q, auto_ack=True) for _ in range(3)]
    assert [b for _, _, b in got] == [b"m0", b"m1", b"m2"]
    assert [m.redelivered for m, _, _ in got] == [True, True, False]


def test_nack_without_requeue_discards(conn, pub):
    ch = conn.channel()
    q = excl_queue(ch)
    fill(pub, q, 2)
    m, _, _ = ch.basic_get(q)
    ch.basic_nack(m.delivery_tag, requeue=False)
    assert ch.basic_get(q, auto_ack=True)[2] == b"m1"
    assert ch.basic_get(q)[0] is None


def test_reject_requeue_and_discard(conn, pub):
    ch = conn.channel()
    q = excl_queue(ch)
    fill(pub, q, 1)
    m, _, _ = ch.basic_get(q)
    ch.basic_reject(m.delivery_tag, requeue=True)
    m, _, body = ch.basic_get(q)
    assert body == b"m0" and m.redelivered
    ch.basic_reject(m.delivery_tag, requeue=False)
    assert ch.basic_get(q)[0] is None


def test_requeued_message_redelivered_to_consumer(conn, pub):
    ch = conn.channel()
    q = excl_queue(ch)
    ch.basic_qos(prefetch_count=1)
    seen = []

    def on_msg(c, m, p, b):
        seen.append((b, m.redelivered))
        if len(seen) == 1:
            c.basic_nack(m.delivery_tag, requeue=True)
        else:
            c.basic_ack(m.delivery_tag)

    ch.basic_consume(q, on_msg)
    fill(pub, q, 1)
    assert wait_until(lambda: len(seen) >= 2, timeout=3, conn=conn)
    assert seen[:2] == [(b"m0", False), (b"m0", True)]


def test_recover_requeue(conn, pub):
    ch = conn.channel()
    q = excl_queue(ch)
    c = Collector()
    ch.basic_consume(q, c)
    fill(pub, q, 2)
    assert wait_until(lambda: len(c) == 2, timeout=3, conn=conn)
    ch.basic_recover(requeue=True)
    assert wait_until(lambda: len(c) == 4, timeout=3, conn=conn)
    assert sorted(c.bodies[2:]) == [b"m0", b"m1"]
    assert all(m.redelivered for m, _, _ in c.deliveries[2:])
    # the old delivery tags are gone; the new ones can be acked
    ch.basic_ack(c.deliveries[3][0].delivery_tag, multiple=True)
    settle(conn, 0.1)
    assert ch.is_open


def test_recover_without_requeue_is_not_implemented_540(broker):
    # RabbitMQ 3.10: basic.recover requeue=false is a connection error 540 NOT_IMPLEMENTED
    c = broker.connect()
    ch = c.channel()
    with pytest.raises(pe.ConnectionClosedByBroker) as err:
        ch.basic_recover(requeue=False)
    assert err.value.reply_code == 540, err.value
    assert c.is_closed


# ---------------------------------------------------------------------------------------------
# per-message expiration


def test_per_message_expiration(conn, pub):
    ch = conn.channel()
    q = excl_queue(ch)
    pub.basic_publish("", q, b"short", pika.BasicProperties(expiration="100"))
    pub.basic_publish("", q, b"long", pika.BasicProperties(expiration="60000"))
    pub.basic_publish("", q, b"forever")
    time.sleep(0.4)
    got = []
    while True:
        m, props, body = ch.basic_get(q, auto_ack=True)
        if m is None:
            break
        got.append((body, props.expiration))
    # the broker keeps the expiration property on delivery
    assert got == [(b"long", "60000"), (b"forever", None)]


def test_expiration_zero_expires_unless_consumer_waiting(conn, pub):
    ch = conn.channel()
    q = excl_queue(ch)
    pub.basic_publish("", q, b"gone", pika.BasicProperties(expiration="0"))
    assert ch.basic_get(q)[0] is None


def test_lower_of_queue_and_message_ttl_applies(conn, pub):
    ch = conn.channel()
    q = excl_queue(ch, arguments={"x-message-ttl": 100})
    pub.basic_publish("", q, b"m", pika.BasicProperties(expiration="60000"))
    time.sleep(0.4)
    assert ch.basic_get(q)[0] is None


@pytest.mark.parametrize("bad", ["abc", "-1", "1.5"])
def test_invalid_expiration_is_406(conn, bad):
    ch = conn.channel()
    q = excl_queue(ch)
    ch.basic_publish("", q, b"m", pika.BasicProperties(expiration=bad))
    assert_channel_error(lambda: ch.queue_declare("", exclusive=True), 406, "PRECONDITION_FAILED")


# ---------------------------------------------------------------------------------------------
# properties and headers


def test_all_properties_round_trip(conn, pub, broker):
    ch = conn.channel()
    q = excl_queue(ch)
    ts = 1_700_000_000
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="gzip",
        headers={"h": "v"},
        delivery_mode=2,
        priority=7,
        correlation_id="corr-1",
        reply_to="reply-queue",
        expiration="600000",
        message_id="msg-1",
        timestamp=ts,
        type="my.type",
        user_id=broker.user,
        app_id="wharf-tests",
        cluster_id="cluster-x",
    )
    pub.basic_publish("", q, b"{}", props)
    c = Collector()
    ch.basic_consume(q, c, auto_ack=True)
    assert wait_until(lambda: c.deliveries, timeout=3, conn=conn)
    m, got, body = c.deliveries[0]
    for field in [
        "content_type",
        "content_encoding",
        "headers",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "timestamp",
        "type",
        "user_id",
        "app_id",
        "cluster_id",
    ]:
        assert getattr(got, field) == getattr(props, field), field
    # the same through basic.get
    ch.basic_cancel(m.consumer_tag)
    pub.basic_publish("", q, b"{}", props)
    _, got2, _ = ch.basic_get(q, auto_ack=True)
    assert got2.message_id == "msg-1" and got2.timestamp == ts and got2.headers == {"h": "v"}


def test_no_properties_stay_absent(conn, pub):
    ch = conn.channel()
    q = excl_queue(ch)
    pub.basic_publish("", q, b"bare")
    _, props, _ = ch.basic_get(q, auto_ack=True)
    for field in [
        "content_type",
        "headers",
        "delivery_mode",
        "priority",
        "message_id",
        "timestamp",
        "expiration",
    ]:
        assert getattr(props, field) is None, field


def test_user_id_must_match_connection_user_406(conn):
    ch = conn.channel()
    q = excl_queue(ch)
    ch.basic_publish("", q, b"m", pika.BasicProperties(user_id="somebody-else"))
    assert_channel_error(lambda: ch.queue_declare("", exclusive=True), 406, "PRECONDITION_FAILED")


def test_headers_values_round_trip(conn, pub):
    # pika cannot encode floats in tables; test_every_field_type_survives_the_broker covers f/d
    ch = conn.channel()
    q = excl_queue(ch)
    now = datetime.datetime(2024, 5, 17, 12, 30, 45)
    headers = {
        "str": "hello",
        "unicode": "żółw ✓",
        "empty": "",
        "int": 42,
        "neg": -7,
        "big": 2**40,
        "bigneg": -(2**62),
        "decimal": decimal.Decimal("12.345"),
        "true": True,
        "false": False,
        "none": None,
        "bytes": b"\x00\x01\xfe\xff",
        "time": now,
        "list": [1, "two", decimal.Decimal("3.5"), None, True, [4, 5], {"in": "list"}],
        "empty-list": [],
        "nested": {"a": {"b": {"c": [1, {"d": "deep"}]}}, "n": 1},
        "empty-table": {},
        "long-string": "x" * 70000,
    }
    pub.basic_publish("", q, b"h", pika.BasicProperties(headers=headers))
    _, props, _ = ch.basic_get(q, auto_ack=True)
    got = dict(props.headers)
    t = got.pop("time")
    if t.tzinfo is not None:  # pika versions differ in tz-awareness of 'T' values
        t = t.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    assert t == now
    expected = dict(headers)
    expected.pop("time")
    assert got == expected
    assert isinstance(got["bytes"], bytes)
    assert isinstance(got["decimal"], decimal.Decimal)


def test_every_field_type_survives_the_broker(broker):
    """Published with a hand-built header table holding every AMQP 0-9-1 field type (RabbitMQ's
    errata set); basic.get must return the same values with the same type tags."""
    table = {
        "t": ("t", True),
        "f-bool": ("t", False),
        "b": ("b", -2),
        "B": ("B", 254),
        "s": ("s", -2),
        "u": ("u", 65534),
        "I": ("I", -5),
        "i": ("i", 4_000_000_000),
        "l": ("l", -(2**40)),
        "f": ("f", 1.5),
        "d": ("d", 2.25),
        "D": ("D", (2, 12345)),
        "S": ("S", b"long string \xc5\xbc"),
        "x": ("x", b"\x00\x01\x02\xff"),
        "T": ("T", 1_700_000_000),
        "V": ("V", None),
        "A": ("A", [("t", True), ("I", 7), ("S", b"in array"), ("A", [("b", 1)]), ("F", {"k": ("S", b"v")})]),
        "F": ("F", {"inner": ("F", {"deeper": ("l", 5)}), "s": ("s", 3)}),
    }
    with raw.RawConnection(broker.host, broker.port) as r:
        r.handshake(vhost=broker.vhost)
        r.open_channel(1)
        q = r.declare_exclusive_queue(1)
        r.send(raw.method_frame(1, raw.BASIC_PUBLISH, raw.basic_publish("", q)))
        headers = raw.encode_table(table)
        r.send(raw.frame(raw.FRAME_HEADER, 1, struct.pack("!HHQH", 60, 0, 2, 0x2000) + headers))
        r.send(raw.body_frame(1, b"ok"))
        deadline = time.monotonic() + 3
        while True:
            r.send(raw.method_frame(1, (60, 70), struct.pack("!H", 0) + raw.shortstr(q) + b"\x01"))
            f = r.read_method()
            if f.class_method == (60, 71):
                break
            assert f.class_method == (60, 72), f  # get-empty: not there yet
            assert time.monotonic() < deadline
        h = r.read_frame()
        assert h.type == raw.FRAME_HEADER
        class_id, _weight, size, flags = struct.unpack("!HHQH", h.payload[:14])
        assert (class_id, size) == (60, 2)
        assert flags == 0x2000, hex(flags)
        got, end = raw.decode_table(h.payload, 14)
        assert end == len(h.payload)
        assert got == table
        body = r.read_frame()
        assert body.type == raw.FRAME_BODY and body.payload == b"ok"


def test_routing_key_and_names_utf8(conn, pub):
    ch = conn.channel()
    q = "wt.ünïcødé.✓." + str(time.monotonic_ns())
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, "amq.topic", "ключ.*")
    pub.basic_publish("amq.topic", "ключ.значение", b"m")
    m, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"m" and m.routing_key == "ключ.значение"
