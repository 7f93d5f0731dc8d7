"""Channels: open/close, channel-level errors close only the channel, channel.flow."""

import pika.exceptions as pe
import pytest

from helpers import assert_channel_error, wait_until


def assert_still_works(conn, *others):
    """The connection is open, other channels work, and a new channel works."""
    assert conn.is_open
    for ch in others:
        assert ch.is_open
        ch.queue_declare("", exclusive=True)
    fresh = conn.channel()
    q = fresh.queue_declare("", exclusive=True).method.queue
    fresh.basic_publish("", q, b"ping")
    assert fresh.basic_get(q, auto_ack=True)[2] == b"ping"


def test_open_and_close_channel(conn):
    ch = conn.channel()
    assert ch.is_open
    ch.close()
    assert ch.is_closed
    ch2 = conn.channel()
    assert ch2.is_open
    ch2.queue_declare("", exclusive=True)


def test_many_channels_on_one_connection(conn):
    chans = [conn.channel() for _ in range(50)]
    for ch in chans:
        assert ch.is_open
    for ch in chans[::2]:
        ch.close()
    for ch in chans[1::2]:
        ch.queue_declare("", exclusive=True)


def test_redeclare_queue_with_different_durable_is_406(conn, uname):
    q = uname("q")
    a, b = conn.channel(), conn.channel()
    a.queue_declare(q, auto_delete=True)
    try:
        assert_channel_error(
            lambda: b.queue_declare(q, durable=True, auto_delete=True), 406, "PRECONDITION_FAILED"
        )
        assert b.is_closed
        assert_still_works(conn, a)
    finally:
        a.queue_delete(q)


def test_redeclare_queue_with_different_arguments_is_406(conn, uname):
    q = uname("q")
    a, b = conn.channel(), conn.channel()
    a.queue_declare(q, auto_delete=True, arguments={"x-message-ttl": 1000})
    try:
        # same arguments: fine
        a.queue_declare(q, auto_delete=True, arguments={"x-message-ttl": 1000})
        assert_channel_error(
            lambda: b.queue_declare(q, auto_delete=True, arguments={"x-message-ttl": 2000}), 406
        )
        assert_still_works(conn, a)
    finally:
        a.queue_delete(q)


def test_redeclare_exchange_with_different_type_is_406(conn, uname):
    x = uname("x")
    a, b = conn.channel(), conn.channel()
    a.exchange_declare(x, "direct", auto_delete=False)
    try:
        assert_channel_error(lambda: b.exchange_declare(x, "fanout"), 406, "PRECONDITION_FAILED")
        assert_still_works(conn, a)
    finally:
        a.exchange_delete(x)


def test_passive_declare_missing_queue_is_404(conn, uname):
    a, b = conn.channel(), conn.channel()
    assert_channel_error(lambda: b.queue_declare(uname("missing"), passive=True), 404, "NOT_FOUND")
    assert_still_works(conn, a)


def test_passive_declare_missing_exchange_is_404(conn, uname):
    a, b = conn.channel(), conn.channel()
    assert_channel_error(lambda: b.exchange_declare(uname("missing"), passive=True), 404, "NOT_FOUND")
    assert_still_works(conn, a)


def test_declare_amq_prefixed_exchange_is_403(conn):
    a, b = conn.channel(), conn.channel()
    assert_channel_error(lambda: b.exchange_declare("amq.foo", "direct"), 403, "ACCESS_REFUSED")
    assert_still_works(conn, a)


def test_declare_amq_prefixed_queue_is_403(conn):
    assert_channel_error(lambda: conn.channel().queue_declare("amq.foo"), 403, "ACCESS_REFUSED")
    assert_channel_error(lambda: conn.channel().queue_declare("amq.gen-abc"), 403)
    assert_still_works(conn)


def test_default_exchange_is_off_limits(conn, uname):
    assert_channel_error(lambda: conn.channel().exchange_delete(""), 403)
    assert_channel_error(lambda: conn.channel().exchange_declare("", "direct"), 403)
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    assert_channel_error(lambda: ch.queue_bind(q, "", "k"), 403)
    assert_still_works(conn)


def test_delete_system_exchange_is_403(conn):
    assert_channel_error(lambda: conn.channel().exchange_delete("amq.direct"), 403)
    conn.channel().exchange_declare("amq.direct", "direct", passive=True)


def test_other_connections_exclusive_queue_is_405(broker, conn, uname):
    q = uname("excl")
    owner = broker.connect()
    try:
        och = owner.channel()
        och.queue_declare(q, exclusive=True)
        assert_channel_error(lambda: conn.channel().queue_declare(q), 405, "RESOURCE_LOCKED")
        assert_channel_error(lambda: conn.channel().queue_declare(q, passive=True), 405)
        assert_channel_error(lambda: conn.channel().basic_consume(q, lambda *a: None), 405)
        assert_channel_error(lambda: conn.channel().basic_get(q), 405)
        assert_channel_error(lambda: conn.channel().queue_purge(q), 405)
        assert_channel_error(lambda: conn.channel().queue_delete(q), 405)
        assert_channel_error(lambda: conn.channel().queue_bind(q, "amq.direct", "k"), 405)
        # publishing to it is allowed (RabbitMQ): the owner receives the message
        conn.channel().basic_publish("", q, b"from elsewhere")
        assert_still_works(conn)
        assert och.basic_get(q, auto_ack=True)[2] == b"from elsewhere"
    finally:
        owner.close()
    # owner gone: the exclusive queue is deleted with it
    assert_channel_error(lambda: conn.channel().queue_declare(q, passive=True), 404)


def test_missing_queue_and_exchange_operations_are_404(conn, uname):
    missing_q, missing_x = uname("nq"), uname("nx")
    assert_channel_error(lambda: conn.channel().queue_purge(missing_q), 404)
    assert_channel_error(lambda: conn.channel().queue_bind(missing_q, "amq.direct", "k"), 404)
    assert_channel_error(lambda: conn.channel().basic_get(missing_q), 404)
    assert_channel_error(lambda: conn.channel().basic_consume(missing_q, lambda *a: None), 404)
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    assert_channel_error(lambda: ch.queue_bind(q, missing_x, "k"), 404)
    assert_still_works(conn)


def test_publish_to_missing_exchange_closes_channel_404(conn, uname):
    ch = conn.channel()
    ch.basic_publish(uname("nx"), "k", b"x")
    # the error is asynchronous: the next synchronous call sees the channel closed
    assert_channel_error(lambda: ch.queue_declare("", exclusive=True), 404, "NOT_FOUND")
    assert_still_works(conn)


def test_ack_unknown_delivery_tag_is_406(conn):
    ch = conn.channel()
    ch.basic_ack(12345)
    assert_channel_error(lambda: ch.queue_declare("", exclusive=True), 406, "PRECONDITION_FAILED")
    assert_still_works(conn)


def test_double_ack_is_406(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"m")
    method, _, _ = ch.basic_get(q)
    ch.basic_ack(method.delivery_tag)
    ch.basic_ack(method.delivery_tag)
    assert_channel_error(lambda: ch.queue_declare("", exclusive=True), 406)
    assert_still_works(conn)


def test_delete_missing_queue_and_exchange_is_ok(conn, uname):
    """RabbitMQ 3.10: deleting something that does not exist succeeds (idempotent delete)."""
    ch = conn.channel()
    assert ch.queue_delete(uname("nq")).method.message_count == 0
    ch.exchange_delete(uname("nx"))
    assert ch.is_open


def test_unbind_missing_binding_is_ok(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_unbind(q, "amq.direct", "never-bound")
    assert ch.is_open


def test_unknown_exchange_type_is_connection_error_503(broker, uname):
    # RabbitMQ: a hard (connection) error, 503 COMMAND_INVALID, not a channel error
    c = broker.connect()
    with pytest.raises(pe.ConnectionClosedByBroker) as err:
        c.channel().exchange_declare(uname("x"), "no-such-type")
    assert err.value.reply_code == 503, err.value
    assert c.is_closed


def test_channel_flow_active_true(conn):
    ch = conn.channel()
    assert ch.flow(True) is True
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"x")
    assert ch.basic_get(q, auto_ack=True)[2] == b"x"


def test_channel_flow_pauses_and_resumes_deliveries(conn):
    # Wharf implements channel.flow as the AMQP 0-9-1 specification defines it: active=false
    # stops deliveries to the channel's consumers until active=true. RabbitMQ 3.10 refuses
    # active=false with connection.close 540; this is a documented difference (README).
    ch = conn.channel()
    pub = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    assert ch.flow(False) is False
    for i in range(3):
        pub.basic_publish("", q, b"m%d" % i)
    conn.process_data_events(time_limit=0.5)
    assert got == []
    assert ch.queue_declare(q, passive=True).method.message_count == 3
    assert ch.flow(True) is True
    wait_until(lambda: len(got) == 3, timeout=3, conn=conn)
    assert got == [b"m0", b"m1", b"m2"]


def test_close_channel_with_unacked_requeues(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"m1")
    method, _, _ = ch.basic_get(q)
    assert method is not None
    ch.close()
    ch2 = conn.channel()
    method, body = wait_until(lambda: ch2.basic_get(q, auto_ack=True)[0:3:2], timeout=3)
    assert body == b"m1"
    assert method.redelivered is True


def test_channel_error_releases_unacked(conn):
    ch = conn.channel()
    other = conn.channel()
    q = other.queue_declare("", exclusive=True).method.queue
    other.confirm_delivery()  # so the message is in the queue before ch asks for it
    other.basic_publish("", q, b"m1")
    method, _, _ = ch.basic_get(q)
    assert method is not None
    assert_channel_error(lambda: ch.queue_declare("missing-" + q, passive=True), 404)
    # the release is asynchronous (RabbitMQ too): poll briefly
    result = wait_until(lambda: other.basic_get(q, auto_ack=True)[0:3:2], timeout=3)
    method, body = result
    assert method is not None, "unacked message not released after the channel error"
    assert body == b"m1" and method.redelivered
