"""Built-in filters: plain callables over whole chunks.

A filter has a ``name`` and is called with a chunk; it returns the chunk itself when it kept every event
unchanged (the original bytes go on, nothing is re-encoded), a new chunk when it changed or dropped some,
or ``None`` when nothing is left (or everything is held). :class:`TagRewrite` alone may also return a list
of chunks, one per resulting tag, since a chunk has exactly one tag. Stateful filters
(:class:`DockerPartial`) also give back what they hold: :meth:`~StatefulFilter.expire` periodically (with
``time.monotonic()``) and :meth:`~StatefulFilter.drain` once at shutdown.

Settings are keyword-only constructor arguments, validated there: a bad setting raises ValueError with a
message naming it, at configuration time rather than on the first event.

Field names everywhere use the accessor syntax of :mod:`forwardd.filters._accessor` (``a.b``, ``$.a.b``,
``$['a.b']``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from forwardd.filters.docker_partial import DockerPartial
from forwardd.filters.docker_swarm import DockerSwarm
from forwardd.filters.grep import Grep
from forwardd.filters.parser import Parser
from forwardd.filters.record_modify import RecordModify
from forwardd.filters.tag_rewrite import TagRewrite
from forwardd.model import Chunk

__all__ = [
    "DockerPartial",
    "DockerSwarm",
    "Filter",
    "FilterResult",
    "Grep",
    "Parser",
    "RecordModify",
    "StatefulFilter",
    "TagRewrite",
]

#: What a filter returns; ``list[Chunk]`` only ever comes from :class:`TagRewrite` (two or more chunks).
#: :class:`DockerPartial` with a journal may also return a :class:`forwardd.router.router.Held`.
FilterResult = Chunk | list[Chunk] | None


class Filter(Protocol):
    name: str

    def __call__(self, chunk: Chunk, /) -> FilterResult: ...


@runtime_checkable
class StatefulFilter(Protocol):
    """A filter that holds events across calls."""

    name: str

    def __call__(self, chunk: Chunk, /) -> FilterResult: ...

    def expire(self, now: float) -> list[Chunk]:
        """Chunks of what has been held too long (``now`` is ``time.monotonic()``)."""
        ...

    def drain(self) -> list[Chunk]:
        """Everything held, at shutdown."""
        ...
