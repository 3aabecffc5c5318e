"""docker_partial: put back together the lines docker splits at 16 KiB.

Docker's log copier cuts a line longer than 16 KiB into pieces, and its fluentd driver sends each piece as
its own message carrying ``partial_message: "true"``, ``partial_id``, ``partial_ordinal`` ("1".."n") and
``partial_last`` ("true" on the last), all strings. This filter holds the pieces of a line, keyed by
(tag, ``container_id``, ``partial_id``) so that lines of many containers can interleave, and emits one event
when the last piece is in and every ordinal 1..n is present: the ``log`` values joined in ordinal order, the
other fields and the time of piece 1, the ``partial_*`` fields removed. The joined event takes the place of
the piece that completed it; events that are not pieces pass untouched and keep their order. A piece seen
twice (a client resending after a lost ack) is dropped and counted in :attr:`DockerPartial.duplicates`.

Older engines (moby before 18.06) set only ``partial_message: "true"``: their pieces are concatenated per
(tag, ``container_id``) until the next record of that container *without* the flag, which ends the line.

Nothing is held without bound. A line open for ``flush_timeout`` seconds (from its first piece), a line
evicted because more than ``max_pending`` lines are open (oldest first), and whatever is held at
:meth:`DockerPartial.drain` are emitted as they are: the pieces held, joined in ordinal order, with
``partial_id`` kept (to match fragments up) and ``partial_incomplete: "true"`` added. A line whose joined
``log`` would pass ``max_size`` bytes is emitted in segments of at most ``max_size`` (plus one piece), each
flagged the same way, so a runaway line costs bounded memory. Pieces that come after their line was flushed
start a new fragment, flagged again; data is never dropped, only delivered in more than one event.
Timed-out and evicted lines of other tags are handed out by :meth:`DockerPartial.expire`.

Acks: the pieces held here have already been acked to docker. Docker waits for each ack before it sends
the next piece, so holding an ack until the line completes would deadlock the driver. So that an acked
piece survives a crash, the daemon gives the filter a :class:`~forwardd.filters.base.Journal`
(``journal: true``, the default; a disk queue under ``<storage>/journal/``): once :meth:`DockerPartial.start`
has recovered it, every chunk of pieces is committed to it before its ack, a journal entry is released once
all the lines it holds pieces of were emitted and accepted by the sinks, and on start the pieces still in
it are held again, so a line cut by a restart completes when docker sends the rest. At shutdown the open
lines then stay in the journal instead of being flushed as fragments; so do they on a reload that puts a
docker_partial at the same place (the journal is the place's: the new filter holds them again), while a
reload that removes the filter or moves it elsewhere flushes them, since no filter would read that journal
again. Without a journal (``journal: false``, or the filter used on its own) held pieces live only in
memory.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from forwardd.config.types import Count, Frozen
from forwardd.config.units import Duration, Size
from forwardd.filters.base import Held, Journal, Released
from forwardd.model import Chunk, Event
from forwardd.stats import StatValue

__all__ = ["DockerPartial", "DockerPartialSettings", "DockerPartialStats"]

log = structlog.get_logger("forwardd.filters")

_PARTIAL_FIELDS = frozenset(("partial_message", "partial_id", "partial_ordinal", "partial_last"))
_MARKER = b"partial_message"

_Key = tuple[str, str, str | None]  # (tag, container_id or "", partial_id or None for the old format)


class _Line:
    """The held pieces of one line (or of its current segment)."""

    __slots__ = (
        "done",
        "entries",
        "first_seen",
        "head",
        "head_ord",
        "key",
        "last",
        "next_ord",
        "pid",
        "pieces",
        "segmented",
        "size",
        "tag",
    )

    def __init__(self, key: _Key, first_seen: float) -> None:
        self.key = key
        self.tag = key[0]
        self.pid = key[2]
        self.first_seen = first_seen
        self.head: Event | None = None  # piece with the lowest ordinal seen, partial_* fields removed
        self.head_ord = 0
        self.pieces: dict[int, str] = {}
        self.done: set[int] = set()  # ordinals already emitted in an earlier segment
        self.size = 0
        self.last: int | None = None
        self.next_ord = 1  # old format: ordinals are given in arrival order
        self.segmented = False
        self.entries: list[int] = []  # journal entries holding pieces of this line

    def complete(self) -> bool:
        last = self.last
        if last is None or len(self.pieces) + len(self.done) < last:
            return False
        have = self.pieces.keys() | self.done
        return all(o in have for o in range(1, last + 1))


def _nbytes(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogateescape"))


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


class DockerPartial:
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
        self._open: OrderedDict[_Key, _Line] = OrderedDict()  # oldest first: expiry pops from the front
        self._legacy_tags: dict[str, int] = {}  # tags with open old-format lines: their plain records matter
        self._ready: list[tuple[str, Event]] = []  # evicted lines of other tags, for the next expire()
        self._ready_lines: list[_Line] = []  # their lines, released from the journal once that is accepted
        #: Where pieces are committed before their ack, once :meth:`start` has recovered it.
        self.journal = journal
        self._journaling = False  # between start() and stop()
        self._entry_lines: dict[int, int] = {}  # journal entry -> its lines not yet released
        self._closed: list[_Line] = []  # lines emitted by the call in progress (journal bookkeeping)
        self._touched: dict[_Key, _Line] = {}  # lines that took a piece in the call in progress
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
        journal = self.journal
        if journal is None or not self._journaling:
            return self._process(chunk)
        result = self._process(chunk)
        closed, touched, absorbed = self._closed, self._touched, self._absorbed
        self._closed, self._touched, self._absorbed = [], {}, []
        commit = None
        if absorbed:
            entry, commit = journal.append(Chunk.from_events(tag, absorbed, chunk.received_ns))
            self._hold_entry(entry, touched.values())
        if not closed and commit is None:
            return result
        return Held(result, commit, (lambda: self._release(closed)) if closed else None)

    def _release(self, lines: list[_Line]) -> None:
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

    def _hold_entry(self, entry: int, lines: Iterable[_Line]) -> None:
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
                    line = self._open.get((tag, _cid(rec), None))
                    if line is not None:
                        log = rec.get("log")
                        if type(log) is str:
                            self._add(line, line.next_ord, ev, log, True, out)
                        else:
                            self._close((tag, _cid(rec), None), out, tag)
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
                ordinal = _ordinal(rec.get("partial_ordinal"))
                if ordinal <= 0:
                    out.append(ev)
                    continue
                is_last = rec.get("partial_last") == "true"
            changed = True
            key = (tag, _cid(rec), pid)
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

    def _emit(self, emitted: list[tuple[str, Event]], ready_lines: list[_Line]) -> Released:
        chunks = _chunks(emitted)
        lines = ready_lines + self._closed
        self._closed = []
        if self.journal is None or not lines:
            return chunks
        return Held(chunks, None, lambda: self._release(lines))

    def _new(self, key: _Key, now: float, out: list[Event]) -> _Line:
        if len(self._open) >= self.max_pending:
            self._close(next(iter(self._open)), out, key[0], self._ready)
        line = _Line(key, now)
        self._open[key] = line
        if key[2] is None:
            self._legacy_tags[key[0]] = self._legacy_tags.get(key[0], 0) + 1
        return line

    def _forget(self, key: _Key) -> None:
        del self._open[key]
        if key[2] is None:
            n = self._legacy_tags[key[0]] - 1
            if n:
                self._legacy_tags[key[0]] = n
            else:
                del self._legacy_tags[key[0]]

    def _close(
        self,
        key: _Key,
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

    def _add(self, line: _Line, ordinal: int, ev: Event, log: str, is_last: bool, out: list[Event]) -> None:
        if ordinal in line.pieces or ordinal in line.done:
            self.duplicates += 1
            return
        if ev.record.get("partial_message") == "true":  # a piece (not an old-format line's last record)
            self._touched[line.key] = line
            if not self._replaying:
                self._absorbed.append(ev)
        line.next_ord = ordinal + 1
        if line.head is None or ordinal < line.head_ord:
            rec = {k: v for k, v in ev.record.items() if k not in _PARTIAL_FIELDS}
            line.head = Event(ev.time_ns, rec, ev.meta)
            line.head_ord = ordinal
        n = _nbytes(log)
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

    def _join(self, line: _Line, *, complete: bool) -> Event:
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


def _cid(rec: dict[Any, Any]) -> str:
    cid = rec.get("container_id")
    return cid if type(cid) is str else ""


def _ordinal(v: Any) -> int:
    if type(v) is str and v.isdigit() and len(v) < 10:
        return int(v)
    if type(v) is int:
        return v
    return 0


def _chunks(emitted: list[tuple[str, Event]]) -> list[Chunk]:
    by_tag: dict[str, list[Event]] = {}
    for tag, ev in emitted:
        by_tag.setdefault(tag, []).append(ev)
    now_ns = time.time_ns()
    return [Chunk.from_events(tag, evs, now_ns) for tag, evs in by_tag.items()]
