"""docker_partial's reassembly: pieces in, whole lines (or flagged fragments) out, with bounded memory.

The filter itself: its settings, its stats, and the logic of :mod:`forwardd.filters.docker_partial`'s
docstring (keys, ordinals, the old format, timeouts, eviction, the size cap). What it holds is committed to
its journal by :class:`~forwardd.filters.docker_partial.journaling.Journaling`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass

from forwardd.config.types import Count, Frozen
from forwardd.config.units import Duration, Size
from forwardd.filters.base import Held, Journal, Released
from forwardd.filters.docker_partial.journaling import Journaling
from forwardd.filters.docker_partial.line import (
    PARTIAL_FIELDS,
    Key,
    Line,
    container_id,
    nbytes,
    piece_ordinal,
)
from forwardd.model import Chunk, Event
from forwardd.stats import StatValue

__all__ = ["DockerPartial", "DockerPartialSettings", "DockerPartialStats"]

_MARKER = b"partial_message"


@dataclass(frozen=True, slots=True)
class DockerPartialStats:
    """What the filter holds and has done, at one moment (the ``filter.stats`` log line): a snapshot, so
    that a reader cannot change the filter's counters, in the one shape every component's stats have."""

    #: Lines with pieces held, waiting for the rest.
    open_lines: int
    #: Pieces received twice (a client resending after a lost ack) and dropped.
    duplicates: int
    #: Events emitted as fragments (timeout, eviction, size cap, drain).
    incomplete: int
    #: The journal's name (None without one), and the chunks it keeps for a restart.
    journal: str | None
    journaled_chunks: int

    def as_dict(self) -> dict[str, StatValue]:
        return asdict(self)


class DockerPartialSettings(Frozen):
    """``type: docker_partial``: docker's lines longer than 16 KiB, reassembled from their pieces."""

    flush_timeout: Duration = 5.0
    max_size: Size = 1024**2
    max_pending: Count = 10000
    #: Commit held pieces to a journal under <storage>/journal before acking them (see DockerPartial).
    journal: bool = True


class DockerPartial(Journaling):
    """Reassemble docker's partial messages; a :class:`~forwardd.filters.base.StatefulFilter`."""

    @classmethod
    def from_settings(
        cls, name: str, s: DockerPartialSettings, journal: Callable[[], Journal] | None = None
    ) -> DockerPartial:
        """The filter of one configured entry; ``journal`` opens its journal, used when it asks for one
        (none: tests and ``check-config``, which hold nothing across a restart)."""
        return cls(
            name=name,
            flush_timeout=s.flush_timeout,
            max_size=s.max_size,
            max_pending=s.max_pending,
            journal=journal() if journal is not None and s.journal else None,
        )

    def __init__(
        self,
        *,
        name: str = "docker_partial",
        flush_timeout: float = 5.0,
        max_size: int = 1 << 20,
        max_pending: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        journal: Journal | None = None,
    ) -> None:
        if type(flush_timeout) not in (int, float) or not flush_timeout > 0:
            raise ValueError(f"docker_partial flush_timeout must be > 0 seconds, got {flush_timeout!r}")
        if type(max_size) is not int or max_size <= 0:
            raise ValueError(f"docker_partial max_size must be a positive number of bytes, got {max_size!r}")
        if type(max_pending) is not int or max_pending <= 0:
            raise ValueError(f"docker_partial max_pending must be a positive integer, got {max_pending!r}")
        self.name = name
        self.flush_timeout = float(flush_timeout)
        self.max_size = max_size
        self.max_pending = max_pending
        self._clock = clock
        self._open: OrderedDict[Key, Line] = OrderedDict()  # oldest first: expiry pops from the front
        self._legacy_tags: dict[str, int] = {}  # tags with open old-format lines: their plain records matter
        self._ready: list[tuple[str, Event]] = []  # evicted lines of other tags, for the next expire()
        self._ready_lines: list[Line] = []  # their lines, released from the journal once that is accepted
        #: Where pieces are committed before their ack, once :meth:`start` has recovered it.
        self.journal = journal
        self._journaling = False  # between start() and stop()
        self._entry_lines: dict[int, int] = {}  # journal entry -> its lines not yet released
        self._closed: list[Line] = []  # lines emitted by the call in progress (journal bookkeeping)
        self._touched: dict[Key, Line] = {}  # lines that took a piece in the call in progress
        self._absorbed: list[Event] = []  # the pieces taken in the call in progress
        self._replaying = False
        #: Pieces received twice and dropped.
        self.duplicates = 0
        #: Events emitted as fragments (timeout, eviction, size cap, drain).
        self.incomplete = 0

    @property
    def pending(self) -> int:
        """Open lines."""
        return len(self._open)

    def __call__(self, chunk: Chunk) -> Chunk | Held | None:
        tag = chunk.tag
        # The common chunk holds no piece: a byte search decides without decoding a record.
        if _MARKER not in chunk.entries and tag not in self._legacy_tags:
            return chunk
        self._closed, self._touched, self._absorbed = [], {}, []  # this call's journal bookkeeping
        if self.journal is None or not self._journaling:
            return self._process(chunk)
        return self._journaled(chunk)

    def stats(self) -> DockerPartialStats:
        """Open lines, dropped duplicates, fragments emitted, and what the journal keeps for a restart."""
        journal = self.journal
        return DockerPartialStats(
            open_lines=len(self._open),
            duplicates=self.duplicates,
            incomplete=self.incomplete,
            journal=journal.name if journal is not None else None,
            journaled_chunks=journal.held if journal is not None else 0,
        )

    def _process(self, chunk: Chunk) -> Chunk | None:
        tag = chunk.tag
        events = chunk.events()
        out: list[Event] = []
        changed = False
        now: float | None = None
        for ev in events:
            rec = ev.record
            if rec.get("partial_message") != "true":
                if tag in self._legacy_tags:
                    line = self._open.get((tag, container_id(rec), None))
                    if line is not None:
                        log = rec.get("log")
                        if type(log) is str:
                            self._add(line, line.next_ord, ev, log, True, out)
                        else:
                            self._close((tag, container_id(rec), None), out, tag)
                            out.append(ev)
                        changed = True
                        continue
                out.append(ev)
                continue
            log = rec.get("log")
            pid = rec.get("partial_id")
            if type(log) is not str or (pid is not None and type(pid) is not str):
                out.append(ev)  # not a shape we can join: better delivered as it is than guessed at
                continue
            if pid is None:
                ordinal, is_last = 0, False
            else:
                ordinal = piece_ordinal(rec.get("partial_ordinal"))
                if ordinal <= 0:
                    out.append(ev)
                    continue
                is_last = rec.get("partial_last") == "true"
            changed = True
            key = (tag, container_id(rec), pid)
            line = self._open.get(key)
            if line is None:
                if now is None:
                    now = self._clock()
                line = self._new(key, now, out)
            self._add(line, ordinal or line.next_ord, ev, log, is_last, out)
        if not changed:
            return chunk
        return chunk.replace_events(out) if out else None

    def expire(self, now: float) -> Released:
        """Emit lines held for ``flush_timeout`` or longer, and lines evicted since the last call."""
        emitted, self._ready = self._ready, []
        self._closed, ready_lines, self._ready_lines = [], self._ready_lines, []
        deadline = now - self.flush_timeout
        while self._open:
            key, line = next(iter(self._open.items()))
            if line.first_seen > deadline:
                break
            self._close(key, None, None, emitted)
        return self._emit(emitted, ready_lines)

    def drain(self, *, keep: bool = True) -> Released:
        """At shutdown: give back everything held, as fragments. With a journal, open lines stay in it
        instead, to be completed after the restart; only lines already emitted are handed on. ``keep=False``
        (a reload removes or moves the filter: no filter will read this journal again): open lines come out
        as fragments too, and leave the journal once they are accepted."""
        emitted, self._ready = self._ready, []
        self._closed, ready_lines, self._ready_lines = [], self._ready_lines, []
        if not self._journaling or not keep:
            while self._open:
                self._close(next(iter(self._open)), None, None, emitted)
        return self._emit(emitted, ready_lines)

    def _new(self, key: Key, now: float, out: list[Event]) -> Line:
        if len(self._open) >= self.max_pending:
            self._close(next(iter(self._open)), out, key[0], self._ready)
        line = Line(key, now)
        self._open[key] = line
        if key[2] is None:
            self._legacy_tags[key[0]] = self._legacy_tags.get(key[0], 0) + 1
        return line

    def _forget(self, key: Key) -> None:
        del self._open[key]
        if key[2] is None:
            n = self._legacy_tags[key[0]] - 1
            if n:
                self._legacy_tags[key[0]] = n
            else:
                del self._legacy_tags[key[0]]

    def _close(
        self,
        key: Key,
        out: list[Event] | None,
        out_tag: str | None,
        elsewhere: list[tuple[str, Event]] | None = None,
    ) -> None:
        """Emit an open line as a fragment: into ``out`` if it has ``out_tag``, else into ``elsewhere``."""
        line = self._open[key]
        self._forget(key)
        if not line.pieces:
            self._closed.append(line)
            return
        ev = self._join(line, complete=False)
        if out is not None and line.tag == out_tag:
            out.append(ev)
            self._closed.append(line)
        elif elsewhere is None:
            self._ready.append((line.tag, ev))
            self._ready_lines.append(line)
        else:
            elsewhere.append((line.tag, ev))
            self._closed.append(line)

    def _add(self, line: Line, ordinal: int, ev: Event, log: str, is_last: bool, out: list[Event]) -> None:
        if ordinal in line.pieces or ordinal in line.done:
            self.duplicates += 1
            return
        if ev.record.get("partial_message") == "true":  # a piece (not an old-format line's last record)
            self._touched[line.key] = line
            if not self._replaying:
                self._absorbed.append(ev)
        line.next_ord = ordinal + 1
        if line.head is None or ordinal < line.head_ord:
            rec = {k: v for k, v in ev.record.items() if k not in PARTIAL_FIELDS}
            line.head = Event(ev.time_ns, rec, ev.meta)
            line.head_ord = ordinal
        n = nbytes(log)
        if line.pieces and line.size + n > self.max_size:
            out.append(self._join(line, complete=False))
            line.done.update(line.pieces)
            line.pieces = {}
            line.size = 0
            line.segmented = True
        line.pieces[ordinal] = log
        line.size += n
        if is_last:
            line.last = ordinal
        if line.complete():
            self._forget(line.key)
            self._closed.append(line)
            out.append(self._join(line, complete=not line.segmented))

    def _join(self, line: Line, *, complete: bool) -> Event:
        head = line.head
        assert head is not None  # a line is created with its first piece
        pieces = line.pieces
        rec = dict(head.record)
        rec["log"] = "".join([pieces[o] for o in sorted(pieces)])
        if not complete:
            if line.pid is not None:
                rec["partial_id"] = line.pid
            rec["partial_incomplete"] = "true"
            self.incomplete += 1
        return Event(head.time_ns, rec, head.meta)
