"""Built-in filters: plain callables over whole chunks, written against :mod:`forwardd.filters.base`.

A filter has a ``name`` and is called with a chunk (see :mod:`.base` for what it returns). :class:`TagRewrite`
alone returns a list of chunks, one per resulting tag. :class:`DockerPartial` is stateful
(:class:`~forwardd.filters.base.StatefulFilter`): it gives back what it holds, periodically and at
shutdown, and keeps the pieces its clients were acked for in a :class:`~forwardd.filters.base.Journal`.

Settings are keyword-only constructor arguments, validated there: a bad setting raises ValueError with a
message naming it, at configuration time rather than on the first event.

Field names everywhere use the accessor syntax of :mod:`forwardd.filters._accessor` (``a.b``, ``$.a.b``,
``$['a.b']``).
"""

from forwardd.filters.base import Filter, FilterResult, Held, Journal, Released, StatefulFilter
from forwardd.filters.docker_partial import DockerPartial
from forwardd.filters.docker_swarm import DockerSwarm
from forwardd.filters.grep import Grep
from forwardd.filters.parser import Parser
from forwardd.filters.record_modify import RecordModify
from forwardd.filters.tag_rewrite import TagRewrite

__all__ = [
    "DockerPartial",
    "DockerSwarm",
    "Filter",
    "FilterResult",
    "Grep",
    "Held",
    "Journal",
    "Parser",
    "RecordModify",
    "Released",
    "StatefulFilter",
    "TagRewrite",
]
