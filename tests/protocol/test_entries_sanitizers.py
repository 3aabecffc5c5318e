"""The edge's C scan (forwardd/protocol/_entries.c) under AddressSanitizer and UndefinedBehaviorSanitizer.

Every byte it reads comes off the network. This builds it with both sanitizers, loads it in a child Python
(every allocation through malloc, so ASan sees the buffers too), and scans random entries, entries mutated
byte by byte, cut short, deeply nested and plain random bytes, each result checked against the Python
reference; and runs Message-mode requests, whole and mutated, through message_run (its results are held
equal to the Python loop by tests/protocol/test_properties.py), with hostile arguments too. Any report aborts
the child and fails the test.
"""

from __future__ import annotations

from pathlib import Path

from tests.sanitizers import run_sanitized

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "forwardd" / "protocol" / "_entries.c"

CHILD = r"""
import importlib.machinery, importlib.util, random, struct, sys, time
name = "forwardd.protocol._entries"
spec = importlib.util.spec_from_file_location(
    name, sys.argv[1], loader=importlib.machinery.ExtensionFileLoader(name, sys.argv[1]))
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)

import msgpack
from forwardd.protocol.entries import scan_entries_py

rnd = random.Random(int(sys.argv[2]))
words = ["log", "", "\u00e9", "x" * 40, "y" * 300]

def value(depth):
    k = rnd.randrange(12 if depth < 5 else 8)
    if k == 0: return None
    if k == 1: return rnd.random() < 0.5
    if k == 2: return rnd.randint(-2**63, 2**64 - 1)
    if k == 3: return rnd.choice([0.5, -1.0, float("nan"), float("inf"), 1e12, 3e9])
    if k in (4, 5): return rnd.choice(words)
    if k == 6: return bytes(rnd.randrange(256) for _ in range(rnd.randrange(20)))
    if k == 7: return msgpack.ExtType(rnd.randrange(128), bytes(rnd.randrange(20)))
    if k in (8, 9): return [value(depth + 1) for _ in range(rnd.randrange(4))]
    return {rnd.choice(words): value(depth + 1) for _ in range(rnd.randrange(4))}

def entry():
    k = rnd.randrange(8)
    if k == 0: return msgpack.packb(value(0))
    if k == 1: return b"\x92\x00\x81\x80\x00"                            # a map as a map key
    if k == 2: return b"\x92\x00\x81\xa1e\xd4\xff\x00"                   # a bad msgpack Timestamp
    if k == 3: return b"\x92\x00\x81\xa1k" + b"\x91" * rnd.randrange(1015, 1030) + b"\x90"
    t = rnd.choice([b"\xd7\x00" + struct.pack(">II", 1, 2), msgpack.packb(value(0)), b"\x91\x01"])
    return b"\x92" + t + msgpack.packb({rnd.choice(words): value(1) for _ in range(rnd.randrange(5))})

def check(data, **kw):
    start = rnd.randrange(len(data) + 1)
    end = rnd.choice([-1, rnd.randrange(len(data) + 1)])
    if end >= 0 and end < start:
        start, end = end, start
    args = (data, start, end, rnd.choice([-1, rnd.randrange(5)]), rnd.randrange(200), rnd.randrange(5))
    assert module.scan_entries(*args) == scan_entries_py(*args), data
    assert module.scan_entries(bytearray(data)) == scan_entries_py(data), data

def messages():
    out = []
    for _ in range(rnd.randrange(1, 12)):
        if rnd.randrange(8) == 0:
            out.append(b"\xc0")
            continue
        tag = rnd.choice(["a", "b", "x" * 40])
        t = rnd.choice([1, None, 1.5, msgpack.ExtType(0, bytes(8)), "t"])
        opt = rnd.choice([[], [{}], [None], [{"chunk": "c"}], [{"chunk": "c", "size": 1}], [{"size": 1}]])
        out.append(msgpack.packb([tag, t, rnd.choice([{"log": value(1)}, value(0)])] + opt))
    return b"".join(out)

def check_messages(data):
    # message_run on whole frames, from any frame, continuing a group or not; then hostile arguments
    ends, _ = module.frame_ends(data, 0, 0)
    first = rnd.randrange(len(ends) + 1)
    start = ends[first - 1] if first else 0
    groups, nxt, cont = module.message_run(
        bytearray(data), start, ends, first, 0, rnd.choice([None, b"a", b"b"]), rnd.randrange(3),
        rnd.choice([1, 2, 8192]))
    assert first <= nxt <= len(ends)
    assert sum(g[2] for g in groups) == nxt - first
    bad_ends = [rnd.randrange(len(data) + 10) for _ in range(rnd.randrange(4))]
    try:
        module.message_run(data, rnd.randrange(len(data) + 2), bad_ends, rnd.randrange(3), rnd.randrange(3),
                           None, 0, 1)
    except ValueError:
        pass

deadline = time.monotonic() + float(sys.argv[3])
total = 0
while time.monotonic() < deadline:
    data = b"".join(entry() for _ in range(rnd.randrange(1, 6)))
    check(data)
    buf = bytearray(data)
    for _ in range(rnd.randrange(1, 4)):
        buf[rnd.randrange(len(buf))] = rnd.randrange(256)
    check(bytes(buf))
    check(data[: rnd.randrange(len(data))])
    check(bytes(rnd.randrange(256) for _ in range(rnd.randrange(64))))
    data = messages()
    check_messages(data)
    buf = bytearray(data)
    for _ in range(rnd.randrange(1, 4)):
        buf[rnd.randrange(len(buf))] = rnd.randrange(256)
    check_messages(bytes(buf))
    total += 1
print(f"OK {total}")
"""


def test_scan_is_clean_under_asan_and_ubsan(tmp_path: Path) -> None:
    out = run_sanitized(SOURCE, tmp_path, CHILD, "20261205", "8")
    _, total = out.split()
    assert int(total) > 300  # it ran, and long enough to mean something
