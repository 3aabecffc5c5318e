"""A worker's live counters as plain data, and the sum of several workers' as one status.

A snapshot is read at request time from the objects the hot path already bumps (SourceStats, the sinks,
the router's stats): nothing is counted twice. It is plain JSON-able data so that, with ``workers: N``, a
worker can hand it to the parent process through a pipe (:mod:`forwardd.ops.workers`), where
:func:`merge` sums the workers into the one status that ``/status`` shows and ``/metrics`` exports.

Readiness is decided where the state is (in the worker: listeners serving, outputs not stuck, buffers not
full); the merged status is ready when every worker answered and is ready.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from forwardd import __version__

if TYPE_CHECKING:
    from forwardd.buffer.delivery import BufferedSink
    from forwardd.ops.settings import HttpServer
    from forwardd.router import Router
    from forwardd.server.listener import ForwardListener

__all__ = ["DaemonView", "Snapshot", "Status", "merge", "snapshot"]

#: Plain data: what crosses the pipe from a worker, and what /status serves.
Snapshot = dict[str, Any]
Status = dict[str, Any]

#: Seconds a worker has to answer the parent before it counts as not responding.
WORKER_TIMEOUT = 2.0


class DaemonView(Protocol):
    """What a snapshot reads from a running daemon (:class:`forwardd.app.Daemon`)."""

    @property
    def worker(self) -> int: ...
    @property
    def config(self) -> ConfigView: ...
    @property
    def listeners(self) -> Sequence[ForwardListener]: ...
    @property
    def sinks(self) -> Mapping[str, BufferedSink]: ...
    @property
    def router(self) -> Router: ...


class _Typed(Protocol):
    @property
    def type(self) -> str: ...


class ConfigView(Protocol):
    """The parts of the configuration a snapshot reads."""

    @property
    def http_server(self) -> HttpServer | None: ...
    @property
    def outputs(self) -> Mapping[str, _Typed]: ...


_STARTED = time.time()


def _source(listener: ForwardListener) -> dict[str, Any]:
    stats = listener.stats
    out: dict[str, Any] = dict(stats.as_dict())
    out["listening"] = listener.serving
    address = listener.address
    port = listener.port
    out["address"] = None if address is None else (address if port is None else f"{address}:{port}")
    out["ack_latency"] = stats.ack_latency.as_dict()
    return out


def _output(sink: BufferedSink, settings: _Typed | None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": settings.type if settings is not None else None}
    out.update(sink.stats.as_dict())
    queue = sink.queue
    out["max_size"] = queue.max_size
    out["full"] = queue.full
    oldest = sink.oldest_received_ns
    out["oldest_received"] = None if oldest is None else oldest / 1e9
    out["failing_seconds"] = sink.failing_seconds
    out["last_error_at"] = sink.last_error_at
    out["loop_alive"] = sink.loop_alive
    out["delivery_latency"] = sink.delivery_latency.as_dict()
    out["tags"] = dict(sink.tag_events.counts)
    own = sink.output.stats
    if own is not None:
        out["output_stats"] = {k: v for k, v in own.as_dict().items() if _plain_value(v)}
    return out


def _plain_value(v: object) -> bool:
    return v is None or isinstance(v, bool | int | float | str)


def snapshot(daemon: DaemonView) -> Snapshot:
    """The worker's counters now, and whether it is ready (see the module doc)."""
    config = daemon.config
    ops = config.http_server
    stuck_after = ops.stuck_after if ops is not None else 60.0
    sources = {ls.settings.name: _source(ls) for ls in daemon.listeners}
    outputs = {name: _output(sink, config.outputs.get(name)) for name, sink in daemon.sinks.items()}
    reasons: list[str] = []
    for name, src in sources.items():
        if not src["listening"]:
            reasons.append(f"source {name}: not listening")
    for name, out in outputs.items():
        if out["failing_seconds"] >= stuck_after:
            reasons.append(
                f"output {name}: writes failing for {out['failing_seconds']:.0f}s "
                f"(stuck_after {stuck_after:g}s): {out.get('last_error')}"
            )
        if not out["loop_alive"]:
            reasons.append(f"output {name}: delivery loop not running")
        if out["full"]:
            used = out.get("queued_bytes")
            reasons.append(f"output {name}: buffer full ({used} of {out['max_size']} bytes)")
    return {
        "worker": daemon.worker,
        "pid": os.getpid(),
        "started": _STARTED,
        "time": time.time(),
        "ready": not reasons,
        "reasons": reasons,
        "sources": sources,
        "outputs": outputs,
        "router": dict(daemon.router.stats.as_dict()),
    }


# --- merging workers ----------------------------------------------------------------------------------

#: Output fields that are not summed over workers, and how they are combined instead.
_MIN = {"oldest_received"}
_MAX = {"failing_seconds", "latency_p50_ms", "latency_p99_ms"}
_ALL = {"loop_alive", "listening"}
_ANY = {"full"}
_SKIP = {"last_error", "last_error_at", "type", "address", "tags", "output_stats"}


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _add_hist(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    if a is None or b is None:
        return a or b
    if a["bounds"] != b["bounds"]:  # cannot happen between workers of one build; keep the first
        return a
    return {
        "bounds": a["bounds"],
        "counts": [x + y for x, y in zip(a["counts"], b["counts"], strict=True)],
        "sum": a["sum"] + b["sum"],
    }


def _combine(into: dict[str, Any], item: Mapping[str, Any]) -> None:
    """Fold one worker's source or output into the total (counters add; see _MIN, _MAX, _ALL, _ANY)."""
    for key, value in item.items():
        have: Any = into.get(key)
        if key not in into:
            into[key] = dict(value) if isinstance(value, dict) and key != "delivery_latency" else value
        elif key in ("ack_latency", "delivery_latency"):
            into[key] = _add_hist(have, value)
        elif key == "tags":
            for tag, n in value.items():
                have[tag] = have.get(tag, 0) + n
        elif key == "output_stats":
            for k, v in value.items():
                if _number(v) and _number(have.get(k)):
                    have[k] += v
                elif have.get(k) is None:
                    have[k] = v
        elif key in _MIN:
            into[key] = value if have is None else (have if value is None else min(have, value))
        elif key in _MAX:
            into[key] = value if have is None else (have if value is None else max(have, value))
        elif key in _ALL:
            into[key] = bool(have) and bool(value)
        elif key in _ANY:
            into[key] = bool(have) or bool(value)
        elif key in _SKIP:
            continue
        elif _number(value) and _number(have):
            into[key] = have + value
    if "last_error_at" in item:
        at = item.get("last_error_at")
        if at is not None and (into.get("last_error_at") is None or at >= into["last_error_at"]):
            into["last_error_at"] = at
            into["last_error"] = item.get("last_error")


def merge(snapshots: Iterable[Snapshot | None], workers: Sequence[int] | None = None) -> Status:
    """One status from each worker's snapshot; None stands for a worker that did not answer (its index in
    ``workers``, default 0..n-1). Counters add, gauges add where a sum means something (queued bytes,
    open connections, buffer limits), the oldest age is the oldest, flags combine (see _combine)."""
    snaps = list(snapshots)
    ids = list(workers) if workers is not None else list(range(len(snaps)))
    now = time.time()
    sources: dict[str, dict[str, Any]] = {}
    outputs: dict[str, dict[str, Any]] = {}
    router: dict[str, Any] = {}
    per_worker: list[dict[str, Any]] = []
    reasons: list[str] = []
    prefix = len(snaps) > 1
    for wid, snap in zip(ids, snaps, strict=True):
        if snap is None:
            per_worker.append({"worker": wid, "up": False, "ready": False, "reasons": ["not responding"]})
            reasons.append(f"worker {wid}: not responding")
            continue
        per_worker.append(
            {
                "worker": snap["worker"],
                "pid": snap["pid"],
                "up": True,
                "ready": snap["ready"],
                "reasons": snap["reasons"],
                "uptime_seconds": round(now - snap["started"], 3),
                # Enough to see how SO_REUSEPORT spreads the load; the rest is summed below.
                "open_connections": sum(x["open_connections"] for x in snap["sources"].values()),
                "events": sum(x["events"] for x in snap["sources"].values()),
                "delivered_events": sum(x.get("delivered_events", 0) for x in snap["outputs"].values()),
                "queued_bytes": sum(x.get("queued_bytes", 0) for x in snap["outputs"].values()),
            }
        )
        reasons += [f"worker {snap['worker']}: {r}" if prefix else r for r in snap["reasons"]]
        for name, src in snap["sources"].items():
            _combine(sources.setdefault(name, {}), src)
        for name, out in snap["outputs"].items():
            _combine(outputs.setdefault(name, {}), out)
        for key, value in snap["router"].items():
            router[key] = router.get(key, 0) + value
    for out in outputs.values():
        oldest = out.get("oldest_received")
        out["oldest_age_seconds"] = round(max(0.0, now - oldest), 3) if oldest is not None else 0.0
    return {
        "version": __version__,
        "time": now,
        "ready": not reasons and bool(snaps),
        "reasons": reasons,
        "workers": per_worker,
        "sources": sources,
        "outputs": outputs,
        "router": router,
    }
