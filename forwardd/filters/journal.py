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
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable

import structlog

from forwardd.buffer import DiskQueue
from forwardd.buffer.base import Taken
from forwardd.model import Chunk

__all__ = ["JournalEntry", "PieceJournal"]

log = structlog.get_logger("forwardd.filters")


class JournalEntry:
    """One committed chunk of pieces. ``open_lines`` counts the lines holding one of its pieces that have
    not yet been released; at zero the entry leaves the journal."""

    __slots__ = ("open_lines", "released", "taken")

    def __init__(self, taken: Taken | None = None) -> None:
        self.taken = taken  # the queue's handle, once the commit is done
        self.open_lines = 0
        self.released = False


class PieceJournal:
    """A :class:`~forwardd.buffer.DiskQueue` used as a journal: append, release, replay at start."""

    def __init__(self, directory: str, *, name: str = "journal") -> None:
        self.name = name
        self.queue = DiskQueue(directory, name=name, max_size=256 * 1024 * 1024, max_segment_size=4 << 20)
        # Entries whose commit has not finished, oldest first: commits finish in order, and the queue
        # hands committed records out in that same order, so each finished commit takes the next one.
        self._waiting: deque[JournalEntry] = deque()
        self.started = False

    async def start(self) -> list[tuple[Chunk, JournalEntry]]:
        """Recover the journal; the entries left in it, oldest first, for the filter to hold again."""
        await self.queue.start()
        self.started = True
        recovered = []
        while (t := self.queue.take_nowait()) is not None:
            recovered.append((t.chunk, JournalEntry(t)))
        if recovered:
            log.info("journal.recovered", journal=self.name, entries=len(recovered))
        return recovered

    def append(self, chunk: Chunk) -> tuple[JournalEntry, Awaitable[None]]:
        """Commit ``chunk``; the entry to count lines on and the awaitable the client's ack must wait for."""
        entry = JournalEntry()
        fut = asyncio.ensure_future(self.queue.submit(chunk))
        self._waiting.append(entry)

        def committed(f: asyncio.Future[None]) -> None:
            done = self._waiting.popleft()
            assert done is entry, "journal commits finish in order"
            if f.cancelled() or f.exception() is not None:
                return  # not in the journal: the client gets no ack and resends
            entry.taken = self.queue.take_nowait()
            if entry.released:
                self._release(entry)

        fut.add_done_callback(committed)
        return entry, fut

    def release(self, entry: JournalEntry) -> None:
        """Everything ``entry`` held is accepted downstream: let it go (once its own commit is done)."""
        if entry.released and entry.taken is None:
            return
        entry.released = True
        if entry.taken is not None:
            self._release(entry)

    def _release(self, entry: JournalEntry) -> None:
        taken, entry.taken = entry.taken, None
        if taken is not None and self.started:
            self.queue.mark_delivered(taken)

    async def close(self) -> None:
        self.started = False
        await self.queue.close()
