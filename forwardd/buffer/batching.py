"""How the delivery loop takes its next batch from the queue: what is committed now, held up to
:class:`Batching`'s ``max_wait`` to let it grow, then merged per tag into one chunk each.

The loop (:mod:`forwardd.buffer.delivery`) owns one :class:`BatchTaker`. What the taker has taken and not
handed over as works yet stays in its ``gathered`` list, never only in a local: a disk queue does not hand
a taken chunk out twice in one process, so a crash of the loop, a stop or a reload's retire in the middle
of a batch must find those chunks there (the restarted loop, or the successor, delivers them).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from forwardd.buffer.base import ChunkQueue, Taken
from forwardd.buffer.isolation import Work
from forwardd.model import Chunk

if TYPE_CHECKING:  # unsynced.py imports merge from here
    from forwardd.buffer.unsynced import Unsynced

__all__ = [
    "BATCH_MAX_BYTES",
    "BATCH_MAX_CHUNKS",
    "COALESCE_BYTES",
    "COALESCE_SECONDS",
    "HOLD_STEP_MAX",
    "HOLD_STEP_MIN",
    "SMALL_CHUNK_BYTES",
    "BatchTaker",
    "Batching",
    "hold_step",
    "merge",
    "small_chunks",
]

#: Most chunks and bytes merged into one write of the output (see BatchTaker._batch).
BATCH_MAX_CHUNKS = 4096
BATCH_MAX_BYTES = 4 * 1024 * 1024
#: Bounds of the interval at which a batch held to grow takes what was committed meanwhile (hold_step).
HOLD_STEP_MIN = 0.001
HOLD_STEP_MAX = 0.01
#: How long, and up to how many entry bytes, a batch of small chunks gathered while writes are in flight
#: waits for the next commits (BatchTaker.coalesce).
COALESCE_SECONDS = 0.001
COALESCE_BYTES = 64 * 1024
#: Chunks averaging under this are ack-per-event traffic for Batching.small_enough_bytes (docker's are
#: one event of a few hundred bytes; PackedForward's are hundreds of KB).
SMALL_CHUNK_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Batching:
    """How long the delivery loop may hold a small batch to let it grow, and what counts as big enough.

    Without it, a chunk is written as soon as it is committed, with whatever else is committed by then.
    Docker clients that wait for each ack make those batches a handful of events. Each batch costs the
    file output a write and an fsync per file, and the HTTP output a request. ``max_wait`` bounds the extra
    delay; the batch goes within a step (:func:`hold_step`, 1-10 ms) of holding ``max_events`` events or
    ``enough_bytes`` bytes (default ``max_bytes``, the most one batch takes). The chunks wait in the
    queue, not in memory beyond it, and an ack never waits for this: acks follow the commit.

    ``enough_bytes`` below ``max_bytes`` suits the file output: a batch of 64 KiB is already worth its own
    write and fsync, and holding bulk traffic (PackedForward chunks of ~240 KB) until it reaches the 4 MiB
    cap only delays it (measured: 186k -> 165k events/s and twice the ack p99 into files, 1 connection).

    ``small_enough_bytes`` (when set) replaces ``enough_bytes`` for a batch whose chunks average under
    :data:`SMALL_CHUNK_BYTES`: clients that wait for an ack per event, whose rate is far below what the
    output writes, so that holding costs it no throughput. Into files, 1 MiB instead of 64 KiB there
    made a write (and its fsync) every 0.1 s instead of every ~20 ms, and acks ~1.15x faster with 16
    and 32 such clients: the files' fsyncs no longer compete as often with the buffer's commits.
    """

    max_wait: float = 0.0
    max_events: int = sys.maxsize
    max_bytes: int = BATCH_MAX_BYTES
    enough_bytes: int | None = None
    small_enough_bytes: int | None = None

    def enough(self, size: int, chunks: int) -> bool:
        """Whether a batch of ``size`` entry bytes in ``chunks`` chunks is big enough to go."""
        if self.small_enough_bytes is not None and small_chunks(size, chunks):
            return size >= self.small_enough_bytes
        return size >= (self.max_bytes if self.enough_bytes is None else self.enough_bytes)


class BatchTaker:
    """The delivery loop's side of the queue: takes the next batch into ``gathered`` and hands it over as
    per-tag works (:meth:`take_works`).

    ``hurry`` is set when the loop stops: a batch held to grow goes at once. While an output that defers
    its sync has written works waiting for it (``unsynced``), waiting for the next chunk lasts no longer
    than that sync is due; then ``flush`` (the loop's sync-and-mark, False when stopping) runs.
    """

    def __init__(
        self,
        queue: ChunkQueue,
        batching: Batching,
        unsynced: Unsynced,
        flush: Callable[[], Awaitable[bool]],
        clock: Callable[[], float],
    ) -> None:
        self.queue = queue
        self.batching = batching
        self.hurry = asyncio.Event()
        #: Taken for the next batch and not handed over as works yet (see the module doc).
        self.gathered: list[Taken] = []
        self._unsynced = unsynced
        self._flush = flush
        self._clock = clock
        self._pause_fut: asyncio.Future[None] | None = None

    def take_works(self) -> list[Work]:
        """What is gathered, as one work per tag (see :meth:`_batch`); ``gathered`` is empty after it."""
        works = [Work(group, chunk) for group, chunk in self._batch(self.gathered)]
        self.gathered = []
        return works

    async def gather(self) -> None:
        """Take the next batch into ``gathered``: what is committed now, or held to grow for up to
        ``Batching.max_wait``. What is gathered already (taken ahead, or before a crash of the loop) is
        the start of that batch."""
        batching = self.batching
        takens = self.gathered
        if not takens:
            takens.append(await self._next_or_sync())
        size = sum(len(t.chunk.entries) for t in takens)
        size, events = self._take_ready(takens, size, sum(t.chunk.count for t in takens))
        if batching.max_wait > 0:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + batching.max_wait
            step = hold_step(batching.max_wait)
            while self._would_grow(size, events) and not self.hurry.is_set():
                left = deadline - loop.time()
                if left <= 0:
                    break
                await self._pause(min(step, left))
                size, events = self._take_ready(takens, size, events)

    def hurry_up(self) -> None:
        """A batch held to grow, or coalescing, goes at once (the loop stops or retires)."""
        self.hurry.set()
        pause = self._pause_fut
        if pause is not None and not pause.done():
            pause.set_result(None)

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds`` or until :meth:`hurry_up`: one future and one timer, where racing a
        ``queue.get()`` against the hurry event cost two tasks and an ``asyncio.wait`` per chunk."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(seconds, _wake, fut)
        self._pause_fut = fut
        try:
            await fut
        finally:
            timer.cancel()
            self._pause_fut = None

    def take_ahead(self) -> list[Work]:
        """A write is in flight: the next batch as works if a whole one is committed now (one that
        :meth:`gather` would not hold to grow), so that the output can prepare it meanwhile. Otherwise
        nothing: what was taken stays in ``gathered``, and :meth:`gather` goes on growing it."""
        if self.gathered or self.hurry.is_set() or not self.gather_ready():
            return []
        takens = self.gathered
        size, events = sum(len(t.chunk.entries) for t in takens), sum(t.chunk.count for t in takens)
        if self.batching.max_wait > 0 and self._would_grow(size, events):
            return []
        return self.take_works()

    def _would_grow(self, size: int, events: int) -> bool:
        """Whether :meth:`gather` holds a batch of ``size`` entry bytes and ``events`` events (those
        gathered) to let it grow, when the output's batching holds at all."""
        batching = self.batching
        chunks = len(self.gathered)
        return (
            not batching.enough(size, chunks) and events < batching.max_events and chunks < BATCH_MAX_CHUNKS
        )

    def gather_ready(self) -> bool:
        """Take what is committed now into ``gathered``, without waiting or holding it to grow (a write is
        in flight: the batch goes next to it); False when nothing is gathered."""
        if not self.gathered:
            t = self.queue.take_nowait()
            if t is None:
                return False
            self.gathered.append(t)
            self._take_ready(self.gathered, len(t.chunk.entries), t.chunk.count)
        return True

    async def gather_or_wait(self, running: set[asyncio.Task[None]]) -> None:
        """Wait until a chunk is committed (it is kept in ``gathered``) or one of ``running`` ends.

        One future, woken by the queue's readable callback or a write's done callback: no ``get()`` task
        raced against the writes, which took a task, its cancellation and an ``asyncio.wait`` per commit
        of a client that waits for each ack. Nothing is taken while waiting, so a stop or a retire that
        cancels the wait leaves every chunk in the queue."""
        queue = self.queue
        taken = queue.take_nowait()
        if taken is None:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def wake(_: object = None) -> None:
                if not waiter.done():
                    waiter.set_result(None)

            for task in running:
                task.add_done_callback(wake)
            forget = queue.when_readable(wake)
            try:
                await waiter
            finally:
                forget()
                for task in running:
                    task.remove_done_callback(wake)
            taken = queue.take_nowait()
        if taken is not None:
            self.gathered.append(taken)

    async def coalesce(self) -> None:
        """Writes are in flight and what was just gathered is small chunks (clients that wait for an ack
        per event, one commit each): give it :data:`COALESCE_SECONDS` to take the next commits too, so
        that one write carries them instead of a write per commit. Bulk chunks go at once."""
        takens = self.gathered
        if not takens or self.hurry.is_set():
            return
        size = sum(len(t.chunk.entries) for t in takens)
        if size >= COALESCE_BYTES or not small_chunks(size, len(takens)):
            return
        await self._pause(COALESCE_SECONDS)
        self._take_ready(takens, size, sum(t.chunk.count for t in takens))

    async def _next_or_sync(self) -> Taken:
        """The next committed chunk. While written works wait for their sync, wait no longer than it is
        due (or, when stopping, than the queue has nothing ready), then sync."""
        while self._unsynced:
            taken = await self._next_within(self._unsynced.deadline() - self._clock())
            if taken is not None:
                return taken
            if not await self._flush():
                break  # stopping: what is not synced stays queued
        return await self.queue.get()

    async def _next_within(self, timeout: float) -> Taken | None:
        """The next committed chunk if one comes within ``timeout`` and before a stop, else None."""
        if timeout <= 0:
            return None
        get = asyncio.ensure_future(self.queue.get())
        hurry = asyncio.ensure_future(self.hurry.wait())
        try:
            await asyncio.wait((get, hurry), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled (a stop, a reload's retire), maybe in the turn the get took one:
            taken = await _took(get)  # it joins the batch being gathered, which retire hands over
            if taken is not None:
                self.gathered.append(taken)
            raise
        finally:
            hurry.cancel()
        return await _took(get)

    def _take_ready(self, takens: list[Taken], size: int, events: int) -> tuple[int, int]:
        """Append to ``takens`` what is committed now, up to the batch limits; the new size and events."""
        batching = self.batching
        max_bytes = min(BATCH_MAX_BYTES, batching.max_bytes)
        max_events = batching.max_events
        take = self.queue.take_nowait
        while len(takens) < BATCH_MAX_CHUNKS and size < max_bytes and events < max_events:
            t = take()
            if t is None:
                break
            takens.append(t)
            size += len(t.chunk.entries)
            events += t.chunk.count
        return size, events

    @staticmethod
    def _batch(takens: list[Taken]) -> list[tuple[list[Taken], Chunk]]:
        """The taken chunks merged into one chunk per tag.

        Docker sends one event per message, so without this every event would cost the output a write
        (and the file output an fsync). Entries of one tag are concatenated as bytes, not decoded. A
        merged chunk's receive time is its first chunk's, which only matters for events sent with no
        time (0 or nil), whose time is taken from it.
        """
        first = takens[0]
        if len(takens) == 1:
            return [(takens, first.chunk)]
        groups: dict[str, list[Taken]] = {}
        for t in takens:
            groups.setdefault(t.chunk.tag, []).append(t)
        return [(ts, merge(ts)) for ts in groups.values()]


def small_chunks(size: int, chunks: int) -> bool:
    """Whether ``chunks`` chunks of ``size`` entry bytes in all are ack-per-event traffic (they average
    under :data:`SMALL_CHUNK_BYTES`): the one rule behind ``small_enough_bytes`` and :meth:`coalesce`."""
    return size < chunks * SMALL_CHUNK_BYTES


def hold_step(max_wait: float) -> float:
    """How often a held batch looks at the queue: a sixteenth of ``max_wait``, within 1-10 ms.

    The batch goes within one step of being big enough. Waking once per committed chunk instead cost a
    lone ack-per-request client (a chunk per commit) over a quarter of forwardd's CPU per request."""
    return min(HOLD_STEP_MAX, max(HOLD_STEP_MIN, max_wait / 16))


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _took(get: asyncio.Future[Taken]) -> Taken | None:
    """What a ``queue.get()`` raced against something else took: its chunk if it completed (even while
    being cancelled: then it took one all the same), else None, once it is cancelled. The queue never hands
    a taken chunk out again in this process, so the loop must keep it, never drop it."""
    if not get.done():
        get.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await get
    return get.result() if not get.cancelled() else None


def merge(takens: list[Taken]) -> Chunk:
    """The chunks of one tag as one chunk: their entries concatenated, the first one's receive time."""
    if len(takens) == 1:
        return takens[0].chunk
    first = takens[0].chunk
    chunks = [t.chunk for t in takens]
    merged = Chunk(
        first.tag, b"".join(c.entries for c in chunks), sum(c.count for c in chunks), first.received_ns
    )
    merged.invalid = sum(c.invalid for c in chunks)
    return merged
