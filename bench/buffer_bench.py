"""Micro-benchmark of the disk queue's group commit: many concurrent submitters, fsync=always by default.

    python bench/buffer_bench.py [--seconds 5] [--submitters 32] [--events 1000] [--event-size 250]
                                 [--fsync always|interval|never] [--drain] [--dir DIR]

Prints chunks/s, events/s, MB/s committed, commit latency p50/p99 (submit -> future resolved) and
fsyncs/s (one per group commit under "always"). Target on the 2-core dev VM: >= 500k events/s committed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import structlog

from forwardd.buffer import DiskQueue
from forwardd.model import Chunk


async def run(args: argparse.Namespace) -> None:
    directory = tempfile.mkdtemp(prefix="forwardd-bench-", dir=args.dir)
    q = DiskQueue(directory, fsync=args.fsync, max_size=64 * 1024**3)
    await q.start()
    entries = os.urandom(args.event_size) * args.events  # content does not matter to the buffer
    latencies: list[float] = []
    committed = 0
    stop = False

    async def submitter(k: int) -> None:
        nonlocal committed
        while not stop:
            t0 = time.perf_counter()
            await q.submit(Chunk(f"bench.{k}", entries, args.events, time.time_ns()))
            latencies.append(time.perf_counter() - t0)
            committed += 1

    async def drainer() -> None:
        while True:
            q.mark_delivered(await q.get())

    tasks = [asyncio.create_task(submitter(k)) for k in range(args.submitters)]
    drain = asyncio.create_task(drainer()) if args.drain else None
    t0 = time.perf_counter()
    commits0 = q.commits
    await asyncio.sleep(args.seconds)  # the measurement window itself, not a synchronisation
    stop = True
    elapsed = time.perf_counter() - t0
    n, commits = committed, q.commits - commits0
    await asyncio.gather(*tasks)
    if drain is not None:
        drain.cancel()
    await q.close()
    shutil.rmtree(directory, ignore_errors=True)

    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    mb = n * len(entries) / elapsed / 1e6
    print(f"fsync={args.fsync} submitters={args.submitters} chunk={args.events}x{args.event_size}B")
    print(f"chunks/s      {n / elapsed:12,.0f}")
    print(f"events/s      {n * args.events / elapsed:12,.0f}")
    print(f"MB/s          {mb:12,.1f}")
    print(f"latency p50   {pct(0.50):10.2f} ms")
    print(f"latency p99   {pct(0.99):10.2f} ms")
    print(f"commits/s     {commits / elapsed:12,.0f}  ({'fsyncs' if args.fsync == 'always' else 'writes'})")
    print(f"chunks/commit {n / max(commits, 1):12.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--submitters", type=int, default=32)
    p.add_argument("--events", type=int, default=1000)
    p.add_argument("--event-size", type=int, default=250)
    p.add_argument("--fsync", choices=["always", "interval", "never"], default="always")
    p.add_argument("--drain", action="store_true", help="also deliver (read back) concurrently")
    p.add_argument("--dir", default=None, help="parent directory for the queue (default: system temp)")
    args = p.parse_args()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    try:
        import uvloop

        uvloop.run(run(args))
    except ImportError:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
