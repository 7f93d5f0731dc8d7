"""Hostile and malformed input on a raw socket (no pika): the server answers with the protocol's
own error, closes, and other connections are unharmed."""

import struct

import pytest

import amqp_raw as raw
from amqp_raw import RawConnection


@pytest.fixture(autouse=True)
def _broker_still_serves(broker):
    """After every bad-input test a fresh, independent pika connection still works."""
    yield
    c = broker.connect()
    try:
        ch = c.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"still alive")
        method, _, body = ch.basic_get(q, auto_ack=True)
        assert body == b"still alive"
    finally:
        c.close()


def connected(broker, **kw):
    c = RawConnection(broker.host, broker.port)
    c.handshake(**kw)
    return c


@pytest.mark.parametrize(
    "header",
    [
        b"AMQP\x00\x00\x09\x02",  # unsupported revision
        b"AMQP\x00\x01\x00\x00",  # AMQP 1.0
        b"AMQP\x03\x01\x00\x00",  # AMQP 1.0 SASL layer
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"\x00\x00\x00\x00\x00\x00\x00\x00",
    ],
    ids=["amqp-0-9-2", "amqp-1-0", "amqp-1-0-sasl", "http-get", "http-response", "zeros"],
)
def test_wrong_protocol_header_gets_supported_header(broker, header):
    with RawConnection(broker.host, broker.port) as c:
        c.send(header)
        data, closed = c.read_until_closed()
        assert data == raw.PROTOCOL_HEADER
        assert closed, "server must close after sending its protocol header"


def test_valid_header_in_pieces(broker):
    """A header split across TCP segments is still a header."""
    with RawConnection(broker.host, broker.port) as c:
        for b in raw.PROTOCOL_HEADER:
            c.send(bytes([b]))
        c.expect_method(raw.CONNECTION_START, channel=0)


def test_bad_frame_end_octet(broker):
    with connected(broker) as c:
        c.send(raw.method_frame(1, raw.CHANNEL_OPEN, raw.shortstr(""), frame_end=0x00))
        close = c.expect_connection_close()
        assert close.reply_code == 501, close  # FRAME_ERROR
        assert close.reply_text.startswith("FRAME_ERROR"), close
        c.expect_socket_closed()


def test_body_frame_larger_than_frame_max(broker):
    with connected(broker, frame_max=4096) as c:
        assert c.frame_max == 4096
        c.open_channel(1)
        c.send(raw.method_frame(1, raw.BASIC_PUBLISH, raw.basic_publish("", "nowhere")))
        c.send(raw.header_frame(1, 10000))
        c.send(raw.body_frame(1, b"x" * 10000))
        close = c.expect_connection_close()
        assert close.reply_code == 501, close
        c.expect_socket_closed()


def test_method_frame_larger_than_frame_max(broker):
    with connected(broker, frame_max=4096) as c:
        c.send(raw.method_frame(1, raw.CHANNEL_OPEN, raw.shortstr("x") + b"y" * 5000))
        close = c.expect_connection_close()
        assert close.reply_code == 501, close
        c.expect_socket_closed()


def test_frame_exactly_frame_max_is_accepted(broker):
    """frame_max counts the whole frame: 7 header octets + payload + frame-end."""
    with connected(broker, frame_max=4096) as c:
        c.open_channel(1)
        q = c.declare_exclusive_queue(1)
        c.send(raw.method_frame(1, (85, 10), b"\x00"))  # confirm.select
        c.expect_method((85, 11), channel=1)
        c.send(raw.method_frame(1, raw.BASIC_PUBLISH, raw.basic_publish("", q)))
        c.send(raw.header_frame(1, 4088))
        body = raw.body_frame(1, b"z" * 4088)
        assert len(body) == 4096
        c.send(body)
        ack = c.expect_method((60, 80), channel=1)  # basic.ack: accepted and queued
        assert struct.unpack("!Q", ack.payload[4:12])[0] == 1
        c.send(raw.method_frame(1, raw.QUEUE_DECLARE, raw.queue_declare(q, passive=True)))
        f = c.expect_method(raw.QUEUE_DECLARE_OK, channel=1)
        (count,) = struct.unpack("!I", f.payload[5 + f.payload[4] : 9 + f.payload[4]])
        assert count == 1


def test_method_on_unopened_channel(broker):
    with connected(broker) as c:
        c.send(raw.method_frame(3, raw.QUEUE_DECLARE, raw.queue_declare("")))
        close = c.expect_connection_close()
        # RabbitMQ: 504 CHANNEL_ERROR "expected 'channel.open'", class/method of the offender
        assert close.reply_code == 504, close
        assert (close.class_id, close.method_id) == raw.QUEUE_DECLARE, close
        c.expect_socket_closed()


def test_second_channel_open_on_open_channel(broker):
    with connected(broker) as c:
        c.open_channel(1)
        c.send(raw.method_frame(1, raw.CHANNEL_OPEN, raw.shortstr("")))
        close = c.expect_connection_close()
        assert close.reply_code == 504, close  # RabbitMQ: "second 'channel.open' seen"
        assert (close.class_id, close.method_id) == raw.CHANNEL_OPEN, close


def test_channel_method_on_channel_zero(broker):
    with connected(broker) as c:
        c.send(raw.method_frame(0, raw.QUEUE_DECLARE, raw.queue_declare("")))
        close = c.expect_connection_close()
        assert close.reply_code == 504, close  # RabbitMQ: CHANNEL_ERROR, not 503
        assert (close.class_id, close.method_id) == raw.QUEUE_DECLARE, close


def test_body_frame_without_header(broker):
    with connected(broker) as c:
        c.open_channel(1)
        c.send(raw.body_frame(1, b"hello"))
        close = c.expect_connection_close()
        assert close.reply_code == 505, close  # UNEXPECTED_FRAME
        c.expect_socket_closed()


def test_header_frame_without_publish(broker):
    with connected(broker) as c:
        c.open_channel(1)
        c.send(raw.header_frame(1, 5))
        close = c.expect_connection_close()
        assert close.reply_code == 505, close


def test_method_instead_of_body(broker):
    """A method frame in the middle of a content (header announced 10 body octets)."""
    with connected(broker) as c:
        c.open_channel(1)
        c.send(raw.method_frame(1, raw.BASIC_PUBLISH, raw.basic_publish("", "nowhere")))
        c.send(raw.header_frame(1, 10))
        c.send(raw.method_frame(1, raw.QUEUE_DECLARE, raw.queue_declare("")))
        close = c.expect_connection_close()
        assert close.reply_code == 505, close


def test_heartbeat_on_nonzero_channel(broker):
    with connected(broker) as c:
        c.open_channel(1)
        c.send(raw.frame(raw.FRAME_HEARTBEAT, 1, b""))
        close = c.expect_connection_close()
        assert close.reply_code == 505, close  # RabbitMQ: UNEXPECTED_FRAME


def test_unknown_frame_type(broker):
    with connected(broker) as c:
        c.open_channel(1)
        c.send(raw.frame(7, 1, b"abc"))
        close = c.expect_connection_close()
        assert close.reply_code == 501, close  # RabbitMQ: FRAME_ERROR "unknown_frame"


def test_truncated_method_arguments(broker):
    with connected(broker) as c:
        c.open_channel(1)
        c.send(raw.method_frame(1, raw.QUEUE_DECLARE, b"\x00"))
        close = c.expect_connection_close()
        assert close.reply_code == 501, close  # RabbitMQ: FRAME_ERROR "cannot decode"
        assert (close.class_id, close.method_id) == raw.QUEUE_DECLARE, close


@pytest.mark.parametrize("class_method", [(50, 99), (999, 10)], ids=["unknown-method", "unknown-class"])
def test_unknown_class_or_method(broker, class_method):
    with connected(broker) as c:
        c.open_channel(1)
        c.send(raw.method_frame(1, class_method, b""))
        # RabbitMQ 3.10's reader process crashes on {unknown_method_id, ...}: the TCP connection is
        # dropped without any connection.close. A connection.close 540 NOT_IMPLEMENTED is better
        # and allowed; anything else (or keeping the connection open) is not.
        try:
            f = c.read_method()
        except raw.PeerClosed:
            return
        assert f.class_method == raw.CONNECTION_CLOSE, f
        close = raw.Close(f.payload)
        assert close.reply_code == 540, close
        c.send(raw.method_frame(0, raw.CONNECTION_CLOSE_OK))
        c.expect_socket_closed()


def test_garbage_after_handshake(broker):
    with connected(broker) as c:
        c.send(b"\xff" * 64)
        close = c.expect_connection_close()
        assert close.reply_code == 501, close


def test_client_disconnect_mid_frame(broker):
    with connected(broker) as c:
        c.open_channel(1)
        c.send(raw.method_frame(1, raw.BASIC_PUBLISH, raw.basic_publish("", "x"))[:9])
    # the autouse fixture checks the broker still serves


def test_bad_input_does_not_affect_other_connection(broker):
    good = broker.connect()
    try:
        ch = good.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        with connected(broker) as c:
            c.send(raw.method_frame(1, raw.CHANNEL_OPEN, raw.shortstr(""), frame_end=0x42))
            assert c.expect_connection_close().reply_code == 501
        ch.basic_publish("", q, b"ok")
        method, _, body = ch.basic_get(q, auto_ack=True)
        assert body == b"ok"
    finally:
        good.close()
