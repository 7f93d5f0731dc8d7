"""Queues: naming, declare flags, bind/unbind, purge, delete, TTLs, length limits, dead-lettering,
priorities, single active consumer."""

import datetime
import time

import pika
import pika.exceptions as pe
import pytest

from helpers import assert_channel_error, wait_until


@pytest.fixture
def pub(conn):
    """A channel in confirm mode: when basic_publish returns, the queues have the message."""
    ch = conn.channel()
    ch.confirm_delivery()
    return ch


def bodies(ch, q):
    out = []
    while True:
        method, _, body = ch.basic_get(q, auto_ack=True)
        if method is None:
            return out
        out.append(body)


def get_one(ch, q, timeout=3.0):
    """basic_get (auto-ack), polling up to timeout: (method, properties, body)."""
    deadline = time.monotonic() + timeout
    while True:
        result = ch.basic_get(q, auto_ack=True)
        if result[0] is not None or time.monotonic() > deadline:
            return result
        ch.connection.process_data_events(0.05)


def test_server_named_queue(ch):
    ok = ch.queue_declare("", exclusive=True).method
    assert ok.queue.startswith("amq.gen-")
    assert len(ok.queue) > len("amq.gen-") + 8
    assert ok.message_count == 0
    assert ok.consumer_count == 0
    other = ch.queue_declare("", exclusive=True).method.queue
    assert other != ok.queue


def test_declare_ok_and_passive_report_counts(ch, pub, uname):
    q = uname("q")
    ch.queue_declare(q, auto_delete=False)
    try:
        for i in range(3):
            pub.basic_publish("", q, b"m%d" % i)
        ok = ch.queue_declare(q, passive=True).method
        assert (ok.queue, ok.message_count, ok.consumer_count) == (q, 3, 0)
        ch.basic_consume(q, lambda *a: None)
        ok = ch.queue_declare(q, passive=True).method
        assert ok.consumer_count == 1
        # a non-passive redeclare reports the same
        ok = ch.queue_declare(q, auto_delete=False).method
        assert ok.consumer_count == 1
    finally:
        ch.queue_delete(q)


def test_passive_declare_ignores_other_flags(ch, uname):
    q = uname("q")
    ch.queue_declare(q, auto_delete=True, arguments={"x-message-ttl": 1000})
    ch.queue_declare(q, passive=True, durable=True, arguments={"x-message-ttl": 5})
    ch.queue_delete(q)


def test_exclusive_queue_goes_with_its_connection(broker, conn, uname):
    q = uname("excl")
    owner = broker.connect()
    owner.channel().queue_declare(q, exclusive=True)
    conn.channel().basic_publish("", q, b"x")  # visible to others for publishing
    owner.close()
    ch = conn.channel()
    assert_channel_error(lambda: ch.queue_declare(q, passive=True), 404)


def test_exclusive_queue_survives_its_channel(conn, uname):
    q = uname("excl")
    a = conn.channel()
    a.queue_declare(q, exclusive=True)
    a.close()
    conn.channel().queue_declare(q, passive=True)


def test_auto_delete_queue_goes_with_last_consumer(conn, uname):
    ch = conn.channel()
    q = uname("ad")
    ch.queue_declare(q, auto_delete=True)
    # no consumer yet: it stays
    ch.queue_declare(q, passive=True)
    t1 = ch.basic_consume(q, lambda *a: None)
    t2 = ch.basic_consume(q, lambda *a: None)
    ch.basic_cancel(t1)
    assert ch.queue_declare(q, passive=True).method.consumer_count == 1
    ch.basic_cancel(t2)
    check = conn.channel()
    assert_channel_error(lambda: check.queue_declare(q, passive=True), 404)


def test_auto_delete_queue_goes_when_consumer_channel_closes(conn, uname):
    ch = conn.channel()
    q = uname("ad")
    ch.queue_declare(q, auto_delete=True)
    consumer = conn.channel()
    consumer.basic_consume(q, lambda *a: None)
    consumer.close()

    def gone():
        try:
            conn.channel().queue_declare(q, passive=True)
            return False
        except pe.ChannelClosedByBroker as e:
            return e.reply_code == 404

    assert wait_until(gone, timeout=3)


def test_bind_and_unbind(ch, pub, uname):
    x = uname("x")
    ch.exchange_declare(x, "direct", auto_delete=True)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, x, "k")
    pub.basic_publish(x, "k", b"1")
    ch.queue_unbind(q, x, "k")
    # the binding was the exchange's last: auto-delete exchange gone, so keep our own
    ch.exchange_declare(x, "direct", auto_delete=True)
    ch.queue_bind(q, x, "other")
    pub.basic_publish(x, "k", b"2")
    assert bodies(ch, q) == [b"1"]


def test_purge_returns_count_and_keeps_unacked(ch, pub):
    q = ch.queue_declare("", exclusive=True).method.queue
    for i in range(5):
        pub.basic_publish("", q, b"m%d" % i)
    method, _, _ = ch.basic_get(q)  # one unacked
    assert ch.queue_purge(q).method.message_count == 4
    assert ch.queue_purge(q).method.message_count == 0
    ch.basic_reject(method.delivery_tag, requeue=True)
    assert bodies(ch, q) == [b"m0"]


def test_delete_returns_message_count(ch, pub, uname):
    q = uname("q")
    ch.queue_declare(q)
    for _ in range(3):
        pub.basic_publish("", q, b"m")
    assert ch.queue_delete(q).method.message_count == 3
    assert_channel_error(lambda: ch.queue_declare(q, passive=True), 404)


def test_delete_if_unused(conn, uname):
    ch = conn.channel()
    q = uname("q")
    ch.queue_declare(q)
    tag = ch.basic_consume(q, lambda *a: None)
    assert_channel_error(lambda: conn.channel().queue_delete(q, if_unused=True), 406, "PRECONDITION_FAILED")
    ch.basic_cancel(tag)
    ch.queue_delete(q, if_unused=True)
    assert_channel_error(lambda: ch.queue_declare(q, passive=True), 404)


def test_delete_if_empty(conn, uname):
    ch = conn.channel()
    ch.confirm_delivery()
    q = uname("q")
    ch.queue_declare(q)
    ch.basic_publish("", q, b"m")
    assert_channel_error(lambda: conn.channel().queue_delete(q, if_empty=True), 406, "PRECONDITION_FAILED")
    ch.queue_purge(q)
    ch.queue_delete(q, if_empty=True)
    assert_channel_error(lambda: ch.queue_declare(q, passive=True), 404)


def test_delete_queue_removes_bindings(ch, pub, uname):
    q = uname("q")
    ch.queue_declare(q)
    ch.queue_bind(q, "amq.direct", q)
    ch.queue_delete(q)
    ch.queue_declare(q)
    try:
        pub.basic_publish("amq.direct", q, b"m")
        assert bodies(ch, q) == []
    finally:
        ch.queue_delete(q)


def test_message_ttl(ch, pub):
    q = ch.queue_declare("", exclusive=True, arguments={"x-message-ttl": 200}).method.queue
    pub.basic_publish("", q, b"short-lived")
    assert ch.queue_declare(q, passive=True).method.message_count == 1
    time.sleep(0.5)
    assert ch.basic_get(q, auto_ack=True)[0] is None
    assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_message_ttl_zero_delivers_only_to_waiting_consumer(ch, pub):
    q = ch.queue_declare("", exclusive=True, arguments={"x-message-ttl": 0}).method.queue
    pub.basic_publish("", q, b"nobody-waiting")
    assert ch.basic_get(q, auto_ack=True)[0] is None
    received = []
    ch.basic_consume(q, lambda c, m, p, b: received.append(b), auto_ack=True)
    pub.basic_publish("", q, b"consumer-waiting")
    assert wait_until(lambda: received, timeout=3, conn=ch.connection)
    assert received == [b"consumer-waiting"]


def test_invalid_queue_arguments_are_406(conn):
    for args in [{"x-message-ttl": -1}, {"x-expires": 0}, {"x-max-length": -1}, {"x-overflow": "sideways"}]:
        assert_channel_error(lambda: conn.channel().queue_declare("", exclusive=True, arguments=args), 406)


def test_queue_expires_when_unused(conn, uname):
    ch = conn.channel()
    q = uname("exp")
    ch.queue_declare(q, arguments={"x-expires": 300})
    ch.queue_declare(q, passive=True)

    def gone():
        try:
            conn.channel().queue_declare(q, passive=True)
            return False
        except pe.ChannelClosedByBroker as e:
            return e.reply_code == 404

    time.sleep(0.4)
    assert wait_until(gone, timeout=3)


def test_queue_with_consumer_does_not_expire(conn, uname):
    ch = conn.channel()
    q = uname("exp")
    ch.queue_declare(q, arguments={"x-expires": 200})
    tag = ch.basic_consume(q, lambda *a: None)
    conn.sleep(0.6)
    ch.queue_declare(q, passive=True, arguments={"x-expires": 200})
    ch.basic_cancel(tag)
    ch.queue_delete(q)


def test_max_length_drop_head(ch, pub):
    q = ch.queue_declare("", exclusive=True, arguments={"x-max-length": 2}).method.queue
    for i in range(5):
        pub.basic_publish("", q, b"m%d" % i)
    assert ch.queue_declare(q, passive=True).method.message_count == 2
    assert bodies(ch, q) == [b"m3", b"m4"]


def test_max_length_zero(ch, pub):
    q = ch.queue_declare("", exclusive=True, arguments={"x-max-length": 0}).method.queue
    pub.basic_publish("", q, b"m")
    assert bodies(ch, q) == []


def test_max_length_reject_publish_nacks(ch, pub):
    q = ch.queue_declare(
        "", exclusive=True, arguments={"x-max-length": 2, "x-overflow": "reject-publish"}
    ).method.queue
    pub.basic_publish("", q, b"m0")
    pub.basic_publish("", q, b"m1")
    with pytest.raises(pe.NackError):
        pub.basic_publish("", q, b"m2")
    assert pub.is_open
    assert bodies(ch, q) == [b"m0", b"m1"]
    pub.basic_publish("", q, b"m3")  # room again
    assert bodies(ch, q) == [b"m3"]


def test_max_length_reject_publish_without_confirms_drops(ch):
    q = ch.queue_declare(
        "", exclusive=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    ).method.queue
    ch.basic_publish("", q, b"kept")
    ch.basic_publish("", q, b"dropped")
    assert ch.is_open
    assert bodies(ch, q) == [b"kept"]


def test_max_length_bytes(ch, pub):
    q = ch.queue_declare("", exclusive=True, arguments={"x-max-length-bytes": 10}).method.queue
    pub.basic_publish("", q, b"aaaa")  # 4
    pub.basic_publish("", q, b"bbbb")  # 8
    pub.basic_publish("", q, b"cccc")  # 12 > 10: drop head
    assert bodies(ch, q) == [b"bbbb", b"cccc"]


def test_max_length_bytes_counts_body_only(ch, pub):
    q = ch.queue_declare("", exclusive=True, arguments={"x-max-length-bytes": 8}).method.queue
    headers = {"big-header": "x" * 500}
    pub.basic_publish("", q, b"1234", pika.BasicProperties(headers=headers))
    pub.basic_publish("", q, b"5678", pika.BasicProperties(headers=headers))
    assert bodies(ch, q) == [b"1234", b"5678"]


# ---------------------------------------------------------------------------------------------
# dead-lettering


@pytest.fixture
def dlx(ch, uname):
    """A fanout dead-letter exchange with a queue bound: (exchange, queue)."""
    x = uname("dlx")
    ch.exchange_declare(x, "fanout", auto_delete=True)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, x)
    return x, q


def age_seconds(ts):
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=datetime.timezone.utc)
    return (datetime.datetime.now(datetime.timezone.utc) - ts).total_seconds()


def check_x_death(props, *, reason, queue, exchange, routing_keys, count=1):
    deaths = props.headers["x-death"]
    assert isinstance(deaths, list) and deaths, props.headers
    d = deaths[0]
    assert d["reason"] == reason, d
    assert d["queue"] == queue, d
    assert d["exchange"] == exchange, d
    assert d["routing-keys"] == routing_keys, d
    assert d["count"] == count, d
    assert isinstance(d["time"], datetime.datetime), d
    assert abs(age_seconds(d["time"])) < 120, d["time"]
    return d


def test_dead_letter_on_reject(ch, pub, dlx):
    x, dlq = dlx
    q = ch.queue_declare("", exclusive=True, arguments={"x-dead-letter-exchange": x}).method.queue
    pub.basic_publish("", q, b"bad", pika.BasicProperties(headers={"keep": "me"}, message_id="id-1"))
    method, _, _ = ch.basic_get(q)
    ch.basic_reject(method.delivery_tag, requeue=False)
    method, props, body = get_one(ch, dlq)
    assert body == b"bad"
    assert props.message_id == "id-1"
    assert props.headers["keep"] == "me"
    assert method.routing_key == q  # original routing key kept
    assert method.exchange == x
    check_x_death(props, reason="rejected", queue=q, exchange="", routing_keys=[q])
    # RabbitMQ also writes the first death into x-first-death-*
    assert props.headers["x-first-death-reason"] == "rejected"
    assert props.headers["x-first-death-queue"] == q
    assert props.headers["x-first-death-exchange"] == ""


def test_dead_letter_on_nack_and_routing_key_override(ch, pub, uname):
    x = uname("dlx")
    ch.exchange_declare(x, "direct", auto_delete=True)
    dlq = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(dlq, x, "dead")
    q = ch.queue_declare(
        "",
        exclusive=True,
        arguments={"x-dead-letter-exchange": x, "x-dead-letter-routing-key": "dead"},
    ).method.queue
    pub.basic_publish("", q, b"m1")
    pub.basic_publish("", q, b"m2")
    ch.basic_get(q)
    method, _, _ = ch.basic_get(q)
    ch.basic_nack(method.delivery_tag, multiple=True, requeue=False)
    m1 = get_one(ch, dlq)
    m2 = get_one(ch, dlq)
    assert [m1[2], m2[2]] == [b"m1", b"m2"]
    assert m1[0].routing_key == "dead"
    # routing-keys in x-death are the original ones
    check_x_death(m1[1], reason="rejected", queue=q, exchange="", routing_keys=[q])


def test_dead_letter_default_exchange(ch, pub):
    """x-dead-letter-exchange "" with a routing key dead-letters straight into a queue."""
    dlq = ch.queue_declare("", exclusive=True).method.queue
    q = ch.queue_declare(
        "",
        exclusive=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq},
    ).method.queue
    pub.basic_publish("", q, b"m")
    method, _, _ = ch.basic_get(q)
    ch.basic_reject(method.delivery_tag, requeue=False)
    assert get_one(ch, dlq)[2] == b"m"


def test_requeue_does_not_dead_letter(ch, pub, dlx):
    x, dlq = dlx
    q = ch.queue_declare("", exclusive=True, arguments={"x-dead-letter-exchange": x}).method.queue
    pub.basic_publish("", q, b"m")
    method, _, _ = ch.basic_get(q)
    ch.basic_reject(method.delivery_tag, requeue=True)
    assert bodies(ch, q) == [b"m"]
    assert bodies(ch, dlq) == []


def test_dead_letter_on_expiry(ch, pub, dlx, uname):
    x, dlq = dlx
    src = uname("src")
    ch.exchange_declare(src, "direct", auto_delete=True)
    q = ch.queue_declare(
        "", exclusive=True, arguments={"x-dead-letter-exchange": x, "x-message-ttl": 100}
    ).method.queue
    ch.queue_bind(q, src, "rk")
    pub.basic_publish(src, "rk", b"expired", pika.BasicProperties(expiration="60000"))
    method, props, body = get_one(ch, dlq, timeout=5)
    assert body == b"expired"
    d = check_x_death(props, reason="expired", queue=q, exchange=src, routing_keys=["rk"])
    # the per-message expiration is moved into x-death and removed from the properties
    assert d.get("original-expiration") == "60000", d
    assert props.expiration is None


def test_dead_letter_on_per_message_expiry(ch, pub, dlx):
    x, dlq = dlx
    q = ch.queue_declare("", exclusive=True, arguments={"x-dead-letter-exchange": x}).method.queue
    pub.basic_publish("", q, b"e", pika.BasicProperties(expiration="100"))
    method, props, body = get_one(ch, dlq, timeout=5)
    assert body == b"e"
    d = check_x_death(props, reason="expired", queue=q, exchange="", routing_keys=[q])
    assert d["original-expiration"] == "100"


def test_dead_letter_on_maxlen(ch, pub, dlx):
    x, dlq = dlx
    q = ch.queue_declare(
        "", exclusive=True, arguments={"x-dead-letter-exchange": x, "x-max-length": 1}
    ).method.queue
    pub.basic_publish("", q, b"first")
    pub.basic_publish("", q, b"second")
    method, props, body = get_one(ch, dlq)
    assert body == b"first"
    check_x_death(props, reason="maxlen", queue=q, exchange="", routing_keys=[q])
    assert bodies(ch, q) == [b"second"]


def test_reject_publish_dlx(ch, pub, dlx):
    x, dlq = dlx
    q = ch.queue_declare(
        "",
        exclusive=True,
        arguments={
            "x-dead-letter-exchange": x,
            "x-max-length": 1,
            "x-overflow": "reject-publish-dlx",
        },
    ).method.queue
    pub.basic_publish("", q, b"kept")
    with pytest.raises(pe.NackError):
        pub.basic_publish("", q, b"refused")
    method, props, body = get_one(ch, dlq)
    assert body == b"refused"
    check_x_death(props, reason="maxlen", queue=q, exchange="", routing_keys=[q])
    assert bodies(ch, q) == [b"kept"]


def test_x_death_count_increments_in_a_cycle(ch, pub, uname):
    """q1 dead-letters to q2 (TTL) which dead-letters back to q1: x-death entries per queue."""
    q1, q2 = uname("q1"), uname("q2")
    ch.queue_declare(
        q1,
        exclusive=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": q2},
    )
    ch.queue_declare(
        q2,
        exclusive=True,
        arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": q1,
            "x-message-ttl": 50,
        },
    )
    pub.basic_publish("", q1, b"loop")
    expected_deaths = [
        None,  # first arrival in q1: never died
        {(q1, "rejected"): 1, (q2, "expired"): 1},
        {(q1, "rejected"): 2, (q2, "expired"): 2},  # same (queue, reason): count goes up
    ]
    for expected in expected_deaths:
        deadline = time.monotonic() + 3
        method = None
        while method is None and time.monotonic() < deadline:
            method, props, body = ch.basic_get(q1)
        assert method is not None, "message did not come back around the cycle"
        assert body == b"loop"
        if expected is None:
            assert not (props.headers or {}).get("x-death")
        else:
            deaths = props.headers["x-death"]
            assert {(d["queue"], d["reason"]): d["count"] for d in deaths} == expected, deaths
            assert deaths[0]["queue"] == q2, "most recent death first"
        ch.basic_reject(method.delivery_tag, requeue=False)  # q1 -> q2


def test_dead_letter_missing_exchange_drops(ch, pub, uname):
    q = ch.queue_declare(
        "", exclusive=True, arguments={"x-dead-letter-exchange": uname("missing")}
    ).method.queue
    pub.basic_publish("", q, b"m")
    method, _, _ = ch.basic_get(q)
    ch.basic_reject(method.delivery_tag, requeue=False)
    assert ch.is_open
    assert bodies(ch, q) == []


# ---------------------------------------------------------------------------------------------


def test_priority_queue_orders_by_priority(ch, pub):
    q = ch.queue_declare("", exclusive=True, arguments={"x-max-priority": 5}).method.queue
    for body, prio in [
        (b"p1", 1),
        (b"p5", 5),
        (b"p3", 3),
        (b"none", None),
        (b"p9", 9),
        (b"p3b", 3),
        (b"p0", 0),
    ]:
        pub.basic_publish("", q, body, pika.BasicProperties(priority=prio))
    # above max counts as max (9 -> 5, after p5); no priority = 0; FIFO within a priority
    assert bodies(ch, q) == [b"p5", b"p9", b"p3", b"p3b", b"p1", b"none", b"p0"]


def test_priority_queue_consumer_sees_priority_order(ch, pub):
    q = ch.queue_declare("", exclusive=True, arguments={"x-max-priority": 10}).method.queue
    for i in range(10):
        pub.basic_publish("", q, str(i).encode(), pika.BasicProperties(priority=i))
    got = []
    ch.basic_qos(prefetch_count=1)
    ch.basic_consume(q, lambda c, m, p, b: (got.append(int(b)), c.basic_ack(m.delivery_tag)))
    assert wait_until(lambda: len(got) == 10, timeout=5, conn=ch.connection)
    assert got == list(range(9, -1, -1))


def test_queue_without_max_priority_is_fifo(ch, pub):
    q = ch.queue_declare("", exclusive=True).method.queue
    for body, prio in [(b"a", 1), (b"b", 9), (b"c", 5)]:
        pub.basic_publish("", q, body, pika.BasicProperties(priority=prio))
    assert bodies(ch, q) == [b"a", b"b", b"c"]


def test_single_active_consumer(conn, pub, uname):
    q = uname("sac")
    ch = conn.channel()
    ch.queue_declare(q, exclusive=True, arguments={"x-single-active-consumer": True})
    first, second = [], []
    c1 = conn.channel()
    c2 = conn.channel()
    t1 = c1.basic_consume(q, lambda c, m, p, b: first.append(b), auto_ack=True)
    c2.basic_consume(q, lambda c, m, p, b: second.append(b), auto_ack=True)
    for i in range(6):
        pub.basic_publish("", q, b"a%d" % i)
    assert wait_until(lambda: len(first) == 6, timeout=3, conn=conn)
    assert second == []
    c1.basic_cancel(t1)
    for i in range(3):
        pub.basic_publish("", q, b"b%d" % i)
    assert wait_until(lambda: len(second) == 3, timeout=3, conn=conn)
    assert first == [b"a%d" % i for i in range(6)]
    assert second == [b"b0", b"b1", b"b2"]


def test_single_active_consumer_failover_on_channel_close(conn, pub, uname):
    q = uname("sac")
    conn.channel().queue_declare(q, exclusive=True, arguments={"x-single-active-consumer": True})
    c1, c2 = conn.channel(), conn.channel()
    first, second = [], []
    c1.basic_consume(q, lambda c, m, p, b: first.append(b))  # manual ack, never acks
    c2.basic_consume(q, lambda c, m, p, b: second.append(b), auto_ack=True)
    pub.basic_publish("", q, b"m")
    assert wait_until(lambda: first, timeout=3, conn=conn)
    c1.close()  # the unacked message goes back and the second consumer takes over
    assert wait_until(lambda: second, timeout=3, conn=conn)
    assert second == [b"m"]
