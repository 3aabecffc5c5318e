"""The forward output's throughput into a receiver on loopback, acked, beside the ingest baseline.

Receivers (each its own process, started as bench.ingest starts them): the decode-and-discard baseline
receiver (the ceiling), forwardd acking into a null output (``forwardd``), and forwardd acking once the
chunk is fsync'd in its disk buffer (``forwardd-buffer``: a real aggregator's ack).

Senders, against each receiver, repetitions interleaved:

``loadgen``
    bench.loadgen's ``packed-1conn-ack`` traffic at window 1 (pre-encoded 1000-event PackedForward
    chunks, stop-and-wait acks, one connection): the ingest baseline, what a client costs nothing to send.
``out-1k``
    forwardd's ForwardOutput, one ``write()`` at a time as the delivery loop calls it, each a 1000-event
    chunk (the same docker-shaped entries, ~240 KB), acked: each write checks the entries' times, sends
    one request and waits for its ack.
``out-16k``
    the same with 16,000-event chunks (~3.9 MB): what the delivery loop hands over when a backlog has
    built up (it merges committed chunks of a tag up to 4 MiB); each write is four pipelined 1 MiB
    requests.
``out-1ev``
    2,000 writes of one event each: the worst case of many tags (docker's default tag is per container;
    the delivery loop writes one tag's events at a time and waits for their ack), so this is the number
    of acked round trips per second.
``out-1k-zstd`` / ``out-1k-gzip``
    1000-event chunks compressed (not against the baseline receiver, which only frames plain entries).

Columns: events/s and MB/s (entry bytes, before compression), the sender's CPU (this process for the
output rows; loadgen's own figure for its rows) and the receiver's CPU, as % of one core.

    python -m bench.forward_output [--chunks 200] [--reps 3] [--targets baseline,forwardd,forwardd-buffer]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

from bench.ingest import DEFAULT_COMMANDS, FORWARDD_BUFFER_CONFIG, FORWARDD_CONFIG, Target
from bench.records import EVENTS_PER_CHUNK, T0, docker_entries
from forwardd.model import Chunk
from forwardd.outputs.forward import ForwardOutput, ServerSpec
from forwardd.pieces import entry_ends

CONFIGS = {"baseline": "", "forwardd": FORWARDD_CONFIG, "forwardd-buffer": FORWARDD_BUFFER_CONFIG}
COMMANDS = {
    "baseline": DEFAULT_COMMANDS["baseline"],
    "forwardd": DEFAULT_COMMANDS["forwardd"],
    "forwardd-buffer": DEFAULT_COMMANDS["forwardd"],
}
SENDERS = ["loadgen", "out-1k", "out-16k", "out-1ev", "out-1k-zstd", "out-1k-gzip"]


@dataclass(slots=True)
class Result:
    events: int
    nbytes: int
    seconds: float
    sender_cpu: float
    receiver_cpu: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def _tree_cpu(pid: int) -> float:
    """User+system seconds of a process and its children (from /proc)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _output_run(
    port: int, entries: list[bytes], per_write: int, compress: str
) -> tuple[int, int, float]:
    server = ServerSpec("127.0.0.1", port)
    out = ForwardOutput(name="bench", servers=[server], heartbeat_type="none", compress=compress)  # type: ignore[arg-type]
    await out.start()
    try:
        group = per_write // EVENTS_PER_CHUNK
        blobs = [b"".join(entries[i : i + group]) for i in range(0, len(entries), group)]
        await out.write(Chunk("docker.warm", blobs[0], per_write, T0))
        chunks = [Chunk("docker.web", b, per_write, T0) for b in blobs]  # fresh: nothing decoded before
        t = time.perf_counter()
        for c in chunks:
            await out.write(c)
        seconds = time.perf_counter() - t
        assert out.stats.unacked_events == 0
        return len(chunks) * per_write, sum(map(len, blobs)), seconds
    finally:
        await out.stop()


async def _single_events_run(port: int, entries: list[bytes], n: int) -> tuple[int, int, float]:
    server = ServerSpec("127.0.0.1", port)
    out = ForwardOutput(name="bench", servers=[server], heartbeat_type="none")
    await out.start()
    try:
        ends = entry_ends(entries[0])
        singles = [entries[0][a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]
        chunks = [Chunk(f"docker.c{i % 50}", singles[i % len(singles)], 1, T0) for i in range(n)]
        await out.write(chunks[0])
        t = time.perf_counter()
        for c in chunks:
            await out.write(c)
        return n, sum(len(c.entries) for c in chunks), time.perf_counter() - t
    finally:
        await out.stop()


def run_single_events(target: Target, entries: list[bytes], n: int) -> Result:
    cpu0, rcpu0 = _self_cpu(), _tree_cpu(target.pid)
    events, nbytes, seconds = uvloop.run(_single_events_run(target.port, entries, n))
    return Result(events, nbytes, seconds, _self_cpu() - cpu0, _tree_cpu(target.pid) - rcpu0)


def run_output(target: Target, entries: list[bytes], per_write: int, compress: str) -> Result:
    cpu0, rcpu0 = _self_cpu(), _tree_cpu(target.pid)
    # On uvloop, as the daemon runs its outputs.
    events, nbytes, seconds = uvloop.run(_output_run(target.port, entries, per_write, compress))
    return Result(events, nbytes, seconds, _self_cpu() - cpu0, _tree_cpu(target.pid) - rcpu0)


def run_loadgen(target: Target, events: int) -> Result:
    rcpu0 = _tree_cpu(target.pid)
    cmd = [
        sys.executable, "-m", "bench.loadgen", target.address, "--mode", "packed", "--ack", "--window", "1",
        "--chunk-size", str(EVENTS_PER_CHUNK), "--events", str(events), "--procs", "0", "--json",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed: {proc.stderr[-500:]}")
    r: dict[str, Any] = json.loads(proc.stdout)
    if r.get("errors"):
        raise RuntimeError(f"loadgen errors: {r['errors']}")
    return Result(
        r["events"], r["bytes_sent"], r["duration_s"], r["sender_cpu_s"], _tree_cpu(target.pid) - rcpu0
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=200, help="1000-event chunks per run")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--targets", default="baseline,forwardd,forwardd-buffer")
    ap.add_argument("--senders", default=",".join(SENDERS))
    args = ap.parse_args()
    chunks = args.chunks - args.chunks % 16 or 16
    entries = [docker_entries(i) for i in range(chunks)]
    logdir = Path(tempfile.mkdtemp(prefix="forwardd-fwd-bench-"))
    names = args.targets.split(",")
    senders = args.senders.split(",")
    jobs: dict[str, Callable[[Target], Result]] = {
        "loadgen": lambda t: run_loadgen(t, chunks * EVENTS_PER_CHUNK),
        "out-1k": lambda t: run_output(t, entries, EVENTS_PER_CHUNK, "none"),
        "out-16k": lambda t: run_output(t, entries, 16 * EVENTS_PER_CHUNK, "none"),
        "out-1ev": lambda t: run_single_events(t, entries, 2000),
        "out-1k-zstd": lambda t: run_output(t, entries, EVENTS_PER_CHUNK, "zstd"),
        "out-1k-gzip": lambda t: run_output(t, entries, EVENTS_PER_CHUNK, "gzip"),
    }
    print(f"load average before: {os.getloadavg()[0]:.2f}; {chunks * EVENTS_PER_CHUNK:,} events per run")
    targets = [Target(n, COMMANDS[n], CONFIGS[n], logdir) for n in names]
    results: dict[tuple[str, str], list[Result]] = {}
    try:
        for t in targets:
            t.start(30)
        for rep in range(args.reps):
            for t in targets:
                for s in senders:
                    if t.name == "baseline" and s.endswith(("zstd", "gzip")):
                        continue  # the baseline receiver only frames uncompressed entries
                    r = jobs[s](t)
                    results.setdefault((t.name, s), []).append(r)
                    print(f"  rep {rep + 1} {t.name:16} {s:12} {r.rate:>12,.0f} events/s", flush=True)
    finally:
        for t in targets:
            t.stop()
    print(f"load average after: {os.getloadavg()[0]:.2f}\n")
    print("| receiver        | sender       | events/s  | MB/s  | sender CPU | receiver CPU | vs loadgen |")
    print("|-----------------|--------------|-----------|-------|------------|--------------|------------|")
    for t in targets:
        base = None
        for s in senders:
            rs = results.get((t.name, s))
            if not rs:
                continue
            rate = statistics.median(r.rate for r in rs)
            mbs = statistics.median(r.nbytes / r.seconds / 1e6 for r in rs)
            scpu = statistics.median(100 * r.sender_cpu / r.seconds for r in rs)
            rcpu = statistics.median(100 * r.receiver_cpu / r.seconds for r in rs)
            if s == "loadgen":
                base = rate
            vs = f"{rate / base:.2f}x" if base and s not in ("loadgen", "out-1ev") else ""
            row = f"| {t.name:15} | {s:12} | {rate:>9,.0f} | {mbs:5.1f} | {scpu:9.0f}% | {rcpu:11.0f}% "
            print(row + f"| {vs:>10} |")


if __name__ == "__main__":
    main()
