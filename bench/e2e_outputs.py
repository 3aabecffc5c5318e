"""End-to-end output benchmark: forwardd's Kafka and HTTP outputs beside their bare client libraries, in the
same run.

Scenarios (each runs both targets, repetitions interleaved, a fresh broker/server state per run):

``kafka``
    **forwardd**: acked PackedForward from :mod:`bench.loadgen` (1000 docker-shaped events per chunk) into a
    real forwardd process (``python -m forwardd run``), its disk buffer (``fsync: always``) and its Kafka
    output, into a real Tansu broker (``scripts/kafka/start-broker.sh``, started afresh for every run).
    **producer**: a plain confluent-kafka producer in a child process sending the same JSON values (the
    bytes forwardd produces for those records, encoded by forwardd's own formatter beforehand) to the
    same broker, as the library documents it: ``produce(topic, value, on_delivery=cb)`` and ``poll(0)``
    per message, ``flush()`` at the end, librdkafka's defaults otherwise (``acks=all``).
``http``
    **forwardd**: the same traffic into forwardd's HTTP output (NDJSON, defaults: 1000 events per
    request), to an aiohttp server in a child process that counts the lines it receives. The output's
    ``in_flight`` is ``--http-in-flight`` (default 1: one request at a time, in order; more gives up the
    order across chunks), ``--compare-http-in-flight`` for the ``--compare`` checkout.
    **aiohttp**: a bare aiohttp client in a child process POSTing the same bodies (the NDJSON forwardd
    sends for those chunks) one request at a time, as forwardd's output does by default.

What counts as arrived: for Kafka, records in the broker, read back from the earliest offset of a topic
used by this run only. Tansu's end offsets are wrong after multi-record batches, and a librdkafka consumer
reads it at about 150-250k records/s here, slower than the producers it would be timing, so the counter
is a minimal Fetch client (:class:`FetchCounter`): it counts records from the record-batch headers and
finds probes by scanning the batch bytes, at about 1M records/s and 0.3 us of CPU each. For HTTP, the
server's count of NDJSON lines. A run ends when every event has arrived; events/s is the run's events over
the time from the first send to that moment.

Latency: every ``--probe-interval`` (10 ms) a one-event probe carrying its send time (``time_ns``) goes the
same way as the load: through its own forward connection into forwardd (acked), or produced/POSTed
between the baseline's messages. The counter notes when each probe arrived; p50/p99 are over those
samples. Under a saturating load this is mostly the time the probe waited behind the backlog.

CPU: user+system time of the forwardd process (its threads included: the librdkafka threads run in it) and
of the baseline's process, from the start of the load to its end, per event; also the broker's or the
HTTP server's, and the load generator's.

    python -m bench.e2e_outputs                             # kafka and http, 500k events, 3 reps
    python -m bench.e2e_outputs --scenarios kafka --events 200000 --reps 1
    python -m bench.e2e_outputs --kafka-option linger.ms=5  # librdkafka settings for forwardd's output
    python -m bench.e2e_outputs --profile /tmp/prof         # py-spy record forwardd during its runs
    python -m bench.e2e_outputs --scenarios http --compare . --compare-http-in-flight 4  # in_flight 1 vs 4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import multiprocessing as mp
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgpack
import orjson

from bench.ingest import HOST, Target, _free_port
from bench.loadgen import (
    LoadConfig,
    LoadError,
    Ring,
    encode_ring,
    percentile,
    proc_tree_cpu_seconds,
    run_load,
)
from forwardd.model import Chunk
from forwardd.outputs.formats import encode_json_lines
from forwardd.testing import ForwardClient

__all__ = ["FetchCounter", "main"]

REPO = Path(__file__).resolve().parent.parent
KAFKA_SCRIPTS = REPO / "scripts" / "kafka"
PARTITIONS = 4  # what Tansu gives an auto-created topic

PROBE_TAG = "docker.probe"
WARM_TAG = "docker.warmup"
PROBE_MARK = b'"probe":"'
WARM_MARK = b'"warmup":"'

FORWARDD_KAFKA = """\
log:
  level: warning
storage:
  path: ./data-{port}
sources:
  - name: main
    type: forward
    bind: {host}
    port: {port}
routes:
  - match: "docker.**"
    outputs: [kafka]
outputs:
  kafka:
    type: kafka
    brokers: ["@BOOTSTRAP@"]
    topic: "@TOPIC@"
@OPTIONS@    buffer:
      type: disk
      fsync: always
"""

FORWARDD_HTTP = """\
log:
  level: warning
storage:
  path: ./data-{port}
sources:
  - name: main
    type: forward
    bind: {host}
    port: {port}
routes:
  - match: "docker.**"
    outputs: [web]
outputs:
  web:
    type: http
    endpoint: "@URL@"
@IN_FLIGHT@    buffer:
      type: disk
      fsync: always
"""


# ------------------------------------------------------------------------------------------- records


def probe_record(sent_ns: int) -> dict[str, str]:
    return {"probe": str(sent_ns), "log": "latency probe"}


def ring_chunks(ring: Ring) -> list[Chunk]:
    """The ring's PackedForward chunks as forwardd would hold them."""
    chunks = []
    for i in range(ring.units):
        tag, entries, opt = msgpack.unpackb(ring.buf[ring.offsets[i] : ring.offsets[i + 1]])
        chunks.append(Chunk(tag, entries, int(opt["size"]), time.time_ns()))
    return chunks


def json_values(chunks: list[Chunk]) -> list[bytes]:
    """Each event's JSON value as forwardd writes it (its own encoder), without the newline."""
    out: list[bytes] = []
    for c in chunks:
        out.extend(encode_json_lines(c).split(b"\n")[:-1])
    return out


def probe_json(sent_ns: int) -> bytes:
    """A probe as forwardd's JSON format writes it."""
    stamp = "2025-01-01T00:00:00.000000000Z"
    return orjson.dumps({"time": stamp, "tag": PROBE_TAG, **probe_record(sent_ns)})


def scan_marks(data: bytes, start: int, end: int, now_ns: int, lats: list[int]) -> tuple[int, int]:
    """Probes and warm-up records in ``data[start:end]``: appends each probe's latency; (probes, warm)."""
    probes = 0
    pos = data.find(PROBE_MARK, start, end)
    while pos >= 0:
        q = pos + len(PROBE_MARK)
        stop = data.find(b'"', q, end)
        lats.append(now_ns - int(data[q:stop]))
        probes += 1
        pos = data.find(PROBE_MARK, stop, end)
    warm = 0
    pos = data.find(WARM_MARK, start, end)
    while pos >= 0:
        warm += 1
        pos = data.find(WARM_MARK, pos + 1, end)
    return probes, warm


# ------------------------------------------------------------------------------------ Kafka counting


def _str16(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">h", len(b)) + b


_BATCH_HEAD = struct.Struct(">qi")  # baseOffset, batchLength
_RECORDS_AT = 61  # size of a v2 record batch header


class FetchCounter:
    """Counts a topic's records with raw Fetch (v4) requests: the record count of each v2 batch is in its
    header, so nothing per record is decoded. Probes are found by scanning each batch's bytes
    (decompressed first for gzip, lz4 and zstd batches)."""

    def __init__(self, host: str, port: int, topic: str, partitions: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.topic = topic
        self.offsets = dict.fromkeys(range(partitions), 0)
        self._corr = 0
        self._zstd: Any = None

    def close(self) -> None:
        self.sock.close()

    def _request(self, api_key: int, version: int, body: bytes) -> bytes:
        self._corr += 1
        msg = struct.pack(">hhi", api_key, version, self._corr) + _str16("e2e-counter") + body
        self.sock.sendall(struct.pack(">i", len(msg)) + msg)
        (size,) = struct.unpack(">i", self._read(4))
        data = self._read(size)
        if struct.unpack_from(">i", data)[0] != self._corr:
            raise RuntimeError("Fetch response out of order")
        return data

    def _read(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:])
            if not k:
                raise EOFError("broker closed the connection")
            got += k
        return bytes(buf)

    def fetch(self, max_wait_ms: int, lats: list[int]) -> tuple[int, int, int]:
        """One Fetch of every partition from where the last one ended: (records, probes, warm-up records)
        in it; each probe's latency (arrival now - its send time) is appended to ``lats``."""
        body = struct.pack(">iiiib", -1, max_wait_ms, 1, 64 << 20, 0) + struct.pack(">i", 1)
        body += _str16(self.topic) + struct.pack(">i", len(self.offsets))
        for p, off in self.offsets.items():
            body += struct.pack(">iqi", p, off, 16 << 20)
        data = self._request(1, 4, body)
        now = time.time_ns()
        records = probes = warm = 0
        pos = 8  # correlation id, throttle time
        (topics,) = struct.unpack_from(">i", data, pos)
        pos += 4
        for _ in range(topics):
            (tlen,) = struct.unpack_from(">h", data, pos)
            pos += 2 + tlen
            (parts,) = struct.unpack_from(">i", data, pos)
            pos += 4
            for _ in range(parts):
                part, err = struct.unpack_from(">ih", data, pos)
                pos += 22  # partition, error, high watermark, last stable offset
                if err:
                    raise RuntimeError(f"Fetch error {err} on partition {part}")
                (aborted,) = struct.unpack_from(">i", data, pos)
                pos += 4 + 16 * max(aborted, 0)
                (size,) = struct.unpack_from(">i", data, pos)
                pos += 4
                end = pos + max(size, 0)
                r, p, w = self._batches(part, data, pos, end, now, lats)
                records += r
                probes += p
                warm += w
                pos = end
        return records, probes, warm

    def _batches(
        self, part: int, data: bytes, pos: int, end: int, now: int, lats: list[int]
    ) -> tuple[int, ...]:
        records = probes = warm = 0
        while pos + _RECORDS_AT <= end:
            base, length = _BATCH_HEAD.unpack_from(data, pos)
            stop = pos + 12 + length
            if stop > end:
                break  # a partial batch at the end of the response: fetched again next time
            attrs, last_delta = struct.unpack_from(">hi", data, pos + 21)
            (count,) = struct.unpack_from(">i", data, pos + 57)
            if base + last_delta + 1 > self.offsets[part]:
                self.offsets[part] = base + last_delta + 1
                records += count
                codec = attrs & 7
                if codec == 0:
                    p, w = scan_marks(data, pos + _RECORDS_AT, stop, now, lats)
                else:
                    plain = self._decompress(codec, data[pos + _RECORDS_AT : stop])
                    p, w = scan_marks(plain, 0, len(plain), now, lats)
                probes += p
                warm += w
            pos = stop
        return records, probes, warm

    def _decompress(self, codec: int, data: bytes) -> bytes:
        if codec == 1:
            return zlib.decompress(data, 47)
        if codec == 4:
            if self._zstd is None:
                import zstandard

                self._zstd = zstandard.ZstdDecompressor()
            return bytes(self._zstd.decompressobj().decompress(data))
        if codec == 3:
            import lz4.frame  # Kafka's lz4 is the LZ4 frame format (pip install lz4)

            return bytes(lz4.frame.decompress(data))
        return b""  # snappy: counted, but probes inside are not seen (no latency samples)


def _count_kafka(conn: Connection, bootstrap: str, topic: str, expect: int, stall: float) -> None:
    """Child process: count ``topic`` until ``expect`` load records arrived (probes and warm-up records
    are not load); tells the parent ("warm",) once a warm-up record arrived, then ("done", ...)."""
    host, port = bootstrap.rsplit(":", 1)
    counter = FetchCounter(host, int(port), topic, PARTITIONS)
    total = probes = warm = 0
    lats: list[int] = []
    told_warm = False
    last_progress = time.monotonic()
    conn.send(("ready",))
    try:
        while True:
            r, p, w = counter.fetch(20, lats)
            now_ns = time.time_ns()
            if r:
                last_progress = time.monotonic()
            total += r
            probes += p
            warm += w
            if warm and not told_warm:
                told_warm = True
                conn.send(("warm",))
            if total - probes - warm >= expect:
                conn.send(("done", now_ns, total - probes - warm, probes, lats))
                return
            if time.monotonic() - last_progress > stall:
                conn.send(("stalled", total - probes - warm, probes, warm))
                return
    finally:
        counter.close()


# ------------------------------------------------------------------------------------- HTTP counting


def _serve_http(conn: Connection) -> None:
    """Child process: an aiohttp server counting NDJSON lines; ("expect", n) from the parent resets the
    count, and ("done", ...) goes back once n load lines arrived."""
    import uvloop
    from aiohttp import web

    state: dict[str, Any] = {"expect": None, "lines": 0, "probes": 0, "warm": 0, "lats": [], "told": False}

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time_ns()
        lines = body.count(b"\n")
        p, w = scan_marks(body, 0, len(body), now, state["lats"])
        state["lines"] += lines - p - w
        state["probes"] += p
        state["warm"] += w
        if w and not state["told"]:
            state["told"] = True
            conn.send(("warm",))
        if state["expect"] is not None and state["lines"] >= state["expect"]:
            conn.send(("done", now, state["lines"], state["probes"], state["lats"]))
            state["expect"] = None
        return web.Response(status=204)

    def on_control() -> None:
        msg = conn.recv()
        if msg[0] == "expect":
            state.update(expect=msg[1], lines=0, probes=0, warm=0, lats=[], told=False)
            conn.send(("ok",))

    async def run() -> None:
        app = web.Application(client_max_size=256 * 1024**2)
        app.router.add_post("/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        asyncio.get_running_loop().add_reader(conn.fileno(), on_control)
        conn.send(("port", runner.addresses[0][1]))
        await asyncio.Event().wait()

    uvloop.run(run())


# ------------------------------------------------------------------------------------------ baselines


def _produce_kafka(
    conn: Connection,
    bootstrap: str,
    topic: str,
    values: list[bytes],
    n: int,
    interval: float,
    conf: dict[str, Any],
) -> None:
    """Child process: the plain producer. ("warm",) after its warm-up message is acked, waits for
    ("go",), then sends ``n`` values (and a probe every ``interval``) and reports ("done", ...)."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", **conf})
    failed = 0

    def on_delivery(err: Any, msg: Any) -> None:
        nonlocal failed
        if err is not None:
            failed += 1

    p.produce(topic, orjson.dumps({"warmup": "1"}), on_delivery=on_delivery)
    p.flush(30)
    conn.send(("warm",))
    conn.recv()
    produce, poll = p.produce, p.poll
    k = len(values)
    probes = 0
    cpu0 = time.process_time()
    t0 = time.time_ns()
    next_probe = time.monotonic()
    for i in range(n):
        if not i & 255 and time.monotonic() >= next_probe:
            next_probe += interval
            probes += 1
            produce(topic, probe_json(time.time_ns()), on_delivery=on_delivery)
        value = values[i % k]
        while True:
            try:
                produce(topic, value, on_delivery=on_delivery)
                break
            except BufferError:
                poll(0.01)
        poll(0)
    left = p.flush(120)
    conn.send(("done", t0, time.time_ns(), time.process_time() - cpu0, failed + left, probes))


def _post_http(conn: Connection, url: str, bodies: list[bytes], count: int, interval: float) -> None:
    """Child process: the bare aiohttp client, one POST at a time (the bodies, cycled, ``count`` times),
    and a one-line probe every ``interval``."""
    import aiohttp
    import uvloop

    async def run() -> None:
        async with aiohttp.ClientSession() as session:

            async def post(body: bytes) -> None:
                async with session.post(
                    url, data=body, headers={"Content-Type": "application/x-ndjson"}
                ) as r:
                    await r.read()
                    if r.status >= 300:
                        raise RuntimeError(f"HTTP {r.status}")

            await post(orjson.dumps({"warmup": "1"}) + b"\n")
            conn.send(("warm",))
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)
            probes = 0
            cpu0 = time.process_time()
            t0 = time.time_ns()
            next_probe = time.monotonic()
            k = len(bodies)
            for i in range(count):
                if time.monotonic() >= next_probe:
                    next_probe += interval
                    probes += 1
                    await post(probe_json(time.time_ns()) + b"\n")
                await post(bodies[i % k])
            conn.send(("done", t0, time.time_ns(), time.process_time() - cpu0, 0, probes))

    uvloop.run(run())


# --------------------------------------------------------------------------------------------- running


@dataclass(slots=True)
class Run:
    scenario: str
    target: str
    rep: int
    events: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0
    #: the broker's (kafka) or the HTTP server's CPU over the run
    peer_cpu_s: float = 0.0
    sender_cpu_s: float = 0.0
    arrived: int = 0
    probes: int = 0
    lat_p50_ms: float | None = None
    lat_p99_ms: float | None = None
    #: seconds until the load generator had every ack (forwardd: ingest), and forwardd's CPU by thread
    load_s: float | None = None
    ack_p50_ms: float | None = None
    ack_p99_ms: float | None = None
    threads: dict[str, float] = field(default_factory=dict)
    #: forwardd's output settings that differ between runs (e.g. "in_flight 4"), shown beside the target
    settings: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of ``pid`` by thread name (librdkafka names its own: rdk:main,
    rdk:broker1...; "main" is the event loop's, "python" any other Python thread), from /proc; threads of
    the same name are summed."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            name = stat[stat.index(b"(") + 1 : stat.rindex(b")")].decode(errors="replace")
            fields = stat[stat.rindex(b")") + 2 :].split()
            name = "main" if tid == str(pid) else re.sub(r"\d+$", "", name) or name
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def _latencies(run: Run, lats: list[int]) -> None:
    run.probes = len(lats)
    if lats:
        s = sorted(lats)
        run.lat_p50_ms = percentile(s, 50) / 1e6
        run.lat_p99_ms = percentile(s, 99) / 1e6


def _recv(conn: Connection, timeout: float, what: str) -> tuple[Any, ...]:
    if not conn.poll(timeout):
        raise TimeoutError(f"no {what} within {timeout:.0f} s")
    msg: tuple[Any, ...] = conn.recv()
    return msg


class Broker:
    """A fresh Tansu on a fixed port; in memory, so each start is empty."""

    def __init__(self, state: Path) -> None:
        self.port = _free_port(HOST)
        self.state = state
        self.bootstrap = f"{HOST}:{self.port}"

    def pid(self) -> int:
        return int((self.state / "broker.pid").read_text())

    def start(self) -> None:
        subprocess.run(
            [str(KAFKA_SCRIPTS / "start-broker.sh"), str(self.port), str(self.state)],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def stop(self) -> None:
        # A wide COLUMNS: stop-broker.sh matches `ps -o args=`, which ps may cut at 80 columns.
        subprocess.run(
            [str(KAFKA_SCRIPTS / "stop-broker.sh"), str(self.port), str(self.state)],
            check=False,
            capture_output=True,
            timeout=60,
            env=dict(os.environ, COLUMNS="4096"),
        )

    def create_topic(self, topic: str) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)


class Prober:
    """Sends a one-event acked probe through its own forward connection every ``interval``."""

    def __init__(self, port: int, interval: float) -> None:
        self.client = ForwardClient(HOST, port)
        self.interval = interval
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)

    def _run(self) -> None:
        nxt = time.monotonic()
        while not self._stop.is_set():
            self.client.packed(PROBE_TAG, [probe_record(time.time_ns())], ack=True)
            self.sent += 1
            nxt += self.interval
            self._stop.wait(max(0.0, nxt - time.monotonic()))  # pacing, not synchronisation

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.client.close()


class Profiler:
    """py-spy recording a process while the block runs (``--profile``)."""

    def __init__(self, pid: int, out: Path | None, native: bool, gil: bool = False) -> None:
        self.pid = pid
        self.out = out
        self.native = native
        self.gil = gil
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profiler:
        if self.out is not None:
            argv = [
                "py-spy",
                "record",
                "--pid",
                str(self.pid),
                "--rate",
                "250",
                "--format",
                "raw",
                "--threads",
                "--output",
                str(self.out),
            ]
            # Native frames need the process paused while a sample is read: it costs the target speed.
            argv.append("--native" if self.native else "--nonblocking")
            if self.gil:
                argv.append("--gil")  # only samples of the thread holding the GIL
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            _, err = self.proc.communicate(timeout=60)
            if self.out is not None and not self.out.exists():
                print(f"  py-spy wrote no profile: {err.decode(errors='replace').strip()[-300:]}", flush=True)


@dataclass(slots=True)
class Bench:
    args: argparse.Namespace
    logdir: Path
    rings: dict[int, Ring]
    values: list[bytes]
    bodies: list[bytes]
    ctx: Any = field(default_factory=lambda: mp.get_context("fork"))

    @property
    def events(self) -> int:
        return int(self.args.events)

    def load_config(self, port: int) -> LoadConfig:
        a = self.args
        return LoadConfig(
            address=f"{HOST}:{port}",
            mode="packed",
            conns=a.conns,
            ack=True,
            window=a.window,
            chunk_size=1000,
            events=self.events // a.conns,
            sync=False,
        )

    # --- forwardd ----------------------------------------------------------------------------------

    def root(self, target: str) -> str | None:
        return self.args.compare if target == COMPARED else None

    @contextlib.contextmanager
    def forwardd(self, template: str, name: str, root: str | None) -> Iterator[Target]:
        """A forwardd process of this repository, or of the checkout ``root`` (``--compare``)."""
        command = "{python} -m forwardd run --config {config}"
        if root is not None:
            command = f"env PYTHONPATH={shlex.quote(root)} " + command
        target = Target(name, command, template, self.logdir)
        target.start(30)
        try:
            yield target
        finally:
            target.stop()
            shutil.rmtree(self.logdir / f"data-{target.port}", ignore_errors=True)

    def drive_forwardd(self, run: Run, target: Target, peer_pid: int, waiter: Connection) -> None:
        """Warm up, then the load and probes; waits for the counter's ("done", ...) on ``waiter``."""
        with ForwardClient(HOST, target.port) as c:
            c.packed(WARM_TAG, [{"warmup": "1"}], ack=True)
        msg = _recv(waiter, 60, "warm-up record at the destination")
        if msg[0] != "warm":
            raise RuntimeError(f"warm-up: {msg}")
        cfg = self.load_config(target.port)
        prof = None
        if self.args.profile:
            prof = Path(self.args.profile) / f"{run.scenario}-{run.target}-{run.rep}.txt"
        cpu0 = proc_tree_cpu_seconds(target.pid)
        peer0 = proc_tree_cpu_seconds(peer_pid)
        threads0 = thread_cpu(target.pid)
        t0 = time.time_ns()
        with (
            Profiler(target.pid, prof, self.args.profile_native, self.args.profile_gil),
            Prober(target.port, self.args.probe_interval),
        ):
            res = run_load(cfg, self.rings)
            if not res.ok:
                raise LoadError("; ".join(res.errors))
            msg = _recv(waiter, self.args.timeout, "arrival of every event")
        cpu1 = proc_tree_cpu_seconds(target.pid)
        peer1 = proc_tree_cpu_seconds(peer_pid)
        run.threads = {k: round(v - threads0.get(k, 0.0), 2) for k, v in thread_cpu(target.pid).items()}
        run.load_s = res.duration_s
        run.ack_p50_ms, run.ack_p99_ms = res.ack_p50_ms, res.ack_p99_ms
        if msg[0] != "done":
            raise RuntimeError(f"not every event arrived: {msg}")
        _, t_done, arrived, _probes, lats = msg
        run.events = res.events
        run.seconds = (t_done - t0) / 1e9
        run.cpu_s = cpu1 - cpu0
        run.peer_cpu_s = peer1 - peer0
        run.sender_cpu_s = res.sender_cpu_s
        run.arrived = arrived
        _latencies(run, lats)

    # --- kafka -------------------------------------------------------------------------------------

    def kafka_run(self, broker: Broker, target: str, rep: int) -> Run:
        run = Run("kafka", target, rep)
        topic = f"e2e-{target}-{rep}-{os.getpid()}-{time.time_ns()}"
        broker.start()
        counter = None
        parent, child = self.ctx.Pipe()
        try:
            broker.create_topic(topic)
            counter = self.ctx.Process(
                target=_count_kafka,
                args=(child, broker.bootstrap, topic, self.events, self.args.stall),
                daemon=True,
            )
            counter.start()
            _recv(parent, 30, "counter ready")
            if target.startswith("forwardd"):
                chosen = dict(self.args.kafka_option)
                if target == COMPARED:
                    chosen.update(self.args.compare_kafka_option)
                options = "".join(f"      {k}: {v}\n" for k, v in chosen.items())
                text = FORWARDD_KAFKA.replace("@BOOTSTRAP@", broker.bootstrap).replace("@TOPIC@", topic)
                text = text.replace("@OPTIONS@", f"    options:\n{options}" if options else "")
                with self.forwardd(text, f"{target}-kafka-{rep}", self.root(target)) as fwd:
                    self.drive_forwardd(run, fwd, broker.pid(), parent)
            else:
                self.kafka_baseline(run, broker, topic, parent)
        except Exception as exc:  # one failed run is reported; the others still run
            run.error = f"{type(exc).__name__}: {exc}"
        finally:
            if counter is not None:
                counter.kill()
                counter.join()
            broker.stop()
        return run

    def kafka_baseline(self, run: Run, broker: Broker, topic: str, waiter: Connection) -> None:
        mine, theirs = self.ctx.Pipe()
        conf = dict(self.args.baseline_option)
        proc = self.ctx.Process(
            target=_produce_kafka,
            args=(theirs, broker.bootstrap, topic, self.values, self.events, self.args.probe_interval, conf),
            daemon=True,
        )
        proc.start()
        try:
            _recv(mine, 60, "producer warm-up")
            if _recv(waiter, 60, "warm-up record at the broker")[0] != "warm":
                raise RuntimeError("warm-up record did not arrive")
            peer0 = proc_tree_cpu_seconds(broker.pid())
            mine.send(("go",))
            msg = _recv(waiter, self.args.timeout, "arrival of every event")
            peer1 = proc_tree_cpu_seconds(broker.pid())
            done = _recv(mine, 60, "producer's report")
        finally:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        if msg[0] != "done":
            raise RuntimeError(f"not every event arrived: {msg}")
        _, t0, _t_flushed, cpu, failed, _probes = done
        if failed:
            raise RuntimeError(f"{failed} messages failed")
        _, t_done, arrived, _p, lats = msg
        run.events = self.events
        run.seconds = (t_done - t0) / 1e9
        run.cpu_s = cpu
        run.peer_cpu_s = peer1 - peer0
        run.arrived = arrived
        _latencies(run, lats)

    # --- http --------------------------------------------------------------------------------------

    def http_run(self, server: tuple[Connection, int, int], target: str, rep: int) -> Run:
        conn, port, server_pid = server
        run = Run("http", target, rep)
        url = f"http://{HOST}:{port}/in"
        try:
            conn.send(("expect", self.events))
            _recv(conn, 10, "server reset")
            if target.startswith("forwardd"):
                n = self.http_in_flight(target)
                run.settings = f"in_flight {n}"
                # Written only when not the default, so that a --compare checkout older than the setting runs.
                line = f"    in_flight: {n}\n" if n != 1 else ""
                text = FORWARDD_HTTP.replace("@URL@", url).replace("@IN_FLIGHT@", line)
                with self.forwardd(text, f"{target}-http-{rep}", self.root(target)) as fwd:
                    self.drive_forwardd(run, fwd, server_pid, conn)
            else:
                self.http_baseline(run, url, server_pid, conn)
        except Exception as exc:
            run.error = f"{type(exc).__name__}: {exc}"
        return run

    def http_in_flight(self, target: str) -> int:
        """The HTTP output's in_flight for this forwardd target."""
        a = self.args
        if target == COMPARED and a.compare_http_in_flight is not None:
            return int(a.compare_http_in_flight)
        return int(a.http_in_flight)

    def http_baseline(self, run: Run, url: str, server_pid: int, waiter: Connection) -> None:
        mine, theirs = self.ctx.Pipe()
        proc = self.ctx.Process(
            target=_post_http,
            args=(theirs, url, self.bodies, self.events // 1000, self.args.probe_interval),
            daemon=True,
        )
        proc.start()
        try:
            _recv(mine, 60, "client warm-up")
            if _recv(waiter, 60, "warm-up line at the server")[0] != "warm":
                raise RuntimeError("warm-up line did not arrive")
            peer0 = proc_tree_cpu_seconds(server_pid)
            mine.send(("go",))
            msg = _recv(waiter, self.args.timeout, "arrival of every event")
            peer1 = proc_tree_cpu_seconds(server_pid)
            done = _recv(mine, 60, "client's report")
        finally:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        if msg[0] != "done":
            raise RuntimeError(f"not every event arrived: {msg}")
        _, t0, _t_end, cpu, _failed, _probes = done
        _, t_done, arrived, _p, lats = msg
        run.events = self.events
        run.seconds = (t_done - t0) / 1e9
        run.cpu_s = cpu
        run.peer_cpu_s = peer1 - peer0
        run.arrived = arrived
        _latencies(run, lats)


BASELINES = {"kafka": "producer", "http": "aiohttp"}
#: The target name of forwardd run from the checkout given with ``--compare``.
COMPARED = "forwardd-compared"


def _interleaved(scen: str, reps: int, one: Callable[[str, int], Run], out: Any, compare: bool) -> list[Run]:
    """Every target of ``scen`` ``reps`` times, alternating which goes first."""
    runs = []
    targets = ["forwardd", BASELINES[scen]] + ([COMPARED] if compare else [])
    for rep in range(1, reps + 1):
        for t in targets if rep % 2 else targets[::-1]:
            run = one(t, rep)
            runs.append(run)
            print(f"  {scen} [{t}] #{rep}: {describe(run)}", file=out, flush=True)
    return runs


def run_suite(args: argparse.Namespace, out: Any = sys.stdout) -> list[Run]:
    cfg = LoadConfig(
        address="",
        mode="packed",
        conns=args.conns,
        ack=True,
        window=args.window,
        chunk_size=1000,
        events=args.events // args.conns,
        sync=False,
    )
    rings = {c: encode_ring(cfg, c) for c in range(args.conns)}
    chunks = [ch for r in rings.values() for ch in ring_chunks(r)]
    values = json_values(chunks)
    bodies = [encode_json_lines(c) for c in chunks]
    logdir = Path(tempfile.mkdtemp(prefix="forwardd-e2e-"))
    bench = Bench(args, logdir, rings, values, bodies)
    mean = sum(map(len, values)) / len(values)
    entry = sum(len(c.entries) for c in chunks) / sum(c.count for c in chunks)
    print(
        f"records: {entry:.0f} B as PackedForward entries, {mean:.0f} B as JSON values; logs in {logdir}",
        file=out,
        flush=True,
    )
    runs: list[Run] = []
    for scen in args.scenarios.split(","):
        if scen == "kafka":
            broker = Broker(logdir / "broker")
            one = functools.partial(bench.kafka_run, broker)
            runs += _interleaved(scen, args.reps, one, out, args.compare is not None)
        elif scen == "http":
            ctx = mp.get_context("fork")
            parent, child = ctx.Pipe()
            server = ctx.Process(target=_serve_http, args=(child,), daemon=True)
            server.start()
            try:
                _, port = _recv(parent, 30, "HTTP server port")
                assert server.pid is not None
                one = functools.partial(bench.http_run, (parent, port, server.pid))
                runs += _interleaved(scen, args.reps, one, out, args.compare is not None)
            finally:
                server.kill()
                server.join()
        else:
            raise SystemExit(f"unknown scenario {scen!r} (known: {', '.join(BASELINES)})")
    return runs


def describe(run: Run) -> str:
    if not run.ok:
        return f"FAILED: {run.error}"
    lat = (
        f", latency p50 {run.lat_p50_ms:.1f} ms p99 {run.lat_p99_ms:.1f} ms"
        if run.lat_p50_ms is not None
        else ""
    )
    text = (f"[{run.settings}] " if run.settings else "") + (
        f"{run.rate:,.0f} events/s in {run.seconds:.2f} s, CPU {run.cpu_s / run.events * 1e6:.2f} us/event"
        f" (peer {run.peer_cpu_s / run.events * 1e6:.2f}), {run.arrived:,} arrived{lat}"
    )
    if run.load_s is not None:
        busy = ", ".join(f"{k} {v:.2f}" for k, v in sorted(run.threads.items(), key=lambda kv: -kv[1]) if v)
        text += f"; ingest done in {run.load_s:.2f} s (ack p50 {run.ack_p50_ms} ms p99 {run.ack_p99_ms} ms)"
        text += f"; CPU s by thread: {busy}"
    return text


def _median(vals: Sequence[float | None]) -> float | None:
    v = [x for x in vals if x is not None]
    return statistics.median(v) if v else None


def _fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def format_table(runs: list[Run]) -> str:
    head = [
        "scenario",
        "target",
        "settings",
        "events/s",
        "vs baseline",
        "CPU us/event",
        "peer CPU us/event",
        "sender CPU us/event",
        "latency p50 ms",
        "latency p99 ms",
        "ok runs",
    ]
    rows: list[list[str]] = []
    keys: list[tuple[str, str]] = []
    for r in runs:
        if (r.scenario, r.target) not in keys:
            keys.append((r.scenario, r.target))
    settings = {(r.scenario, r.target): r.settings for r in runs if r.settings}
    med: dict[tuple[str, str], float | None] = {}
    for k in keys:
        good = [r for r in runs if (r.scenario, r.target) == k and r.ok]
        med[k] = _median([r.rate for r in good])
    for scen, tgt in keys:
        mine = [r for r in runs if (r.scenario, r.target) == (scen, tgt)]
        good = [r for r in mine if r.ok]
        base = med.get((scen, BASELINES[scen]))
        rate = med[(scen, tgt)]
        ratio = ""
        if tgt.startswith("forwardd") and rate and base:
            per_rep = []
            for r in good:
                b = [
                    x
                    for x in runs
                    if x.scenario == scen and x.target == BASELINES[scen] and x.rep == r.rep and x.ok
                ]
                if b:
                    per_rep.append(f"{r.rate / b[0].rate:.2f}")
            ratio = f"{rate / base:.2f}x ({', '.join(per_rep)})"
        rows.append(
            [
                scen,
                tgt,
                settings.get((scen, tgt), ""),
                _fmt(rate, ",.0f"),
                ratio,
                _fmt(_median([r.cpu_s / r.events * 1e6 for r in good]), ".2f"),
                _fmt(_median([r.peer_cpu_s / r.events * 1e6 for r in good]), ".2f"),
                _fmt(
                    _median([r.sender_cpu_s / r.events * 1e6 for r in good])
                    if tgt.startswith("forwardd")
                    else None,
                    ".2f",
                ),
                _fmt(_median([r.lat_p50_ms for r in good]), ".1f"),
                _fmt(_median([r.lat_p99_ms for r in good]), ".1f"),
                f"{len(good)}/{len(mine)}",
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        cells = [
            c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for r in runs:
        if not r.ok:
            lines.append(f"  {r.scenario} / {r.target} #{r.rep}: {r.error}")
    return "\n".join(lines)


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, int(value) if re.fullmatch(r"-?\d+", value) else value


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench.e2e_outputs",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--scenarios", default="kafka,http", help="comma-separated: kafka, http")
    ap.add_argument("--events", type=int, default=500_000, help="events per run (a multiple of 1000)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--conns", type=int, default=1, help="forward connections of the load")
    ap.add_argument("--window", type=int, default=4, help="unacked chunks per connection")
    ap.add_argument("--probe-interval", type=float, default=0.01, help="seconds between latency probes")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds for every event to arrive")
    ap.add_argument("--stall", type=float, default=30.0, help="seconds without a new record: the run failed")
    ap.add_argument(
        "--kafka-option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a librdkafka setting for forwardd's Kafka output (its `options`)",
    )
    ap.add_argument(
        "--compare-kafka-option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"a librdkafka setting for {COMPARED} only (with --compare . it A/Bs a setting)",
    )
    ap.add_argument(
        "--baseline-option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a librdkafka setting for the plain producer",
    )
    ap.add_argument(
        "--http-in-flight",
        type=int,
        default=1,
        metavar="N",
        help="the HTTP output's in_flight (writes at once; 1, the default, keeps the order of requests)",
    )
    ap.add_argument(
        "--compare-http-in-flight",
        type=int,
        default=None,
        metavar="N",
        help=f"the HTTP output's in_flight for {COMPARED} (default: --http-in-flight)",
    )
    ap.add_argument("--profile", default=None, metavar="DIR", help="py-spy record forwardd's runs into DIR")
    ap.add_argument("--profile-native", action="store_true", help="with --profile: C frames too")
    ap.add_argument("--profile-gil", action="store_true", help="with --profile: only the GIL's holder")
    ap.add_argument(
        "--compare",
        default=None,
        metavar="DIR",
        help=f"also run forwardd from this checkout (target {COMPARED}), interleaved: an A/B in one run",
    )
    ap.add_argument("--json", default=None, help="also write every run to this file")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.compare is not None:
        args.compare = str(Path(args.compare).resolve())  # the targets run in other directories
    if args.events % (1000 * args.conns):
        raise SystemExit("--events must be a multiple of 1000 x --conns")
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    if "kafka" in args.scenarios.split(","):
        try:
            import lz4.frame  # noqa: F401  # the counter reads forwardd's default (lz4) batches with it
        except ImportError:
            raise SystemExit(
                "the Kafka counter needs the lz4 package (forwardd's output compresses with lz4 by "
                "default): pip install -e '.[bench]'"
            ) from None
    load0 = os.getloadavg()
    http = ""
    if "http" in args.scenarios.split(","):
        http = f", http in_flight {args.http_in_flight}"
        if args.compare is not None and args.compare_http_in_flight is not None:
            http += f" ({COMPARED}: {args.compare_http_in_flight})"
    print(
        f"e2e output benchmark: {args.events:,} events per run, {args.reps} rep(s), {args.conns} conn(s), "
        f"window {args.window}{http}; {os.cpu_count()} CPUs, "
        f"load average {' '.join(f'{x:.2f}' for x in load0)}",
        flush=True,
    )
    runs = run_suite(args)
    print()
    print(format_table(runs))
    load1 = os.getloadavg()
    print(f"load average before {load0[0]:.2f}, after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "runs": [asdict(r) for r in runs]}, indent=1)
        )
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
