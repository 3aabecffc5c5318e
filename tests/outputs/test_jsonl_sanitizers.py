"""The C transcoder under AddressSanitizer and UndefinedBehaviorSanitizer.

Its input comes off the network, so a read past a buffer or an overflowing integer must not hide behind a
result that happens to look right. This builds _jsonl.c with both sanitizers, loads it in a child Python
(every allocation through malloc, so ASan sees the bytes objects too), and feeds it valid docker chunks,
chunks mutated byte by byte, cut short, and random bytes, checking each answer against the Python path,
through both of its functions (the whole text, and the values walked in slices).
Any report aborts the child and fails the test.
"""

from __future__ import annotations

from pathlib import Path

from tests.sanitizers import run_sanitized

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "forwardd" / "outputs" / "_jsonl.c"

CHILD = r"""
import importlib.machinery, importlib.util, random, struct, sys, time
spec = importlib.util.spec_from_file_location(
    "forwardd.outputs._jsonl", sys.argv[1],
    loader=importlib.machinery.ExtensionFileLoader("forwardd.outputs._jsonl", sys.argv[1]))
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
sys.modules["forwardd.outputs._jsonl"] = module

import msgpack
from forwardd.model import Chunk
from forwardd.outputs.formats import json as formats
assert formats._jsonl is module

rnd = random.Random(int(sys.argv[2]))
words = ["log", "time", "tag", "a", "", "\u00e9", "\u4e2d\U0001f600", 'q"\\\n\t\x01', "x" * 40]

def value(depth):
    k = rnd.randrange(10 if depth < 6 else 7)
    if k == 0: return None
    if k == 1: return rnd.random() < 0.5
    if k == 2: return rnd.randint(-2**63, 2**64 - 1)
    if k == 3: return rnd.choice(FLOATS) * rnd.choice([1, -1, rnd.random()])
    if k in (4, 5, 6): return rnd.choice(words) * rnd.randrange(1, 4)
    if k in (7, 8): return [value(depth + 1) for _ in range(rnd.randrange(4))]
    return {rnd.choice(words): value(depth + 1) for _ in range(rnd.randrange(4))}

FLOATS = [0.5, 1e16, -1e-7, 3.3e-5, float("inf"), float("nan"), 5e-324, 1.7976931348623157e308]

def time_bytes():
    k = rnd.randrange(6)
    if k == 0: return b"\xd7\x00" + struct.pack(">II", rnd.randrange(2**32), rnd.randrange(10**9))
    if k == 1: return b"\xc7\x08\x00" + struct.pack(">II", rnd.randrange(2**32), rnd.randrange(10**9))
    if k == 2: return msgpack.packb(rnd.choice([rnd.randrange(2**32), rnd.randrange(2**64)]))
    if k == 3: return msgpack.packb(rnd.choice([rnd.uniform(0, 1e11), rnd.uniform(0, 2e11)]))
    if k == 4: return msgpack.packb(rnd.choice([0, None, 0.0, 0, None, -1]))
    return msgpack.packb(rnd.uniform(1e9, 2e10), use_single_float=True)

def chunk_bytes():
    n = rnd.randrange(1, 8)
    records = ({rnd.choice(words): value(0) for _ in range(rnd.randrange(8))} for _ in range(n))
    return b"".join(b"\x92" + time_bytes() + msgpack.packb(r) for r in records), n

def walk(chunk, keys):  # json_values over the whole chunk in random slices; None once one declines
    pos, values = 0, []
    while pos < len(chunk.entries):
        got = formats.native_json_values(chunk, pos, rnd.randrange(1, 4), time_key=keys[0], tag_key=keys[1])
        if got is None:
            return None
        part, pos = got
        values += part
    return values

def check(entries, count, keys):
    chunk = Chunk("docker.web", entries, count, 1_600_000_000_000_000_042)
    native = formats.native_json_lines(chunk, time_key=keys[0], tag_key=keys[1])
    values = walk(chunk, keys)
    if native is not None:
        plain = chunk.plain_entries()
        assert plain is not None, entries
        text = formats.plain_json_lines(plain, chunk.tag, time_key=keys[0], tag_key=keys[1])
        assert native.data == text, entries
        assert values == text.split(b"\n")[:-1], entries
    return native is not None

deadline = time.monotonic() + float(sys.argv[3])
answered = total = 0
keysets = [("time", "tag"), (None, None), ("log", "a"), (None, "tag")]
while time.monotonic() < deadline:
    entries, n = chunk_bytes()
    keys = rnd.choice(keysets)
    answered += check(entries, n, keys)
    buf = bytearray(entries)
    for _ in range(rnd.randrange(1, 4)):
        buf[rnd.randrange(len(buf))] = rnd.randrange(256)
    check(bytes(buf), n, keys)
    check(entries[: rnd.randrange(len(entries))], n, keys)
    check(entries, n + rnd.choice([-1, 1, 1000]), keys)
    check(bytes(rnd.randrange(256) for _ in range(rnd.randrange(64))), rnd.randrange(1, 5), keys)
    total += 1
print(f"OK {total} {answered}")
"""


def test_transcoder_is_clean_under_asan_and_ubsan(tmp_path: Path) -> None:
    out = run_sanitized(SOURCE, tmp_path, CHILD, "20261204", "8")
    _, total, answered = out.split()
    assert int(total) > 500  # it ran, and long enough to mean something
    assert int(answered) > int(total) // 5  # and the valid chunks really went through the C path
