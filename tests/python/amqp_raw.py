"""Hand-built AMQP 0-9-1 frames over a plain socket, for the bad-input tests.

No pika here: every byte is built with struct.pack so that a test can send exactly the
malformed frame it names. Only what those tests need is implemented.
"""

import socket
import struct
import time

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE

# (class_id, method_id)
CONNECTION_START = (10, 10)
CONNECTION_START_OK = (10, 11)
CONNECTION_TUNE = (10, 30)
CONNECTION_TUNE_OK = (10, 31)
CONNECTION_OPEN = (10, 40)
CONNECTION_OPEN_OK = (10, 41)
CONNECTION_CLOSE = (10, 50)
CONNECTION_CLOSE_OK = (10, 51)
CHANNEL_OPEN = (20, 10)
CHANNEL_OPEN_OK = (20, 11)
CHANNEL_CLOSE = (20, 40)
CHANNEL_CLOSE_OK = (20, 41)
QUEUE_DECLARE = (50, 10)
QUEUE_DECLARE_OK = (50, 11)
BASIC_PUBLISH = (60, 40)


def shortstr(s):
    if isinstance(s, str):
        s = s.encode()
    return struct.pack("!B", len(s)) + s


def longstr(s):
    if isinstance(s, str):
        s = s.encode()
    return struct.pack("!I", len(s)) + s


EMPTY_TABLE = struct.pack("!I", 0)


def frame(frame_type, channel, payload, frame_end=FRAME_END):
    return struct.pack("!BHI", frame_type, channel, len(payload)) + payload + bytes([frame_end])


def method_frame(channel, class_method, args=b"", frame_end=FRAME_END):
    class_id, method_id = class_method
    return frame(FRAME_METHOD, channel, struct.pack("!HH", class_id, method_id) + args, frame_end)


def header_frame(channel, body_size, class_id=60, flags=0):
    return frame(FRAME_HEADER, channel, struct.pack("!HHQH", class_id, 0, body_size, flags))


def body_frame(channel, body):
    return frame(FRAME_BODY, channel, body)


def start_ok(user="guest", password="guest"):
    return (
        EMPTY_TABLE
        + shortstr("PLAIN")
        + longstr(b"\x00" + user.encode() + b"\x00" + password.encode())
        + shortstr("en_US")
    )


def tune_ok(channel_max, frame_max, heartbeat=0):
    return struct.pack("!HIH", channel_max, frame_max, heartbeat)


def connection_open(vhost="/"):
    return shortstr(vhost) + shortstr("") + b"\x00"


def queue_declare(name="", passive=False, durable=False, exclusive=False, auto_delete=False):
    bits = passive | durable << 1 | exclusive << 2 | auto_delete << 3
    return struct.pack("!H", 0) + shortstr(name) + bytes([bits]) + EMPTY_TABLE


def basic_publish(exchange="", routing_key="", mandatory=False):
    return struct.pack("!H", 0) + shortstr(exchange) + shortstr(routing_key) + bytes([mandatory])


class Frame:
    def __init__(self, frame_type, channel, payload):
        self.type = frame_type
        self.channel = channel
        self.payload = payload

    @property
    def class_method(self):
        if self.type != FRAME_METHOD:
            return None
        return struct.unpack("!HH", self.payload[:4])

    def __repr__(self):
        return f"Frame(type={self.type}, channel={self.channel}, method={self.class_method}, payload={self.payload[:40]!r})"


class Close:
    """A parsed connection.close or channel.close."""

    def __init__(self, payload):
        (self.reply_code,) = struct.unpack("!H", payload[4:6])
        n = payload[6]
        self.reply_text = payload[7 : 7 + n].decode(errors="replace")
        self.class_id, self.method_id = struct.unpack("!HH", payload[7 + n : 11 + n])

    def __repr__(self):
        return f"Close({self.reply_code}, {self.reply_text!r}, {self.class_id}, {self.method_id})"


class PeerClosed(Exception):
    pass


class RawConnection:
    def __init__(self, host, port, timeout=5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.frame_max = None
        self.channel_max = None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, n):
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise PeerClosed(f"peer closed with {len(self.buf)} unread bytes: {self.buf[:64]!r}")
            self.buf += chunk

    def recv_exact(self, n):
        self._fill(n)
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_until_closed(self, limit=1 << 20):
        """Everything the peer sends until it closes the socket (or the timeout expires)."""
        data = self.buf
        self.buf = b""
        try:
            while len(data) < limit:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return data, True
                data += chunk
        except ConnectionResetError:
            return data, True
        except socket.timeout:
            return data, False
        return data, False

    def poll_frames(self, timeout):
        """One recv (waiting at most timeout), then every complete frame buffered so far.
        Raises PeerClosed on EOF; never loses a partial frame."""
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise PeerClosed("peer closed")
            self.buf += chunk
        except socket.timeout:
            pass
        except (ConnectionResetError, BrokenPipeError) as e:
            raise PeerClosed(str(e))
        frames = []
        while len(self.buf) >= 7:
            frame_type, channel, size = struct.unpack("!BHI", self.buf[:7])
            if len(self.buf) < 8 + size:
                break
            payload, end = self.buf[7 : 7 + size], self.buf[7 + size]
            assert end == FRAME_END, f"bad frame end from server: {end!r}"
            self.buf = self.buf[8 + size :]
            frames.append(Frame(frame_type, channel, payload))
        return frames

    def read_frame(self):
        frame_type, channel, size = struct.unpack("!BHI", self.recv_exact(7))
        payload = self.recv_exact(size)
        end = self.recv_exact(1)
        assert end == bytes([FRAME_END]), f"bad frame end from server: {end!r}"
        return Frame(frame_type, channel, payload)

    def read_method(self, skip_heartbeats=True):
        while True:
            f = self.read_frame()
            if skip_heartbeats and f.type == FRAME_HEARTBEAT:
                continue
            return f

    def expect_method(self, class_method, channel=None):
        f = self.read_method()
        assert f.class_method == class_method, f"expected {class_method}, got {f!r}"
        if channel is not None:
            assert f.channel == channel, f"expected channel {channel}, got {f!r}"
        return f

    def handshake(self, vhost="/", user="guest", password="guest", frame_max=131072, heartbeat=0):
        self.send(PROTOCOL_HEADER)
        start = self.expect_method(CONNECTION_START, channel=0)
        assert start.payload[4:6] == b"\x00\x09", start
        self.send(method_frame(0, CONNECTION_START_OK, start_ok(user, password)))
        tune = self.expect_method(CONNECTION_TUNE, channel=0)
        server_channel_max, server_frame_max, _hb = struct.unpack("!HIH", tune.payload[4:12])

        def negotiate(client, server):
            if client == 0 or server == 0:
                return max(client, server)
            return min(client, server)

        self.channel_max = negotiate(2047, server_channel_max)
        self.frame_max = negotiate(frame_max, server_frame_max)
        self.send(method_frame(0, CONNECTION_TUNE_OK, tune_ok(self.channel_max, self.frame_max, heartbeat)))
        self.send(method_frame(0, CONNECTION_OPEN, connection_open(vhost)))
        self.expect_method(CONNECTION_OPEN_OK, channel=0)
        return self

    def open_channel(self, channel):
        self.send(method_frame(channel, CHANNEL_OPEN, shortstr("")))
        self.expect_method(CHANNEL_OPEN_OK, channel=channel)

    def declare_exclusive_queue(self, channel):
        """queue.declare of a server-named exclusive queue; returns its name."""
        self.send(method_frame(channel, QUEUE_DECLARE, queue_declare("", exclusive=True)))
        f = self.expect_method(QUEUE_DECLARE_OK, channel=channel)
        n = f.payload[4]
        return f.payload[5 : 5 + n].decode()

    def expect_connection_close(self):
        """Read until connection.close; answer close-ok; return the parsed Close."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            f = self.read_method()
            if f.class_method == CONNECTION_CLOSE:
                close = Close(f.payload)
                try:
                    self.send(method_frame(0, CONNECTION_CLOSE_OK))
                except OSError:
                    pass
                return close
        raise AssertionError("no connection.close within 10 s")

    def expect_channel_close(self, channel):
        f = self.expect_method(CHANNEL_CLOSE, channel=channel)
        close = Close(f.payload)
        self.send(method_frame(channel, CHANNEL_CLOSE_OK))
        return close

    def expect_socket_closed(self, timeout=5.0):
        """After connection.close-ok the server must close the TCP connection."""
        self.sock.settimeout(timeout)
        data, closed = self.read_until_closed()
        assert closed, f"server did not close the socket within {timeout}s (read {data[:64]!r})"
        return data


# -- typed field tables (tag, value), for checking that a broker keeps every field type -----------


def encode_value(tag, value):
    if tag == "t":
        return b"t" + bytes([1 if value else 0])
    if tag in "bBsuIilfd":
        fmt = {"b": "b", "B": "B", "s": "h", "u": "H", "I": "i", "i": "I", "l": "q", "f": "f", "d": "d"}[tag]
        return tag.encode() + struct.pack("!" + fmt, value)
    if tag == "D":
        scale, unscaled = value
        return b"D" + struct.pack("!Bi", scale, unscaled)
    if tag in "Sx":
        return tag.encode() + longstr(value)
    if tag == "T":
        return b"T" + struct.pack("!Q", value)
    if tag == "V":
        return b"V"
    if tag == "A":
        inner = b"".join(encode_value(t, v) for t, v in value)
        return b"A" + struct.pack("!I", len(inner)) + inner
    if tag == "F":
        return b"F" + encode_table(value)
    raise ValueError(tag)


def encode_table(table):
    """table: {name: (tag, value)}; values of A are lists of (tag, value), of F dicts again."""
    inner = b"".join(shortstr(k) + encode_value(t, v) for k, (t, v) in table.items())
    return struct.pack("!I", len(inner)) + inner


def _decode_value(data, i):
    tag = chr(data[i])
    i += 1
    if tag == "t":
        return (tag, data[i] != 0), i + 1
    if tag in "bBsuIilfd":
        fmt = {"b": "b", "B": "B", "s": "h", "u": "H", "I": "i", "i": "I", "l": "q", "f": "f", "d": "d"}[tag]
        (v,) = struct.unpack_from("!" + fmt, data, i)
        return (tag, v), i + struct.calcsize("!" + fmt)
    if tag == "D":
        scale, unscaled = struct.unpack_from("!Bi", data, i)
        return (tag, (scale, unscaled)), i + 5
    if tag in "Sx":
        (n,) = struct.unpack_from("!I", data, i)
        return (tag, bytes(data[i + 4 : i + 4 + n])), i + 4 + n
    if tag == "T":
        (v,) = struct.unpack_from("!Q", data, i)
        return (tag, v), i + 8
    if tag == "V":
        return (tag, None), i
    if tag == "A":
        (n,) = struct.unpack_from("!I", data, i)
        end = i + 4 + n
        i += 4
        items = []
        while i < end:
            item, i = _decode_value(data, i)
            items.append(item)
        return (tag, items), end
    if tag == "F":
        table, i = decode_table(data, i)
        return (tag, table), i
    raise ValueError(f"unknown field type {tag!r} at {i - 1}")


def decode_table(data, i=0):
    """Returns ({name: (tag, value)}, next offset)."""
    (n,) = struct.unpack_from("!I", data, i)
    end = i + 4 + n
    i += 4
    table = {}
    while i < end:
        klen = data[i]
        key = bytes(data[i + 1 : i + 1 + klen]).decode()
        i += 1 + klen
        table[key], i = _decode_value(data, i)
    return table, end
