"""Counters per source, and a rate limiter for log lines that a misbehaving peer could flood."""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any

import structlog

__all__ = ["RateLimitedLog", "SourceStats"]


@dataclass(slots=True)
class SourceStats:
    """What one source has seen. Plain ints: cheap to bump on the hot path, easy to export."""

    connections: int = 0
    open_connections: int = 0
    refused_connections: int = 0
    bytes: int = 0
    chunks: int = 0
    events: int = 0
    acks: int = 0
    nacks: int = 0
    heartbeats: int = 0
    invalid_entries: int = 0
    invalid_times: int = 0
    rejected: int = 0
    dropped_events: int = 0
    protocol_errors: int = 0
    handshake_failures: int = 0
    backpressure_pauses: int = 0
    budget_pauses: int = 0
    offloaded: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class RateLimitedLog:
    """At most ``burst`` lines per event name every ``period`` seconds; the next line that gets through
    says how many were suppressed, so nobody wonders whether data was lost (pain point P6)."""

    def __init__(self, logger: Any = None, period: float = 10.0, burst: int = 5) -> None:
        self._log = logger or structlog.get_logger("forwardd.server")
        self.period = period
        self.burst = burst
        self._windows: dict[str, list[float | int]] = {}

    def _allow(self, event: str) -> int | None:
        now = time.monotonic()
        w = self._windows.get(event)
        if w is None or now - w[0] >= self.period:
            suppressed = int(w[2]) if w is not None else 0
            self._windows[event] = [now, 1, 0]
            return suppressed
        if w[1] < self.burst:
            w[1] += 1
            return 0
        w[2] += 1
        return None

    def warning(self, event: str, **kw: Any) -> None:
        suppressed = self._allow(event)
        if suppressed is None:
            return
        if suppressed:
            kw["suppressed_since_last"] = suppressed
        self._log.warning(event, **kw)
