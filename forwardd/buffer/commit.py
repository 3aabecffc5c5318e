"""The group commit of a disk queue: how submitted chunks reach the disk, and when their futures resolve.

:class:`GroupCommit` is the commit side of :class:`forwardd.buffer.queue.DiskQueue` (a mixin of it, so
that the hottest path of the program reaches the queue's attributes directly); the rest of the queue's
design (invariants, files, recovery, limits) is in :mod:`forwardd.buffer.queue`.

Group commit
------------
``submit`` does no I/O: it appends the chunk (held by reference, not copied) to a pending list and returns a
future. One commit task takes the whole pending list, builds the framing (CRC included), writes every
record of the batch with one ``pwritev`` per segment run and, under ``always``, one ``fdatasync``; then
every future of the batch resolves. Chunks submitted while that commit runs form the next batch, so one
fsync (~0.3-1 ms here) serves every connection that sent something meanwhile.

Where the commit runs depends on its size. A batch of up to ``inline_commit_max`` bytes (64 KiB: dozens of
docker messages) and ``INLINE_COMMIT_CHUNKS`` chunks is written on the event loop thread. Its cost is the
fdatasync's latency, and handing it to a thread costs more: the woken thread waits for the GIL and a CPU
while the loop is busy, 0.3-0.5 ms per hand-off on a 2-core machine, twice per commit. Measured with 16
docker-style clients that each wait for their ack, committing inline carried 30-45% more events per
second. Larger batches (PackedForward chunks, bursts, thousands of tiny chunks) go to the single writer
thread, so the loop keeps reading sockets while they are framed, written and synced. A disk whose commits
become slow (average over ``INLINE_MAX_SECONDS``) sends every batch to the thread until it is fast again: a
stalling disk must not freeze the event loop, its other connections and outputs. Once in the thread, a
commit is followed there by the chunks submitted while it ran (for up to ``CHAIN_SECONDS``), each batch
settled on the loop while the next is written: no hop back to the loop and out again between two big
commits (:meth:`GroupCommit._chain`).

Before a small commit under ``always``, the commit task waits up to ``COMMIT_GATHER_SECONDS`` (0.3 ms) for
as many chunks as the previous commit carried, reading sockets meanwhile (:meth:`GroupCommit._gather`).
Without it, clients that each wait for their ack split into cohorts that take turns at the disk. With 16
such clients it carried 25-45% more events per second, and p99 ack latency fell. A lone client (one chunk
pending, one in the last commit) neither waits nor yields a turn first: its commit starts in the turn
the task wakes, which comes after every read of that poll.

fsync policy:
``always`` (default)
    futures resolve after the fdatasync: an ack means the chunk survives a power loss.
``interval``
    futures resolve after the write; the segment is fsync'd every ``fsync_interval`` seconds. A kill -9
    loses nothing (the page cache survives the process); a power loss or kernel crash can lose what was
    acked during the last interval (up to ``fsync_interval`` seconds of traffic) and recovery truncates it.
``never``
    futures resolve after the write; the kernel flushes when it likes (typically within 30 s). Same as
    ``interval`` with an unbounded window on power loss. Segments are still fsync'd at close.

Write failures (ENOSPC, EIO): the commit's futures stay pending (no ack), the failed run is truncated away
and the writer retries the same chunks, plus any submitted since, into a fresh segment, backing off from
``write_retry_initial`` to ``write_retry_max`` seconds. ``buffer.write_failed`` is logged when this starts
and ``buffer.write_recovered`` when a commit succeeds again. Chunks committed before are never touched.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from forwardd.buffer.base import FsyncPolicy, Readable
from forwardd.buffer.store import SegmentStore, WriteError, WriteResult
from forwardd.errors import ChunkRejected
from forwardd.model import Chunk

__all__ = [
    "CHAIN_SECONDS",
    "COMMIT_GATHER_SECONDS",
    "INLINE_COMMIT_CHUNKS",
    "INLINE_COMMIT_MAX",
    "INLINE_MAX_SECONDS",
    "GroupCommit",
    "Pending",
    "reject",
]

_T = TypeVar("_T")

log = structlog.get_logger("forwardd.buffer")

#: A submitted chunk waiting for its commit: the chunk, the future its submitter awaits, its framed size.
Pending = tuple[Chunk, "asyncio.Future[None]", int]

#: Batches up to this many bytes are committed on the event loop thread (see "Group commit")...
INLINE_COMMIT_MAX = 64 * 1024
#: ...and up to this many chunks: framing costs per chunk, and 64 KiB of tiny chunks (thousands, from many
#: connections at once) kept the loop 7-15 ms per commit, each connection waiting as long.
INLINE_COMMIT_CHUNKS = 256
#: Commits slower than this on average go to the writer thread, whatever their size.
INLINE_MAX_SECONDS = 0.005
#: The longest a small commit waits for as many chunks as the previous one carried (see ``_gather``).
COMMIT_GATHER_SECONDS = 0.0003
#: How long the writer thread goes on committing what was submitted meanwhile (see ``GroupCommit._chain``).
CHAIN_SECONDS = 0.05
#: Weight of the newest commit in the average commit time.
_COST_WEIGHT = 0.2


class GroupCommit:
    """The part of a disk queue that commits what was submitted (a mixin of
    :class:`forwardd.buffer.queue.DiskQueue`, which sets every attribute below in its ``__init__``)."""

    name: str
    fsync: FsyncPolicy
    fsync_interval: float
    inline_commit_max: int
    commit_seconds: float
    inline_commits: int
    gather_seconds: float
    commits: int
    _retry_initial: float
    _retry_max: float
    _sleep: Callable[[float], Awaitable[None]]
    _thread_jobs: int
    _last_batch: int
    _store: SegmentStore | None
    _loop: asyncio.AbstractEventLoop | None
    _executor: concurrent.futures.ThreadPoolExecutor | None
    _pending: list[Pending]
    _pending_bytes: int
    _wake: asyncio.Event
    _readable: Readable
    _closing: bool
    _closing_event: asyncio.Event
    _failing: bool
    _committing: int
    _waiters: deque[Pending]

    def _admit_waiters(self) -> None: ...

    async def _commit_loop(self) -> None:
        store = self._store
        assert store is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                if self._closing:
                    return
                continue
            if (
                self._pending_bytes <= self.inline_commit_max
                and not self._closing
                and (self._last_batch > 1 or len(self._pending) > 1)
            ):
                # One more loop iteration first: requests read in the next poll join this commit. Not for a
                # lone client (one chunk, as the last commit): the wake-up came after every read of its
                # poll, there is no one else to wait for, and the turn would only delay its ack.
                await asyncio.sleep(0)
                if self.fsync == "always":
                    await self._gather()
            batch, self._pending = self._pending, []
            self._committing = len(batch)
            delay = self._retry_initial
            while True:
                try:
                    batch, res = await self._write(store, batch)
                except Exception as exc:
                    err: BaseException | None = exc
                    if isinstance(exc, _Failed):
                        batch, err = exc.batch, exc.__cause__
                    if not isinstance(err, WriteError):
                        # A bug, not a disk fault: no ack for this batch (clients resend), keep committing.
                        log.exception("buffer.commit_crashed", buffer=self.name, chunks=len(batch))
                        for _, fut, size in batch:
                            self._pending_bytes -= size
                            reject(fut, "buffer commit failed")
                        break
                    batch = self._settle(err.result, batch)
                    self._committing = len(batch)
                    if not self._failing:
                        self._failing = True
                        log.error(
                            "buffer.write_failed",
                            buffer=self.name,
                            error=str(err.cause),
                            errno=err.cause.errno,
                            pending_chunks=len(batch),
                        )
                    if self._closing:
                        for _, fut, _ in batch + self._pending:
                            reject(fut, f"buffer write failing: {err.cause}")
                        return
                    await self._back_off(delay)
                    delay = min(delay * 2, self._retry_max)
                    batch += self._pending  # retry together with whatever arrived meanwhile
                    self._pending = []
                    self._committing = len(batch)
                    continue
                self._settle(res, batch)
                self._last_batch = len(batch)
                break
            self._committing = 0
            if self._failing:
                self._failing = False
                log.info("buffer.write_recovered", buffer=self.name)
            # A close that came before this commit began woke the loop with the same wake-up that took
            # this batch: without another, the loop would wait for good and the close with it.
            if self._pending or self._closing:
                self._wake.set()

    async def _back_off(self, delay: float) -> None:
        """Wait ``delay`` before writing again, or until :meth:`close`: a stop must not wait out a back-off
        of up to ``write_retry_max`` (the last attempt is made at once, then what still fails is refused)."""
        if self._closing:
            return
        sleep = asyncio.ensure_future(self._sleep(delay))
        closing = asyncio.ensure_future(self._closing_event.wait())
        try:
            await asyncio.wait((sleep, closing), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleep.cancel()
            closing.cancel()

    async def _gather(self) -> None:
        """Wait a moment for as many chunks as the last commit carried (see "Group commit").

        Clients that wait for their ack answer it with their next request some 0.1-0.3 ms later. A
        commit started on the first answer blocks the loop while the others arrive, and they wait a whole
        commit more: the clients split into cohorts that take turns. Waiting up to
        ``COMMIT_GATHER_SECONDS`` for the last batch's size keeps them in one commit. The wait spins
        through loop iterations (so sockets keep being read) because timers here have millisecond
        resolution. A lone client never waits (its batch is one), and a cohort that shrank is waited
        for once, then the target follows it down.
        """
        target = self._last_batch
        if len(self._pending) >= target:
            return
        deadline = time.perf_counter() + self.gather_seconds
        while (
            len(self._pending) < target
            and time.perf_counter() < deadline
            and self._pending_bytes <= self.inline_commit_max
            and not self._closing
        ):
            await asyncio.sleep(0)

    async def _write(self, store: SegmentStore, batch: list[Pending]) -> tuple[list[Pending], WriteResult]:
        """Commit ``batch`` inline when it is small and the disk fast, else in the writer thread (which may
        go on with the batches submitted meanwhile: see :meth:`_chain`). The last batch committed and its
        result; raises :class:`_Failed` naming the batch that failed."""
        if (
            self._thread_jobs == 0  # never beside the thread: the store's writer side is single-threaded
            and self.commit_seconds <= INLINE_MAX_SECONDS
            and len(batch) <= INLINE_COMMIT_CHUNKS
            and sum(p[2] for p in batch) <= self.inline_commit_max
        ):
            self.inline_commits += 1
            return batch, self._timed_write(store, batch)
        return await self._in_thread(lambda: self._chain(store, batch))

    def _timed_write(self, store: SegmentStore, batch: list[Pending]) -> WriteResult:
        """``batch`` written and committed (on whichever thread), its time in the average; raises
        :class:`_Failed` naming it."""
        t0 = time.perf_counter()
        try:
            return store.write([p[0] for p in batch])
        except Exception as exc:
            raise _Failed(batch) from exc
        finally:
            self._note_commit(time.perf_counter() - t0)  # one float store; read on the loop

    def _chain(self, store: SegmentStore, batch: list[Pending]) -> tuple[list[Pending], WriteResult]:
        """(Writer thread.) Commit ``batch``, then, for up to ``CHAIN_SECONDS``, each batch submitted
        meanwhile, settling the one before on the loop: the commits of big chunks follow each other
        without a hop to the loop and back between them.

        A hop each way costs 1-5 ms when the loop is busy (the woken side waits for the GIL and for the
        loop's current callback, e.g. an output encoding and producing a slice), and a commit of 500 KB
        takes about as long: measured with one connection sending 1000-event PackedForward chunks into a
        Kafka output, the hops were 60% of each commit's round, and commits back to back carry about
        twice as many chunks a second. The loop only appends to the pending list while this runs; copying
        it and deleting the copied head are each atomic under the GIL, so a chunk appended between them
        stays for the next batch. The bound leaves the thread to the other jobs (the interval fsync,
        adopted queues) and hands the decision inline or not back to the loop.
        """
        assert self._loop is not None
        deadline = time.perf_counter() + CHAIN_SECONDS
        while True:
            res = self._timed_write(store, batch)
            if not self._pending or time.perf_counter() >= deadline:
                return batch, res
            following = self._pending[:]
            del self._pending[: len(following)]
            try:
                self._loop.call_soon_threadsafe(self._settle_chained, res, batch, len(following))
            except RuntimeError:  # the loop is closed (its commit task was cancelled): nobody waits
                self._pending[:0] = following  # left as they were, uncommitted
                return batch, res
            batch = following

    def _settle_chained(self, res: WriteResult, batch: list[Pending], following: int) -> None:
        """(Loop.) Settle a batch the writer thread committed before going on with the next, ``following``
        chunks long: counted as committing, so that a stop's drain sees them in flight."""
        self._settle(res, batch)
        self._last_batch = len(batch)
        self._committing = following

    def _note_commit(self, seconds: float) -> None:
        self.commit_seconds += _COST_WEIGHT * (seconds - self.commit_seconds)

    async def _in_thread(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the writer thread; counted, so that no inline commit runs beside it."""
        assert self._loop is not None
        assert self._executor is not None
        self._thread_jobs += 1
        try:
            return await self._loop.run_in_executor(self._executor, fn)
        finally:
            self._thread_jobs -= 1

    def _settle(self, res: WriteResult, batch: list[Pending]) -> list[Pending]:
        """Publish a (possibly partial) commit, resolve its futures; the uncommitted rest of ``batch``."""
        assert self._store is not None
        self._store.publish(res)
        n = res.committed
        if n:
            self.commits += 1
            for _, fut, size in batch[:n]:
                self._pending_bytes -= size
                if not fut.done():
                    fut.set_result(None)
            self._readable.set()
            if self._waiters:  # compressed records take less room on disk than they held pending
                self._admit_waiters()
        return batch[n:]

    async def _sync_loop(self) -> None:
        store = self._store
        assert store is not None
        while True:
            await self._sleep(self.fsync_interval)
            try:
                await self._in_thread(store.sync)
            except OSError as exc:
                log.error("buffer.sync_failed", buffer=self.name, error=str(exc))


class _Failed(Exception):
    """A commit failed (its cause: WriteError, or a bug); ``batch`` is the batch it was committing."""

    def __init__(self, batch: list[Pending]) -> None:
        super().__init__(f"commit of {len(batch)} chunks failed")
        self.batch = batch


def reject(fut: asyncio.Future[None], reason: str) -> None:
    """Refuse a chunk for now (not acked): its client resends it."""
    if not fut.done():
        fut.set_exception(ChunkRejected(reason, permanent=False))
