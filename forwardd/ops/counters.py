"""Counters cheap enough for the hot path: a latency histogram and per-tag event counts.

They are plain Python objects bumped where the event happens (an ack written, a batch delivered) and read
at scrape time; nothing is exported from here, so the ack path pays a bisect and two additions, not a
metrics library's locks and label lookups.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

__all__ = ["ACK_BUCKETS", "DELIVERY_BUCKETS", "MAX_TAGS", "OTHER_TAGS", "LatencyHistogram", "TagCounts"]

#: Upper bounds in seconds. An ack waits for a group commit's fsync (sub-ms to tens of ms), and for
#: back-pressure when a buffer is full (seconds).
ACK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Receive to delivered: batching waits (up to a second), retries during an outage (minutes, hours).
DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)

#: Tags counted per output; beyond that, events of new tags are counted under OTHER_TAGS (docker tags
#: carry container ids: an unbounded set over a long run).
MAX_TAGS = 256
OTHER_TAGS = "(other)"


class LatencyHistogram:
    """Observations in fixed buckets: ``counts[i]`` holds those ``<= bounds[i]`` and above the bound before
    (not cumulative: one increment per observation); the last slot holds those above every bound."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Iterable[float] = ACK_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def as_dict(self) -> dict[str, object]:
        """Plain data (for a snapshot that crosses processes): bounds, per-bucket counts, sum."""
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.sum}


class TagCounts:
    """Events per tag: at most ``limit`` entries and OTHER_TAGS, where the least recently counted tags are
    folded when a new one comes (no event is lost from the total)."""

    __slots__ = ("counts", "limit")

    def __init__(self, limit: int = MAX_TAGS) -> None:
        self.limit = limit
        self.counts: dict[str, int] = {}

    def add(self, tag: str, events: int) -> None:
        counts = self.counts
        old = counts.pop(tag, None)
        if old is None:
            if len(counts) >= self.limit:
                victim = next(iter(counts))
                if victim == OTHER_TAGS:  # keep the catch-all: evict the next one
                    counts[OTHER_TAGS] = counts.pop(OTHER_TAGS)
                    victim = next(iter(counts))
                moved = counts.pop(victim)
                counts[OTHER_TAGS] = counts.pop(OTHER_TAGS, 0) + moved
            old = 0
        counts[tag] = old + events
