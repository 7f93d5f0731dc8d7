"""An HTTP/S subscription endpoint for SNS tests: it records every post the broker makes,
verifies each signed envelope against the certificate at its SigningCertURL (fetched once per
URL), and confirms subscriptions by fetching the SubscribeURL, as an application would.

    with SnsSubscriber() as sub:
        sns.subscribe(TopicArn=arn, Protocol="http", Endpoint=sub.url("/hook"))
        sub.wait_for(lambda posts: any(p.type == "Notification" for p in posts))

Answers are 200 unless `statuses` lists others, used one per post in order (to make the broker
retry).
"""

import json
import ssl
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.exceptions import InvalidSignature

from sns_signature import verify_envelope


class Post:
    """One request as the endpoint saw it."""

    def __init__(self, path, headers, body):
        self.path = path
        self.headers = headers
        self.body = body
        # The parsed envelope, or None for raw delivery (x-amz-sns-rawdelivery: true).
        self.envelope = None
        # True when the signature verified; otherwise why not (a string).
        self.verified = None
        # The SubscribeURL answer's status, for confirmations the endpoint confirmed.
        self.confirm_status = None

    @property
    def type(self):
        return self.headers.get("x-amz-sns-message-type")


class SnsSubscriber:
    def __init__(self, host="127.0.0.1", confirm=True, statuses=(), port=0, tls=None):
        self.confirm = confirm
        self.statuses = list(statuses)
        self.posts = []
        self._certificates = {}
        self._lock = threading.Condition()
        subscriber = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length).decode("utf-8")
                post = Post(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                subscriber._check(post)
                with subscriber._lock:
                    status = subscriber.statuses.pop(0) if subscriber.statuses else 200
                    subscriber.posts.append(post)
                    subscriber._lock.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        # A fixed port: an endpoint that comes back where the broker's posts still go.
        self._server = ThreadingHTTPServer((host, port), Handler)
        # tls=(certificate PEM path, key PEM path): an https endpoint.
        self.scheme = "http"
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def url(self, path="/"):
        host, port = self._server.server_address[:2]
        return f"{self.scheme}://{host}:{port}{path}"

    def wait_for(self, predicate, timeout=10.0):
        """Blocks until predicate(posts) is true (or the timeout passes); returns the posts."""
        with self._lock:
            self._lock.wait_for(lambda: predicate(self.posts), timeout=timeout)
            return list(self.posts)

    def _certificate(self, url):
        if url not in self._certificates:
            with urllib.request.urlopen(url, timeout=10) as answer:
                self._certificates[url] = answer.read()
        return self._certificates[url]

    def _check(self, post):
        if post.headers.get("x-amz-sns-rawdelivery") == "true":
            return
        try:
            post.envelope = json.loads(post.body)
            verify_envelope(post.envelope, self._certificate(post.envelope["SigningCertURL"]))
            post.verified = True
        except InvalidSignature:
            post.verified = "signature does not verify"
            return
        except Exception as e:  # recorded for the test to assert on
            post.verified = f"{type(e).__name__}: {e}"
            return
        if self.confirm and post.envelope.get("Type") == "SubscriptionConfirmation":
            with urllib.request.urlopen(post.envelope["SubscribeURL"], timeout=10) as answer:
                post.confirm_status = answer.status
