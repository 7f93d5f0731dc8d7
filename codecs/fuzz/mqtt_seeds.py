"""Writes seeds/mqtt_decode/ from ../src/mqtt/fixtures/ (run when the fixtures change).

Each seed is in the fuzz target's input form: two control bytes (split point; packet limit and
starting level, see codecs::mqtt::fuzzing::check_input), then the stream. The unit test
codecs::mqtt::fuzz_seeds_test checks that every fixture is in the corpus.
"""
import glob
import os

HERE = os.path.dirname(os.path.abspath(__file__))
out = os.path.join(HERE, "seeds", "mqtt_decode")
FIXTURES = os.path.join(HERE, "..", "src", "mqtt", "fixtures")
LEVEL = {3: 1, 4: 2, 5: 3}  # CONNECT protocol level -> (c / 3) % 4 of check_input
def level_of(connect):
    # fixed header: type byte + var int
    i = 1
    while connect[i] & 0x80: i += 1
    i += 1
    n = int.from_bytes(connect[i:i+2], "big")
    return connect[i + 2 + n]
def w(name, control, data):
    with open(os.path.join(out, name + ".bin"), "wb") as f:
        f.write(bytes(control) + data)
count = 0
for path in sorted(glob.glob(os.path.join(FIXTURES, "*.txt"))):
    base = os.path.basename(path)[:-4]
    lines = [l for l in open(path).read().splitlines() if l.strip() and not l.startswith("#")]
    if base == "mosquitto_v5_violations":
        for l in lines:
            name, _answer, h = l.split()
            w(f"{base}_{name}", [3, 3 * 3], bytes.fromhex(h)); count += 1
        continue
    pk = [(l.split(" ", 1)[0] == "C", bytes.fromhex(l.split(" ", 1)[1].strip())) for l in lines]
    client = b"".join(b for c, b in pk if c)
    server = b"".join(b for c, b in pk if not c)
    k = LEVEL[level_of(pk[0][1])]
    # client stream from before CONNECT (level learnt from it), no limit and 64-byte limit
    w(f"{base}_client", [5, 0], client); count += 1
    w(f"{base}_client_limit64", [11, 1], client); count += 1
    # server stream at the negotiated level, and client packets after CONNECT at that level
    w(f"{base}_server", [7, 3 * k], server); count += 1
    w(f"{base}_client_after_connect", [3, 3 * k + 2], client[len(pk[0][1]):]); count += 1
    # each packet alone, at its level (CONNECT: from before CONNECT)
    for i, (c, b) in enumerate(pk):
        ctl = [1, 0] if (c and i == 0) else [1, 3 * k]
        w(f"{base}_{i:02d}_{'c' if c else 's'}", ctl, b); count += 1
print(f"{count} seeds written to {out}")
