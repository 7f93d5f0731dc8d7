"""Exchanges: kinds, declare flags, e2e bindings, the predeclared exchanges, topic and headers
matching, alternate exchanges."""

import pika
import pika.exceptions as pe
import pytest

from helpers import assert_channel_error


@pytest.fixture
def pub(conn):
    """A channel in confirm mode: when basic_publish returns, routing is done."""
    ch = conn.channel()
    ch.confirm_delivery()
    return ch


def got(ch, q):
    """The bodies now in q (consumed)."""
    out = []
    while True:
        method, _, body = ch.basic_get(q, auto_ack=True)
        if method is None:
            return out
        out.append(body)


def excl_queue(ch):
    return ch.queue_declare("", exclusive=True).method.queue


@pytest.mark.parametrize("kind", ["direct", "fanout", "topic", "headers"])
def test_declare_each_kind_and_passive(ch, uname, kind):
    x = uname(kind)
    ch.exchange_declare(x, kind, auto_delete=False)
    try:
        ch.exchange_declare(x, passive=True)  # no type needed for passive
        ch.exchange_declare(x, kind)  # same again: fine
    finally:
        ch.exchange_delete(x)
    assert_channel_error(lambda: ch.exchange_declare(x, passive=True), 404)


def test_direct_routes_by_exact_key(ch, pub, uname):
    x = uname("x")
    ch.exchange_declare(x, "direct", auto_delete=True)
    q1, q2 = excl_queue(ch), excl_queue(ch)
    ch.queue_bind(q1, x, "k1")
    ch.queue_bind(q2, x, "k2")
    ch.queue_bind(q2, x, "k1")  # a queue may have several bindings
    pub.basic_publish(x, "k1", b"one")
    pub.basic_publish(x, "k2", b"two")
    pub.basic_publish(x, "k3", b"three")
    pub.basic_publish(x, "K1", b"case")
    assert got(ch, q1) == [b"one"]
    assert got(ch, q2) == [b"one", b"two"]


def test_same_binding_twice_delivers_once(ch, pub, uname):
    x = uname("x")
    ch.exchange_declare(x, "direct", auto_delete=True)
    q = excl_queue(ch)
    ch.queue_bind(q, x, "k")
    ch.queue_bind(q, x, "k")
    pub.basic_publish(x, "k", b"m")
    assert got(ch, q) == [b"m"]


def test_fanout_ignores_key(ch, pub, uname):
    x = uname("x")
    ch.exchange_declare(x, "fanout", auto_delete=True)
    qs = [excl_queue(ch) for _ in range(3)]
    for i, q in enumerate(qs):
        ch.queue_bind(q, x, f"whatever-{i}")
    pub.basic_publish(x, "anything", b"m")
    for q in qs:
        assert got(ch, q) == [b"m"]


def test_durable_exchange_declares(ch, uname):
    x = uname("x")
    ch.exchange_declare(x, "topic", durable=True)
    try:
        ch.exchange_declare(x, "topic", durable=True, passive=True)
        assert_channel_error(lambda: ch.connection.channel().exchange_declare(x, "topic", durable=False), 406)
    finally:
        ch.connection.channel().exchange_delete(x)


def test_auto_delete_exchange_goes_with_last_binding(conn, uname):
    ch = conn.channel()
    x = uname("x")
    ch.exchange_declare(x, "direct", auto_delete=True)
    # never bound: still there
    ch.exchange_declare(x, passive=True)
    q1, q2 = excl_queue(ch), excl_queue(ch)
    ch.queue_bind(q1, x, "a")
    ch.queue_bind(q2, x, "b")
    ch.queue_unbind(q1, x, "a")
    ch.exchange_declare(x, passive=True)  # one binding left
    ch.queue_unbind(q2, x, "b")
    assert_channel_error(lambda: ch.exchange_declare(x, passive=True), 404)


def test_auto_delete_exchange_goes_when_bound_queue_is_deleted(conn, uname):
    ch = conn.channel()
    x = uname("x")
    ch.exchange_declare(x, "fanout", auto_delete=True)
    q = excl_queue(ch)
    ch.queue_bind(q, x)
    ch.queue_delete(q)
    assert_channel_error(lambda: ch.exchange_declare(x, passive=True), 404)


def test_internal_exchange_refuses_publish_403(conn, uname):
    ch = conn.channel()
    internal, front = uname("internal"), uname("front")
    ch.exchange_declare(internal, "fanout", internal=True, auto_delete=True)
    ch.exchange_declare(front, "fanout", auto_delete=True)
    q = excl_queue(ch)
    ch.queue_bind(q, internal)
    ch.exchange_bind(internal, front)
    # through an exchange-to-exchange binding it routes
    ch.basic_publish(front, "", b"via front")
    assert got(ch, q) == [b"via front"]
    pub = conn.channel()
    pub.basic_publish(internal, "", b"direct to internal")
    assert_channel_error(lambda: pub.queue_declare("", exclusive=True), 403, "ACCESS_REFUSED")
    assert got(ch, q) == []


def test_delete_if_unused(conn, uname):
    ch = conn.channel()
    x = uname("x")
    ch.exchange_declare(x, "direct")
    q = excl_queue(ch)
    ch.queue_bind(q, x, "k")
    assert_channel_error(
        lambda: conn.channel().exchange_delete(x, if_unused=True), 406, "PRECONDITION_FAILED"
    )
    ch.exchange_declare(x, passive=True)
    ch.queue_unbind(q, x, "k")
    ch.exchange_delete(x, if_unused=True)
    assert_channel_error(lambda: ch.exchange_declare(x, passive=True), 404)


def test_delete_exchange_removes_its_bindings(ch, pub, uname):
    x = uname("x")
    ch.exchange_declare(x, "fanout")
    q = excl_queue(ch)
    ch.queue_bind(q, x)
    ch.exchange_delete(x)
    ch.exchange_declare(x, "fanout")
    try:
        pub.basic_publish(x, "", b"m")
        assert got(ch, q) == []  # the old binding went with the old exchange
    finally:
        ch.exchange_delete(x)


def test_exchange_to_exchange_bind_and_unbind(ch, pub, uname):
    src, dst = uname("src"), uname("dst")
    ch.exchange_declare(src, "topic", auto_delete=True)
    ch.exchange_declare(dst, "direct", auto_delete=True)
    q_dst, q_src = excl_queue(ch), excl_queue(ch)
    ch.queue_bind(q_dst, dst, "a.b")
    ch.queue_bind(q_src, src, "#")
    ch.exchange_bind(destination=dst, source=src, routing_key="a.*")
    pub.basic_publish(src, "a.b", b"routed")  # src -> dst (a.*), dst -> q_dst (a.b)
    pub.basic_publish(src, "a.c", b"dst-no-queue")  # src -> dst, but dst has no a.c binding
    pub.basic_publish(src, "x.y", b"src-only")
    assert got(ch, q_dst) == [b"routed"]
    assert got(ch, q_src) == [b"routed", b"dst-no-queue", b"src-only"]
    ch.exchange_unbind(destination=dst, source=src, routing_key="a.*")
    pub.basic_publish(src, "a.b", b"after unbind")
    assert got(ch, q_dst) == []
    assert got(ch, q_src) == [b"after unbind"]


def test_exchange_binding_cycle_delivers_once(ch, pub, uname):
    a, b = uname("a"), uname("b")
    ch.exchange_declare(a, "fanout", auto_delete=True)
    ch.exchange_declare(b, "fanout", auto_delete=True)
    ch.exchange_bind(b, a)
    ch.exchange_bind(a, b)
    q = excl_queue(ch)
    ch.queue_bind(q, a)
    ch.queue_bind(q, b)
    pub.basic_publish(a, "", b"once")
    assert got(ch, q) == [b"once"]


def test_exchange_bind_missing_is_404(conn, uname):
    ch = conn.channel()
    x = uname("x")
    ch.exchange_declare(x, "fanout", auto_delete=True)
    assert_channel_error(lambda: ch.exchange_bind(x, uname("missing")), 404)
    ch = conn.channel()
    assert_channel_error(lambda: ch.exchange_bind(uname("missing"), x), 404)


@pytest.mark.parametrize(
    "name,kind",
    [
        ("amq.direct", "direct"),
        ("amq.fanout", "fanout"),
        ("amq.topic", "topic"),
        ("amq.headers", "headers"),
        ("amq.match", "headers"),
    ],
)
def test_predeclared_exchanges_exist(ch, pub, name, kind):
    ch.exchange_declare(name, passive=True)
    ch.exchange_declare(name, kind, durable=True)  # equivalent redeclare is allowed
    q = excl_queue(ch)
    if kind == "headers":
        ch.queue_bind(q, name, arguments={"x-match": "all", "k": q})
        pub.basic_publish(name, "", b"m", pika.BasicProperties(headers={"k": q}))
    else:
        ch.queue_bind(q, name, q)
        pub.basic_publish(name, q, b"m")
    assert got(ch, q) == [b"m"]


def test_default_exchange_routes_by_queue_name(ch, pub):
    q = excl_queue(ch)
    pub.basic_publish("", q, b"m")
    assert got(ch, q) == [b"m"]
    # RabbitMQ 3.10: even a passive declare of the default exchange is 403 ACCESS_REFUSED
    assert_channel_error(lambda: ch.exchange_declare("", passive=True), 403)


def test_default_exchange_unroutable_key_is_dropped(pub):
    returned = []
    pub.add_on_return_callback(lambda *a: returned.append(a))
    pub.basic_publish("", "no-queue-has-this-name-xyz", b"m")  # not mandatory: silently dropped
    pub.connection.process_data_events(0.2)
    assert returned == []


# ---------------------------------------------------------------------------------------------
# topic matching: pattern, routing key, matches?

TOPIC_CASES = [
    ("a.b.c", "a.b.c", True),
    ("a.b.c", "a.b", False),
    ("a.b.c", "a.b.c.d", False),
    ("a.b", "a.bb", False),
    ("*.orange.*", "quick.orange.rabbit", True),
    ("*.orange.*", "quick.orange.fox.x", False),
    ("*.orange.*", "orange", False),
    ("*", "a", True),
    ("*", "a.b", False),
    ("*", "", False),  # RabbitMQ: the empty key has no words (but "a." has two)
    ("*.*", "a.b", True),
    ("*.*", "a", False),
    ("#", "", True),
    ("#", "a", True),
    ("#", "a.b.c", True),
    ("a.#", "a", True),
    ("a.#", "a.b", True),
    ("a.#", "a.b.c", True),
    ("a.#", "b.a", False),
    ("a.#", "ab", False),
    ("#.b", "b", True),
    ("#.b", "a.b", True),
    ("#.b", "a.b.c", False),
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.x.b", True),
    ("a.#.b", "a.x.y.b", True),
    ("a.#.b", "a.b.c", False),
    ("a.#.b", "a.x.b.b", True),
    ("#.#", "a", True),
    ("#.*", "a.b", True),
    ("#.*", "", False),
    ("*.#", "a", True),
    ("a.*.#", "a", False),
    ("a.*.#", "a.b", True),
    ("a.*.b", "a..b", True),  # empty middle word
    ("a.*", "a.", True),  # empty last word
    ("*.b", ".b", True),  # empty first word
    ("a..b", "a..b", True),
    ("a..b", "a.x.b", False),
    ("", "", True),
    ("", "a", False),
]


def test_topic_matching(ch, pub, uname):
    x = uname("topic")
    ch.exchange_declare(x, "topic", auto_delete=True)
    queues = {}
    for pattern in sorted({p for p, _, _ in TOPIC_CASES}):
        q = excl_queue(ch)
        ch.queue_bind(q, x, pattern)
        queues[pattern] = q
    keys = sorted({k for _, k, _ in TOPIC_CASES})
    for i, key in enumerate(keys):
        pub.basic_publish(x, key, str(i).encode())
    received = {p: {keys[int(b)] for b in got(ch, q)} for p, q in queues.items()}
    wrong = [
        (pattern, key, expected)
        for pattern, key, expected in TOPIC_CASES
        if (key in received[pattern]) != expected
    ]
    assert wrong == [], "(pattern, key, expected match) that the broker got wrong"


def test_topic_unbind_stops_matching(ch, pub, uname):
    x = uname("topic")
    ch.exchange_declare(x, "topic", auto_delete=True)
    q = excl_queue(ch)
    ch.queue_bind(q, x, "a.*")
    ch.queue_bind(q, x, "#.b")
    pub.basic_publish(x, "a.b", b"1")  # matches both bindings: delivered once
    ch.queue_unbind(q, x, "a.*")
    pub.basic_publish(x, "a.b", b"2")  # still #.b
    pub.basic_publish(x, "a.c", b"3")  # nothing
    assert got(ch, q) == [b"1", b"2"]


# ---------------------------------------------------------------------------------------------
# headers matching: binding arguments, message headers, matches?

HEADERS_CASES = [
    ("all-2", {"x-match": "all", "a": 1, "b": "x"}, {"a": 1, "b": "x", "c": 3}, True),
    ("all-2", {"x-match": "all", "a": 1, "b": "x"}, {"a": 1}, False),
    ("all-2", {"x-match": "all", "a": 1, "b": "x"}, {"a": 1, "b": "y"}, False),
    ("all-2", {"x-match": "all", "a": 1, "b": "x"}, None, False),
    ("default-is-all", {"a": 1, "b": "x"}, {"a": 1}, False),
    ("default-is-all", {"a": 1, "b": "x"}, {"a": 1, "b": "x"}, True),
    ("any-2", {"x-match": "any", "a": 1, "b": "x"}, {"a": 1}, True),
    ("any-2", {"x-match": "any", "a": 1, "b": "x"}, {"b": "x", "z": 0}, True),
    ("any-2", {"x-match": "any", "a": 1, "b": "x"}, {"a": 2}, False),
    ("any-2", {"x-match": "any", "a": 1, "b": "x"}, {}, False),
    ("all-empty", {"x-match": "all"}, {}, True),
    ("all-empty", {"x-match": "all"}, {"q": 1}, True),
    ("any-empty", {"x-match": "any"}, {"q": 1}, False),
    # plain all/any ignore x- arguments of the binding
    ("all-x", {"x-match": "all", "x-foo": "bar", "a": 1}, {"a": 1}, True),
    ("any-x", {"x-match": "any", "x-foo": "bar", "a": 1}, {"x-foo": "bar"}, False),
    # *-with-x compare x- arguments too (RabbitMQ 3.10)
    ("all-with-x", {"x-match": "all-with-x", "x-foo": "bar", "a": 1}, {"a": 1}, False),
    ("all-with-x", {"x-match": "all-with-x", "x-foo": "bar", "a": 1}, {"a": 1, "x-foo": "bar"}, True),
    ("any-with-x", {"x-match": "any-with-x", "x-foo": "bar", "a": 1}, {"x-foo": "bar"}, True),
    ("any-with-x", {"x-match": "any-with-x", "x-foo": "bar", "a": 1}, {"x-foo": "baz"}, False),
    # a void (None) binding value matches the key with any value
    ("void", {"x-match": "all", "v": None}, {"v": "anything"}, True),
    ("void", {"x-match": "all", "v": None}, {"w": "anything"}, False),
    # value types matter: the integer 1 is not the string "1"
    ("typed", {"x-match": "all", "n": 1}, {"n": "1"}, False),
    ("typed", {"x-match": "all", "n": 1}, {"n": 1}, True),
    ("bool", {"x-match": "all", "f": True}, {"f": True}, True),
    ("bool", {"x-match": "all", "f": True}, {"f": False}, False),
]


def test_headers_matching(ch, pub, uname):
    x = uname("headers")
    ch.exchange_declare(x, "headers", auto_delete=True)
    bindings = {}
    for name, args, _, _ in HEADERS_CASES:
        if name not in bindings:
            q = excl_queue(ch)
            ch.queue_bind(q, x, "ignored", arguments=args)
            bindings[name] = q
    for i, (_, _, headers, _) in enumerate(HEADERS_CASES):
        pub.basic_publish(x, "", str(i).encode(), pika.BasicProperties(headers=headers))
    received = {name: {int(b) for b in got(ch, q)} for name, q in bindings.items()}
    wrong = [
        (name, args, headers, expected)
        for i, (name, args, headers, expected) in enumerate(HEADERS_CASES)
        if (i in received[name]) != expected
    ]
    assert wrong == [], "(binding, its arguments, message headers, expected match) got wrong"


def test_headers_unbind_with_arguments(ch, pub, uname):
    x = uname("headers")
    ch.exchange_declare(x, "headers", auto_delete=True)
    q = excl_queue(ch)
    ch.queue_bind(q, x, arguments={"x-match": "any", "a": 1})
    ch.queue_bind(q, x, arguments={"x-match": "any", "b": 2})
    ch.queue_unbind(q, x, arguments={"x-match": "any", "a": 1})
    pub.basic_publish(x, "", b"a", pika.BasicProperties(headers={"a": 1}))
    pub.basic_publish(x, "", b"b", pika.BasicProperties(headers={"b": 2}))
    assert got(ch, q) == [b"b"]


def test_invalid_x_match_is_406(conn, uname):
    ch = conn.channel()
    x = uname("headers")
    ch.exchange_declare(x, "headers", auto_delete=True)
    q = excl_queue(ch)
    assert_channel_error(lambda: ch.queue_bind(q, x, arguments={"x-match": "some", "a": 1}), 406)


# ---------------------------------------------------------------------------------------------


def test_alternate_exchange(conn, uname):
    ch = conn.channel()
    ch.confirm_delivery()
    x, ae = uname("main"), uname("ae")
    ch.exchange_declare(ae, "fanout", auto_delete=True)
    ch.exchange_declare(x, "direct", auto_delete=True, arguments={"alternate-exchange": ae})
    q_main, q_ae = excl_queue(ch), excl_queue(ch)
    ch.queue_bind(q_main, x, "known")
    ch.queue_bind(q_ae, ae)
    returned = []
    ch.add_on_return_callback(lambda *a: returned.append(a))
    ch.basic_publish(x, "known", b"routed")
    ch.basic_publish(x, "unknown", b"to-ae", mandatory=True)
    conn.process_data_events(0.1)
    assert got(ch, q_main) == [b"routed"]
    assert got(ch, q_ae) == [b"to-ae"]
    assert returned == [], "routed through the alternate exchange: no basic.return"


def test_alternate_exchange_missing_or_unroutable_returns(conn, uname):
    ch = conn.channel()
    ch.confirm_delivery()
    x, ae = uname("main"), uname("ae-missing")
    ch.exchange_declare(x, "direct", auto_delete=False, arguments={"alternate-exchange": ae})
    try:
        with pytest.raises(pe.UnroutableError):
            ch.basic_publish(x, "unknown", b"m", mandatory=True)
        assert ch.is_open
    finally:
        ch.exchange_delete(x)


def test_alternate_exchange_chain(conn, uname):
    ch = conn.channel()
    ch.confirm_delivery()
    x, ae1, ae2 = uname("main"), uname("ae1"), uname("ae2")
    ch.exchange_declare(ae2, "fanout", auto_delete=True)
    ch.exchange_declare(ae1, "direct", auto_delete=True, arguments={"alternate-exchange": ae2})
    ch.exchange_declare(x, "direct", auto_delete=True, arguments={"alternate-exchange": ae1})
    q = excl_queue(ch)
    ch.queue_bind(q, ae2)
    ch.basic_publish(x, "nowhere", b"m")
    assert got(ch, q) == [b"m"]
