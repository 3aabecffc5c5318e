"""docker_partial's journal bookkeeping: the pieces it holds were acked, so they are committed first.

Docker waits for each piece's ack before it sends the next, so the filter cannot hold acks until a line is
complete. Instead every chunk of pieces is committed to the filter's journal before its ack, each journal
entry counts the lines it holds pieces of, and it is released once all of them were emitted and accepted
downstream. On start the pieces still in the journal are held again. This mixin is that bookkeeping, apart
from the reassembly it follows (:class:`~forwardd.filters.docker_partial.filter.DockerPartial`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING

import structlog

from forwardd.filters.base import Held, Journal, Released
from forwardd.filters.docker_partial.line import Key, Line, chunks
from forwardd.model import Chunk, Event

__all__ = ["Journaling"]

log = structlog.get_logger("forwardd.filters")


class Journaling:
    """The part of DockerPartial that keeps what it holds in its journal (a mixin of the filter)."""

    name: str
    #: Where pieces are committed before their ack, once :meth:`start` has recovered it.
    journal: Journal | None
    _journaling: bool  # between start() and stop()
    _entry_lines: dict[int, int]  # journal entry -> its lines not yet released
    _closed: list[Line]  # lines emitted by the call in progress
    _touched: dict[Key, Line]  # lines that took a piece in the call in progress
    _absorbed: list[Event]  # the pieces taken in the call in progress
    _replaying: bool
    _open: OrderedDict[Key, Line]
    _ready: list[tuple[str, Event]]
    _ready_lines: list[Line]

    if TYPE_CHECKING:  # the filter's reassembly; only declared, so that no stub shadows it at run time

        def _process(self, chunk: Chunk) -> Chunk | None: ...

    def _journaled(self, chunk: Chunk) -> Chunk | Held | None:
        """The filter's call with a journal: the pieces it took are committed before the ack, and the
        journal entries of the lines it emitted are released once the sinks accept them."""
        journal = self.journal
        assert journal is not None
        result = self._process(chunk)
        closed, touched, absorbed = self._closed, self._touched, self._absorbed
        self._closed, self._touched, self._absorbed = [], {}, []
        commit = None
        if absorbed:
            entry, commit = journal.append(Chunk.from_events(chunk.tag, absorbed, chunk.received_ns))
            self._hold_entry(entry, touched.values())
        if not closed and commit is None:
            return result
        return Held(result, commit, (lambda: self._release(closed)) if closed else None)

    def _release(self, lines: list[Line]) -> None:
        """``lines`` were emitted and the sinks accepted them: their journal entries may go."""
        journal = self.journal
        if journal is None:
            return
        counts = self._entry_lines
        for line in lines:
            for entry in line.entries:
                left = counts.pop(entry, 0) - 1
                if left > 0:
                    counts[entry] = left
                else:
                    journal.release(entry)
            line.entries = []

    def _hold_entry(self, entry: int, lines: Iterable[Line]) -> None:
        """``entry`` holds pieces of ``lines``: it stays in the journal until all of them are released."""
        n = 0
        for line in lines:
            line.entries.append(entry)
            n += 1
        if n:
            self._entry_lines[entry] = self._entry_lines.get(entry, 0) + n

    async def start(self) -> None:
        """Recover the journal and hold again the pieces it kept (what a crash or a stop left open);
        from now on held pieces are committed to it before their ack."""
        journal = self.journal
        if journal is None or self._journaling:
            return
        recovered = await journal.start()
        self._journaling = True
        for entry, chunk in recovered:
            self._replaying = True
            self._closed, self._touched, self._absorbed = [], {}, []
            try:
                result = self._process(chunk)
            finally:
                self._replaying = False
            self._hold_entry(entry, self._touched.values())
            if result is not None:  # lines the replay completed: emitted at the next expire()
                self._ready.extend((result.tag, ev) for ev in result.events())
            self._ready_lines.extend(self._closed)
            if not self._touched and not self._closed:
                journal.release(entry)  # nothing of it is held any more
            self._closed, self._touched, self._absorbed = [], {}, []
        if self._open:
            log.info("docker_partial.recovered", filter=self.name, open_lines=len(self._open))

    async def stop(self) -> None:
        """Close the journal (after :meth:`drain`'s lines were accepted); open lines stay in it."""
        journal = self.journal
        if journal is None or not self._journaling:
            return
        self._journaling = False
        await journal.close()

    def _emit(self, emitted: list[tuple[str, Event]], ready_lines: list[Line]) -> Released:
        out = chunks(emitted)
        lines = ready_lines + self._closed
        self._closed = []
        if self.journal is None or not lines:
            return out
        return Held(out, None, lambda: self._release(lines))
