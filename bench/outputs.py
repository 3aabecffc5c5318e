"""Output throughput in one run: the file output, the Kafka output and the HTTP output side by side.

Each output gets the same 1000-event chunks of docker-shaped records, one ``write()`` at a time as the
buffer's delivery loop calls it, so each figure includes decoding the chunk, encoding the records and
delivering them: fsync'd JSON lines; Kafka messages acknowledged by the real broker (acks=all, the Tansu
broker of scripts/kafka, started here); NDJSON POSTs answered by a discard server in a child process.
The file output runs twice: as configured (the C transcoder writes the JSON lines straight from the
entries) and with that transcoder turned off (msgspec decodes the records into columns and encodes them),
which is what the transcoder is measured against. Repetitions are interleaved and the table shows medians.

The process imports the daemon's modules (forwardd.app, with the configuration layer) before it measures,
as the daemon has them loaded: without them the heap is small enough that glibc hands the memory of each
freed request body or file batch back to the OS and faults it in again for the next one, which cost the
HTTP and file outputs 40-45% here (same code; MALLOC_TRIM_THRESHOLD_ set high gives the speed back too).

    python -m bench.outputs [--chunks 100] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.http_bench import serve
from bench.kafka_bench import free_port
from bench.records import EVENTS_PER_CHUNK, T0, docker_entries
from forwardd import app  # noqa: F401 - what the daemon's process holds; see the note in main()
from forwardd.model import Chunk
from forwardd.outputs.base import Output
from forwardd.outputs.file import FileOutput
from forwardd.outputs.http import HttpOutput
from forwardd.outputs.kafka import KafkaOutput

KAFKA_SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "kafka"


def python_path_file(out: FileOutput) -> FileOutput:
    """The file output without the C transcoder: its msgspec path, the one used before it existed."""
    out._native = False
    return out


async def timed(out: Output, entries: list[bytes]) -> float:
    """Seconds to write every chunk (fresh objects: nothing decoded in advance), after one warm-up."""
    await out.start()
    try:
        await out.write(Chunk("warm", entries[0], EVENTS_PER_CHUNK, T0))
        chunks = [Chunk("docker.web", e, EVENTS_PER_CHUNK, T0) for e in entries]
        t = time.perf_counter()
        for c in chunks:
            await out.write(c)
        return time.perf_counter() - t
    finally:
        await out.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=100, help="1000-event chunks per run")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    entries = [docker_entries(i) for i in range(args.chunks)]
    events = args.chunks * EVENTS_PER_CHUNK
    nbytes = sum(map(len, entries))
    work = Path(tempfile.mkdtemp(prefix="forwardd-outputs-bench-"))
    kport = free_port()
    env = dict(os.environ, COLUMNS="4096")  # stop-broker.sh reads `ps` output, cut at 80 columns otherwise
    broker = subprocess.run(
        [str(KAFKA_SCRIPTS / "start-broker.sh"), str(kport), str(work / "kafka")],
        capture_output=True, text=True, check=True, env=env,
    ).stdout.strip()  # fmt: skip
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=serve, args=(child,), daemon=True)
    server.start()
    try:
        if not parent.poll(20):
            raise SystemExit("discard HTTP server did not start")
        hport = parent.recv()
        makers: dict[str, Callable[[int], Output]] = {
            "file (JSON lines, fsync)": lambda r: FileOutput(
                name="f", path=str(work / f"files{r}/${{tag}}.log")
            ),
            "file, without the C path": lambda r: python_path_file(
                FileOutput(name="p", path=str(work / f"pfiles{r}/${{tag}}.log"))
            ),
            "kafka (JSON, acks=all)": lambda r: KafkaOutput(name="k", brokers=[broker], topic=f"bench-{r}"),
            "http (NDJSON POST)": lambda r: HttpOutput(
                name="h", endpoint=f"http://127.0.0.1:{hport}/in", max_events=1000
            ),
        }
        times: dict[str, list[float]] = {k: [] for k in makers}
        for rep in range(args.reps):
            for name, make in makers.items():
                times[name].append(asyncio.run(timed(make(rep), entries)))
        print(f"{events:,} events per run ({nbytes / events:.0f} B msgpack each), median of {args.reps}\n")
        print(f"| {'output':<26} | {'events/s':>10} | {'MB/s':>6} |")
        print(f"|{'-' * 28}|{'-' * 12}|{'-' * 8}|")
        for name, ts in times.items():
            t = statistics.median(ts)
            print(f"| {name:<26} | {events / t:>10,.0f} | {nbytes / t / 1e6:>6.1f} |")
    finally:
        server.terminate()
        server.join(5)
        subprocess.run([str(KAFKA_SCRIPTS / "stop-broker.sh"), str(kport), str(work / "kafka")],
                       capture_output=True, check=False, env=env)  # fmt: skip
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
