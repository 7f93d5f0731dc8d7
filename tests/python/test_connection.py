"""Connection establishment, authentication, vhosts, heartbeats, server properties."""

import struct
import time

import pika
import pika.exceptions
import pytest

import amqp_raw
from amqp_raw import RawConnection


def test_plain_login_ok(broker):
    c = broker.connect()
    try:
        assert c.is_open
        ch = c.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        assert q.startswith("amq.gen-")
    finally:
        c.close()
    assert c.is_closed


def test_wrong_password_is_access_refused(broker):
    params = broker.params(credentials=pika.PlainCredentials(broker.user, "wrong-password"))
    with pytest.raises(
        (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError)
    ) as err:
        pika.BlockingConnection(params)
    # pika advertises authentication_failure_close, so the server explains with a 403
    assert "403" in str(err.value) or "ACCESS_REFUSED" in str(err.value), err.value


def test_unknown_user_is_access_refused(broker):
    params = broker.params(credentials=pika.PlainCredentials("no-such-user", "guest"))
    with pytest.raises(
        (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError)
    ) as err:
        pika.BlockingConnection(params)
    assert "403" in str(err.value) or "ACCESS_REFUSED" in str(err.value), err.value


def test_wrong_password_raw_close_code(broker):
    """With capabilities.authentication_failure_close the refusal is connection.close 403."""
    caps = amqp_raw.shortstr("authentication_failure_close") + b"t\x01"
    inner = struct.pack("!I", len(caps)) + caps
    props = amqp_raw.shortstr("capabilities") + b"F" + inner
    client_props = struct.pack("!I", len(props)) + props
    start_ok = (
        client_props
        + amqp_raw.shortstr("PLAIN")
        + amqp_raw.longstr(b"\x00guest\x00not-the-password")
        + amqp_raw.shortstr("en_US")
    )
    with RawConnection(broker.host, broker.port) as c:
        c.send(amqp_raw.PROTOCOL_HEADER)
        c.expect_method(amqp_raw.CONNECTION_START, channel=0)
        c.send(amqp_raw.method_frame(0, amqp_raw.CONNECTION_START_OK, start_ok))
        close = c.expect_connection_close()
        assert close.reply_code == 403, close
        assert close.reply_text.startswith("ACCESS_REFUSED"), close
        c.expect_socket_closed()


def test_unknown_vhost_is_not_allowed(broker):
    # pika wraps the broker's connection.close in ProbableAccessDeniedError
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as err:
        broker.connect(virtual_host="/no-such-vhost")
    assert "(530) 'NOT_ALLOWED" in str(err.value), err.value


def test_unknown_vhost_raw(broker):
    with RawConnection(broker.host, broker.port) as c:
        c.send(amqp_raw.PROTOCOL_HEADER)
        c.expect_method(amqp_raw.CONNECTION_START)
        c.send(amqp_raw.method_frame(0, amqp_raw.CONNECTION_START_OK, amqp_raw.start_ok()))
        c.expect_method(amqp_raw.CONNECTION_TUNE)
        c.send(amqp_raw.method_frame(0, amqp_raw.CONNECTION_TUNE_OK, amqp_raw.tune_ok(2047, 131072)))
        c.send(amqp_raw.method_frame(0, amqp_raw.CONNECTION_OPEN, amqp_raw.connection_open("nope")))
        close = c.expect_connection_close()
        assert close.reply_code == 530, close
        assert (close.class_id, close.method_id) == amqp_raw.CONNECTION_OPEN, close
        c.expect_socket_closed()


def test_connection_start_offers_plain_and_en_us(broker):
    with RawConnection(broker.host, broker.port) as c:
        c.send(amqp_raw.PROTOCOL_HEADER)
        f = c.expect_method(amqp_raw.CONNECTION_START, channel=0)
        p = f.payload[4:]
        assert p[0:2] == b"\x00\x09", "version-major 0, version-minor 9"
        (tlen,) = struct.unpack("!I", p[2:6])
        rest = p[6 + tlen :]
        (mlen,) = struct.unpack("!I", rest[:4])
        mechanisms = rest[4 : 4 + mlen].decode().split()
        rest = rest[4 + mlen :]
        (llen,) = struct.unpack("!I", rest[:4])
        locales = rest[4 : 4 + llen].decode().split()
        assert "PLAIN" in mechanisms
        assert "en_US" in locales


def test_tune_proposes_limits(broker):
    with RawConnection(broker.host, broker.port) as c:
        c.send(amqp_raw.PROTOCOL_HEADER)
        c.expect_method(amqp_raw.CONNECTION_START)
        c.send(amqp_raw.method_frame(0, amqp_raw.CONNECTION_START_OK, amqp_raw.start_ok()))
        f = c.expect_method(amqp_raw.CONNECTION_TUNE, channel=0)
        channel_max, frame_max, heartbeat = struct.unpack("!HIH", f.payload[4:12])
        assert channel_max > 0
        assert frame_max >= 4096  # spec minimum frame size
        assert heartbeat > 0  # RabbitMQ proposes 60


def test_server_properties(conn):
    props = conn._impl.server_properties
    assert props.get("product"), props
    assert props.get("version"), props
    caps = props["capabilities"]
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ]:
        assert caps.get(cap) is True, (cap, caps)


def test_heartbeat_keeps_idle_connection_alive(broker):
    # pika checks every heartbeat+5 s that bytes arrived; with heartbeat=2 the check runs at 7 s,
    # so idling 8 s fails unless the server sends heartbeats.
    c = broker.connect(heartbeat=2)
    try:
        assert c._impl.params.heartbeat == 2
        ch = c.channel()
        c.sleep(8)
        assert c.is_open
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"after idle")
        method, _, body = ch.basic_get(q, auto_ack=True)
        assert body == b"after idle"
    finally:
        if c.is_open:
            c.close()


def test_server_sends_heartbeats_at_negotiated_interval(broker):
    with RawConnection(broker.host, broker.port, timeout=5) as c:
        c.handshake(heartbeat=1)
        t0 = time.monotonic()
        beats = 0
        while beats < 2:
            f = c.read_frame()
            if f.type == amqp_raw.FRAME_HEARTBEAT:
                assert f.channel == 0
                assert f.payload == b""
                beats += 1
            # keep our side alive too
            c.send(amqp_raw.frame(amqp_raw.FRAME_HEARTBEAT, 0, b""))
        assert time.monotonic() - t0 < 4.5


def test_server_closes_silent_client_after_missed_heartbeats(broker):
    with RawConnection(broker.host, broker.port, timeout=10) as c:
        c.handshake(heartbeat=1)
        t0 = time.monotonic()
        # send nothing: RabbitMQ drops the TCP connection after ~2 missed heartbeats (no close frame)
        c.expect_socket_closed(timeout=8)
        assert time.monotonic() - t0 < 8


def test_heartbeat_zero_disables(broker):
    with RawConnection(broker.host, broker.port, timeout=3.5) as c:
        c.handshake(heartbeat=0)
        with pytest.raises(TimeoutError):
            c.read_frame()  # nothing at all arrives: no heartbeats


def test_client_close(broker):
    c = broker.connect()
    ch = c.channel()
    ch.queue_declare("", exclusive=True)
    c.close()
    assert c.is_closed
    assert ch.is_closed


def test_client_close_raw_gets_close_ok(broker):
    with RawConnection(broker.host, broker.port) as c:
        c.handshake()
        c.open_channel(1)
        args = struct.pack("!H", 200) + amqp_raw.shortstr("bye") + struct.pack("!HH", 0, 0)
        c.send(amqp_raw.method_frame(0, amqp_raw.CONNECTION_CLOSE, args))
        c.expect_method(amqp_raw.CONNECTION_CLOSE_OK, channel=0)
        # the client, having sent close and received close-ok, closes the socket itself


@pytest.mark.parametrize(
    "channel_max,frame_max",
    [(2047, 1000), (2047, 0), (0, 131072)],
    ids=["frame_max-below-4096", "frame_max-0-unlimited", "channel_max-0-unlimited"],
)
def test_tune_ok_outside_limits_is_refused(broker, channel_max, frame_max):
    """RabbitMQ refuses a tune-ok under the 4096 minimum or above what it proposed (0 means
    unlimited, which is above its proposal): it never answers connection.open and drops the TCP
    connection (3.10: ~3 s later, without a connection.close frame)."""
    with RawConnection(broker.host, broker.port, timeout=8) as c:
        c.send(amqp_raw.PROTOCOL_HEADER)
        c.expect_method(amqp_raw.CONNECTION_START)
        c.send(amqp_raw.method_frame(0, amqp_raw.CONNECTION_START_OK, amqp_raw.start_ok()))
        f = c.expect_method(amqp_raw.CONNECTION_TUNE)
        proposed_channel_max, _, _ = struct.unpack("!HIH", f.payload[4:12])
        if channel_max == 0:
            assert proposed_channel_max != 0, "server proposes a finite channel_max"
        c.send(
            amqp_raw.method_frame(0, amqp_raw.CONNECTION_TUNE_OK, amqp_raw.tune_ok(channel_max, frame_max))
        )
        c.send(amqp_raw.method_frame(0, amqp_raw.CONNECTION_OPEN, amqp_raw.connection_open("/")))
        try:
            f = c.read_method()
        except amqp_raw.PeerClosed:
            return  # RabbitMQ: dropped without a close frame
        assert f.class_method == amqp_raw.CONNECTION_CLOSE, f"expected a refusal, got {f!r}"
        c.send(amqp_raw.method_frame(0, amqp_raw.CONNECTION_CLOSE_OK))
        c.expect_socket_closed()


def test_many_connections_and_channels(broker):
    conns = [broker.connect() for _ in range(10)]
    try:
        chans = [c.channel() for c in conns for _ in range(5)]
        for ch in chans:
            ch.queue_declare("", exclusive=True)
        assert len({ch.channel_number for ch in chans[:5]}) == 5
    finally:
        for c in conns:
            c.close()
