"""Forward-protocol load generator: pre-encoded docker-shaped traffic, PackedForward or Message mode.

Everything a connection sends is encoded before the clock starts into one ring buffer of whole messages
(PackedForward chunks or Message-mode events), so the timed loop is only ``sendall`` of slices of that
buffer plus ack matching: the generator must not be what limits a receiver. Connections run as blocking
sockets in threads (the GIL is released in every syscall), optionally spread over forked processes so
that ack matching for many connections does not share one interpreter.

Acks are matched strictly in order (the forward protocol acks in request order on each connection):
the expected ack bytes of every unit are pre-encoded too, so matching is a ``startswith`` per ack; an ack
encoded differently (say a str8 header for a short id) is decoded and compared by value instead. A run
whose ack count differs from its chunk count, or that receives a wrong or unsolicited ack, reports an
error rather than a rate.

Without acks, the end of a run is marked by one small Message-mode event (tag ``bench.sync``) that asks
for an ack: the receiver acks in order, so its ack proves every byte sent before it was processed, and
the rate is not flattered by data still sitting in socket buffers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import math
import multiprocessing as mp
import os
import random
import resource
import socket
import struct
import sys
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Literal, cast

import msgpack
import uvloop

__all__ = [
    "AckError",
    "AckMatcher",
    "ConnResult",
    "LoadConfig",
    "LoadError",
    "LoadResult",
    "Ring",
    "docker_record",
    "encode_ring",
    "main",
    "percentile",
    "proc_tree_cpu_seconds",
    "run_load",
]

#: "message3" is Message mode without the option element, [tag, time, record] (fluent-logger for Python):
#: it cannot ask for an ack.
Mode = Literal["packed", "message", "message3"]

_NS = 1_000_000_000
_II = struct.Struct(">II")
_TIMEVAL = struct.Struct("ll")
SYNC_TAG = "bench.sync"


class LoadError(Exception):
    """The load could not be run at all (no connection, a worker died)."""


class AckError(Exception):
    """An ack did not match the chunk it should acknowledge, or came when none was due."""


@dataclass(slots=True)
class LoadConfig:
    """One load run. ``events`` is per connection and, when set, replaces ``duration``.

    ``procs``: 0 runs the connections in threads of this process; ``None`` picks forked sender processes
    (one event loop for many acked Message-mode connections, else up to two processes of threads).
    """

    address: str
    mode: Mode = "packed"
    conns: int = 1
    ack: bool = False
    window: int = 4
    chunk_size: int = 1000
    duration: float = 3.0
    events: int | None = None
    procs: int | None = None
    ring_units: int | None = None
    send_bytes: int = 256 * 1024
    ack_timeout: float = 10.0
    sync: bool = True
    engine: Literal["auto", "threads", "asyncio"] = "auto"

    @property
    def events_per_unit(self) -> int:
        return self.chunk_size if self.mode == "packed" else 1

    @property
    def use_asyncio(self) -> bool:
        """Many connections of small acked messages go through one event loop: with a thread per
        connection, GIL hand-offs on every ack cost the sender more CPU per event than the receiver
        spends. One connection is cheaper with a plain blocking loop."""
        if self.engine == "auto":
            return self.ack and self.mode != "packed" and self.conns > 1
        return self.engine == "asyncio"

    @property
    def sender_procs(self) -> int:
        if self.procs is not None:
            return self.procs
        return 1 if self.use_asyncio else min(self.conns, 2)

    def describe(self) -> str:
        acks = f"ack w={self.window}" if self.ack else "no ack"
        unit = f"chunk={self.chunk_size}" if self.mode == "packed" else "1 event/msg"
        return f"{self.mode} {unit}, {self.conns} conn(s), {acks}"


# ---------------------------------------------------------------------------------------------------------
# Encoding (before the clock starts)


def _event_time(ns: int) -> bytes:
    """fixext8 EventTime, as fluent-logger and docker (sub-second precision) send it."""
    s, n = divmod(ns, _NS)
    return b"\xd7\x00" + _II.pack(s & 0xFFFFFFFF, n)


def _container_id(conn: int) -> str:
    return hashlib.sha256(f"bench-app-{conn}".encode()).hexdigest()


def docker_record(conn: int, seq: int, container_id: str) -> dict[str, str]:
    """A record shaped like docker's fluentd driver output (all values strings), about 250 bytes packed."""
    line = (
        f"2025-01-01T00:00:00.000Z INFO  [worker-{seq % 8}] handled GET /api/v1/items/{seq % 9973} "
        f"status=200 bytes={(seq * 37) % 65536} line={seq:09d}"
    )
    return {"log": line, "container_id": container_id, "container_name": f"/app-{conn}", "source": "stdout"}


@dataclass(slots=True)
class Ring:
    """One connection's pre-encoded traffic: ``units`` whole messages back to back in ``buf``.

    ``offsets[i]`` is where unit i starts (``offsets[units]`` is the end); ``batch_end[i]`` is the unit
    after the last one that fits, from unit i, in one send of at most ``send_bytes`` (at least i + 1).
    ``acks[i]`` is the exact ack the receiver is expected to send for unit i (empty without acks).
    """

    buf: bytes
    offsets: list[int]
    batch_end: list[int]
    events_per_unit: int
    ids: list[str]
    acks: list[bytes]
    sync_msg: bytes
    sync_id: str
    sync_ack: bytes

    @property
    def units(self) -> int:
        return len(self.offsets) - 1


def _chunk_id(nonce: int, seq: int) -> str:
    """A 24-character base64 id, the shape fluent-logger-golang (docker) uses."""
    return base64.b64encode(struct.pack("<QQ", nonce, seq)).decode("ascii")


def encode_ring(cfg: LoadConfig, conn: int, units: int | None = None) -> Ring:
    """Pre-encode ``units`` messages for connection number ``conn``."""
    if units is None:
        units = _ring_units(cfg)
    packer = msgpack.Packer(use_bin_type=True)
    pack = packer.pack
    cid = _container_id(conn)
    tag = f"docker.{cid[:12]}"
    nonce = random.getrandbits(64)
    base_ns = time.time_ns()
    epu = cfg.events_per_unit
    parts: list[bytes] = []
    offsets = [0]
    ids: list[str] = []
    acks: list[bytes] = []
    pos = 0
    seq = 0
    for u in range(units):
        opt: dict[str, Any] = {}
        if cfg.ack:
            cid_u = _chunk_id(nonce, u)
            ids.append(cid_u)
            acks.append(pack({"ack": cid_u}))
            opt["chunk"] = cid_u
        if cfg.mode == "packed":
            entries = b"".join(
                b"\x92" + _event_time(base_ns + (seq + i) * 1000) + pack(docker_record(conn, seq + i, cid))
                for i in range(epu)
            )
            opt["size"] = epu
            msg = pack([tag, entries, opt])
        elif cfg.mode == "message3":
            if cfg.ack:
                raise ValueError("[tag, time, record] has no option element to ask for an ack in")
            rec = docker_record(conn, seq, cid)
            msg = pack([tag, msgpack.ExtType(0, _event_time(base_ns + seq * 1000)[2:]), rec])
        else:
            rec = docker_record(conn, seq, cid)
            msg = pack([tag, msgpack.ExtType(0, _event_time(base_ns + seq * 1000)[2:]), rec, opt])
        seq += epu
        parts.append(msg)
        pos += len(msg)
        offsets.append(pos)
    sync_id = _chunk_id(nonce, 1 << 62)
    sync_msg = pack(
        [SYNC_TAG, msgpack.ExtType(0, _event_time(time.time_ns())[2:]), {"sync": "1"}, {"chunk": sync_id}]
    )
    return Ring(
        buf=b"".join(parts),
        offsets=offsets,
        batch_end=_batch_ends(offsets, cfg.send_bytes),
        events_per_unit=epu,
        ids=ids,
        acks=acks,
        sync_msg=sync_msg,
        sync_id=sync_id,
        sync_ack=pack({"ack": sync_id}),
    )


def _batch_ends(offsets: Sequence[int], limit: int) -> list[int]:
    n = len(offsets) - 1
    ends = [0] * n
    j = 1
    for i in range(n):
        j = max(j, i + 1)
        while j < n and offsets[j + 1] - offsets[i] <= limit:
            j += 1
        ends[i] = j
    return ends


def _ring_units(cfg: LoadConfig) -> int:
    """Enough distinct units to cycle through; no more than a fixed event count needs."""
    default = cfg.ring_units or (16 if cfg.mode == "packed" else 8192)
    units = max(default, cfg.window + 1 if cfg.ack else 1)
    if cfg.events is not None:
        units = min(units, max(1, math.ceil(cfg.events / cfg.events_per_unit)))
    return units


# ---------------------------------------------------------------------------------------------------------
# Ack matching


class AckMatcher:
    """Matches acks to sent units in order and records each ack's latency in nanoseconds.

    ``acks`` are the expected encodings, cycled (unit n expects ``acks[n % len(acks)]``); ``ids`` are the
    chunk ids, used only when an ack arrives encoded differently. Send times live in a ring of ``window``
    slots: with at most ``window`` units in flight, a slot is never reused before its ack.
    """

    __slots__ = ("_acks", "_ids", "_k", "_pending", "_ts", "_w", "acked", "latencies", "sent_count")

    def __init__(self, acks: Sequence[bytes], ids: Sequence[str], window: int) -> None:
        if not acks or len(acks) != len(ids):
            raise ValueError("need one expected ack per id")
        self._acks = acks
        self._ids = ids
        self._k = len(acks)
        self._w = window
        self._ts = [0] * window
        self._pending = b""
        self.sent_count = 0
        self.acked = 0
        self.latencies = array("q")

    @property
    def inflight(self) -> int:
        return self.sent_count - self.acked

    def sent(self, n: int, t_ns: int) -> None:
        """``n`` more units were handed to the kernel at ``t_ns``."""
        s = self.sent_count
        if s + n - self.acked > self._w:
            raise ValueError("more units in flight than the window allows")
        ts, w = self._ts, self._w
        for i in range(s, s + n):
            ts[i % w] = t_ns
        self.sent_count = s + n

    def feed(self, data: bytes, now_ns: int) -> int:
        """Consume received bytes; returns how many acks they completed. Raises AckError on a mismatch."""
        buf = self._pending + data if self._pending else data
        pos, end = 0, len(buf)
        acked, sent = self.acked, self.sent_count
        acks, k, ts, w = self._acks, self._k, self._ts, self._w
        lat_append = self.latencies.append
        while pos < end:
            if acked >= sent:
                raise AckError(f"unsolicited bytes after ack #{acked}: {bytes(buf[pos : pos + 48])!r}")
            exp = acks[acked % k]
            if buf.startswith(exp, pos):
                pos += len(exp)
            else:
                used = self._decode_one(buf, pos, self._ids[acked % k], acked)
                if not used:
                    break
                pos += used
            lat_append(now_ns - ts[acked % w])
            acked += 1
        done = acked - self.acked
        self.acked = acked
        self._pending = buf[pos:] if pos < end else b""
        return done

    @staticmethod
    def _decode_one(buf: bytes, pos: int, chunk_id: str, n: int) -> int:
        """Bytes used by one ack encoded another way (0 if incomplete); checks it acks ``chunk_id``."""
        up = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape", strict_map_key=False)
        up.feed(buf[pos:])
        try:
            obj = up.unpack()
        except msgpack.OutOfData:
            return 0
        except (ValueError, msgpack.UnpackException) as e:
            raise AckError(f"undecodable bytes where ack #{n} was due: {bytes(buf[pos : pos + 48])!r}") from e
        got = obj.get("ack") if isinstance(obj, dict) else None
        if isinstance(got, bytes):
            got = got.decode("utf-8", "surrogateescape")
        if got != chunk_id:
            raise AckError(f"ack #{n} mismatch: expected {chunk_id!r}, got {obj!r}")
        return up.tell()  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------------------
# One connection


@dataclass(slots=True)
class ConnResult:
    conn: int
    events: int = 0
    bytes_sent: int = 0
    units_sent: int = 0
    acks: int = 0
    sync_events: int = 0
    t_start: int = 0
    t_end: int = 0
    cpu_s: float = 0.0
    latencies: array = field(default_factory=lambda: array("q"))  # type: ignore[type-arg]
    error: str | None = None


def _connect(address: str, timeout: float) -> socket.socket:
    if address.startswith("unix:") or address.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address.removeprefix("unix:"))
    else:
        host, _, port = address.rpartition(":")
        sock = socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # Blocking socket with kernel timeouts: recv(MSG_DONTWAIT) then really does not wait, while a
    # blocking recv/send still gives up after ack_timeout (as BlockingIOError).
    sock.settimeout(None)
    tv = _TIMEVAL.pack(int(timeout), int((timeout % 1) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
    return sock


def _thread_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_THREAD)
    return ru.ru_utime + ru.ru_stime


def _recv(sock: socket.socket, what: str) -> bytes:
    try:
        data = sock.recv(1 << 16)
    except BlockingIOError:
        raise AckError(f"no ack within the timeout ({what})") from None
    if not data:
        raise AckError(f"receiver closed the connection ({what})")
    return data


def _drive(sock: socket.socket, ring: Ring, cfg: LoadConfig, res: ConnResult) -> None:
    """Send this connection's load; fills ``res`` (also on error, with what was done until then)."""
    cpu0 = _thread_cpu()
    res.t_start = time.monotonic_ns()
    try:
        if cfg.ack:
            _send_with_acks(sock, ring, cfg, res)
        else:
            _send_without_acks(sock, ring, cfg, res)
    except Exception as e:  # whatever went wrong, the run must fail rather than report partial counts
        res.error = f"conn {res.conn}: {type(e).__name__}: {e}"
    finally:
        res.t_end = time.monotonic_ns()
        res.cpu_s = _thread_cpu() - cpu0
        with contextlib.suppress(OSError):
            sock.close()


def _limits(ring: Ring, cfg: LoadConfig, t_start: int) -> tuple[int, int]:
    """(max units to send, or -1 for time-bound; deadline in monotonic ns)."""
    if cfg.events is not None:
        return math.ceil(cfg.events / ring.events_per_unit), 0
    return -1, t_start + int(cfg.duration * _NS)


def _send_without_acks(sock: socket.socket, ring: Ring, cfg: LoadConfig, res: ConnResult) -> None:
    view = memoryview(ring.buf)
    offs, bend, k = ring.offsets, ring.batch_end, ring.units
    max_units, deadline = _limits(ring, cfg, res.t_start)
    sendall, now = sock.sendall, time.monotonic_ns
    idx = units = nbytes = 0
    try:
        while True:
            j = bend[idx]
            if max_units >= 0 and units + (j - idx) > max_units:
                j = idx + (max_units - units)
            sendall(view[offs[idx] : offs[j]])
            nbytes += offs[j] - offs[idx]
            units += j - idx
            idx = 0 if j == k else j
            if (units >= max_units) if max_units >= 0 else (now() >= deadline):
                break
    finally:
        res.units_sent = units
        res.events = units * ring.events_per_unit
        res.bytes_sent = nbytes
    if cfg.sync:
        matcher = AckMatcher([ring.sync_ack], [ring.sync_id], 1)
        sendall(ring.sync_msg)
        matcher.sent(1, now())
        res.sync_events = 1
        while matcher.acked < 1:
            matcher.feed(_recv(sock, "end-of-run sync"), now())


def _send_with_acks(sock: socket.socket, ring: Ring, cfg: LoadConfig, res: ConnResult) -> None:
    view = memoryview(ring.buf)
    offs, bend, k = ring.offsets, ring.batch_end, ring.units
    window = cfg.window
    matcher = AckMatcher(ring.acks, ring.ids, window)
    max_units, deadline = _limits(ring, cfg, res.t_start)
    sendall, recv, now = sock.sendall, sock.recv, time.monotonic_ns
    dontwait = socket.MSG_DONTWAIT
    idx = units = nbytes = 0
    sending = max_units != 0
    try:
        while True:
            if sending and matcher.inflight < window:
                j = min(bend[idx], idx + window - matcher.inflight)
                if max_units >= 0 and units + (j - idx) > max_units:
                    j = idx + (max_units - units)
                sendall(view[offs[idx] : offs[j]])
                matcher.sent(j - idx, now())
                nbytes += offs[j] - offs[idx]
                units += j - idx
                idx = 0 if j == k else j
                if (units >= max_units) if max_units >= 0 else (now() >= deadline):
                    sending = False
                elif matcher.inflight < window:
                    # Room left in the window: pick up acks that are already here, but do not wait.
                    try:
                        data = recv(1 << 16, dontwait)
                    except BlockingIOError:
                        continue
                    if not data:
                        raise AckError("receiver closed the connection")
                    matcher.feed(data, now())
                    continue
            if matcher.inflight == 0:
                if not sending:
                    break
                continue
            matcher.feed(_recv(sock, f"{matcher.inflight} unacked"), now())
    finally:
        res.units_sent = units
        res.bytes_sent = nbytes
        res.acks = matcher.acked
        res.events = matcher.acked * ring.events_per_unit
        res.latencies = matcher.latencies


class _AckedSender(asyncio.Protocol):
    """One acked connection driven by an event loop: refill the window from ``data_received``."""

    def __init__(self, ring: Ring, cfg: LoadConfig, res: ConnResult, done: asyncio.Future[None]) -> None:
        self.ring, self.cfg, self.res, self.done = ring, cfg, res, done
        self.view = memoryview(ring.buf)
        self.matcher = AckMatcher(ring.acks, ring.ids, cfg.window)
        self.transport: asyncio.Transport | None = None
        self.idx = 0
        self.paused = False
        self.sending = True
        self.max_units = -1
        self.deadline = 0
        self.last_progress = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def begin(self) -> None:
        res = self.res
        res.t_start = self.last_progress = time.monotonic_ns()
        self.max_units, self.deadline = _limits(self.ring, self.cfg, res.t_start)
        self.sending = self.max_units != 0
        self._pump()

    def _pump(self) -> None:
        m, ring, res = self.matcher, self.ring, self.res
        offs, bend, k, window = ring.offsets, ring.batch_end, ring.units, self.cfg.window
        write, now = cast(asyncio.Transport, self.transport).write, time.monotonic_ns
        while self.sending and not self.paused and m.inflight < window:
            idx = self.idx
            j = min(bend[idx], idx + window - m.inflight)
            if self.max_units >= 0 and res.units_sent + (j - idx) > self.max_units:
                j = idx + (self.max_units - res.units_sent)
            write(self.view[offs[idx] : offs[j]])
            m.sent(j - idx, now())
            res.bytes_sent += offs[j] - offs[idx]
            res.units_sent += j - idx
            self.idx = 0 if j == k else j
            if (res.units_sent >= self.max_units) if self.max_units >= 0 else (now() >= self.deadline):
                self.sending = False
        if not self.sending and m.inflight == 0:
            self._finish(None)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        try:
            if self.matcher.feed(data, now):
                self.last_progress = now
        except AckError as e:
            self._finish(f"conn {self.res.conn}: AckError: {e}")
            return
        self._pump()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(f"conn {self.res.conn}: receiver closed the connection ({exc or 'EOF'})")

    def check_timeout(self) -> None:
        if self.matcher.inflight and time.monotonic_ns() - self.last_progress > self.cfg.ack_timeout * _NS:
            self._finish(f"conn {self.res.conn}: AckError: no ack within the timeout")

    def _finish(self, error: str | None) -> None:
        if self.done.done():
            return
        res, m = self.res, self.matcher
        res.t_end = time.monotonic_ns()
        res.error = error
        res.acks = m.acked
        res.events = m.acked * self.ring.events_per_unit
        res.latencies = m.latencies
        self.done.set_result(None)
        if self.transport is not None:
            self.transport.close()


async def _drive_async(
    socks: list[socket.socket], rings: list[Ring], cfg: LoadConfig, results: list[ConnResult]
) -> None:
    loop = asyncio.get_running_loop()
    protos: list[_AckedSender] = []
    for sock, ring, res in zip(socks, rings, results, strict=True):
        done: asyncio.Future[None] = loop.create_future()
        _, proto = await loop.create_connection(
            functools.partial(_AckedSender, ring, cfg, res, done), sock=sock
        )
        protos.append(proto)
    for p in protos:
        p.begin()
    pending = {p.done for p in protos}
    while pending:
        _, pending = await asyncio.wait(pending, timeout=0.5)
        for p in protos:
            p.check_timeout()


def _drive_async_group(
    socks: list[socket.socket], rings: list[Ring], cfg: LoadConfig, results: list[ConnResult]
) -> None:
    """Runs in its own thread with its own loop, so callers inside an event loop can use it too."""
    cpu0 = _thread_cpu()
    try:
        uvloop.run(_drive_async(socks, rings, cfg, results))
    except Exception as e:
        for r in results:
            if r.error is None:
                r.error = f"conn {r.conn}: {type(e).__name__}: {e}"
    finally:
        # One thread drove the whole group: its CPU is booked on the group's first connection.
        results[0].cpu_s = _thread_cpu() - cpu0
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()


# ---------------------------------------------------------------------------------------------------------
# Orchestration


@dataclass(slots=True)
class LoadResult:
    config: dict[str, Any]
    conns: int
    events: int
    bytes_sent: int
    units_sent: int
    acks: int
    sync_events: int
    duration_s: float
    events_per_s: float
    mb_per_s: float
    ack_p50_ms: float | None
    ack_p99_ms: float | None
    ack_max_ms: float | None
    sender_cpu_s: float
    errors: list[str]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        lat = (
            f"ack p50 {self.ack_p50_ms:.3f} ms  p99 {self.ack_p99_ms:.3f} ms  max {self.ack_max_ms:.3f} ms"
            if self.ack_p50_ms is not None
            else "no acks"
        )
        cpu = 100 * self.sender_cpu_s / self.duration_s if self.duration_s else 0.0
        lines = [
            f"{self.events_per_s:,.0f} events/s  {self.mb_per_s:,.1f} MB/s  {lat}",
            f"{self.events:,} events, {self.units_sent:,} units, {self.acks:,} acks"
            f" in {self.duration_s:.3f} s over {self.conns} conn(s);"
            f" sender CPU {self.sender_cpu_s:.2f} s ({cpu:.0f}% of a core)",
        ]
        lines += [f"ERROR {e}" for e in self.errors]
        return "\n".join(lines)


def percentile(sorted_values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _aggregate(cfg: LoadConfig, results: list[ConnResult], extra_errors: list[str]) -> LoadResult:
    errors = list(extra_errors)
    for r in results:
        if r.error:
            errors.append(r.error)
        if cfg.ack and r.error is None and r.acks != r.units_sent:
            errors.append(f"conn {r.conn}: {r.units_sent} chunks sent but {r.acks} acks received")
    started = [r for r in results if r.t_start]
    duration_ns = max(r.t_end for r in started) - min(r.t_start for r in started) if started else 0
    duration_s = duration_ns / _NS
    events = sum(r.events for r in results)
    nbytes = sum(r.bytes_sent for r in results)
    lats = sorted(v for r in results for v in r.latencies)
    ms = 1e-6
    return LoadResult(
        config=asdict(cfg),
        conns=cfg.conns,
        events=events,
        bytes_sent=nbytes,
        units_sent=sum(r.units_sent for r in results),
        acks=sum(r.acks for r in results),
        sync_events=sum(r.sync_events for r in results),
        duration_s=duration_s,
        events_per_s=events / duration_s if duration_s else 0.0,
        mb_per_s=nbytes / duration_s / 1e6 if duration_s else 0.0,
        ack_p50_ms=percentile(lats, 50) * ms if lats else None,
        ack_p99_ms=percentile(lats, 99) * ms if lats else None,
        ack_max_ms=lats[-1] * ms if lats else None,
        sender_cpu_s=sum(r.cpu_s for r in results),
        errors=errors,
    )


def _run_group(
    cfg: LoadConfig, conns: list[int], rings: dict[int, Ring], ready: Callable[[], None], start: Any
) -> list[ConnResult]:
    """Connect, report readiness through ``ready()``, wait for ``start``, then drive every connection."""
    socks = [_connect(cfg.address, cfg.ack_timeout) for _ in conns]
    results = [ConnResult(conn=c) for c in conns]
    if cfg.use_asyncio:
        threads = [
            threading.Thread(
                target=_drive_async_group, args=(socks, [rings[c] for c in conns], cfg, results), daemon=True
            )
        ]
    else:
        threads = [
            threading.Thread(target=_drive, args=(s, rings[c], cfg, r), name=f"loadgen-{c}", daemon=True)
            for s, c, r in zip(socks, conns, results, strict=True)
        ]
    ready()
    if not start.wait(60):
        raise LoadError("start signal never came")
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _worker_main(
    cfg: LoadConfig, conns: list[int], rings: dict[int, Ring], pipe: Connection, start: Any
) -> None:
    try:
        results = _run_group(cfg, conns, rings, lambda: pipe.send(("ready", None)), start)
    except Exception as e:
        pipe.send(("error", f"worker for conns {conns}: {type(e).__name__}: {e}"))
    else:
        pipe.send(("done", results))
    finally:
        pipe.close()


def run_load(cfg: LoadConfig, rings: dict[int, Ring] | None = None) -> LoadResult:
    """Run one load; ``rings`` (conn number → Ring) may be passed in to reuse an encoding across runs."""
    if cfg.conns < 1 or cfg.window < 1 or cfg.chunk_size < 1:
        raise ValueError("conns, window and chunk_size must be positive")
    if rings is None:
        rings = {c: encode_ring(cfg, c) for c in range(cfg.conns)}
    if cfg.sender_procs <= 0:
        start = threading.Event()
        try:
            results = _run_group(cfg, list(range(cfg.conns)), rings, start.set, start)
        except OSError as e:
            raise LoadError(f"cannot connect to {cfg.address}: {e}") from e
        return _aggregate(cfg, results, [])
    return _run_processes(cfg, rings)


def _run_processes(cfg: LoadConfig, rings: dict[int, Ring]) -> LoadResult:
    ctx = mp.get_context("fork")  # the children inherit the encoded rings instead of pickling them
    nprocs = min(cfg.sender_procs, cfg.conns)
    groups = [list(range(cfg.conns))[i::nprocs] for i in range(nprocs)]
    start = ctx.Event()
    procs: list[tuple[Any, Connection]] = []
    try:
        for g in groups:
            parent_end, child_end = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_worker_main, args=(cfg, g, rings, child_end, start), daemon=True)
            p.start()
            child_end.close()
            procs.append((p, parent_end))
        for _, pipe in procs:
            if not pipe.poll(30):
                raise LoadError("a load worker did not get ready within 30 s")
            kind, payload = pipe.recv()
            if kind != "ready":
                raise LoadError(str(payload))
        start.set()
        results: list[ConnResult] = []
        errors: list[str] = []
        budget = (cfg.duration if cfg.events is None else 600) + 2 * cfg.ack_timeout + 30
        for _, pipe in procs:
            if not pipe.poll(budget):
                raise LoadError("a load worker did not finish in time")
            kind, payload = pipe.recv()
            if kind == "done":
                results.extend(payload)
            else:
                errors.append(str(payload))
        return _aggregate(cfg, sorted(results, key=lambda r: r.conn), errors)
    except EOFError as e:
        raise LoadError("a load worker died") from e
    finally:
        for p, pipe in procs:
            pipe.close()
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join()


def proc_tree_cpu_seconds(pid: int) -> float:
    """User+system CPU of ``pid`` and its live descendants, from /proc (Linux); 0.0 if it is gone."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        p = int(entry)
        children.setdefault(int(fields[1]), []).append(p)
        cpu[p] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo.extend(children.get(p, ()))
    return total


# ---------------------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    ap.add_argument("address", help="host:port, or a unix socket path (/path or unix:/path)")
    ap.add_argument("--mode", choices=["packed", "message", "message3"], default="packed")
    ap.add_argument("--conns", type=int, default=1)
    ap.add_argument("--ack", action="store_true", help="ask for an ack per chunk/message")
    ap.add_argument("--window", type=int, default=4, help="max unacked chunks in flight per connection")
    ap.add_argument("--chunk-size", type=int, default=1000, help="events per PackedForward chunk")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds of traffic per connection")
    ap.add_argument("--events", type=int, default=None, help="events per connection (replaces --duration)")
    ap.add_argument(
        "--procs", type=int, default=None, help="sender processes (0 = threads in this one; default: auto)"
    )
    ap.add_argument("--ring-units", type=int, default=None, help="distinct pre-encoded messages per conn")
    ap.add_argument(
        "--first-container",
        type=int,
        default=0,
        help="container number of the first connection (its tag and records): another sender's differ",
    )
    ap.add_argument("--ack-timeout", type=float, default=10.0)
    ap.add_argument("--engine", choices=["auto", "threads", "asyncio"], default="auto")
    ap.add_argument("--receiver-pid", type=int, default=None, help="also report this process tree's CPU")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg = LoadConfig(
        address=args.address,
        mode=args.mode,
        conns=args.conns,
        ack=args.ack,
        window=args.window,
        chunk_size=args.chunk_size,
        duration=args.duration,
        events=args.events,
        procs=args.procs,
        ring_units=args.ring_units,
        ack_timeout=args.ack_timeout,
        engine=args.engine,
    )
    rings = {c: encode_ring(cfg, c + args.first_container) for c in range(cfg.conns)}
    cpu0 = proc_tree_cpu_seconds(args.receiver_pid) if args.receiver_pid else 0.0
    res = run_load(cfg, rings)
    out = asdict(res)
    if args.receiver_pid:
        out["receiver_cpu_s"] = proc_tree_cpu_seconds(args.receiver_pid) - cpu0
    if args.json:
        print(json.dumps(out))
    else:
        print(cfg.describe())
        print(res.summary())
        if args.receiver_pid:
            print(f"receiver CPU {out['receiver_cpu_s']:.2f} s")
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
