#!/usr/bin/env python3
"""Reproduces the lost WSS upgrade requests of issue 4 without any WebSocket library.

websockets' sync client (and websocket-client under python-engineio) reads its ssl socket in a
background thread while the caller's thread writes. This script does the same with a bare
`ssl.SSLSocket`: a reader thread blocked in recv(), then sendall() of the upgrade request from the
main thread, and counts upgrades that get no `101` within 5 s. `--serial` writes the request
before starting the reader (the control); `--tls12` caps the client at TLS 1.2, where the server
sends no session tickets after the handshake.

    WHARF_BIN=target/release/wharf .venv/bin/python tests/tools/wss-two-thread-race.py [--serial] [--tls12]

Not part of any suite: the failure is a race in the client, counted, not asserted.
"""

import argparse
import base64
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from conftest import WharfProcess, wharf_bin  # noqa: E402

REQUEST = ("GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n"
           "Sec-WebSocket-Protocol: v12.stomp\r\n\r\n")


def upgrade(port, ctx, serial):
    """None when the upgrade was answered with 101 within 5 s, else what went wrong."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    s.settimeout(None)
    got, done = bytearray(), threading.Event()

    def reader():
        try:
            while b"\r\n\r\n" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got.extend(chunk)
        except OSError:
            pass
        done.set()

    thread = threading.Thread(target=reader, daemon=True)
    request = REQUEST.format(base64.b64encode(os.urandom(16)).decode()).encode()
    error = None
    try:
        if serial:
            s.sendall(request)
            thread.start()
        else:
            thread.start()
            s.sendall(request)
        answered = done.wait(5)
    except OSError as e:
        # ssl.SSLError "[SSL] internal error" is one way the two threads' race shows.
        answered, error = False, f"client error: {e!r}"
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
    thread.join(5)
    if answered and got.startswith(b"HTTP/1.1 101"):
        return None
    return error or "no 101 within 5 s"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--serial", action="store_true", help="write the request before reading")
    ap.add_argument("--tls12", action="store_true", help="client offers TLS 1.2 only")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--per-thread", type=int, default=100)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="wss-race-"))
    try:
        subprocess.run([str(wharf_bin()), "certs", "--out", str(tmp / "c")], check=True,
                       capture_output=True)
        d = tmp / "c"
        broker = WharfProcess(tmp / "data", env={
            "WHARF_TLS__CERT_FILE": str(d / "server.pem"),
            "WHARF_TLS__KEY_FILE": str(d / "server-key.pem"),
        }).start()
        lost = []  # what went wrong, per lost upgrade

        def worker():
            ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
            if args.tls12:
                ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            for _ in range(args.per_thread):
                failure = upgrade(broker.ports["wss"], ctx, args.serial)
                if failure:
                    lost.append(failure)

        threads = [threading.Thread(target=worker) for _ in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        broker.terminate()
        refused = [line.split("error=", 1)[1] for line in broker.log_text().splitlines()
                   if "WebSocket upgrade refused" in line]
        print(f"lost {len(lost)} of {args.threads * args.per_thread} upgrades "
              f"({'serial' if args.serial else 'two threads'}, "
              f"{'TLS 1.2' if args.tls12 else 'TLS 1.3'})")
        for failure in sorted(set(lost)):
            print(f"  {lost.count(failure)} x {failure}")
        for reason in sorted(set(refused)):
            print(f"  broker: {refused.count(reason)} x {reason}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
