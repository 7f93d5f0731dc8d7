"""Crash test: kill -9 under a confirmed publishing load; nothing confirmed may be lost."""

import random
import struct
import threading
import time

import pytest

import amqp_raw as raw

QUEUE = "crash.q"
WINDOW = 200  # unconfirmed publishes in flight
RATE = 5000  # messages per second at most, so the final drain stays short on a fast broker
BASIC_ACK = (60, 80)
BASIC_NACK = (60, 120)
CONFIRM_SELECT = (85, 10)
CONFIRM_SELECT_OK = (85, 11)


class QueueLost(Exception):
    pass


class Publisher(threading.Thread):
    """Publishes persistent messages `id-N` with confirms, pipelined, reconnecting after crashes."""

    def __init__(self, broker):
        super().__init__(daemon=True)
        self.broker = broker
        self.stop = threading.Event()
        self.next_id = 0
        self.confirmed = set()
        self.nacked = set()
        self.unconfirmed = set()  # in flight when a connection died: may or may not be stored
        self.connections = 0
        self.error = None
        self.started = time.monotonic()

    def run(self):
        try:
            while not self.stop.is_set():
                try:
                    conn = self._connect()
                except (OSError, raw.PeerClosed, AssertionError):
                    time.sleep(0.1)  # broker down or restarting
                    continue
                try:
                    self._publish_on(conn)
                except (OSError, raw.PeerClosed, AssertionError):
                    pass
                finally:
                    conn.close()
        except Exception as e:  # pragma: no cover - reported by the test
            self.error = e

    def _connect(self):
        conn = raw.RawConnection(self.broker.host, self.broker.port, timeout=3)
        try:
            conn.handshake(vhost=self.broker.vhost)
            conn.open_channel(1)
            # passive: the durable queue was made before the load and must survive every crash
            conn.send(raw.method_frame(1, raw.QUEUE_DECLARE, raw.queue_declare(QUEUE, passive=True)))
            f = conn.read_method()
            if f.class_method == raw.CHANNEL_CLOSE:
                raise QueueLost(f"durable queue {QUEUE} lost: {raw.Close(f.payload)}")
            assert f.class_method == raw.QUEUE_DECLARE_OK, f
            conn.send(raw.method_frame(1, CONFIRM_SELECT, b"\x00"))
            conn.expect_method(CONFIRM_SELECT_OK, channel=1)
        except BaseException:
            conn.close()
            raise
        self.connections += 1
        return conn

    def _publish_on(self, conn):
        in_flight = {}  # delivery tag -> id
        tag = 0
        try:
            while not self.stop.is_set():
                burst = b""
                allowed = int((time.monotonic() - self.started) * RATE)
                while len(in_flight) < WINDOW and len(burst) < 64 * 1024 and self.next_id < allowed:
                    tag += 1
                    msg_id = self.next_id
                    self.next_id += 1
                    in_flight[tag] = msg_id
                    body = b"id-%08d " % msg_id + b"." * 100
                    burst += raw.method_frame(1, raw.BASIC_PUBLISH, raw.basic_publish("", QUEUE))
                    burst += raw.frame(
                        raw.FRAME_HEADER, 1, struct.pack("!HHQHB", 60, 0, len(body), 0x1000, 2)
                    )
                    burst += raw.body_frame(1, body)
                if burst:
                    conn.send(burst)
                for f in conn.poll_frames(0.05):
                    cm = f.class_method
                    if cm in (BASIC_ACK, BASIC_NACK):
                        dtag, bits = struct.unpack("!QB", f.payload[4:13])
                        done = [t for t in in_flight if t <= dtag] if bits & 1 else [dtag]
                        target = self.confirmed if cm == BASIC_ACK else self.nacked
                        for t in done:
                            target.add(in_flight.pop(t))
                    elif cm == raw.CONNECTION_CLOSE:
                        raise raw.PeerClosed(f"connection.close {raw.Close(f.payload)}")
            # stopping: wait for the last confirms
            deadline = time.monotonic() + 10
            while in_flight and time.monotonic() < deadline:
                for f in conn.poll_frames(0.1):
                    if f.class_method in (BASIC_ACK, BASIC_NACK):
                        dtag, bits = struct.unpack("!QB", f.payload[4:13])
                        done = [t for t in in_flight if t <= dtag] if bits & 1 else [dtag]
                        target = self.confirmed if f.class_method == BASIC_ACK else self.nacked
                        for t in done:
                            target.add(in_flight.pop(t))
        finally:
            self.unconfirmed.update(in_flight.values())


def consume_all(broker):
    """Every body in the queue (no-ack consumer until the queue is drained)."""
    c = broker.connect()
    try:
        ch = c.channel()
        expected = ch.queue_declare(QUEUE, durable=True, passive=True).method.message_count
        ids = []
        for method, _props, body in ch.consume(QUEUE, auto_ack=True, inactivity_timeout=3):
            if method is None:
                break
            ids.append(int(body[3:11]))
            if len(ids) >= expected:
                # anything left would come right away; one more short wait to be sure
                extra = c.channel().queue_declare(QUEUE, durable=True, passive=True).method.message_count
                if extra == 0:
                    break
        ch.cancel()
        return ids, expected
    finally:
        c.close()


@pytest.mark.restart
@pytest.mark.timeout(240)
def test_kill9_under_confirmed_load_loses_nothing_confirmed(own_broker):
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    # The queue is declared, then the broker restarted gracefully, before any crash: RabbitMQ 3.10
    # can lose a durable queue declared just before a kill -9 (its mnesia record is not yet on
    # disk; seen here as "Recovering 0 queues"), which is not what this test is about.
    c = own_broker.connect()
    c.channel().queue_declare(QUEUE, durable=True)
    c.close()
    own_broker.restart()
    pub = Publisher(own_broker)
    pub.start()
    kills = 0
    try:
        for _ in range(3):
            # let the publisher get going on this incarnation first
            deadline = time.monotonic() + 30
            before = len(pub.confirmed)
            while len(pub.confirmed) < before + 50 and time.monotonic() < deadline and pub.is_alive():
                time.sleep(0.05)
            time.sleep(rng.uniform(1.0, 6.0))
            own_broker.kill9()
            kills += 1
            own_broker.start()
        time.sleep(2)
    finally:
        pub.stop.set()
        pub.join(30)
    assert pub.error is None, pub.error
    assert not pub.is_alive(), "publisher thread did not stop"
    assert kills == 3

    ids, counted = consume_all(own_broker)
    received = set(ids)
    missing = pub.confirmed - received
    duplicates = len(ids) - len(received)
    unconfirmed_present = received & pub.unconfirmed
    unknown = received - pub.confirmed - pub.unconfirmed - pub.nacked
    print(
        f"\ncrash test (seed {seed}): published {pub.next_id} on {pub.connections} connections, "
        f"{len(pub.confirmed)} confirmed, {len(pub.nacked)} nacked, {len(pub.unconfirmed)} unconfirmed "
        f"at a crash; queue held {counted}; received {len(ids)} "
        f"({len(unconfirmed_present)} of them unconfirmed, {duplicates} duplicates)"
    )
    assert len(pub.confirmed) > 100, "too little was confirmed for the test to mean anything"
    assert pub.connections >= 4
    assert not missing, f"{len(missing)} confirmed messages lost, e.g. {sorted(missing)[:10]}"
    assert not unknown, f"received ids that were never published: {sorted(unknown)[:10]}"
