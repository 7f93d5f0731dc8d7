"""Direct reply-to: RPC through the pseudo-queue amq.rabbitmq.reply-to."""

import pika

from helpers import assert_channel_error, wait_until

REPLY_TO = "amq.rabbitmq.reply-to"


def test_rpc_round_trip(broker, conn):
    server_conn = broker.connect()
    try:
        server = server_conn.channel()
        rpc_q = server.queue_declare("", exclusive=True).method.queue
        seen_reply_to = []

        def on_request(ch, method, props, body):
            seen_reply_to.append(props.reply_to)
            ch.basic_publish(
                "",
                props.reply_to,
                body.upper(),
                pika.BasicProperties(correlation_id=props.correlation_id),
            )
            ch.basic_ack(method.delivery_tag)

        server.basic_consume(rpc_q, on_request)

        client = conn.channel()
        replies = []
        client.basic_consume(
            REPLY_TO, lambda c, m, p, b: replies.append((p.correlation_id, b)), auto_ack=True
        )
        for i in range(3):
            client.basic_publish(
                "", rpc_q, b"hello %d" % i, pika.BasicProperties(reply_to=REPLY_TO, correlation_id=f"c{i}")
            )

        def pump():
            server_conn.process_data_events(0.02)
            conn.process_data_events(0.02)
            return len(replies) == 3

        assert wait_until(pump, timeout=5)
        assert replies == [("c0", b"HELLO 0"), ("c1", b"HELLO 1"), ("c2", b"HELLO 2")]
        # the broker rewrote reply_to into a routable per-channel name
        assert all(r.startswith(REPLY_TO + ".") and len(r) > len(REPLY_TO) + 1 for r in seen_reply_to)
    finally:
        server_conn.close()


def test_reply_to_name_is_not_a_real_queue_for_others(broker, conn):
    """Replies to a reply-to name whose channel is gone are dropped, not errors."""
    client = conn.channel()
    names = []
    client.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    echo = conn.channel()
    q = echo.queue_declare("", exclusive=True).method.queue
    client.basic_publish("", q, b"x", pika.BasicProperties(reply_to=REPLY_TO))
    m, props, _ = wait_until(lambda: echo.basic_get(q, auto_ack=True), timeout=3)
    names.append(props.reply_to)
    client.close()
    other = broker.connect()
    try:
        ch = other.channel()
        ch.confirm_delivery()
        ch.basic_publish("", names[0], b"late reply")  # acked, silently dropped
        assert ch.is_open
    finally:
        other.close()


def test_reply_consumer_must_be_no_ack(conn):
    ch = conn.channel()
    assert_channel_error(
        lambda: ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=False), 406, "PRECONDITION_FAILED"
    )


def test_publish_with_reply_to_without_consumer_is_406(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"x", pika.BasicProperties(reply_to=REPLY_TO))
    assert_channel_error(lambda: ch.queue_declare("", exclusive=True), 406, "PRECONDITION_FAILED")


def test_passive_declare_of_reply_to_pseudo_queue(conn):
    ok = conn.channel().queue_declare(REPLY_TO, passive=True).method
    assert ok.queue == REPLY_TO
    # RabbitMQ 3.10 answers message_count 0, consumer_count 1 for the pseudo-queue
    assert (ok.message_count, ok.consumer_count) == (0, 1)
