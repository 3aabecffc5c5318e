"""The route table: labels of ordered routes, checked and compiled once, and which routes a tag takes.

A configuration is a set of labels, each an ordered list of :class:`Route` s (``@ROOT`` is where sources
without a label deliver). Within a label the first route whose pattern matches the chunk's tag takes it,
as Fluentd's ``<match>`` does; a route with ``continue_=True`` lets later routes of the label see the same
chunk too (what Fluentd needs ``out_copy`` for).

Everything that can be known before the first chunk is decided here, so that the walk never meets a
surprise: every named output and label exists, no chain of relabels comes back to where it started (a
chunk's walk always ends), each stateful filter sits on exactly one route (what it releases later has one
place to go), and the labels are ordered with every relabel source before its target (a drain then sees
what upstream drains released). Matching a tag walks the routes and their regexes, but a stream is a
handful of tags, so each label keeps the routes chosen per tag in an LRU cache.

:func:`pattern_error` and :func:`relabel_cycles` are pure, with the caller's own location attached to
each problem, so that configuration checks can ask the table rather than hold copies of these rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import FunctionType, MethodType
from typing import Generic, TypeVar

from forwardd.filters.base import Filter, FilterResult, StatefulFilter
from forwardd.model import Chunk
from forwardd.router.match import PatternError, TagMatcher, compile_pattern
from forwardd.sink import Sink

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "ERROR_LABEL",
    "ROOT_LABEL",
    "CompiledRoute",
    "RelabelCycle",
    "Route",
    "RouteTable",
    "RoutingError",
    "pattern_error",
    "relabel_cycles",
]

#: Where sources without a label deliver.
ROOT_LABEL = "@ROOT"
#: The label that gets what a filter fails on or an output refuses for good, when the configuration has it.
ERROR_LABEL = "@ERROR"
DEFAULT_CACHE_SIZE = 1024  # Fluentd's MATCH_CACHE_SIZE: tags per label whose decision is kept

L = TypeVar("L")


class RoutingError(ValueError):
    """The routing configuration cannot work (unknown label or output, a relabel cycle)."""


@dataclass(frozen=True, slots=True)
class Route:
    """One ``<match>``: a pattern, the filters before it, and where the result goes."""

    matcher: TagMatcher
    filters: tuple[Filter, ...] = ()
    outputs: tuple[str, ...] = ()
    relabel: str | None = None
    continue_: bool = False


def pattern_error(text: str) -> str | None:
    """Why ``text`` is not a tag pattern (the message names the pattern), or None when it is one."""
    try:
        compile_pattern(text)
    except PatternError as exc:
        return str(exc)
    return None


@dataclass(frozen=True, slots=True)
class RelabelCycle(Generic[L]):
    """A chain of relabels that comes back to its first label; ``location`` is the caller's name for the
    relabel that closes it (the one to look at)."""

    location: L
    labels: tuple[str, ...]

    def __str__(self) -> str:
        return " -> ".join(self.labels)


def relabel_cycles(
    edges: Mapping[str, Sequence[tuple[L, str]]], starts: Iterable[str] = ()
) -> list[RelabelCycle[L]]:
    """The relabel cycles among ``edges`` (label -> its relabels as ``(location, target)``), each once.

    Relabelling never changes a tag by itself, so a cycle could pass an event round forever. Labels are
    searched depth first from ``starts`` (then from the others, in order): every relabel that closes a
    cycle on the current path is reported with the cycle, at most once per set of labels. That finds at
    least one cycle through every label that is on one, in time linear in the relabels.
    """
    found: list[RelabelCycle[L]] = []
    seen: set[frozenset[str]] = set()
    done: set[str] = set()
    for start in [*starts, *edges]:
        if start in done:
            continue
        path = [start]
        on_path = {start}
        stack = [iter(edges.get(start, ()))]
        while stack:
            step = next(stack[-1], None)
            if step is None:
                stack.pop()
                label = path.pop()
                on_path.discard(label)
                done.add(label)
                continue
            loc, target = step
            if target in on_path:
                cycle = (*path[path.index(target) :], target)
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key)
                    found.append(RelabelCycle(loc, cycle))
            elif target not in done:
                path.append(target)
                on_path.add(target)
                stack.append(iter(edges.get(target, ())))
    return found


def _relabel_order(edges: Mapping[str, Sequence[str]], starts: Iterable[str]) -> list[str]:
    """Labels with every relabel source before its target (``edges`` has no cycle)."""
    done: set[str] = set()
    post: list[str] = []
    for start in [*starts, *edges]:
        if start in done:
            continue
        done.add(start)
        stack = [(start, iter(edges.get(start, ())))]
        while stack:
            label, targets = stack[-1]
            target = next(targets, None)
            if target is None:
                stack.pop()
                post.append(label)
            elif target not in done:
                done.add(target)
                stack.append((target, iter(edges.get(target, ()))))
    post.reverse()
    return post


def _fast_call(f: Filter) -> Callable[[Chunk], FilterResult]:
    """``f`` itself, or its bound ``__call__``: calling an instance goes through a slot wrapper that costs
    about twice a bound method call, which matters at a million chunks a second."""
    if isinstance(f, FunctionType | MethodType):
        return f
    bound = f.__call__
    return bound if isinstance(bound, MethodType) else f


class CompiledRoute:
    """A route with its sinks resolved, its filters' fast calls, and its place (for logs, expire, drain)."""

    __slots__ = ("calls", "continue_", "filters", "index", "label", "matcher", "relabel", "sinks")

    def __init__(self, route: Route, label: str, index: int, sinks: tuple[tuple[str, Sink], ...]) -> None:
        self.matcher = route.matcher
        self.continue_ = route.continue_
        self.label = label
        self.index = index
        self.filters = route.filters
        self.calls = tuple(_fast_call(f) for f in route.filters)
        self.sinks = sinks
        self.relabel = route.relabel


class RouteTable:
    """Labels of compiled routes, checked (see the module doc); which routes of a label take a tag."""

    def __init__(
        self,
        labels: Mapping[str, Iterable[Route]],
        sinks: Mapping[str, Sink],
        *,
        root_label: str = ROOT_LABEL,
        error_label: str = ERROR_LABEL,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self.root_label = root_label
        #: The error label's name, or None when the configuration has none.
        self.error_label: str | None = error_label if error_label in labels else None
        self.cache_size = cache_size
        self.routes: dict[str, tuple[CompiledRoute, ...]] = {}
        for label, routes in labels.items():
            compiled = []
            for index, route in enumerate(routes):
                for name in route.outputs:
                    if name not in sinks:
                        raise RoutingError(f"route {index} of label {label} names unknown output {name!r}")
                if route.relabel is not None and route.relabel not in labels:
                    raise RoutingError(
                        f"route {index} of label {label} relabels to unknown label {route.relabel!r}"
                    )
                resolved = tuple((name, sinks[name]) for name in route.outputs)
                compiled.append(CompiledRoute(route, label, index, resolved))
            self.routes[label] = tuple(compiled)
        edges = {
            label: [((label, c.index), c.relabel) for c in routes if c.relabel is not None]
            for label, routes in self.routes.items()
        }
        starts = [root_label] if root_label in edges else []
        cycles = relabel_cycles(edges, starts)
        if cycles:
            raise RoutingError(f"relabel loop: {cycles[0]}")
        #: Every relabel source before its target.
        self.order = _relabel_order({k: [t for _, t in v] for k, v in edges.items()}, starts)
        #: Stateful filters with their route and position, upstream first.
        self.stateful = self._stateful_filters()
        self._match: dict[str, Callable[[str], tuple[CompiledRoute, ...]]] = {
            label: lru_cache(maxsize=cache_size)(self._match_fn(label)) for label in self.routes
        }

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.routes)

    def matching(self, label: str) -> Callable[[str], tuple[CompiledRoute, ...]]:
        """``label``'s routes that take a tag, in order (cached per tag): the first match, and the matches
        after it for as long as each says ``continue``."""
        return self._match[label]

    def _match_fn(self, label: str) -> Callable[[str], tuple[CompiledRoute, ...]]:
        routes = self.routes[label]

        def match(tag: str) -> tuple[CompiledRoute, ...]:
            chosen = []
            for compiled in routes:
                if compiled.matcher.matches(tag):
                    chosen.append(compiled)
                    if not compiled.continue_:
                        break
            return tuple(chosen)

        return match

    def _stateful_filters(self) -> tuple[tuple[CompiledRoute, int, StatefulFilter], ...]:
        held: list[tuple[CompiledRoute, int, StatefulFilter]] = []
        seen: dict[int, tuple[str, int]] = {}
        for label in self.order:
            for compiled in self.routes[label]:
                for pos, f in enumerate(compiled.filters):
                    if not isinstance(f, StatefulFilter):
                        continue
                    if id(f) in seen:
                        raise RoutingError(
                            f"stateful filter {f.name!r} appears twice (label {label} route "
                            f"{compiled.index}, and {seen[id(f)]}); what it holds would have no single route"
                        )
                    seen[id(f)] = (label, compiled.index)
                    held.append((compiled, pos, f))
        return tuple(held)
