"""Publisher confirms and transactions."""

import struct
import time

import pika.exceptions as pe
import pytest

import amqp_raw as raw
from helpers import assert_channel_error

CONFIRM_SELECT = (85, 10)
CONFIRM_SELECT_OK = (85, 11)
BASIC_ACK = (60, 80)
BASIC_NACK = (60, 120)
BASIC_RETURN = (60, 50)


def excl_queue(ch, **kw):
    return ch.queue_declare("", exclusive=True, **kw).method.queue


def raw_publish(r, channel, routing_key, body, exchange="", mandatory=False):
    r.send(raw.method_frame(channel, raw.BASIC_PUBLISH, raw.basic_publish(exchange, routing_key, mandatory)))
    r.send(raw.header_frame(channel, len(body)))
    if body:
        r.send(raw.body_frame(channel, body))


def read_confirms(r, n, timeout=5):
    """Read basic.ack/nack frames until n delivery tags are settled: {tag: 'ack'|'nack'}."""
    settled = {}
    deadline = time.monotonic() + timeout
    while len(settled) < n:
        assert time.monotonic() < deadline, f"only {len(settled)} of {n} confirms arrived"
        f = r.read_method()
        if f.class_method not in (BASIC_ACK, BASIC_NACK):
            continue
        tag, bits = struct.unpack("!QB", f.payload[4:13])
        kind = "ack" if f.class_method == BASIC_ACK else "nack"
        multiple = bool(bits & 1)
        tags = [t for t in range(1, tag + 1) if t not in settled] if multiple else [tag]
        assert tags, f"confirm for already settled tag {tag}"
        for t in tags:
            assert t not in settled, f"tag {t} confirmed twice"
            settled[t] = kind
    return settled


def test_confirm_select_and_all_acked(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    q = excl_queue(ch)
    for i in range(200):
        ch.basic_publish("", q, b"m%d" % i)  # raises on nack
    assert ch.queue_declare(q, passive=True).method.message_count == 200


def test_confirms_raw_pipelined_tags(broker):
    """200 publishes without waiting: acks cover exactly tags 1..200, in order, each once."""
    with raw.RawConnection(broker.host, broker.port) as r:
        r.handshake(vhost=broker.vhost)
        r.open_channel(1)
        q = r.declare_exclusive_queue(1)
        r.send(raw.method_frame(1, CONFIRM_SELECT, b"\x00"))
        r.expect_method(CONFIRM_SELECT_OK, channel=1)
        for i in range(200):
            raw_publish(r, 1, q, b"m%d" % i)
        settled = read_confirms(r, 200)
        assert set(settled) == set(range(1, 201))
        assert set(settled.values()) == {"ack"}


def test_confirms_raw_nack_for_reject_publish(broker):
    with raw.RawConnection(broker.host, broker.port) as r:
        r.handshake(vhost=broker.vhost)
        r.open_channel(1)
        args = struct.pack("!H", 0) + raw.shortstr("") + bytes([0b100])
        table = raw.encode_table({"x-max-length": ("I", 2), "x-overflow": ("S", b"reject-publish")})
        r.send(raw.method_frame(1, raw.QUEUE_DECLARE, args + table))
        f = r.expect_method(raw.QUEUE_DECLARE_OK, channel=1)
        q = f.payload[5 : 5 + f.payload[4]].decode()
        r.send(raw.method_frame(1, CONFIRM_SELECT, b"\x00"))
        r.expect_method(CONFIRM_SELECT_OK, channel=1)
        for i in range(5):
            raw_publish(r, 1, q, b"m%d" % i)
        settled = read_confirms(r, 5)
        assert settled == {1: "ack", 2: "ack", 3: "nack", 4: "nack", 5: "nack"}


def test_unroutable_is_acked_not_nacked(broker, uname):
    with raw.RawConnection(broker.host, broker.port) as r:
        r.handshake(vhost=broker.vhost)
        r.open_channel(1)
        r.send(raw.method_frame(1, CONFIRM_SELECT, b"\x00"))
        r.expect_method(CONFIRM_SELECT_OK, channel=1)
        raw_publish(r, 1, uname("nobody"), b"x", exchange="amq.direct")
        raw_publish(r, 1, uname("nobody"), b"y", exchange="amq.direct", mandatory=True)
        # the mandatory one: basic.return (+ header + body) comes before its ack
        frames = []
        while len([f for f in frames if f.class_method in (BASIC_ACK, BASIC_NACK)]) < 2:
            frames.append(r.read_method())
        methods = [f.class_method for f in frames if f.type == raw.FRAME_METHOD]
        assert methods == [BASIC_ACK, BASIC_RETURN, BASIC_ACK], frames
        ret = frames[1]
        (code,) = struct.unpack("!H", ret.payload[4:6])
        assert code == 312


def test_nack_raises_in_pika(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    q = excl_queue(ch, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.basic_publish("", q, b"fits")
    with pytest.raises(pe.NackError):
        ch.basic_publish("", q, b"does not fit")


def test_confirm_then_tx_select_is_406(conn):
    ch = conn.channel()
    ch.confirm_delivery()
    assert_channel_error(lambda: ch.tx_select(), 406, "PRECONDITION_FAILED")


def test_tx_then_confirm_select_is_406(conn):
    ch = conn.channel()
    ch.tx_select()
    assert_channel_error(lambda: ch.confirm_delivery(), 406, "PRECONDITION_FAILED")


def test_tx_commit_without_select_is_406(conn):
    ch = conn.channel()
    assert_channel_error(lambda: ch.tx_commit(), 406, "PRECONDITION_FAILED")
    ch = conn.channel()
    assert_channel_error(lambda: ch.tx_rollback(), 406, "PRECONDITION_FAILED")


def test_tx_commit_publishes(conn):
    ch = conn.channel()
    q = excl_queue(ch)
    ch.tx_select()
    ch.basic_publish("", q, b"a")
    ch.basic_publish("", q, b"b")
    other = conn.channel()
    assert other.queue_declare(q, passive=True).method.message_count == 0  # not before commit
    ch.tx_commit()
    assert other.queue_declare(q, passive=True).method.message_count == 2
    assert other.basic_get(q, auto_ack=True)[2] == b"a"
    assert other.basic_get(q, auto_ack=True)[2] == b"b"


def test_tx_rollback_discards_publishes(conn):
    ch = conn.channel()
    q = excl_queue(ch)
    ch.tx_select()
    ch.basic_publish("", q, b"rolled back")
    ch.tx_rollback()
    ch.basic_publish("", q, b"committed")
    ch.tx_commit()
    other = conn.channel()
    assert other.basic_get(q, auto_ack=True)[2] == b"committed"
    assert other.basic_get(q)[0] is None


def test_tx_rollback_discards_acks(conn):
    filler = conn.channel()
    filler.confirm_delivery()
    q = excl_queue(filler)
    filler.basic_publish("", q, b"m")
    ch = conn.channel()
    ch.tx_select()
    m, _, _ = ch.basic_get(q)
    ch.basic_ack(m.delivery_tag)
    ch.tx_rollback()
    # the ack did not happen: closing the channel returns the message to the queue
    ch.close()
    other = conn.channel()
    deadline = time.monotonic() + 3
    got = (None, None, None)
    while got[0] is None and time.monotonic() < deadline:
        got = other.basic_get(q, auto_ack=True)
    assert got[2] == b"m" and got[0].redelivered


def test_tx_commit_applies_acks(conn):
    filler = conn.channel()
    filler.confirm_delivery()
    q = excl_queue(filler)
    filler.basic_publish("", q, b"m")
    ch = conn.channel()
    ch.tx_select()
    m, _, _ = ch.basic_get(q)
    ch.basic_ack(m.delivery_tag)
    ch.tx_commit()
    ch.close()
    time.sleep(0.2)
    assert conn.channel().basic_get(q)[0] is None


def test_tx_is_per_channel_and_repeatable(conn):
    ch = conn.channel()
    q = excl_queue(ch)
    ch.tx_select()
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i)
        ch.tx_commit()  # a new transaction starts right after each commit
    ch.basic_publish("", q, b"not committed")
    other = conn.channel()
    other.basic_publish("", q, b"outside tx")  # another channel is not transactional
    time.sleep(0.1)
    assert other.queue_declare(q, passive=True).method.message_count == 4
