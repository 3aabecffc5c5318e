"""File output throughput: 1000-event chunks of ~250-byte docker records, as the buffer hands them over.

Prints events/s and MB/s (of encoded, uncompressed output) for the encoder alone and for whole ``write()``
calls (decode + encode + write + fsync), per format and compression. Target: >= 400k events/s for JSON lines.

    python bench/file_output_bench.py [--chunks 300] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time

from bench.records import EVENTS_PER_CHUNK, T0, docker_entries
from forwardd.model import Chunk
from forwardd.outputs.file import FileOutput
from forwardd.outputs.formats import make_encoder


def fresh_chunks(entries: list[bytes]) -> list[Chunk]:
    """Undecoded chunks, as read back from the disk buffer."""
    return [Chunk("docker.web", e, EVENTS_PER_CHUNK, T0) for e in entries]


def report(label: str, events: int, nbytes: int, seconds: float, cpu: float) -> None:
    """Wall-clock rates, and events per CPU-second of this process (steadier on a shared machine)."""
    print(
        f"{label:<40} {events / seconds:>10,.0f} events/s {nbytes / seconds / 1e6:>7.1f} MB/s"
        f" {events / cpu:>10,.0f} events/cpu-s"
    )


def bench_encoder(entries: list[bytes], fmt: str) -> None:
    chunks = fresh_chunks(entries)
    for c in chunks:
        c.events()
    encode = make_encoder(fmt)
    t, c0 = time.perf_counter(), time.process_time()
    nbytes = sum(len(encode(c.events(), c.tag)) for c in chunks)
    elapsed, cpu = time.perf_counter() - t, time.process_time() - c0
    report(f"encode {fmt} (records decoded)", len(chunks) * EVENTS_PER_CHUNK, nbytes, elapsed, cpu)


async def bench_write(
    entries: list[bytes], folder: str, label: str, decoded: bool, **settings: object
) -> None:
    out = FileOutput(name="bench", path=f"{folder}/{label}/${{tag}}.log", **settings)  # type: ignore[arg-type]
    chunks = fresh_chunks(entries)
    if decoded:
        for c in chunks:
            c.events()
    await out.write(fresh_chunks(entries[:1])[0])  # open the file outside the timing
    t, c0 = time.perf_counter(), time.process_time()
    for c in chunks:
        await out.write(c)
    elapsed, cpu = time.perf_counter() - t, time.process_time() - c0
    await out.stop()
    n = len(chunks) * EVENTS_PER_CHUNK
    what = "write" if decoded else "decode+write"
    report(f"{what} {label}", n, out.bytes_written, elapsed, cpu)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=300)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    entries = [docker_entries(i) for i in range(args.chunks)]
    size = sum(len(e) for e in entries) / (args.chunks * EVENTS_PER_CHUNK)
    print(f"{args.chunks} chunks x {EVENTS_PER_CHUNK} events, {size:.0f} B msgpack per event")
    for fmt in ("json", "msgpack", "fluentd"):
        bench_encoder(entries, fmt)
    folder = tempfile.mkdtemp(prefix="forwardd-bench-", dir=args.dir)
    try:
        await bench_write(entries, folder, "json", decoded=True)
        await bench_write(entries, folder, "json", decoded=False)
        await bench_write(entries, folder, "json-nofsync", decoded=False, fsync_on_write=False)
        await bench_write(entries, folder, "json-gzip1", decoded=False, compress="gzip", compress_level=1)
        await bench_write(entries, folder, "json-zstd", decoded=False, compress="zstd")
        await bench_write(entries, folder, "msgpack", decoded=False, format="msgpack")
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    asyncio.run(main())
