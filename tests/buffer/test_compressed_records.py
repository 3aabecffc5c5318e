"""Records written as LZ4 blocks (``buffer.compression: lz4``): what comes back is what went in, whichever
way it is read back (from memory, from the file behind a backlog, after a restart, with the setting
changed in between), the disk holds less, and the reader's memory is bounded by what it holds, not by the
size of the records on disk."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from forwardd.buffer import DiskQueue
from forwardd.buffer.segment import (
    COMPRESS_MIN,
    MAGIC,
    MAGIC_LZ4,
    Compression,
    SegmentScanner,
    decode_record,
    encode_record,
    frame_size,
    parse_segment_name,
    scan,
)
from forwardd.model import Chunk

TIMEOUT = 5.0


def docker_chunk(n: int, events: int = 100) -> Chunk:
    """A PackedForward chunk of docker-shaped records (what the compression is for)."""
    cid = f"{n:064x}"
    entries = b"".join(
        msgpack.packb([1_700_000_000 + i, {"container_id": cid, "source": "stdout", "log": f"line {n}/{i}"}])
        for i in range(events)
    )
    return Chunk(f"docker.{n % 3}", entries, events, n)


def noise_chunk(n: int) -> Chunk:
    """Entries that do not compress (random bytes stand for them: the queue does not parse entries)."""
    return Chunk("noise", random.Random(n).randbytes(8192), 1, n)


def small_chunk(n: int) -> Chunk:
    return Chunk("docker.line", msgpack.packb([n, {"log": "x" * 200}]), 1, n)


def disk_bytes(directory: Path) -> int:
    return sum(
        os.path.getsize(directory / name) for name in os.listdir(directory) if parse_segment_name(name)
    )


def record_magics(directory: Path) -> list[bytes]:
    out = []
    for name in sorted(os.listdir(directory)):
        if parse_segment_name(name):
            data = (directory / name).read_bytes()
            out += [data[start : start + 4] for start, _, _ in scan(data).spans]
    return out


async def drain(queue: DiskQueue, n: int) -> list[Chunk]:
    out = []
    for _ in range(n):
        taken = await asyncio.wait_for(queue.get(), TIMEOUT)
        out.append(taken.chunk)
        queue.mark_delivered(taken)
    return out


def same(a: list[Chunk], b: list[Chunk]) -> bool:
    return [(c.tag, bytes(c.entries), c.count, c.received_ns) for c in a] == [
        (c.tag, bytes(c.entries), c.count, c.received_ns) for c in b
    ]


async def fill(directory: Path, chunks: list[Chunk], compression: Compression) -> None:
    queue = DiskQueue(str(directory), compression=compression)
    await queue.start()
    for c in chunks:
        await asyncio.wait_for(queue.submit(c), TIMEOUT)
    await queue.close()


def mixed(n: int) -> list[Chunk]:
    return [(docker_chunk, noise_chunk, small_chunk)[i % 3](i) for i in range(n)]


async def test_what_is_read_back_after_a_restart_is_what_was_written(tmp_path: Path) -> None:
    chunks = mixed(30)
    await fill(tmp_path, chunks, "lz4")
    # Docker-shaped chunks are compressed, the noise and the small ones are not.
    assert record_magics(tmp_path) == [MAGIC_LZ4, MAGIC, MAGIC] * 10
    assert disk_bytes(tmp_path) < sum(map(frame_size, chunks)) * 0.6
    queue = DiskQueue(str(tmp_path), compression="none")  # the setting changed: both are read back
    await queue.start()
    try:
        assert same(await drain(queue, len(chunks)), chunks)
        assert (queue.queued_chunks, queue.queued_bytes) == (0, 0)
    finally:
        await queue.close()


async def test_uncompressed_records_are_read_back_once_compression_is_on(tmp_path: Path) -> None:
    old, new = mixed(9), [docker_chunk(100 + i) for i in range(5)]
    await fill(tmp_path, old, "none")
    queue = DiskQueue(str(tmp_path), compression="lz4")
    await queue.start()
    try:
        for c in new:
            await asyncio.wait_for(queue.submit(c), TIMEOUT)
        assert same(await drain(queue, len(old) + len(new)), old + new)
    finally:
        await queue.close()
    assert MAGIC_LZ4 not in record_magics(tmp_path)[: len(old)]


async def test_a_backlog_read_from_the_file_decompresses_and_memory_counts_entries(tmp_path: Path) -> None:
    queue = DiskQueue(str(tmp_path), compression="lz4")
    await queue.start()
    chunk_mem = len(docker_chunk(0).entries)
    # Room in memory for three chunks as they came; on disk, each takes a fraction of that.
    queue._store.hot_max = 3 * chunk_mem + 500  # type: ignore[union-attr]
    try:
        chunks = [docker_chunk(i) for i in range(12)]
        for c in chunks:
            await asyncio.wait_for(queue.submit(c), TIMEOUT)
        reader = queue._store.reader  # type: ignore[union-attr]
        assert reader._hot_bytes <= reader.hot_max
        assert len(reader._hot) == 3  # by compressed size all twelve would have been kept in memory
        assert same(await drain(queue, len(chunks)), chunks)  # nine of them read and decoded from the file
        assert reader._hot_bytes == 0
    finally:
        await queue.close()


async def test_the_queue_limit_counts_what_the_disk_holds(tmp_path: Path) -> None:
    chunks = [docker_chunk(i) for i in range(20)]
    raw = sum(map(frame_size, chunks))
    # Room for half of them as they came: compressed, all of them fit without waiting for a delivery.
    queue = DiskQueue(str(tmp_path), compression="lz4", max_size=raw // 2)
    await queue.start()
    try:
        await asyncio.wait_for(asyncio.gather(*(queue.submit(c) for c in chunks)), TIMEOUT)
        assert queue.queued_chunks == 20
        assert queue.queued_bytes == disk_bytes(tmp_path) - _runway(tmp_path) <= raw // 2
    finally:
        await queue.close()


def _runway(directory: Path) -> int:
    """The zeros the writer keeps ahead of its last record (preallocated, not queued)."""
    total = 0
    for name in os.listdir(directory):
        if parse_segment_name(name):
            data = (directory / name).read_bytes()
            spans = scan(data).spans
            total += len(data) - (spans[-1][1] if spans else 0)
    return total


@settings(max_examples=200, deadline=None)
@given(
    tag=st.text(max_size=20),
    entries=st.one_of(
        st.binary(max_size=3 * COMPRESS_MIN),
        st.builds(lambda b, k: b * k, st.binary(min_size=1, max_size=64), st.integers(1, 400)),
    ),
    count=st.integers(0, 2**32 - 1),
    received=st.integers(0, 2**64 - 1),
    compression=st.sampled_from(["lz4", "none"]),
    flip=st.integers(0, 10**6),
)
def test_records_round_trip_and_a_flipped_bit_costs_one_record(
    tag: str, entries: bytes, count: int, received: int, compression: Compression, flip: int
) -> None:
    chunk = Chunk(tag, entries, count, received)
    prefix, body = encode_record(chunk, compression)
    record = prefix + body
    assert len(record) <= frame_size(chunk)
    back, end = decode_record(record)
    assert end == len(record)
    assert (back.tag, bytes(back.entries), back.count, back.received_ns) == (tag, entries, count, received)
    plain = b"".join(encode_record(Chunk("p", b"\x90" * 10, 1, 0), "none"))
    segment = plain + record + plain
    assert [(s, e) for s, e, _ in scan(segment).spans] == [
        (0, len(plain)),
        (len(plain), len(plain) + len(record)),
        (len(plain) + len(record), len(segment)),
    ]
    damaged = bytearray(segment)
    damaged[len(plain) + flip % len(record)] ^= 1 << (flip % 8)
    result = scan(bytes(damaged))
    assert result.bad_at == len(plain)
    assert [s for s, _, _ in result.spans] == [0, len(plain) + len(record)]
    # A record bigger than the scanner's window is checked piece by piece: the same verdicts.
    for data, bad in ((segment, None), (bytes(damaged), len(plain))):
        sc = SegmentScanner(lambda off, n, d=data: d[off : off + n], len(data), window=32)
        assert [s for s, _, _ in sc.records()] == [s for s, _, _ in scan(data).spans]
        assert sc.bad_at == bad
