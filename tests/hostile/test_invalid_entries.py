"""Invalid entries and times inside accepted chunks: skipped (the rest of the chunk is delivered), and never
silently: counted in the listener's ``invalid_entries`` and logged with a sample (issue 14, item 5). The
unfixed daemon dropped them without a line and its counter stayed at 0.

Every shape of entry the decoder skips, in every carrier mode: a record that is not a map, times that are
negative, NaN, past year 9999 (a float, and integer seconds, which an output could not write), text, an
EventTime or a msgpack timestamp of a wrong length, an empty or broken v1.5 wrapper; a map used as a map
key; an entry of three elements; a value that is no entry at all.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import zstandard

from forwardd.testing.client import ForwardClient
from tests.hostile.harness import (
    Daemon,
    base_config,
    check_delivered,
    numbers,
    read_records,
    steady,
    wait_delivered,
)
from tests.pipeline import mp

NOW = 1_700_000_000

INVALID: list[bytes] = [
    mp.entry(NOW, "a record that is not a map"),
    mp.entry(-5, {"k": 1}),
    mp.entry(float("nan"), {"k": 1}),
    mp.entry(1e12, {"k": 1}),
    mp.entry(2**62, {"k": 1}),  # was acked, queued and then dead-lettered by the file output
    mp.entry("yesterday", {"k": 1}),
    mp.entry(mp.Ext(0, b"\x00\x00\x00\x01"), {"k": 1}),  # EventTime of 4 bytes
    mp.entry(mp.Ext(-1, b"abc"), {"k": 1}),  # a msgpack timestamp of 3 bytes
    mp.entry([], {"k": 1}),
    mp.entry([NOW, "not a map"], {"k": 1}),
    b"\x92\x00\x81\x80\x00",  # [0, {{}: 0}]
    mp.pack([NOW, {"k": 1}, "third"]),
    mp.pack(7),
]


def _valid(v: int) -> bytes:
    return mp.entry(NOW, {"v": v})


def requests() -> tuple[list[tuple[str, bytes]], int, set[int]]:
    """(chunk id, request) of each mode, how many invalid entries they hold, and the valid ``v`` numbers."""
    reqs: list[tuple[str, bytes]] = []
    body = b"".join(e + _valid(i) for i, e in enumerate(INVALID))
    reqs.append(("i1", mp.packed_forward("invalid.packed", body, chunk="i1")))
    reqs.append(
        ("i2", mp.packed_forward("invalid.gzip", gzip.compress(body, mtime=0), chunk="i2", compressed="gzip"))
    )
    reqs.append(
        ("i3", mp.packed_forward("invalid.zstd", zstandard.compress(body), chunk="i3", compressed="zstd"))
    )
    reqs.append(("i4", mp.forward("invalid.forward", [*INVALID, _valid(100)], chunk="i4")))
    reqs.append(("i5", mp.message("invalid.message", -5, {"v": 101}, chunk="i5")))  # a negative time
    invalid = 4 * len(INVALID) + 1
    valid = set(range(len(INVALID))) | {100}
    return reqs, invalid, valid


def _with_sample(line: dict[str, Any]) -> bool:
    return "invalid" in str(line.get("event")) and any("sample" in k for k in line) and bool(line.get("tag"))


def test_invalid_entries_are_counted_and_logged_with_a_sample(tmp_path: Path) -> None:
    reqs, invalid, valid = requests()
    out = tmp_path / "out"
    with Daemon(tmp_path, base_config(tmp_path)) as d:
        with steady(d.port) as s, ForwardClient(port=d.port, timeout=20) as c:
            for chunk_id, request in reqs:
                c.send(request)
                c.expect_ack(chunk_id)
            s.wait_acks(20)
        s.check_latency()
        check_delivered(out / "steady", s)
        found = wait_delivered(out, valid, key="v")
        assert sorted(n for n in found if n < 100) == sorted(list(range(len(INVALID))) * 3)  # 3 modes
        assert 101 not in numbers(read_records(out), "v")  # its time was invalid
        lines = d.wait_lines(_with_sample, timeout=10)
        tags = {"invalid.packed", "invalid.gzip", "invalid.zstd", "invalid.forward", "invalid.message"}
        assert {line["tag"] for line in lines} <= tags
        stats = d.stop()
        assert stats["source:in"]["invalid_entries"] == invalid, stats["source:in"]
        assert not d.not_json(), d.not_json()[:5]
