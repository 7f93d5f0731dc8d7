"""Graceful shutdown: SIGTERM closes every connection with 320 CONNECTION_FORCED."""

import pika.exceptions as pe
import pytest

import amqp_raw as raw


@pytest.mark.restart
def test_sigterm_sends_connection_close_320(own_broker):
    conns = [own_broker.connect() for _ in range(3)]
    for c in conns:
        ch = c.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_consume(q, lambda *a: None)
    with raw.RawConnection(own_broker.host, own_broker.port, timeout=20) as r:
        r.handshake()
        r.open_channel(1)
        code = own_broker.terminate()
        assert code == 0, f"wharf exited with {code} on SIGTERM"
        close = r.expect_connection_close()
        assert close.reply_code == 320, close
        assert close.reply_text.startswith("CONNECTION_FORCED"), close
        assert (close.class_id, close.method_id) == (0, 0), close
    for c in conns:
        with pytest.raises(pe.ConnectionClosedByBroker) as err:
            c.process_data_events(time_limit=1)
        assert err.value.reply_code == 320, err.value


@pytest.mark.restart
def test_sigterm_idle_broker_exits_zero_and_restarts(own_broker):
    assert own_broker.terminate() == 0
    own_broker.start()
    c = own_broker.connect()
    c.channel().queue_declare("", exclusive=True)
    c.close()


@pytest.mark.restart
def test_sigterm_during_handshake(own_broker):
    """A client that sent only the protocol header does not hold up shutdown."""
    r = raw.RawConnection(own_broker.host, own_broker.port)
    try:
        r.send(raw.PROTOCOL_HEADER)
        r.expect_method(raw.CONNECTION_START)
        assert own_broker.terminate(timeout=15) == 0
    finally:
        r.close()
