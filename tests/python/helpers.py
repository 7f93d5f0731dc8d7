"""Small helpers shared by the pika tests."""

import time

import pika.exceptions as pe
import pytest


def drain(channel, queue, limit=10000):
    """basic.get with no_ack until empty; returns the bodies."""
    out = []
    for _ in range(limit):
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            break
        out.append(body)
    return out


def wait_until(predicate, timeout=5.0, interval=0.05, conn=None):
    """Poll predicate (pumping pika I/O on conn) until true; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if _truthy(value) or time.monotonic() > deadline:
            return value
        if conn is not None:
            conn.process_data_events(time_limit=interval)
        else:
            time.sleep(interval)


def _truthy(value):
    # a (method, body) pair from basic_get is "true" when a message came
    if isinstance(value, tuple):
        return value[0] is not None
    return bool(value)


def assert_channel_error(fn, code, text_prefix=None):
    with pytest.raises(pe.ChannelClosedByBroker) as err:
        fn()
    assert err.value.reply_code == code, (err.value.reply_code, err.value.reply_text)
    if text_prefix:
        assert err.value.reply_text.startswith(text_prefix), err.value.reply_text
    return err.value
