"""The windowed segment scanner: same verdict as reading the whole segment at once, in bounded memory."""

from __future__ import annotations

import os
import tracemalloc
import zlib
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from forwardd.buffer.segment import _BODY, _FRAME, MAGIC, SegmentScanner, encode_prefix, scan
from forwardd.buffer.store import SegmentStore
from forwardd.model import Chunk


def reference_scan(buf: bytes) -> tuple[list[tuple[int, int, int]], int | None, bool, int, int]:
    """The scan as it was written before it read in windows: the whole segment in one buffer."""

    def valid_at(offset: int) -> int:
        if len(buf) - offset < _FRAME.size + _BODY.size:
            return 0
        magic, blen, crc = _FRAME.unpack_from(buf, offset)
        end = offset + _FRAME.size + blen
        if magic != MAGIC or blen < _BODY.size or end > len(buf):
            return 0
        if _BODY.size + _BODY.unpack_from(buf, offset + _FRAME.size)[0] > blen:
            return 0
        return end - offset if zlib.crc32(buf[offset + _FRAME.size : end]) == crc else 0

    spans, bad_at, torn, lost_bytes, lost_records = [], None, True, 0, 0
    off = 0
    while off < len(buf):
        n = valid_at(off)
        if n:
            spans.append((off, off + n, _BODY.unpack_from(buf, off + _FRAME.size)[1]))
            off += n
            continue
        if bad_at is None:
            bad_at = off
        nxt = buf.find(MAGIC, off + 1)
        while nxt != -1 and not valid_at(nxt):
            nxt = buf.find(MAGIC, nxt + 1)
        if nxt == -1:
            lost_bytes += len(buf) - off
            break
        torn = False
        lost_bytes += nxt - off
        lost_records += max(1, buf.count(MAGIC, off, nxt))
        off = nxt
    return spans, bad_at, torn, lost_bytes, lost_records


def record(n: int, size: int) -> bytes:
    c = Chunk(f"t{n}", bytes([n % 256]) * size, n, n)
    return encode_prefix(c) + c.entries


damage = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.floats(0, 1), st.just(0)),
    st.tuples(st.just("garbage"), st.floats(0, 1), st.integers(1, 60)),
    st.tuples(st.just("zeros"), st.floats(0, 1), st.integers(1, 300)),
)


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 200), max_size=12),
    hits=st.lists(damage, max_size=3),
    window=st.integers(1, 300),
)
def test_windowed_scan_agrees_with_reading_the_whole_segment(
    sizes: list[int], hits: list[tuple[str, float, int]], window: int
) -> None:
    data = bytearray(b"".join(record(i, s) for i, s in enumerate(sizes)))
    for kind, where, arg in hits:
        at = int(where * len(data))
        if kind == "flip" and data:
            data[min(at, len(data) - 1)] ^= arg
        elif kind == "cut":
            del data[at:]
        elif kind == "garbage":
            data[at:at] = (MAGIC + b"\xff" * arg)[:arg]
        else:
            data[at:at] = bytes(arg)
    buf = bytes(data)
    reads: list[int] = []

    def read(off: int, n: int) -> bytes:
        reads.append(n)
        return buf[off : off + n]

    sc = SegmentScanner(read, len(buf), window=window)
    spans = list(sc.records())
    assert (spans, sc.bad_at, sc.torn, sc.lost_bytes, sc.lost_records) == reference_scan(buf)
    # Never more than a window at a time (or a header, if the window is smaller), whatever the records
    # or the damage claim to be.
    assert max(reads, default=0) <= max(window, _FRAME.size + _BODY.size)
    r = scan(buf)
    assert (r.spans, r.bad_at, r.torn, r.lost_bytes, r.lost_records) == reference_scan(buf)
    if sc.bad_at is not None:
        assert sc.content_end(sc.bad_at) == max(sc.bad_at, len(buf.rstrip(b"\0")))


def test_recovery_reads_a_window_at_a_time_not_whole_segments(tmp_path: Path) -> None:
    """A restart over a backlog holds one scan window, not a 16 MiB segment (issue 18: memory flat
    through a backlog)."""
    store = SegmentStore.open(str(tmp_path), fsync="never")
    big = [Chunk("backlog", os.urandom(256) * 1024, 1000, i) for i in range(96)]  # 24 MiB, two segments
    store.publish(store.write(big))
    store.close()
    tracemalloc.start()
    try:
        again = SegmentStore.open(str(tmp_path), fsync="never")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert again.queued_chunks == 96
    again.close()
    assert peak < 4 * 1024 * 1024, f"recovery held {peak / 2**20:.1f} MiB"
