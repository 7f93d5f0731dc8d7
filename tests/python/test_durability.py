"""Durability across restarts (SIGTERM) and crashes (SIGKILL). wharf only: marked `restart`."""

import time

import pika
import pika.exceptions as pe
import pytest

from helpers import assert_channel_error

pytestmark = pytest.mark.restart

PERSISTENT = pika.BasicProperties(delivery_mode=2)
TRANSIENT = pika.BasicProperties(delivery_mode=1)


def restart(broker, how):
    if how == "sigterm":
        broker.restart(kill=False)
    else:
        broker.restart(kill=True)


def bodies(ch, q):
    out = []
    while True:
        m, _, body = ch.basic_get(q, auto_ack=True)
        if m is None:
            return out
        out.append(body)


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_durable_entities_and_persistent_messages_survive(own_broker, how):
    c = own_broker.connect()
    ch = c.channel()
    ch.confirm_delivery()
    ch.exchange_declare("d.x", "topic", durable=True)
    ch.exchange_declare("d.fan", "fanout", durable=True)
    ch.exchange_bind("d.fan", "d.x", "route.#")  # exchange-to-exchange binding
    ch.queue_declare("d.q", durable=True)
    ch.queue_declare("d.q2", durable=True)
    ch.queue_bind("d.q", "d.x", "a.*")
    ch.queue_bind("d.q2", "d.fan")
    ch.queue_declare("t.q", durable=False)
    ch.exchange_declare("t.x", "direct", durable=False)
    for i in range(20):
        ch.basic_publish("d.x", "a.b", b"p%d" % i, PERSISTENT)  # confirmed = on disk
    ch.basic_publish("d.x", "a.b", b"transient", TRANSIENT)
    ch.basic_publish("d.x", "route.1", b"via e2e", PERSISTENT)
    ch.basic_publish("", "t.q", b"in non-durable queue", PERSISTENT)
    c.close()

    restart(own_broker, how)

    c = own_broker.connect()
    ch = c.channel()
    ch.exchange_declare("d.x", passive=True)
    ch.exchange_declare("d.fan", passive=True)
    assert ch.queue_declare("d.q", passive=True).method.message_count == 20
    assert bodies(ch, "d.q") == [b"p%d" % i for i in range(20)]
    assert bodies(ch, "d.q2") == [b"via e2e"]
    # bindings, including the exchange-to-exchange one, still route
    ch.confirm_delivery()
    ch.basic_publish("d.x", "a.z", b"after", PERSISTENT)
    ch.basic_publish("d.x", "route.2", b"after e2e", PERSISTENT)
    assert bodies(ch, "d.q") == [b"after"]
    assert bodies(ch, "d.q2") == [b"after e2e"]
    # non-durable things are gone
    assert_channel_error(lambda: ch.queue_declare("t.q", passive=True), 404)
    ch = c.channel()
    assert_channel_error(lambda: ch.exchange_declare("t.x", passive=True), 404)
    c.close()


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_queue_arguments_survive(own_broker, how):
    args = {"x-max-length": 3, "x-message-ttl": 600000, "x-dead-letter-exchange": "d.dlx"}
    c = own_broker.connect()
    ch = c.channel()
    ch.exchange_declare("d.dlx", "fanout", durable=True)
    ch.exchange_declare("d.main", "direct", durable=True, arguments={"alternate-exchange": "d.ae"})
    ch.exchange_declare("d.ae", "fanout", durable=True)
    ch.queue_declare("d.args", durable=True, arguments=args)
    ch.queue_declare("d.dead", durable=True)
    ch.queue_declare("d.unrouted", durable=True)
    ch.queue_bind("d.dead", "d.dlx")
    ch.queue_bind("d.unrouted", "d.ae")
    c.close()

    restart(own_broker, how)

    c = own_broker.connect()
    ch = c.channel()
    ch.confirm_delivery()
    ch.queue_declare("d.args", durable=True, arguments=args)  # equivalent: fine
    with pytest.raises(pe.ChannelClosedByBroker) as err:
        c.channel().queue_declare("d.args", durable=True, arguments={"x-max-length": 4})
    assert err.value.reply_code == 406
    # the arguments still act: max-length 3 drops the head into the dead-letter exchange
    for i in range(4):
        ch.basic_publish("", "d.args", b"m%d" % i, PERSISTENT)
    assert bodies(ch, "d.args") == [b"m1", b"m2", b"m3"]
    deadline = time.monotonic() + 3
    dead = []
    while not dead and time.monotonic() < deadline:
        dead = bodies(ch, "d.dead")
    assert dead == [b"m0"]
    # the alternate exchange still acts
    ch.basic_publish("d.main", "nowhere", b"alt", PERSISTENT)
    assert bodies(ch, "d.unrouted") == [b"alt"]
    c.close()


def test_transient_messages_in_durable_queue_do_not_survive(own_broker):
    c = own_broker.connect()
    ch = c.channel()
    ch.confirm_delivery()
    ch.queue_declare("d.mixed", durable=True)
    ch.basic_publish("", "d.mixed", b"t1", TRANSIENT)
    ch.basic_publish("", "d.mixed", b"p1", PERSISTENT)
    ch.basic_publish("", "d.mixed", b"t2")  # no delivery_mode = transient
    ch.basic_publish("", "d.mixed", b"p2", PERSISTENT)
    c.close()
    own_broker.restart()
    c = own_broker.connect()
    assert bodies(c.channel(), "d.mixed") == [b"p1", b"p2"]
    c.close()


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_acked_messages_do_not_come_back(own_broker, how):
    c = own_broker.connect()
    ch = c.channel()
    ch.confirm_delivery()
    ch.queue_declare("d.acks", durable=True)
    for i in range(10):
        ch.basic_publish("", "d.acks", b"m%d" % i, PERSISTENT)
    consumer = c.channel()
    got = []
    for _ in range(6):
        m, _, body = consumer.basic_get("d.acks")
        got.append(body)
        consumer.basic_ack(m.delivery_tag)
    m, _, unacked = consumer.basic_get("d.acks")  # delivered, never acked
    assert got == [b"m%d" % i for i in range(6)] and unacked == b"m6"
    c.close()  # clean close: acks are in, the unacked one goes back to the queue
    if how == "sigkill":
        time.sleep(1.0)  # allow for a group-commit window before the crash
    restart(own_broker, how)
    c = own_broker.connect()
    ch = c.channel()
    assert ch.queue_declare("d.acks", passive=True).method.message_count == 4
    assert bodies(ch, "d.acks") == [b"m6", b"m7", b"m8", b"m9"]
    c.close()


def test_deleted_and_unbound_stay_gone(own_broker):
    c = own_broker.connect()
    ch = c.channel()
    ch.confirm_delivery()
    ch.exchange_declare("d.gone.x", "direct", durable=True)
    ch.queue_declare("d.gone.q", durable=True)
    ch.queue_declare("d.kept.q", durable=True)
    ch.queue_bind("d.kept.q", "amq.direct", "k1")
    ch.queue_bind("d.kept.q", "amq.direct", "k2")
    ch.basic_publish("", "d.gone.q", b"m", PERSISTENT)
    ch.queue_delete("d.gone.q")
    ch.exchange_delete("d.gone.x")
    ch.queue_unbind("d.kept.q", "amq.direct", "k1")
    c.close()
    own_broker.restart()
    c = own_broker.connect()
    assert_channel_error(lambda: c.channel().queue_declare("d.gone.q", passive=True), 404)
    assert_channel_error(lambda: c.channel().exchange_declare("d.gone.x", passive=True), 404)
    ch = c.channel()
    ch.confirm_delivery()
    ch.basic_publish("amq.direct", "k1", b"k1")
    ch.basic_publish("amq.direct", "k2", b"k2")
    assert bodies(ch, "d.kept.q") == [b"k2"]
    c.close()


def test_purged_messages_stay_gone(own_broker):
    c = own_broker.connect()
    ch = c.channel()
    ch.confirm_delivery()
    ch.queue_declare("d.purge", durable=True)
    for i in range(5):
        ch.basic_publish("", "d.purge", b"old%d" % i, PERSISTENT)
    assert ch.queue_purge("d.purge").method.message_count == 5
    ch.basic_publish("", "d.purge", b"new", PERSISTENT)
    c.close()
    own_broker.restart()
    c = own_broker.connect()
    assert bodies(c.channel(), "d.purge") == [b"new"]
    c.close()


def test_survives_two_restarts_and_properties_kept(own_broker):
    props = pika.BasicProperties(
        delivery_mode=2,
        content_type="text/plain",
        message_id="id-42",
        headers={"h": "v", "n": 7, "nested": {"a": [1, "b"]}},
        priority=3,
        timestamp=1_700_000_000,
    )
    c = own_broker.connect()
    ch = c.channel()
    ch.confirm_delivery()
    ch.queue_declare("d.props", durable=True)
    ch.basic_publish("", "d.props", b"body", props)
    c.close()
    own_broker.restart(kill=True)
    own_broker.restart()
    c = own_broker.connect()
    m, got, body = c.channel().basic_get("d.props", auto_ack=True)
    assert body == b"body"
    for field in ["delivery_mode", "content_type", "message_id", "headers", "priority", "timestamp"]:
        assert getattr(got, field) == getattr(props, field), field
    c.close()


def test_large_persistent_messages_survive_crash(own_broker):
    big = bytes(range(256)) * 2048  # 512 KiB
    c = own_broker.connect()
    ch = c.channel()
    ch.confirm_delivery()
    ch.queue_declare("d.big", durable=True)
    for i in range(4):
        ch.basic_publish("", "d.big", bytes([i]) + big, PERSISTENT)
    own_broker.kill9()
    own_broker.start()
    c = own_broker.connect()
    got = bodies(c.channel(), "d.big")
    assert got == [bytes([i]) + big for i in range(4)]
    c.close()
