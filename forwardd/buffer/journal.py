"""A durable journal for what a filter holds after its client was acked (docker_partial's pieces).

Docker waits for the ack of each piece of a long line before it sends the next, so the pieces a filter
holds while the line is incomplete have been acked. Without a journal they live only in memory and a
crash loses them. With one, each chunk of pieces is committed here (the same disk queue as the output
buffers: group commit, fsync) before its ack goes out, and an entry is released only once every line
it holds a piece of has been emitted *and* accepted by the sinks downstream. Releasing at emission would
not do: if forwardd died between emitting a line and the sinks committing it, docker would resend only the
unacked last piece and the earlier ones would be gone.

On start the entries still in the journal are handed back, oldest first, for the filter to hold again. A
line that was emitted and committed but not yet released when forwardd died comes back too and is emitted
again: at least once, like every other delivery.

It lives beside the buffer because it is one; filters see it only as the small
:class:`forwardd.filters.base.Journal` protocol (entries are numbers), so they do not import the buffer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable

import structlog

from forwardd.buffer.base import Taken
from forwardd.buffer.queue import DiskQueue
from forwardd.model import Chunk

__all__ = ["PieceJournal"]

log = structlog.get_logger("forwardd.buffer")


class _Entry:
    """One chunk of pieces: the queue's handle once its commit is done, and whether it was released."""

    __slots__ = ("number", "released", "taken")

    def __init__(self, number: int, taken: Taken | None = None) -> None:
        self.number = number
        self.taken = taken
        self.released = False


class PieceJournal:
    """A :class:`~forwardd.buffer.DiskQueue` used as a journal: append, release, replay at start.

    Implements :class:`forwardd.filters.base.Journal`.
    """

    def __init__(self, directory: str, *, name: str = "journal") -> None:
        self.name = name
        self.queue = DiskQueue(directory, name=name, max_size=256 * 1024 * 1024, max_segment_size=4 << 20)
        # Entries whose commit has not finished, oldest first: commits finish in order, and the queue
        # hands committed records out in that same order, so each finished commit takes the next one.
        self._waiting: deque[_Entry] = deque()
        self._entries: dict[int, _Entry] = {}  # not yet released, or released before their commit finished
        self._next = 0
        self.started = False

    @property
    def held(self) -> int:
        """Entries committed and not yet released (those an old worker left included)."""
        return self.queue.queued_chunks

    def _new(self, taken: Taken | None = None) -> _Entry:
        self._next += 1
        entry = _Entry(self._next, taken)
        self._entries[entry.number] = entry
        return entry

    async def start(self) -> list[tuple[int, Chunk]]:
        """Recover the journal; the entries left in it, oldest first, for the filter to hold again."""
        await self.queue.start()
        self.started = True
        recovered = []
        while (t := self.queue.take_nowait()) is not None:
            recovered.append((self._new(t).number, t.chunk))
        if recovered:
            log.info("journal.recovered", journal=self.name, entries=len(recovered))
        return recovered

    def append(self, chunk: Chunk) -> tuple[int, Awaitable[None]]:
        """Commit ``chunk``; its entry and the awaitable the client's ack must wait for."""
        fut = asyncio.ensure_future(self.queue.submit(chunk))
        entry = self._new()
        self._waiting.append(entry)

        def committed(f: asyncio.Future[None]) -> None:
            done = self._waiting.popleft()
            assert done is entry, "journal commits finish in order"
            if f.cancelled() or f.exception() is not None:
                self._entries.pop(entry.number, None)
                return  # not in the journal: the client gets no ack and resends
            entry.taken = self.queue.take_nowait()
            if entry.released:
                self._release(entry)

        fut.add_done_callback(committed)
        return entry.number, fut

    def release(self, entry: int) -> None:
        """Everything ``entry`` held is accepted downstream: let it go (once its own commit is done)."""
        e = self._entries.get(entry)
        if e is None or e.released:
            return
        e.released = True
        if e.taken is not None:
            self._release(e)

    def _release(self, entry: _Entry) -> None:
        self._entries.pop(entry.number, None)
        taken, entry.taken = entry.taken, None
        if taken is not None and self.started:
            self.queue.mark_delivered(taken)

    async def close(self) -> None:
        self.started = False
        await self.queue.close()
