"""Heavy decodes: one small request that costs the daemon a lot of work. A well-behaved client on another
connection must keep its ack latency (p99 <= 250 ms, no wait over 1 s, scaled by its latency before the
attack on a loaded machine: tests/hostile/harness.py) whatever the work: it has to be linear in the
chunk's size and done in slices or off the event loop (issue 14, item 3).

The issue's examples: a 155-byte zstd CompressedPackedForward of 200k entries ``[0, {{}: 0}]`` froze every
connection's acks for 17 s (each entry that fails to decode made the decoder copy the rest of the chunk),
and a gzip payload of 100 MiB of zeros (under the 256 MiB cap) stalled all clients for 27 s. Generated
relatives: other codecs and other entry shapes that fail to decode (an array or a map as a map key, a map
key inside the time), and a payload of many tiny valid entries near the decompression cap.
"""

from __future__ import annotations

import functools
import gzip
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from forwardd.testing.client import ForwardClient
from tests.hostile.harness import (
    Daemon,
    MiB,
    await_ack,
    base_config,
    check_delivered,
    numbers,
    read_records,
    steady,
    wait_until,
)
from tests.pipeline import mp

NOW = 1_700_000_000
#: The decompression cap configured for the tiny-entries attack: a payload just under it costs what one
#: under the default 256 MiB cap costs per byte, without writing gigabytes of JSON lines to the disk.
TINY_CAP = 16 * MiB


def _zeros_gzip(n: int) -> bytes:
    """gzip of ``n`` zero bytes (about n/1000 bytes), built in slices so the test itself stays small."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(MiB)
    parts = [c.compress(block) for _ in range(n // MiB)]
    parts.append(c.flush())
    return b"".join(parts)


@functools.cache
def attack(kind: str) -> tuple[bytes, int]:
    """The request of one attack (with ack ``"x"``) and how many entries it holds."""
    if kind == "zstd-map-as-key":
        n = 200_000
        return mp.packed_forward(
            kind, zstandard.compress(b"\x92\x00\x81\x80\x00" * n), chunk="x", compressed="zstd"
        ), n
    if kind == "gzip-array-as-key":
        n = 250_000
        body = b"\x92\x00\x81\x91\x01\x00" * n  # [0, {[1]: 0}]
        return mp.packed_forward(kind, gzip.compress(body, mtime=0), chunk="x", compressed="gzip"), n
    if kind == "zstd-key-in-time":
        n = 200_000
        body = b"\x92\x81\x80\x00\x80" * n  # [{{}: 0}, {}]: the time is a map with a map key
        return mp.packed_forward(kind, zstandard.compress(body), chunk="x", compressed="zstd"), n
    if kind == "gzip-100MiB-zeros":
        n = 100 * MiB  # each zero byte is a msgpack value, an entry that is not [time, record]
        return mp.packed_forward(kind, _zeros_gzip(n), chunk="x", compressed="gzip"), n
    if kind == "zstd-tiny-entries-near-cap":
        entry = mp.entry(NOW, {"a": 1})  # 10 bytes, plain: the C transcoder's fast path
        n = (TINY_CAP - 64 * 1024) // len(entry)
        return mp.packed_forward(kind, zstandard.compress(entry * n, 3), chunk="x", compressed="zstd"), n
    raise ValueError(kind)


INVALID = ["zstd-map-as-key", "gzip-array-as-key", "zstd-key-in-time", "gzip-100MiB-zeros"]


def _invalid_line(tag: str) -> Callable[[dict[str, Any]], bool]:
    """A line naming invalid entries of this tag (or a rejection of the chunk, if it is judged whole)."""
    return lambda line: (
        ("invalid" in str(line.get("event")) or line.get("event") == "chunk.rejected")
        and line.get("tag") == tag
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", [*INVALID, "zstd-tiny-entries-near-cap"])
def test_heavy_decode_keeps_other_clients_acks_flowing(tmp_path: Path, kind: str) -> None:
    request, entries = attack(kind)
    config = base_config(tmp_path)
    if kind == "zstd-tiny-entries-near-cap":
        config["sources"][0]["limits"] = {"max_decompressed_size": TINY_CAP}
    out = tmp_path / "out"
    with Daemon(tmp_path, config) as d:
        before = d.rss()
        with steady(d.port) as s, ForwardClient(port=d.port, timeout=60) as attacker:
            attacker.send(request)
            # A marker after it on the same connection: once it is written, the attack chunk was processed.
            attacker.send(mp.message("marker", NOW, {"after": kind}, chunk="m"))
            if (
                await_ack(attacker, "x", s)
                and await_ack(attacker, "m", s)
                and wait_until(lambda: bool(read_records(out / "marker")), "the marker's delivery", client=s)
            ):
                s.wait_acks(20)
        s.check_latency()
        check_delivered(out / "steady", s)
        if kind in INVALID:
            d.wait_lines(_invalid_line(kind))
        else:
            written = numbers(read_records(out / kind), "a")
            assert len(written) == entries, (len(written), entries)
        d.wait_rss_back(before)
        stats = d.stop()
        if kind in INVALID:
            src = stats["source:in"]
            assert src["invalid_entries"] >= entries or src["rejected"] >= 1, src
        assert stats["output:files"]["queued_chunks"] == 0
        assert not d.not_json(), d.not_json()[:5]
