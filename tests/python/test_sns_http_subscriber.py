"""The test subscriber (sns_http_subscriber.py) itself: it verifies signatures with the
certificate it fetches from SigningCertURL, confirms subscriptions through SubscribeURL, flags
tampered envelopes and answers with scripted statuses. Posts are signed here with the test
vectors' key (bridge/src/sns/signature/vectors)."""

import base64
import json
import pathlib
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from sns_http_subscriber import SnsSubscriber
from sns_signature import string_to_sign

VECTORS = pathlib.Path(__file__).resolve().parents[2] / "bridge/src/sns/signature/vectors"
TOPIC = "arn:aws:sns:us-east-1:000000000000:orders"


class FakeBroker:
    """Serves the certificate and records SubscribeURL fetches."""

    def __init__(self):
        self.confirmations = []
        broker = self
        certificate = (VECTORS / "cert.pem").read_bytes()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/SimpleNotificationService-test.pem":
                    body = certificate
                else:
                    broker.confirmations.append(self.path)
                    body = b"<ConfirmSubscriptionResponse/>"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def broker():
    b = FakeBroker()
    yield b
    b.close()


def signed(envelope, version="2"):
    key = serialization.load_pem_private_key((VECTORS / "key.pem").read_bytes(), None)
    digest = hashes.SHA256() if version == "2" else hashes.SHA1()
    envelope["SignatureVersion"] = version
    envelope["Signature"] = base64.b64encode(
        key.sign(string_to_sign(envelope), padding.PKCS1v15(), digest)
    ).decode()
    return envelope


def post(url, envelope, message_type, raw_body=None):
    body = raw_body if raw_body is not None else json.dumps(envelope)
    headers = {"x-amz-sns-message-type": message_type, "Content-Type": "text/plain; charset=UTF-8"}
    if raw_body is not None:
        headers["x-amz-sns-rawdelivery"] = "true"
    request = urllib.request.Request(url, data=body.encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as e:
        return e.code


def notification(broker, message="hello", version="2"):
    return signed({
        "Type": "Notification",
        "MessageId": "0b6f1c3a-1111-4a2b-9c3d-000000000001",
        "TopicArn": TOPIC,
        "Message": message,
        "Timestamp": "2026-11-26T12:00:00.000Z",
        "SigningCertURL": broker.base + "/SimpleNotificationService-test.pem",
        "UnsubscribeURL": broker.base + "/?Action=Unsubscribe",
    }, version)


def test_confirms_subscriptions_through_subscribe_url(broker):
    envelope = signed({
        "Type": "SubscriptionConfirmation",
        "MessageId": "0b6f1c3a-1111-4a2b-9c3d-000000000002",
        "Token": "abc123",
        "TopicArn": TOPIC,
        "Message": "You have chosen to subscribe to the topic.",
        "SubscribeURL": broker.base + "/?Action=ConfirmSubscription&Token=abc123",
        "Timestamp": "2026-11-26T12:00:00.000Z",
        "SigningCertURL": broker.base + "/SimpleNotificationService-test.pem",
    }, "1")
    with SnsSubscriber() as sub:
        assert post(sub.url("/hook"), envelope, "SubscriptionConfirmation") == 200
        (seen,) = sub.wait_for(lambda posts: len(posts) == 1)
    assert seen.verified is True
    assert seen.type == "SubscriptionConfirmation"
    assert seen.path == "/hook"
    assert seen.confirm_status == 200
    assert broker.confirmations == ["/?Action=ConfirmSubscription&Token=abc123"]


def test_verifies_notifications_and_flags_tampering(broker):
    good = notification(broker)
    tampered = dict(notification(broker), Message="changed")
    with SnsSubscriber() as sub:
        post(sub.url(), good, "Notification")
        post(sub.url(), tampered, "Notification")
        post(sub.url(), None, "Notification", raw_body="raw text")
        first, second, raw = sub.wait_for(lambda posts: len(posts) == 3)
    assert first.verified is True
    assert first.envelope["Message"] == "hello"
    assert second.verified == "signature does not verify"
    assert raw.envelope is None and raw.body == "raw text"
    assert broker.confirmations == []


def test_answers_with_scripted_statuses(broker):
    with SnsSubscriber(statuses=[500, 503]) as sub:
        statuses = [post(sub.url(), notification(broker), "Notification") for _ in range(3)]
    assert statuses == [500, 503, 200]
