"""Kafka producer throughput: confluent-kafka (librdkafka) vs aiokafka, and forwardd's Kafka output.

Produces N ~250-byte JSON records with acks=all to a fresh topic per run and prints msgs/s and MB/s (of
values), the median of ``--reps`` runs. Every run waits for every delivery report: a record counts only once
the broker acknowledged it. Starts its own broker (scripts/kafka/start-broker.sh) unless ``--bootstrap``
is given.

    python bench/kafka_bench.py [--n 200000] [--reps 3] [--modes confluent,aiokafka-batch,...]

Modes: ``confluent`` (Producer.produce + poll, flush), ``confluent-idempotent``, ``confluent-lz4``,
``confluent-zstd``, ``aiokafka-send`` (send() per record, gather), ``aiokafka-batch`` (create_batch /
send_batch per partition), ``aiokafka-idempotent``, ``forwardd`` (KafkaOutput.write of 1000-event chunks,
one chunk at a time as the delivery loop does), ``forwardd-lz4``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import orjson

from forwardd.model import Chunk, pack_event_time

KAFKA_SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "kafka"
T0 = 1_700_000_000 * 10**9
_topic_seq = itertools.count()


def record(i: int) -> dict[str, Any]:
    return {
        "container_id": f"{i % 97:08x}" * 8,
        "container_name": "/web-frontend-1",
        "source": "stdout",
        "log": f"10.0.0.{i % 250} - - GET /api/v1/items?page={i} HTTP/1.1 200 1532 0.004 curl/8.5",
    }


def payloads(n: int) -> list[bytes]:
    """Values as the output's JSON format writes them (time and tag injected): about 250 bytes each."""
    return [
        orjson.dumps({"time": "2023-11-14T22:13:20.000000000Z", "tag": "docker.web", **record(i)})
        for i in range(n)
    ]


def fresh_topic(mode: str) -> str:
    return f"bench-{mode}-{os.getpid()}-{next(_topic_seq)}"


# --------------------------------------------------------------------------------------- confluent


def run_confluent(bootstrap: str, values: list[bytes], extra: dict[str, Any]) -> float:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, **extra})
    topic = fresh_topic("confluent")
    p.produce(topic, b"warm-up")  # topic auto-creation and metadata outside the timing
    p.flush(30)
    errors = 0

    def on_delivery(err: Any, msg: Any) -> None:
        nonlocal errors
        if err is not None:
            errors += 1

    produce, poll = p.produce, p.poll
    t = time.perf_counter()
    for v in values:
        while True:
            try:
                produce(topic, v, on_delivery=on_delivery)
                break
            except BufferError:
                poll(0.01)
        poll(0)
    left = p.flush(120)
    dt = time.perf_counter() - t
    assert left == 0, left
    assert errors == 0, errors
    return dt


# ---------------------------------------------------------------------------------------- aiokafka


async def _aiokafka(bootstrap: str, values: list[bytes], batch: bool, idempotent: bool) -> float:
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, enable_idempotence=idempotent)
    try:
        await p.start()
        topic = fresh_topic("aiokafka")
        await (await p.send(topic, b"warm-up"))
        partitions = sorted(await p.partitions_for(topic))
        t = time.perf_counter()
        if batch:
            futs = []
            cycle = itertools.cycle(partitions)
            b = p.create_batch()
            part = next(cycle)
            for v in values:
                if b.append(key=None, value=v, timestamp=None) is None:
                    b.close()
                    futs.append(await p.send_batch(b, topic, partition=part))
                    b = p.create_batch()
                    part = next(cycle)
                    b.append(key=None, value=v, timestamp=None)
            b.close()
            futs.append(await p.send_batch(b, topic, partition=part))
            await asyncio.gather(*futs)
        else:
            futs = [await p.send(topic, v) for v in values]
            await asyncio.gather(*futs)
        return time.perf_counter() - t
    finally:
        await p.stop()


def run_aiokafka(bootstrap: str, values: list[bytes], *, batch: bool, idempotent: bool = False) -> float:
    return asyncio.run(_aiokafka(bootstrap, values, batch, idempotent))


# ----------------------------------------------------------------------------------------- forwardd


def chunks(n: int, per_chunk: int = 1000) -> list[Chunk]:
    out = []
    for c in range(0, n, per_chunk):
        k = min(per_chunk, n - c)
        entries = b"".join(
            b"\x92" + pack_event_time(T0 + i * 1000) + msgpack.packb(record(i)) for i in range(c, c + k)
        )
        out.append(Chunk("docker.web", entries, k, T0))
    return out


async def _forwardd(bootstrap: str, n: int, compression: str) -> float:
    from forwardd.outputs.kafka import KafkaOutput

    todo = chunks(n)
    out = KafkaOutput(
        name="bench", brokers=[bootstrap], topic=fresh_topic("forwardd"), compression=compression
    )
    await out.start()
    try:
        await out.write(todo[0].with_tag("warm"))  # metadata and topic creation outside the timing
        t = time.perf_counter()
        for ch in todo:
            await out.write(ch)  # one at a time, as the buffer's delivery loop calls it
        return time.perf_counter() - t
    finally:
        await out.stop()


def run_forwardd(bootstrap: str, n: int, compression: str = "none") -> float:
    return asyncio.run(_forwardd(bootstrap, n, compression))


# ------------------------------------------------------------------------------------------- driver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--bootstrap", default=None)
    ap.add_argument(
        "--modes",
        default="confluent,confluent-idempotent,confluent-lz4,confluent-zstd,aiokafka-send,aiokafka-batch,"
        "aiokafka-idempotent,forwardd,forwardd-lz4",
    )
    args = ap.parse_args()
    values = payloads(args.n)
    nbytes = sum(map(len, values))
    print(f"{args.n} records, {nbytes / args.n:.0f} B mean value, acks=all, median of {args.reps}")
    runs: dict[str, Callable[[str], float]] = {
        "confluent": lambda b: run_confluent(b, values, {}),
        "confluent-idempotent": lambda b: run_confluent(b, values, {"enable.idempotence": True}),
        "confluent-lz4": lambda b: run_confluent(b, values, {"compression.type": "lz4"}),
        "confluent-zstd": lambda b: run_confluent(b, values, {"compression.type": "zstd"}),
        "aiokafka-send": lambda b: run_aiokafka(b, values, batch=False),
        "aiokafka-batch": lambda b: run_aiokafka(b, values, batch=True),
        "aiokafka-idempotent": lambda b: run_aiokafka(b, values, batch=False, idempotent=True),
        "forwardd": lambda b: run_forwardd(b, args.n),
        "forwardd-lz4": lambda b: run_forwardd(b, args.n, "lz4"),
    }
    state = tempfile.mkdtemp(prefix="kafka-bench-")
    port = free_port()
    bootstrap = args.bootstrap
    if bootstrap is None:
        start = KAFKA_SCRIPTS / "start-broker.sh"
        bootstrap = subprocess.run(
            [str(start), str(port), state], check=True, capture_output=True, text=True
        ).stdout.strip()
    try:
        print(f"{'mode':<22} {'msgs/s':>10} {'MB/s':>8}  runs (s)")
        for mode in args.modes.split(","):
            times = []
            try:
                for _ in range(args.reps):
                    times.append(runs[mode](bootstrap))
            except Exception as exc:  # a mode that cannot run is reported, the others still run
                print(f"{mode:<22} failed: {type(exc).__name__}: {str(exc)[:80]}")
                continue
            med = statistics.median(times)
            shown = " ".join(f"{t:.2f}" for t in times)
            print(f"{mode:<22} {args.n / med:>10,.0f} {nbytes / med / 1e6:>8.1f}  {shown}")
    finally:
        if args.bootstrap is None:
            # A wide COLUMNS: stop-broker.sh matches `ps -o args=`, which ps may cut at 80 columns.
            env = dict(os.environ, COLUMNS="4096")
            subprocess.run([str(KAFKA_SCRIPTS / "stop-broker.sh"), str(port), state], check=False, env=env)


if __name__ == "__main__":
    main()
