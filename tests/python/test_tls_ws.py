"""TLS (AMQPS, MQTTS, STOMP over TLS, WSS), mutual TLS with certificate login, and WebSocket
(MQTT and STOMP over ws:// and wss://).

Certificates come from `wharf certs` into a temporary directory (certs/README.md); the brokers get
their `[tls]` settings from WHARF_TLS__* variables.
"""

import asyncio
import queue
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pika
import pika.exceptions as pe
import pytest
import stomp
import websockets.exceptions
from websockets.asyncio.client import connect as ws_connect_async
from websockets.sync.client import connect as ws_connect

from conftest import EXTERNAL_URL, WharfProcess, wharf_bin

WAIT = 5.0

pytestmark = pytest.mark.skipif(
    bool(EXTERNAL_URL), reason="WHARF_TEST_AMQP_URL is set: these tests configure their own wharf"
)


# -- certificates and brokers ----------------------------------------------------------------


def make_certs(out, *args):
    subprocess.run(
        [str(wharf_bin()), "certs", "--out", str(out), *args],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return Path(out)


@pytest.fixture(scope="module")
def certs():
    tmp = Path(tempfile.mkdtemp(prefix="wharf-certs-"))
    try:
        good = make_certs(tmp / "good", "--client", "guest", "--client", "nobody",
                          "--expired-client", "guest-expired")
        # Same user name, signed by a CA the broker does not know.
        rogue = make_certs(tmp / "rogue", "--client", "guest")
        yield {"good": good, "rogue": rogue}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tls_env(d, fail_if_no_peer_cert):
    return {
        "WHARF_TLS__CERT_FILE": str(d / "server.pem"),
        "WHARF_TLS__KEY_FILE": str(d / "server-key.pem"),
        "WHARF_TLS__CA_FILE": str(d / "ca.pem"),
        "WHARF_TLS__VERIFY_PEER": "true",
        "WHARF_TLS__FAIL_IF_NO_PEER_CERT": "true" if fail_if_no_peer_cert else "false",
        "WHARF_TLS__CERT_LOGIN": "true",
        "WHARF_TLS__HANDSHAKE_TIMEOUT_SECS": "10",
    }


def _broker(certs, fail_if_no_peer_cert):
    tmp = Path(tempfile.mkdtemp(prefix="wharf-test-"))
    b = WharfProcess(tmp / "data", env=tls_env(certs["good"], fail_if_no_peer_cert)).start()
    for p in ("amqps", "mqtts", "stomps", "ws", "wss"):
        assert p in b.ports, f"no `listening protocol={p}` line:\n{b.log_text()}"
    return b, tmp


@pytest.fixture(scope="module")
def tls_broker(certs):
    """verify_peer (client certificates checked when given), optional, with certificate login."""
    b, tmp = _broker(certs, False)
    try:
        yield b
    finally:
        b.stop_quietly()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def mtls_broker(certs):
    """fail_if_no_peer_cert: a client certificate from the configured CA is required."""
    b, tmp = _broker(certs, True)
    try:
        yield b
    finally:
        b.stop_quietly()
        shutil.rmtree(tmp, ignore_errors=True)


def client_ctx(certs, client=None, which="good", **kw):
    ctx = ssl.create_default_context(cafile=str(certs["good"] / "ca.pem"))
    if client:
        d = certs[which]
        ctx.load_cert_chain(str(d / f"client-{client}.pem"), str(d / f"client-{client}-key.pem"))
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def pika_tls(broker, ctx, **kw):
    kw.setdefault("credentials", pika.PlainCredentials("guest", "guest"))
    params = pika.ConnectionParameters(
        host="127.0.0.1",
        port=broker.ports["amqps"],
        ssl_options=pika.SSLOptions(ctx, server_hostname="localhost"),
        connection_attempts=1,
        socket_timeout=5,
        **kw,
    )
    return pika.BlockingConnection(params)


def amqp_round_trip(conn):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    body = uuid.uuid4().bytes
    ch.basic_publish("", q, body)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        method, _, got = ch.basic_get(q, auto_ack=True)
        if method:
            assert got == body
            return
        time.sleep(0.02)
    raise AssertionError("message not received")


def plain_amqp_works(broker):
    c = pika.BlockingConnection(
        pika.ConnectionParameters(host="127.0.0.1", port=broker.port,
                                  credentials=pika.PlainCredentials("guest", "guest"),
                                  connection_attempts=1, socket_timeout=5))
    try:
        amqp_round_trip(c)
    finally:
        c.close()


def wait_log(broker, needle, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in broker.log_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} not in the log:\n{broker.log_text()}")


# -- paho helpers ----------------------------------------------------------------------------


class Mq:
    """A paho client (any transport) with its events in queues."""

    def __init__(self, transport="tcp", user="guest", password="guest", ctx=None):
        self.c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"t-{uuid.uuid4().hex[:10]}", transport=transport,
                             protocol=mqtt.MQTTv311, reconnect_on_failure=False)
        if transport == "websockets":
            self.c.ws_set_options(path="/ws")
        if ctx is not None:
            self.c.tls_set_context(ctx)
        if user is not None:
            self.c.username_pw_set(user, password)
        self.msgs, self.connacks, self.subacks = queue.Queue(), queue.Queue(), queue.Queue()
        self.c.on_connect = lambda c, u, f, rc, p: self.connacks.put(rc)
        self.c.on_message = lambda c, u, m: self.msgs.put(m)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put(rcs)

    def connect(self, port):
        self.c.connect("localhost", port, 30)
        self.c.loop_start()
        return self.connacks.get(timeout=WAIT)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def mqtt_round_trip(sub, pub):
    topic = f"t/{uuid.uuid4().hex[:8]}"
    sub.c.subscribe(topic, 1)
    assert not sub.subacks.get(timeout=WAIT)[0].is_failure
    payload = uuid.uuid4().hex.encode()
    pub.c.publish(topic, payload, 1).wait_for_publish(WAIT)
    m = sub.msgs.get(timeout=WAIT)
    assert (m.topic, m.payload) == (topic, payload)


# -- AMQPS -----------------------------------------------------------------------------------


def test_amqps_with_password(tls_broker, certs):
    wait_log(tls_broker, "listening protocol=amqps")
    with pika_tls(tls_broker, client_ctx(certs)) as c:
        amqp_round_trip(c)


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_tls_1_2_and_1_3_offered(tls_broker, certs, version):
    v = getattr(ssl.TLSVersion, version)
    ctx = client_ctx(certs, minimum_version=v, maximum_version=v)
    with socket.create_connection(("127.0.0.1", tls_broker.ports["amqps"]), timeout=WAIT) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            assert s.version() == version.replace("_", ".")
            s.sendall(b"AMQP\x00\x00\x09\x01")
            assert s.recv(1) == b"\x01"  # connection.start is a method frame


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_1_1_refused(tls_broker, certs):
    ctx = client_ctx(certs)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", tls_broker.ports["amqps"]), timeout=WAIT) as raw:
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(raw, server_hostname="localhost")


def test_amqps_external_with_client_certificate(tls_broker, certs):
    ctx = client_ctx(certs, client="guest")
    with pika_tls(tls_broker, ctx, credentials=pika.credentials.ExternalCredentials()) as c:
        amqp_round_trip(c)


def test_amqps_external_needs_a_certificate(tls_broker, certs):
    # verify_peer without fail_if_no_peer_cert: the TLS connection is fine, but with no
    # certificate the server does not offer EXTERNAL.
    with pytest.raises((pe.AMQPConnectionError, pe.ProbableAuthenticationError)):
        pika_tls(tls_broker, client_ctx(certs),
                 credentials=pika.credentials.ExternalCredentials())
    plain_amqp_works(tls_broker)


def test_amqps_external_for_unknown_user_refused(tls_broker, certs):
    with pytest.raises((pe.AMQPConnectionError, pe.ProbableAuthenticationError)):
        pika_tls(tls_broker, client_ctx(certs, client="nobody"),
                 credentials=pika.credentials.ExternalCredentials())


# -- MQTTS -----------------------------------------------------------------------------------


def test_mqtts_with_password(tls_broker, certs):
    sub, pub = Mq(ctx=client_ctx(certs)), Mq(ctx=client_ctx(certs))
    try:
        assert sub.connect(tls_broker.ports["mqtts"]) == 0
        assert pub.connect(tls_broker.ports["mqtts"]) == 0
        mqtt_round_trip(sub, pub)
    finally:
        sub.close()
        pub.close()


def test_mqtts_certificate_login(tls_broker, certs):
    sub = Mq(user=None, ctx=client_ctx(certs, client="guest"))
    pub = Mq(user=None, ctx=client_ctx(certs, client="guest"))
    try:
        assert sub.connect(tls_broker.ports["mqtts"]) == 0
        assert pub.connect(tls_broker.ports["mqtts"]) == 0
        mqtt_round_trip(sub, pub)
    finally:
        sub.close()
        pub.close()


def test_mqtts_without_certificate_or_user_refused(tls_broker, certs):
    m = Mq(user=None, ctx=client_ctx(certs))
    try:
        rc = m.connect(tls_broker.ports["mqtts"])
        assert rc.is_failure, rc
    finally:
        m.close()


def test_mqtts_certificate_of_unknown_user_refused(tls_broker, certs):
    m = Mq(user=None, ctx=client_ctx(certs, client="nobody"))
    try:
        rc = m.connect(tls_broker.ports["mqtts"])
        assert rc.is_failure, rc
    finally:
        m.close()


# -- mutual TLS required ---------------------------------------------------------------------


def tls_refused(port, ctx):
    """True when the server refuses the handshake (TLS 1.3 clients may only see it on read)."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"AMQP\x00\x00\x09\x01")
                return s.recv(16) == b""
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return True


@pytest.mark.parametrize("client,which", [(None, "good"), ("guest", "rogue"),
                                          ("guest-expired", "good")],
                         ids=["no-certificate", "unknown-ca", "expired"])
def test_mtls_refuses_bad_client_certificates(mtls_broker, certs, client, which):
    keep = pika_tls(mtls_broker, client_ctx(certs, client="guest"))
    try:
        before = mtls_broker.log_text().count("TLS handshake failed")
        assert tls_refused(mtls_broker.ports["amqps"], client_ctx(certs, client, which))
        wait_log(mtls_broker, "TLS handshake failed")
        deadline = time.monotonic() + WAIT
        while mtls_broker.log_text().count("TLS handshake failed") <= before:
            assert time.monotonic() < deadline, "handshake failure not logged"
            time.sleep(0.05)
        # The connection that was open keeps working.
        amqp_round_trip(keep)
    finally:
        keep.close()


def test_mtls_accepts_a_good_certificate(mtls_broker, certs):
    with pika_tls(mtls_broker, client_ctx(certs, client="guest"),
                  credentials=pika.credentials.ExternalCredentials()) as c:
        amqp_round_trip(c)
    m = Mq(user=None, ctx=client_ctx(certs, client="guest"))
    try:
        assert m.connect(mtls_broker.ports["mqtts"]) == 0
    finally:
        m.close()


# -- wrong protocol on a port ----------------------------------------------------------------


def test_plain_text_client_on_tls_port(tls_broker):
    keep = pika.BlockingConnection(pika.ConnectionParameters(
        host="127.0.0.1", port=tls_broker.port, connection_attempts=1,
        credentials=pika.PlainCredentials("guest", "guest")))
    try:
        for port in (tls_broker.ports["amqps"], tls_broker.ports["mqtts"]):
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
                s.sendall(b"AMQP\x00\x00\x09\x01")
                got = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    got += chunk
                # A TLS alert at most (content type 21), never an AMQP header.
                assert got == b"" or got[0] == 21, got
        wait_log(tls_broker, "TLS handshake failed")
        assert tls_broker.running
        amqp_round_trip(keep)
    finally:
        keep.close()


def client_hello():
    """The bytes a TLS client sends first."""
    ctx = ssl.create_default_context()
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def recv_until_closed(s):
    got = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            return got
        got += chunk


def test_tls_client_on_plain_amqp_port(tls_broker):
    with socket.create_connection(("127.0.0.1", tls_broker.port), timeout=WAIT) as s:
        s.sendall(client_hello())
        # AMQP's answer to a wrong protocol header: its own header, then close.
        assert recv_until_closed(s) == b"AMQP\x00\x00\x09\x01"
    plain_amqp_works(tls_broker)


def test_tls_client_on_plain_mqtt_port(tls_broker):
    with socket.create_connection(("127.0.0.1", tls_broker.mqtt_port), timeout=WAIT) as s:
        s.sendall(client_hello())
        # 0x16 reads as a CONNECT with bad flags: malformed, closed without a CONNACK.
        assert recv_until_closed(s) == b""
    m = Mq()
    try:
        assert m.connect(tls_broker.mqtt_port) == 0
    finally:
        m.close()


# -- WebSocket ---------------------------------------------------------------------------------


def test_paho_over_websocket(tls_broker):
    sub, pub = Mq(transport="websockets"), Mq()
    try:
        assert sub.connect(tls_broker.ports["ws"]) == 0
        assert pub.connect(tls_broker.mqtt_port) == 0
        mqtt_round_trip(sub, pub)
        # And the other way: WebSocket publisher, TCP subscriber.
        mqtt_round_trip(pub, sub)
    finally:
        sub.close()
        pub.close()


def test_paho_over_wss(tls_broker, certs):
    sub = Mq(transport="websockets", ctx=client_ctx(certs))
    pub = Mq(transport="websockets", user=None, ctx=client_ctx(certs, client="guest"))
    try:
        assert sub.connect(tls_broker.ports["wss"]) == 0
        # Certificate login over WSS too.
        assert pub.connect(tls_broker.ports["wss"]) == 0
        mqtt_round_trip(sub, pub)
    finally:
        sub.close()
        pub.close()


def mqtt_str(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def connect_packet(client_id):
    var = mqtt_str("MQTT") + bytes([4, 0xC2]) + struct.pack(">H", 30)
    body = var + mqtt_str(client_id) + mqtt_str("guest") + mqtt_str("guest")
    return bytes([0x10, len(body)]) + body


def ws_url(broker):
    return f"ws://127.0.0.1:{broker.ports['ws']}/ws"


def test_raw_websocket_client_speaks_mqtt(tls_broker):
    with ws_connect(ws_url(tls_broker), subprotocols=["mqtt"], open_timeout=WAIT) as ws:
        assert ws.subprotocol == "mqtt"
        packet = connect_packet(f"raw-{uuid.uuid4().hex[:8]}")
        # A packet split over two messages (MQTT-6.0.0-2).
        ws.send(packet[:5])
        ws.send(packet[5:])
        assert ws.recv(timeout=WAIT) == b"\x20\x02\x00\x00"  # CONNACK, accepted
        ws.ping().wait(WAIT)  # answered with a pong
        topic = f"raw/{uuid.uuid4().hex[:6]}"
        sub = b"\x00\x01" + mqtt_str(topic) + b"\x00"
        pub_body = mqtt_str(topic) + b"hello"
        # SUBSCRIBE and PUBLISH in one message.
        ws.send(bytes([0x82, len(sub)]) + sub)
        assert ws.recv(timeout=WAIT) == b"\x90\x03\x00\x01\x00"  # SUBACK
        ws.send(bytes([0x30, len(pub_body)]) + pub_body)
        got = b""
        deadline = time.monotonic() + WAIT
        while len(got) < 2 + len(pub_body):
            got += ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        assert got == bytes([0x30, len(pub_body)]) + pub_body
        ws.send(b"\xe0\x00")  # DISCONNECT
        # The server closes the WebSocket cleanly.
        with pytest.raises(websockets.exceptions.ConnectionClosedOK):
            ws.recv(timeout=WAIT)


def test_text_message_closes_mqtt_websocket(tls_broker):
    with ws_connect(ws_url(tls_broker), subprotocols=["mqtt"], open_timeout=WAIT) as ws:
        ws.send(connect_packet(f"txt-{uuid.uuid4().hex[:8]}"))
        assert ws.recv(timeout=WAIT)[:1] == b"\x20"
        ws.send("\xe0\x00")  # text frame: MQTT-6.0.0-1 says close
        with pytest.raises(websockets.exceptions.ConnectionClosed) as e:
            ws.recv(timeout=WAIT)
        # ...with WebSocket's "unsupported data" close code.
        assert e.value.rcvd is not None and e.value.rcvd.code == 1003, e.value


def http_answer(broker, request):
    with socket.create_connection(("127.0.0.1", broker.ports["ws"]), timeout=WAIT) as s:
        s.sendall(request.encode())
        return recv_until_closed(s).decode(errors="replace")


UPGRADE = ("GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: 13\r\n{extra}\r\n")


@pytest.mark.parametrize("request_text,status,needle", [
    ("GET /ws HTTP/1.1\r\nHost: localhost\r\n\r\n", 400, "not a WebSocket upgrade"),
    (UPGRADE.format(path="/ws", extra=""), 400, "no supported subprotocol"),
    (UPGRADE.format(path="/ws", extra="Sec-WebSocket-Protocol: chat\r\n"), 400,
     "no supported subprotocol"),
    (UPGRADE.format(path="/nope", extra="Sec-WebSocket-Protocol: mqtt\r\n"), 404,
     "no WebSocket endpoint"),
    ("\x16\x03\x01\x00\x05hello", 400, "not an HTTP request"),
], ids=["not-upgrade", "no-subprotocol", "unknown-subprotocol", "wrong-path", "garbage"])
def test_bad_websocket_handshake(tls_broker, request_text, status, needle):
    with ws_connect(ws_url(tls_broker), subprotocols=["mqtt"], open_timeout=WAIT) as keep:
        keep.send(connect_packet(f"keep-{uuid.uuid4().hex[:8]}"))
        assert keep.recv(timeout=WAIT)[:1] == b"\x20"
        answer = http_answer(tls_broker, request_text)
        assert answer.startswith(f"HTTP/1.1 {status} "), answer
        assert needle in answer, answer
        wait_log(tls_broker, "WebSocket upgrade refused")
        # The open WebSocket connection is undisturbed.
        keep.send(b"\xc0\x00")  # PINGREQ
        assert keep.recv(timeout=WAIT) == b"\xd0\x00"  # PINGRESP


# Small limits, so that an oversized message is a few KiB.
WS_LIMIT = 1024


@pytest.fixture(scope="module")
def small_limits_broker():
    tmp = Path(tempfile.mkdtemp(prefix="wharf-test-"))
    b = WharfProcess(tmp / "data", env={"WHARF_MQTT__PACKET_BYTES_MAX": str(WS_LIMIT),
                                        "WHARF_STOMP__FRAME_BYTES_MAX": str(WS_LIMIT)}).start()
    try:
        yield b
    finally:
        b.stop_quietly()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("subprotocol,message_bytes_max", [
    ("mqtt", WS_LIMIT),
    # The STOMP frame limit, plus 16 bytes for heart-beat EOLs.
    ("v12.stomp", WS_LIMIT + 16),
])
def test_oversized_websocket_message_closed_with_1009(small_limits_broker, subprotocol,
                                                      message_bytes_max):
    """A WebSocket message over the protocol's own limit (mqtt.packet_bytes_max,
    stomp.frame_bytes_max) gets close code 1009; other connections go on."""
    url = f"ws://127.0.0.1:{small_limits_broker.ports['ws']}/ws"
    with ws_connect(url, subprotocols=["mqtt"], open_timeout=WAIT) as keep:
        keep.send(connect_packet(f"keep-{uuid.uuid4().hex[:8]}"))
        assert keep.recv(timeout=WAIT)[:1] == b"\x20"
        with ws_connect(url, subprotocols=[subprotocol], open_timeout=WAIT,
                        max_size=None) as big:
            big.send(b"x" * (message_bytes_max + 1))
            with pytest.raises(websockets.exceptions.ConnectionClosed) as e:
                big.recv(timeout=WAIT)
            assert e.value.rcvd is not None and e.value.rcvd.code == 1009, e.value
        keep.send(b"\xc0\x00")  # PINGREQ
        assert keep.recv(timeout=WAIT) == b"\xd0\x00"  # PINGRESP
        # A message at the limit is read (for STOMP, a frame at the limit).
        if subprotocol == "v12.stomp":
            with ws_connect(url, subprotocols=[subprotocol], open_timeout=WAIT) as ok:
                ok.send(stomp_frame("CONNECT", [("accept-version", "1.2"), ("host", "/"),
                                                ("login", "guest"), ("passcode", "guest")]))
                assert recv_stomp_frame(ok)[0] == "CONNECTED"
                head = stomp_frame("SEND", [("destination", "/queue/big"), ("receipt", "r")], "")
                body = "b" * (WS_LIMIT - len(head))
                frame = stomp_frame("SEND", [("destination", "/queue/big"), ("receipt", "r")],
                                    body)
                assert len(frame) == WS_LIMIT
                ok.send(frame + "\r\n" * 8)
                assert recv_stomp_frame(ok)[:2] == ("RECEIPT", {"receipt-id": "r"})


def test_websocket_client_with_wrong_subprotocol(tls_broker):
    with pytest.raises(websockets.exceptions.InvalidStatus) as e:
        ws_connect(ws_url(tls_broker), subprotocols=["chat"], open_timeout=WAIT)
    assert e.value.response.status_code == 400


def test_tls_listeners_off_without_certificate(broker):
    # The module broker of this file has no certificate: its TLS listeners are off.
    text = broker.log_text()
    for p in ("amqps", "mqtts", "wss"):
        assert f"listening protocol={p} " not in text
        assert p not in broker.ports
    assert "listener off: no TLS certificate" in text
    assert "ws" in broker.ports


@pytest.mark.parametrize("setting,needle", [
    ({"WHARF_TLS__CERT_FILE": "/nonexistent/server.pem"}, "tls.cert_file: cannot read"),
    ({"WHARF_TLS__KEY_FILE": "{ca}"}, "tls.key_file"),
    ({"WHARF_TLS__CERT_FILE": ""}, "cert_file and key_file go together"),
], ids=["missing-file", "not-a-key", "key-without-cert"])
def test_bad_tls_configuration_exits_2(certs, tmp_path, setting, needle):
    env = dict(tls_env(certs["good"], False))
    env.update({k: v.format(ca=certs["good"] / "ca.pem") for k, v in setting.items()})
    full = dict(__import__("os").environ, NO_COLOR="1", **env)
    r = subprocess.run(
        [str(wharf_bin()), "--data-dir", str(tmp_path / "d"), "--amqp-listen", "127.0.0.1:0",
         "--mqtt-listen", "127.0.0.1:0", "--ws-listen", "127.0.0.1:0"],
        env=full, capture_output=True, timeout=30, text=True,
    )
    assert r.returncode == 2, r.stderr
    assert "configuration error" in r.stderr and needle in r.stderr, r.stderr


# -- STOMP over TLS and WebSocket --------------------------------------------------------------


class StompListener(stomp.ConnectionListener):
    def __init__(self):
        self.messages = queue.Queue()
        self.receipts = queue.Queue()

    def on_message(self, frame):
        self.messages.put(frame)

    def on_receipt(self, frame):
        self.receipts.put(frame.headers["receipt-id"])


def stomps_round_trip(broker, certs, client=None, login="guest", passcode="guest", version="1.2"):
    """stomp.py over TLS: subscribe, send, receive; returns the message body."""
    port = broker.ports["stomps"]
    if version == "1.0":
        c = stomp.Connection10([("127.0.0.1", port)], reconnect_attempts_max=1)
    else:
        cls = stomp.Connection11 if version == "1.1" else stomp.Connection12
        c = cls([("127.0.0.1", port)], vhost="/", reconnect_attempts_max=1)
    kw = {"ca_certs": str(certs["good"] / "ca.pem")}
    if client:
        kw["cert_file"] = str(certs["good"] / f"client-{client}.pem")
        kw["key_file"] = str(certs["good"] / f"client-{client}-key.pem")
    c.set_ssl(for_hosts=[("127.0.0.1", port)], **kw)
    listener = StompListener()
    c.set_listener("", listener)
    c.connect(login, passcode, wait=True)
    try:
        dest = f"/queue/stomps-{uuid.uuid4().hex[:8]}"
        c.subscribe(dest, id="1", ack="auto")
        c.send(dest, "over tls", headers={"receipt": "r1"})
        assert listener.receipts.get(timeout=WAIT) == "r1"
        return listener.messages.get(timeout=WAIT).body
    finally:
        c.disconnect()


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_stomp_over_tls_with_password(tls_broker, certs, version):
    assert stomps_round_trip(tls_broker, certs, version=version) == "over tls"


def test_stomp_over_tls_certificate_login(tls_broker, certs):
    # No login header: the verified certificate's CN (guest) logs in.
    assert stomps_round_trip(tls_broker, certs, client="guest", login=None, passcode=None) == "over tls"


def test_stomp_over_tls_without_certificate_or_login_refused(tls_broker, certs):
    with pytest.raises(stomp.exception.ConnectFailedException):
        stomps_round_trip(tls_broker, certs, login=None, passcode=None)


def stomp_frame(command, headers=(), body=""):
    head = "".join(f"{k}:{v}\n" for k, v in headers)
    return f"{command}\n{head}\n{body}\x00"


def parse_stomp_frame(buf):
    """(command, headers, body) of the first frame in `buf`, heart-beat EOLs skipped; None while
    it is incomplete."""
    buf = buf.lstrip("\r\n")
    if "\x00" not in buf:
        return None
    command, rest = buf.split("\x00", 1)[0].split("\n", 1)
    head, body = rest.split("\n\n", 1)
    return command, dict(line.split(":", 1) for line in head.split("\n") if line), body


def recv_stomp_frame(ws):
    """The next frame; frames may span or share messages."""
    buf = ""
    deadline = time.monotonic() + WAIT
    while (frame := parse_stomp_frame(buf)) is None:
        m = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        buf += m if isinstance(m, str) else m.decode()
    return frame


async def recv_stomp_frame_async(ws):
    buf = ""
    while (frame := parse_stomp_frame(buf)) is None:
        m = await asyncio.wait_for(ws.recv(), WAIT)
        buf += m if isinstance(m, str) else m.decode()
    return frame


def stomp_exchange(dest):
    """The frames a STOMP-over-WebSocket client sends, each with the answer it expects: check(frame)
    asserts it."""
    def connected(f):
        assert f[0] == "CONNECTED" and f[1]["version"] == "1.2", f

    def receipt(rid):
        def check(f):
            assert f[:2] == ("RECEIPT", {"receipt-id": rid}), f
        return check

    def message(f):
        command, headers, body = f
        assert (command, body) == ("MESSAGE", "hi ws"), f
        assert headers["destination"] == dest and headers["subscription"] == "0", f

    return [
        (stomp_frame("CONNECT", [("accept-version", "1.2"), ("host", "/"),
                                 ("login", "guest"), ("passcode", "guest")]), connected),
        (stomp_frame("SUBSCRIBE", [("destination", dest), ("id", "0"), ("receipt", "s")]),
         receipt("s")),
        (stomp_frame("SEND", [("destination", dest), ("content-type", "text/plain")], "hi ws"),
         message),
        (stomp_frame("DISCONNECT", [("receipt", "bye")]), receipt("bye")),
    ]


def stomp_over_ws(ws, binary):
    for frame, check in stomp_exchange(f"/topic/ws.{uuid.uuid4().hex[:8]}"):
        ws.send(frame.encode() if binary else frame)
        check(recv_stomp_frame(ws))


async def stomp_over_ws_async(ws):
    for frame, check in stomp_exchange(f"/topic/ws.{uuid.uuid4().hex[:8]}"):
        await ws.send(frame)
        check(await recv_stomp_frame_async(ws))


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_websocket_client_speaks_stomp(tls_broker, binary):
    with ws_connect(ws_url(tls_broker), subprotocols=["v12.stomp", "v11.stomp"],
                    open_timeout=WAIT) as ws:
        assert ws.subprotocol == "v12.stomp"
        stomp_over_ws(ws, binary)


def test_stomp_over_wss(tls_broker, certs):
    """STOMP over WSS with websockets' asyncio client.

    Not its sync client: that one reads the TLS socket in a background thread while the caller's
    thread writes the upgrade request, and OpenSSL does not support one SSL object used from two
    threads at once. When the server's TLS 1.3 session tickets arrive during that write, the
    request can be lost: no 101 ("timed out while waiting for handshake response"), and the
    broker logs the connection closed after 0 bytes of the upgrade request. The asyncio client
    does its TLS in one thread. tests/tools/wss-two-thread-race.py reproduces it with a bare
    ssl socket."""
    url = f"wss://localhost:{tls_broker.ports['wss']}/ws"

    async def run():
        async with ws_connect_async(url, subprotocols=["v10.stomp", "v12.stomp"],
                                    open_timeout=WAIT, ssl=client_ctx(certs)) as ws:
            # The client's first served name is taken; the STOMP version is CONNECT's business.
            assert ws.subprotocol == "v10.stomp"
            await stomp_over_ws_async(ws)

    asyncio.run(run())


def test_stomp_over_websocket_reaches_mqtt(tls_broker):
    """A STOMP SEND over WebSocket to /topic/a.b reaches an MQTT subscriber of a/b over WebSocket."""
    topic = f"wsx/{uuid.uuid4().hex[:8]}"
    got = queue.Queue()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, transport="websockets")
    sub.ws_set_options(path="/ws")
    sub.username_pw_set("guest", "guest")
    sub.on_message = lambda c, u, m: got.put((m.topic, m.payload))
    subscribed = queue.Queue()
    sub.on_subscribe = lambda *a: subscribed.put(True)
    sub.connect("127.0.0.1", tls_broker.ports["ws"])
    sub.loop_start()
    try:
        sub.subscribe(topic, qos=1)
        assert subscribed.get(timeout=WAIT)
        with ws_connect(ws_url(tls_broker), subprotocols=["v12.stomp"], open_timeout=WAIT) as ws:
            ws.send(stomp_frame("CONNECT", [("accept-version", "1.2"), ("host", "/"),
                                            ("login", "guest"), ("passcode", "guest")]))
            assert recv_stomp_frame(ws)[0] == "CONNECTED"
            ws.send(stomp_frame("SEND", [("destination", "/topic/" + topic.replace("/", ".")),
                                         ("receipt", "r")], "from stomp"))
            assert recv_stomp_frame(ws)[:2] == ("RECEIPT", {"receipt-id": "r"})
        assert got.get(timeout=WAIT) == (topic, b"from stomp")
    finally:
        sub.loop_stop()
        sub.disconnect()
