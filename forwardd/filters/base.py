"""The filter contract: what a filter is called with, what it may return, and what a stateful one owes.

It lives beside the filters rather than in the router so that a filter is written against its own
contract, and the router, the daemon and a later registry all use the same declaration without knowing
which filter they hold. Nothing here imports the router, the buffer or the configuration.

A filter is called with a chunk and returns the chunk itself when it kept every event unchanged (the
original bytes go on, nothing is re-encoded), a new chunk when it changed or dropped some, several chunks
when its events now have different tags (a chunk has exactly one), or ``None`` when nothing is left or
everything is held. A filter that commits what it holds to disk wraps that in a :class:`Held`: the
client's ack then waits for the commit, and the filter hears when what it let go has been accepted.

A filter must not mutate the records of the chunk it was given: with ``continue`` and fan-out, several
routes hold the same chunk. One that raises costs the events that make it raise, not the chunk (the
router isolates them); one that cannot take a chunk now raises
:class:`~forwardd.errors.ChunkRejected`, which reaches the client as a temporary refusal.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from forwardd.model import Chunk
from forwardd.stats import Stats

__all__ = ["Filter", "FilterResult", "Held", "Journal", "Released", "StatefulFilter"]


class Held:
    """What a filter that keeps state on disk returns instead of a plain result.

    ``result`` goes on as the plain result would. ``commit``, when set, must resolve before the chunk that
    was given to the filter counts as accepted (the client's ack waits for it: the filter's own journal).
    ``on_accepted``, when set, is called once everything this call led to has been accepted by the sinks
    (or refused for good, when the client is acked anyway), and not at all after a temporary refusal (the
    client resends): the filter may then forget what it kept for it.
    """

    __slots__ = ("commit", "on_accepted", "result")

    def __init__(
        self,
        result: Chunk | list[Chunk] | None,
        commit: Awaitable[None] | None = None,
        on_accepted: Callable[[], None] | None = None,
    ) -> None:
        self.result = result
        self.commit = commit
        self.on_accepted = on_accepted


#: What a filter returns: the chunk to pass on (maybe re-tagged), several chunks (a tag rewrite that split
#: the events among tags), None when nothing is left or everything is held, or one of those in a Held.
FilterResult = Chunk | list[Chunk] | Held | None

#: What a stateful filter gives back from :meth:`StatefulFilter.expire` and :meth:`StatefulFilter.drain`.
Released = list[Chunk] | Held


class Filter(Protocol):
    """A per-chunk transform; each chunk it returns goes through the rest of its route."""

    name: str

    def __call__(self, chunk: Chunk, /) -> FilterResult: ...


@runtime_checkable
class StatefulFilter(Filter, Protocol):
    """A filter that holds events across calls (docker_partial's pieces of a long line).

    What it holds must come out in bounded time and at shutdown, and be recovered after a restart when it
    was acked: the router passes what :meth:`expire` and :meth:`drain` release through the rest of the
    filter's route, and the daemon starts, stops and reports every such filter through this protocol.
    """

    async def start(self) -> None:
        """Before the first chunk: recover what was held across a stop or a crash (its journal)."""
        ...

    def expire(self, now: float) -> Released:
        """What has been held too long (``now`` is ``time.monotonic()``), called about once a second."""
        ...

    def drain(self, *, keep: bool = True) -> Released:
        """At shutdown, once no chunk comes any more: everything that must not wait for a restart.

        ``keep=False`` when nothing will hold again what the filter keeps on disk (a reload removes it or
        moves it to another place, whose journal is another): then that comes out too.
        """
        ...

    async def stop(self) -> None:
        """After the drain was accepted downstream: close what the filter keeps on disk."""
        ...

    def stats(self) -> Stats:
        """Counters and gauges for the periodic ``filter.stats`` log line, in the shape every component's
        stats have (a snapshot with ``as_dict()``)."""
        ...


class Journal(Protocol):
    """Durable storage for what a filter holds after its client was acked, handed to the filter.

    Entries are numbers the journal gives out: the filter keeps its own bookkeeping of which of its held
    lines need which entry, and releases an entry once none does. The daemon provides the implementation
    (:class:`forwardd.buffer.journal.PieceJournal`, a disk queue); the filter depends only on this.
    """

    name: str

    async def start(self) -> list[tuple[int, Chunk]]:
        """Recover; the entries still in the journal, oldest first, for the filter to hold again."""
        ...

    def append(self, chunk: Chunk) -> tuple[int, Awaitable[None]]:
        """Commit ``chunk``: its entry, and what the client's ack must wait for."""
        ...

    def release(self, entry: int) -> None:
        """What ``entry`` held is safe downstream: it may leave the journal (releasing twice is harmless)."""
        ...

    async def close(self) -> None: ...

    @property
    def held(self) -> int:
        """Entries committed and not yet released."""
        ...
