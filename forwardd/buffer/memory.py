"""A bounded in-memory queue (``type: memory``): accepted means enqueued, not durable.

For users who trade durability for speed (a crash loses what is queued) and for the test server. It shares
the delivery loop, retries, dead-lettering and back-pressure rules of the disk queue.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable

import structlog

from forwardd.buffer.base import Readable, Taken, WhenFull
from forwardd.buffer.batching import Batching
from forwardd.buffer.delivery import BufferedSink
from forwardd.buffer.retry import RetryPolicy
from forwardd.errors import ChunkRejected
from forwardd.model import Chunk
from forwardd.outputs.base import Output

__all__ = ["DEFAULT_MEMORY_MAX_SIZE", "MemoryQueue", "MemorySink"]

log = structlog.get_logger("forwardd.buffer")

#: Entry bytes held per memory queue by default: bounded RAM, a few seconds of a busy source.
DEFAULT_MEMORY_MAX_SIZE = 64 * 1024 * 1024


class MemoryQueue:
    """FIFO of chunks bounded by their entry bytes; in-flight chunks count until marked delivered."""

    def __init__(
        self, *, name: str = "", max_size: int = DEFAULT_MEMORY_MAX_SIZE, when_full: WhenFull = "block"
    ) -> None:
        if when_full not in ("block", "drop_oldest"):
            raise ValueError(f"unknown when_full {when_full!r}")
        self.name = name
        self.max_size = max_size
        self.when_full: WhenFull = when_full
        self._items: deque[Chunk] = deque()
        self._waiters: deque[tuple[Chunk, asyncio.Future[None]]] = deque()
        self._in_flight = 0
        self._bytes = 0
        self._readable = Readable()
        self._accepting = False
        self._full = False
        self._dropped_while_full = 0
        self.dropped_events = 0

    async def start(self) -> None:
        self._accepting = True

    def stop_accepting(self) -> None:
        self._accepting = False
        while self._waiters:
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(ChunkRejected("buffer closing", permanent=False))

    @property
    def pending_chunks(self) -> int:
        return 0

    @property
    def full(self) -> bool:
        """Whether chunks wait for room (or, with drop_oldest, old ones are dropped for new ones)."""
        return self._full

    async def close(self) -> None:
        self.stop_accepting()
        lost = len(self._items) + self._in_flight
        if lost:
            log.error("buffer.discarded", buffer=self.name, chunks=lost, bytes=self._bytes)
        self._items.clear()

    @property
    def queued_chunks(self) -> int:
        return len(self._items) + self._in_flight

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def submit(self, chunk: Chunk) -> Awaitable[None] | None:
        """Enqueue and return None (accepted), or a future that resolves once there is room."""
        if not self._accepting:
            raise ChunkRejected("buffer not accepting (stopped)", permanent=False)
        size = len(chunk.entries)
        if self._waiters or not self._fits(size):
            if self.when_full == "drop_oldest" and not self._waiters:
                while not self._fits(size) and self._items:
                    old = self._items.popleft()
                    self._bytes -= len(old.entries)
                    self.dropped_events += old.count
                    self._dropped_while_full += old.count
                    self._set_full(True)
            if self._waiters or not self._fits(size):
                self._set_full(True)
                fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._waiters.append((chunk, fut))
                return fut
        elif self._full and not self._waiters:
            self._set_full(False)
        self._put(chunk, size)
        return None

    def _fits(self, size: int) -> bool:
        return self._bytes + size <= self.max_size or self.queued_chunks == 0

    def _put(self, chunk: Chunk, size: int) -> None:
        self._items.append(chunk)
        self._bytes += size
        self._readable.set()

    def _set_full(self, full: bool) -> None:
        if full == self._full:
            return
        self._full = full
        if full:
            log.warning("buffer.full", buffer=self.name, when_full=self.when_full, used_bytes=self._bytes)
        else:
            log.info("buffer.space_freed", buffer=self.name, dropped_events=self._dropped_while_full)
            self._dropped_while_full = 0

    async def get(self) -> Taken:
        while not self._items:
            self._readable.clear()
            await self._readable.wait()
        self._in_flight += 1
        return Taken(self._items.popleft())

    def when_readable(self, callback: Callable[[], None]) -> Callable[[], None]:
        return self._readable.when_set(callback)

    def take_nowait(self) -> Taken | None:
        if not self._items:
            return None
        self._in_flight += 1
        return Taken(self._items.popleft())

    def mark_delivered(self, taken: Taken) -> None:
        if taken.done:
            return
        taken.done = True
        self._in_flight -= 1
        self._bytes -= len(taken.chunk.entries)
        waiters = self._waiters
        while waiters:
            chunk, fut = waiters[0]
            if fut.cancelled():
                waiters.popleft()
                continue
            size = len(chunk.entries)
            if not self._fits(size):
                break
            waiters.popleft()
            self._put(chunk, size)
            fut.set_result(None)
        if not waiters and self._full and self.when_full == "block":
            self._set_full(False)


class MemorySink(BufferedSink):
    """An output behind a :class:`MemoryQueue`; what ``stop`` cannot deliver in ``drain_timeout`` is lost."""

    def __init__(
        self,
        name: str,
        output: Output,
        retry_policy: RetryPolicy | None = None,
        dead_letter_dir: str | None = None,
        *,
        max_size: int = DEFAULT_MEMORY_MAX_SIZE,
        when_full: WhenFull = "block",
        drain_timeout: float = 5.0,
        stop_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        batching: Batching | None = None,
    ) -> None:
        self.memory_queue = MemoryQueue(name=name, max_size=max_size, when_full=when_full)
        super().__init__(
            name,
            output,
            self.memory_queue,
            retry_policy,
            dead_letter_dir,
            stop_timeout=stop_timeout,
            drain_timeout=drain_timeout,
            clock=clock,
            sleep=sleep,
            rand=rand,
            batching=batching,
        )
