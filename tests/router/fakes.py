"""In-memory sinks and filters for the router tests: real implementations of the contracts, not mocks."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any

from forwardd.errors import ChunkRejected
from forwardd.model import Chunk, Event
from forwardd.stats import StatValue


def chunk(tag: str, *records: dict[str, object]) -> Chunk:
    given: tuple[dict[str, object], ...] = records or ({"n": 0},)
    events = [Event(1_700_000_000_000_000_000 + i, dict(r)) for i, r in enumerate(given)]
    return Chunk.from_events(tag, events, 1_700_000_000_000_000_000)


def outcome_of(fut: asyncio.Future[None]) -> tuple[str, Any]:
    """How a done future ended, comparable: cancelled, ok, a rejection (reason, permanence), or a bug."""
    if fut.cancelled():
        return ("cancelled", None)
    exc = fut.exception()
    if exc is None:
        return ("ok", None)
    if isinstance(exc, ChunkRejected):
        return ("rejected", (exc.reason, exc.permanent))
    return (type(exc).__name__, str(exc))


class RecordingSink:
    """Accepts at once (returns None) and keeps what it got."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.chunks: list[Chunk] = []
        self.received = asyncio.Event()

    def submit(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)
        self.received.set()

    @property
    def tags(self) -> list[str]:
        return [c.tag for c in self.chunks]

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class FutureSink(RecordingSink):
    """Returns a future per chunk that the test resolves, as a disk buffer does after its fsync."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.futures: list[asyncio.Future[None]] = []

    def submit(self, chunk: Chunk) -> asyncio.Future[None]:  # type: ignore[override]
        super().submit(chunk)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        return fut


class RejectingSink(RecordingSink):
    """Refuses every chunk, either from the call or from the awaitable it returns."""

    def __init__(self, name: str, *, permanent: bool, sync: bool = False) -> None:
        super().__init__(name)
        self.permanent = permanent
        self.sync = sync

    def submit(self, chunk: Chunk) -> asyncio.Future[None] | None:  # type: ignore[override]
        super().submit(chunk)
        exc = ChunkRejected(f"{self.name} refuses", permanent=self.permanent)
        if self.sync:
            raise exc
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_exception(exc)
        return fut


class Mark:
    """Adds ``key: value`` to every record, so a test can see which filters a chunk went through."""

    def __init__(self, key: str, value: object = True) -> None:
        self.name = f"mark-{key}"
        self.key = key
        self.value = value
        self.seen: list[str] = []

    def __call__(self, chunk: Chunk) -> Chunk:
        self.seen.append(chunk.tag)
        return chunk.map_records(lambda r: {**r, self.key: self.value})


class Retag:
    def __init__(self, tag: str) -> None:
        self.name = f"retag-{tag}"
        self.tag = tag

    def __call__(self, chunk: Chunk) -> Chunk:
        return chunk.with_tag(self.tag)


class DropAll:
    name = "drop-all"

    def __call__(self, chunk: Chunk) -> None:
        return None


class Boom:
    def __init__(self, name: str = "boom") -> None:
        self.name = name

    def __call__(self, chunk: Chunk) -> Chunk:
        raise ValueError(f"cannot handle {chunk.tag}")


@dataclass(frozen=True, slots=True)
class HeldStats:
    """A stateful fake's stats, in the shape the daemon reads every filter's in."""

    held: int = 0

    def as_dict(self) -> dict[str, StatValue]:
        return asdict(self)


class Holder:
    """Holds every chunk (like a partial-line joiner) until it is older than ``ttl`` or drained: a
    :class:`~forwardd.filters.base.StatefulFilter` with nothing on disk."""

    def __init__(self, name: str = "holder", ttl: float = 5.0) -> None:
        self.name = name
        self.ttl = ttl
        self.now = 0.0
        self.held: list[tuple[float, Chunk]] = []

    def __call__(self, chunk: Chunk) -> None:
        self.held.append((self.now, chunk))
        return

    def expire(self, now: float) -> list[Chunk]:
        old = [c for t, c in self.held if now - t >= self.ttl]
        self.held = [(t, c) for t, c in self.held if now - t < self.ttl]
        return old

    def drain(self, *, keep: bool = True) -> list[Chunk]:
        out = [c for _, c in self.held]
        self.held = []
        return out

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def stats(self) -> HeldStats:
        return HeldStats(len(self.held))


def records(sink: RecordingSink) -> list[dict[object, object]]:
    return [e.record for c in sink.chunks for e in c.events()]


class SplitByKey:
    """Splits a chunk by the value of ``key`` into one chunk per value (as a tag rewrite does)."""

    name = "split"

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, chunk: Chunk) -> list[Chunk]:
        groups: dict[str, list[Event]] = {}
        for e in chunk.events():
            groups.setdefault(str(e.record[self.key]), []).append(e)
        return [chunk.replace_events(events, tag=tag) for tag, events in groups.items()]
