"""What an output wrote and has not made durable yet, and when to make it durable.

For an output whose :attr:`~forwardd.outputs.base.Output.defers_sync` is set (the file output's grouped
fsyncs), a write that returned has only reached the page cache. The delivery loop lets a chunk leave the
queue (the ledger moves past it, its segment is deleted) as soon as it is delivered, so for such an output
"delivered" has to wait for :meth:`~forwardd.outputs.base.Output.sync`, or a power cut would lose acked
events. An fsync per write is what this replaces: it costs as much as the write itself under load, and it
competes with the buffer's own commits for the disk. So the loop keeps the written works here, in order,
their chunks still taken from the queue and not marked, and syncs (:meth:`Unsynced.due`) when:

- their entries reach ``max_bytes`` (:data:`UNSYNCED_BYTES`): it bounds the memory their chunks pin and
  what a crash writes again;
- the oldest was written ``interval`` seconds ago (the output's ``sync_interval``): what a power cut
  delivers again is bounded in time, as the ledger's own sync bounds it;
- the queue is full: the room these chunks hold is what clients wait for;
- before the loop gives them up: a stop, a reload's retire, and when it goes idle while stopping.

Not whenever the loop goes idle: ack-per-request traffic leaves the queue empty between its small
batches, and a sync each time would be the fsync per write again.

After a good sync the works are marked delivered, oldest first. After a failed one, each of them may be
lost (:meth:`Unsynced.failed` makes them *stale*): the loop backs off, writes every stale work again (at
least once: a line may then be in a file twice) and syncs again. A stale work is never marked before a
sync that followed its new write succeeded.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator

import structlog

from forwardd.buffer.base import Taken
from forwardd.buffer.batching import merge
from forwardd.buffer.dead_letter import describe
from forwardd.buffer.isolation import Deliverer, Work
from forwardd.model import Chunk

__all__ = ["UNSYNCED_BYTES", "Syncer", "Unsynced", "Written"]

log = structlog.get_logger("forwardd.delivery")

#: Entry bytes of written works that make the loop sync at once.
UNSYNCED_BYTES = 8 * 1024 * 1024


class Written:
    """One written work: when it was written (the sink's clock), and whether a sync failed since."""

    __slots__ = ("at", "stale", "work")

    def __init__(self, work: Work, at: float) -> None:
        self.work = work
        self.at = at
        self.stale = False


class Unsynced:
    """The written works not yet synced, oldest first (see the module doc)."""

    def __init__(self, interval: float, max_bytes: int = UNSYNCED_BYTES) -> None:
        self.interval = interval
        self.max_bytes = max_bytes
        self._written: deque[Written] = deque()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._written)

    def __bool__(self) -> bool:
        return bool(self._written)

    def add(self, work: Work, now: float) -> None:
        """``work`` was written at ``now``; its chunk may be a header only (the loop keeps the takens'
        chunks, not a merged copy of them): its size is its takens'."""
        self._written.append(Written(work, now))
        self.bytes += _size(work)

    def deadline(self) -> float:
        """When the oldest work is due for its sync (there must be one)."""
        return self._written[0].at + self.interval

    def due(self, now: float, queue_full: bool) -> bool:
        """Whether to sync now: enough bytes, the oldest old enough, or clients waiting for the room."""
        if not self._written:
            return False
        return self.bytes >= self.max_bytes or now >= self.deadline() or queue_full

    def oldest_received_ns(self) -> int | None:
        return self._written[0].work.chunk.received_ns if self._written else None

    def failed(self) -> None:
        """A sync failed: every work here may be lost and must be written again before it is marked."""
        for w in self._written:
            w.stale = True

    def stale(self) -> Iterator[Written]:
        """The works to write again, oldest first (a snapshot: :meth:`rewritten` may be called meanwhile)."""
        return iter([w for w in self._written if w.stale])

    def rewritten(self, written: Written, work: Work) -> None:
        """``work`` (a fresh one for the same chunks) wrote ``written`` again; its time stays the first."""
        written.work = work
        written.stale = False

    def synced(self) -> list[Work]:
        """A sync that succeeded covers every work not stale: they leave, to be marked in this order. A
        stale one, and whatever follows it, stays (kept in order; it is written again first)."""
        done: list[Work] = []
        written = self._written
        while written and not written[0].stale:
            work = written.popleft().work
            self.bytes -= _size(work)
            done.append(work)
        return done

    def take_all(self) -> list[list[Taken]]:
        """The chunks of every work here, to write again (a reload hands them to the new output after the
        old one's last sync failed), oldest first; this is emptied."""
        takens = [w.work.takens for w in self._written]
        self._written.clear()
        self.bytes = 0
        return takens


def _size(work: Work) -> int:
    return sum(len(t.chunk.entries) for t in work.takens)


class Syncer:
    """The delivery loop's part: it keeps what the output wrote in ``unsynced`` (:meth:`add`), syncs it
    and hands what a sync covered to ``record`` (the sink marks those chunks delivered, oldest first)."""

    def __init__(
        self, name: str, unsynced: Unsynced, deliverer: Deliverer, record: Callable[[Work], None]
    ) -> None:
        self.name = name
        self.unsynced = unsynced
        self._deliverer = deliverer
        self._record = record

    def add(self, work: Work, now: float) -> None:
        """``work`` was written at ``now`` and waits for a sync (what is kept of it: :func:`_kept`)."""
        self.unsynced.add(_kept(work), now)

    async def flush(self) -> bool:
        """Sync what the output wrote, then mark it, oldest first. A failed sync: back off, write every
        work again, sync again (see the module doc). False when stopping first."""
        unsynced, deliverer = self.unsynced, self._deliverer
        attempts = 0
        while unsynced:
            for written in unsynced.stale():
                work = Work(written.work.takens, merge(written.work.takens))
                await deliverer.deliver(work)
                if work.pieces:
                    return False  # stopping in the middle of it
                unsynced.rewritten(written, work)
            error = await deliverer.sync()
            if error is None:
                for work in unsynced.synced():
                    self._record(work)
                continue
            unsynced.failed()
            attempts += 1
            log.warning(
                "delivery.sync_failed",
                output=self.name,
                attempt=attempts,
                works=len(unsynced),
                bytes=unsynced.bytes,
                error=describe(error),
            )
            if deliverer.stopping:
                return False
            await deliverer.back_off(attempts, error)
            if deliverer.stopping:
                return False
        return True

    async def last(self, timeout: float) -> bool:
        """One last sync of what the output wrote (a stop, a retire), within ``timeout``: the works it covers
        are marked. False when it failed or took too long: those chunks stay queued (or go to the next
        output), delivered again."""
        unsynced = self.unsynced
        if not unsynced:
            return True
        error: Exception | None
        try:
            error = await asyncio.wait_for(self._deliverer.sync(), max(timeout, 0.1))
        except TimeoutError as exc:
            error = exc
        if error is None:
            for work in unsynced.synced():
                self._record(work)
        else:
            unsynced.failed()
        if unsynced:
            # Not marked: delivered again after the restart (a stop), or by the new output (a retire).
            log.warning(
                "delivery.last_sync_failed",
                output=self.name,
                works=len(unsynced),
                bytes=unsynced.bytes,
                error=describe(error) if error is not None else "written before a failed sync",
            )
            return False
        return True


def _kept(work: Work) -> Work:
    """What the loop keeps of a written work until the output's sync: its chunks, and of a merged chunk
    the header only. The merged copy of their entries (and what the output decoded of it) would more than
    double what the unsynced works pin; a rewrite merges them again."""
    if len(work.takens) == 1:
        return work
    chunk = work.chunk
    header = Chunk(chunk.tag, b"", chunk.count, chunk.received_ns)
    header.invalid = chunk.invalid
    return Work(work.takens, header)
