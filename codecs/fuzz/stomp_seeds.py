"""Writes the stomp_decode seed corpus from the captured stomp.py sessions and a few bad inputs.

Input form (codecs::stomp::fuzzing::check_input): byte 0 picks the split point (x7), byte 1 the
limits (c % 3: none / tiny / RabbitMQ's) and the version ((c // 3) % 3: 1.0, 1.1, 1.2).
Run from this folder: python3 stomp_seeds.py
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "src" / "stomp" / "fixtures"
OUT = HERE / "seeds" / "stomp_decode"
VERSIONS = ["1_0", "1_1", "1_2"]


def control(limits, version):
    return bytes([5, limits + 3 * version])


def write(name, limits, version, stream):
    (OUT / name).write_bytes(control(limits, version) + stream)


def frames(stream):
    out = []
    while stream:
        if b"content-length:" in stream.split(b"\n\n", 1)[0]:
            head, rest = stream.split(b"\n\n", 1)
            n = int(head.split(b"content-length:")[1].split(b"\n")[0])
            end = len(head) + 2 + n + 1
        else:
            end = stream.index(b"\x00") + 1
        out.append(stream[:end])
        stream = stream[end:]
    return out


OUT.mkdir(parents=True, exist_ok=True)
for vi, v in enumerate(VERSIONS):
    data = (FIXTURES / f"stomppy_{v}.bin").read_bytes()
    write(f"stomppy_{v}.bin", 2, vi, data)
    write(f"stomppy_{v}_nolimit.bin", 0, vi, data)
    write(f"stomppy_{v}_tiny.bin", 1, vi, data)
    for i, f in enumerate(frames(data)):
        write(f"stomppy_{v}_frame{i:02}.bin", 2, vi, f)

server = [
    b"CONNECTED\nversion:1.2\nheart-beat:10000,10000\nserver:wharf\nsession:s-1\n\n\x00",
    b"MESSAGE\nsubscription:0\nmessage-id:T_0@@s-1@@1\nack:T_0@@s-1@@1\ndestination:/queue/q\nredelivered:false\ncontent-length:3\n\na\x00b\x00",
    b"RECEIPT\nreceipt-id:r1\n\n\x00",
    b"ERROR\nmessage:bad frame\ncontent-type:text/plain\ncontent-length:4\n\nwhy\n\x00",
]
for i, f in enumerate(server):
    write(f"server_{i}.bin", 2, 2, f)
write("server_all_crlf.bin", 2, 2, b"".join(f.replace(b"\n", b"\r\n", f.count(b"\n") - 0) for f in server[2:3]))
write("heartbeats.bin", 2, 2, b"\n\r\n\nSEND\ndestination:/q\n\nx\x00\n\r\n")

bad = {
    "bad_unknown_command": b"FOO\n\n\x00",
    "bad_no_colon": b"SEND\nnocolon\n\n\x00",
    "bad_escape_12": b"SEND\nk:a\\tb\n\n\x00",
    "bad_cr_escape_11": b"SEND\nk:a\\rb\n\n\x00",
    "bad_content_length": b"SEND\ncontent-length:12x\n\n\x00",
    "bad_not_terminated": b"SEND\ncontent-length:1\n\nab\x00",
    "bad_utf8": b"SEND\nk:\xff\xfe\n\n\x00",
    "bad_no_nul": b"SEND\ndestination:/q\n\n" + b"x" * 100,
    "bad_many_headers": b"SEND\n" + b"".join(b"h%d:v\n" % i for i in range(10)) + b"\n\x00",
    "bad_long_line": b"SEND\n" + b"k:" + b"v" * 40 + b"\n\n\x00",
}
for i, (name, stream) in enumerate(bad.items()):
    write(f"{name}.bin", i % 3, 2 if "11" not in name else 1, stream)
print(len(list(OUT.iterdir())), "seeds")
