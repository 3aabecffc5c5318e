"""An in-memory sink that keeps every event it is given, for tests to wait on and assert against."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

from forwardd.model import Chunk

__all__ = ["CaptureSink", "CapturedEvent"]


@dataclass(frozen=True, slots=True)
class CapturedEvent:
    tag: str
    time_ns: int
    record: dict[Any, Any]
    meta: dict[Any, Any] | None = None

    @property
    def time(self) -> float:
        return self.time_ns / 1e9


class CaptureSink:
    """Implements :class:`forwardd.sink.Sink`. Thread-safe for readers: the synchronous test server
    reads from the test's thread while the server's loop writes."""

    name = "capture"

    def __init__(self, *, ack_delay: float = 0.0, withhold_acks: bool = False) -> None:
        self.ack_delay = ack_delay
        self.withhold_acks = withhold_acks
        self.events: list[CapturedEvent] = []
        self.chunks: list[Chunk] = []
        self.invalid_entries = 0
        self._cond = threading.Condition()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._held: list[asyncio.Future[None]] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self.release_acks()

    def submit(self, chunk: Chunk) -> asyncio.Future[None] | None:
        events = [CapturedEvent(chunk.tag, e.time_ns, e.record, e.meta) for e in chunk.events()]
        with self._cond:
            self.chunks.append(chunk)
            self.events.extend(events)
            self.invalid_entries += chunk.invalid
            self._cond.notify_all()
            n = len(self.events)
        if self._waiters:
            still = []
            for want, fut in self._waiters:
                if n >= want:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    still.append((want, fut))
            self._waiters = still
        if self.withhold_acks:
            fut = asyncio.get_running_loop().create_future()
            self._held.append(fut)
            return fut
        if self.ack_delay > 0:
            fut = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_later(self.ack_delay, _resolve, fut)
            return fut
        return None

    def release_acks(self) -> None:
        """Resolve every withheld acceptance (call from the server's loop) and stop withholding."""
        self.withhold_acks = False
        held, self._held = self._held, []
        for fut in held:
            _resolve(fut)

    async def wait_for(self, n: int, timeout: float) -> list[CapturedEvent]:
        if len(self.events) < n:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append((n, fut))
            try:
                await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                raise AssertionError(
                    f"expected {n} events within {timeout}s, got {len(self.events)}"
                ) from None
        return list(self.events)

    def wait_for_sync(self, n: int, timeout: float) -> list[CapturedEvent]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.events) >= n, timeout):
                raise AssertionError(f"expected {n} events within {timeout}s, got {len(self.events)}")
            return list(self.events)

    def clear(self) -> None:
        with self._cond:
            self.events.clear()
            self.chunks.clear()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
