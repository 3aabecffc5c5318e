"""Tag routing: which filters and outputs a chunk goes through, decided once per tag and cached.

A configuration is a set of labels, each an ordered list of :class:`Route` s (``@ROOT`` is where sources
without a label deliver). Within a label the first route whose pattern matches the chunk's tag takes it,
as Fluentd's ``<match>`` does; a route with ``continue_=True`` lets later routes of the label see the same
chunk too (what Fluentd needs ``out_copy`` for). A route runs its filters in order, then hands the result
to every named output's :class:`~forwardd.sink.Sink` and, if it says ``relabel``, to the routes of another
label. Relabel cycles are refused when the router is built, so a chunk's walk always ends.

A filter that returns a different tag keeps its chunk on the same route (the chunk is not routed again
from the top, which could loop); one that returns a list of chunks sends each through the rest of it.

Why a per-tag cache: matching walks the routes and their regexes, but a stream is a handful of tags. The
decision for a (label, tag) is compiled into one callable, and the common case (one route, no filters, one
sink) is the sink's ``submit`` behind a counter: the hot path costs one dict lookup and one extra call.

Acceptance follows the :mod:`forwardd.sink` contract: an entry returns ``None`` when every sink accepted
synchronously, else one awaitable that resolves when all did: the sink's own when there is one and no
error label to redirect to, else a coroutine (await it once, or close it). Failures:

* a filter raising costs the events that make it raise, not the chunk: the filter is run again on halves
  of the chunk it was given (its msgpack entries framed, not decoded), recursively, so the good events go
  on through the route and the offending ones are isolated in O(k log n) calls (at most
  ``FILTER_ISOLATION_BUDGET`` failing calls per chunk; past it a failing piece counts as offending whole).
  Those go to the error label (``@ERROR``) when there is one, else to the dead-letter folder of the filter
  (``<dead_letter_dir>/filter-<label>-route<N>-<filter>/``, written durably before the client's ack: an
  ack means the events are safe; a failed write is a temporary rejection, so the client resends), else
  (no folder configured) they are dropped. Counted and logged, rate-limited (``filter.failed``,
  ``filter.dead_letter``). A ChunkRejected from a filter (its journal cannot take the chunk) is no bug: it
  reaches the session as a sink's rejection would;
* a sink rejecting permanently sends the chunk to the error label when there is one (the client is acked,
  as Fluentd does with ``@ERROR``), else the rejection reaches the session;
* a temporary rejection always reaches the session, so the client resends;
* failures inside the error label never go back to it: they are dropped or propagated.

A tag no route matches is accepted and dropped, counted, and logged at counts 1, 2, 4, ... 256 and every
512 after (Fluentd's ``NoMatchMatch``), since an unthrottled warning on the hot path is a denial of service.

Filters hand back new chunks and must not mutate the records of the chunk they were given: with
``continue_`` and fan-out, several routes hold the same chunk.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import FunctionType, MethodType
from typing import Any

import structlog

from forwardd.buffer.delivery import write_dead_letter
from forwardd.errors import ChunkRejected
from forwardd.filters.base import Filter, FilterResult, Held, StatefulFilter
from forwardd.model import Chunk
from forwardd.pieces import entry_ends, halves
from forwardd.router.match import TagMatcher
from forwardd.sink import Ingest, Sink

__all__ = ["Route", "Router", "RouterStats", "RoutingError"]


def _log() -> structlog.typing.FilteringBoundLogger:
    """A fresh logger per (rare, rate-limited) line, so a later structlog configuration applies to it."""
    return structlog.get_logger("forwardd.router")  # type: ignore[no-any-return]


DEFAULT_CACHE_SIZE = 1024  # Fluentd's MATCH_CACHE_SIZE: tags per label whose decision is kept
#: Failing filter calls one chunk may cost while its offending events are isolated (on the event loop).
FILTER_ISOLATION_BUDGET = 64


class RoutingError(ValueError):
    """The routing configuration cannot work (unknown label or output, a relabel cycle)."""


class _OnAccepted(Awaitable[None]):
    """A callback riding in a ``pending`` list: :meth:`Router._finish` takes it out and runs it once all the
    rest is in. (Awaiting it, which nothing should do, returns at once.)"""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn

    def __await__(self) -> Generator[Any, None, None]:
        yield from ()


@dataclass(frozen=True, slots=True)
class Route:
    """One ``<match>``: a pattern, the filters before it, and where the result goes."""

    matcher: TagMatcher
    filters: tuple[Filter, ...] = ()
    outputs: tuple[str, ...] = ()
    relabel: str | None = None
    continue_: bool = False


@dataclass(slots=True)
class RouterStats:
    """Counters since start. ``routed`` counts chunks that matched a route in a label (a relabelled chunk
    counts once per label); ``held_rejected`` counts expired or drained chunks a sink refused."""

    routed: int = 0
    unmatched: int = 0
    #: Chunks on which a filter raised, and the events isolated as making it raise.
    filter_errors: int = 0
    filter_failed_events: int = 0
    #: Of those events: written to a filter's dead-letter folder, or dropped (no error label, no folder).
    filter_dead_lettered: int = 0
    filter_dropped: int = 0
    to_error_label: int = 0
    held_rejected: int = 0


class _Compiled:
    """A route with its sinks resolved and its place known (for logs and for expire/drain)."""

    __slots__ = ("calls", "filters", "index", "label", "relabel", "route", "sinks")

    def __init__(self, route: Route, label: str, index: int, sinks: tuple[tuple[str, Sink], ...]) -> None:
        self.route = route
        self.label = label
        self.index = index
        self.filters = route.filters
        self.calls = tuple(_fast_call(f) for f in route.filters)
        self.sinks = sinks
        self.relabel = route.relabel


def _fast_call(f: Filter) -> Callable[[Chunk], FilterResult]:
    """``f`` itself, or its bound ``__call__``: calling an instance goes through a slot wrapper that costs
    about twice a bound method call, which matters at a million chunks a second."""
    if isinstance(f, FunctionType | MethodType):
        return f
    bound = f.__call__
    return bound if isinstance(bound, MethodType) else f


def _rate_limited(count: int) -> bool:
    """Log at 1, 2, 4, ... 256, then every 512 (Fluentd's NoMatchMatch)."""
    return (count & (count - 1)) == 0 if count < 512 else count % 512 == 0


def _combine(failures: list[ChunkRejected]) -> ChunkRejected:
    if len(failures) == 1:
        return failures[0]
    return ChunkRejected("; ".join(f.reason for f in failures), permanent=all(f.permanent for f in failures))


class Router:
    """Routes chunks from sources' entries through filters to sinks; see the module doc."""

    def __init__(
        self,
        labels: Mapping[str, Iterable[Route]],
        sinks: Mapping[str, Sink],
        error_label: str = "@ERROR",
        root_label: str = "@ROOT",
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        dead_letter_dir: str | None = None,
    ) -> None:
        self.stats = RouterStats()
        #: Where the events a filter fails on go when there is no error label (a folder per filter in it).
        self.dead_letter_dir = dead_letter_dir
        self.root_label = root_label
        self._error: str | None = error_label if error_label in labels else None
        self._routes: dict[str, tuple[_Compiled, ...]] = {}
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
                compiled.append(_Compiled(route, label, index, resolved))
            self._routes[label] = tuple(compiled)
        self._order = self._topological_order()
        self._held = self._stateful_filters()
        self._matched: dict[str, Callable[[str], tuple[_Compiled, ...]]] = {}
        self._decisions: dict[str, dict[str, Ingest]] = {}
        self._cache_size = cache_size
        for label in self._routes:
            self._matched[label] = lru_cache(maxsize=cache_size)(self._match_fn(label))
            self._decisions[label] = {}

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self._routes)

    @property
    def error_label(self) -> str | None:
        """The error label's name, or None when the configuration has none."""
        return self._error

    def entry(self, label: str | None = None) -> Ingest:
        """The callable a session hands each chunk to, for sources of ``label`` (default: the root)."""
        name = self.root_label if label is None else label
        if name not in self._routes:
            raise RoutingError(f"no label {name!r}; known: {sorted(self._routes)}")
        cache = self._decisions[name]
        decide = self._decide_fn(name)

        def ingest(chunk: Chunk) -> Awaitable[None] | None:
            try:
                handle = cache[chunk.tag]
            except KeyError:
                handle = decide(chunk.tag)
            return handle(chunk)

        return ingest

    # --- construction -----------------------------------------------------------------------------------

    def _topological_order(self) -> list[str]:
        """Labels with every relabel source before its target; raises on a cycle."""
        edges = {
            label: [c.relabel for c in routes if c.relabel is not None]
            for label, routes in self._routes.items()
        }
        done: set[str] = set()
        path: list[str] = []
        post: list[str] = []

        def visit(label: str) -> None:
            if label in done:
                return
            if label in path:
                cycle = [*path[path.index(label) :], label]
                raise RoutingError("relabel loop: " + " -> ".join(cycle))
            path.append(label)
            for target in edges[label]:
                visit(target)
            path.pop()
            done.add(label)
            post.append(label)

        roots = [self.root_label] if self.root_label in edges else []
        for label in [*roots, *edges]:
            visit(label)
        post.reverse()
        return post

    @property
    def stateful(self) -> tuple[StatefulFilter, ...]:
        """The filters that hold events across calls, upstream first: the daemon starts, stops and reports
        them (each appears once: see the constructor)."""
        return tuple(f for _, _, f in self._held)

    def _stateful_filters(self) -> list[tuple[_Compiled, int, StatefulFilter]]:
        """Stateful filters, upstream first, so a drain sees what upstream drains released."""
        held: list[tuple[_Compiled, int, StatefulFilter]] = []
        seen: dict[int, tuple[str, int]] = {}
        for label in self._order:
            for compiled in self._routes[label]:
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
        return held

    def _match_fn(self, label: str) -> Callable[[str], tuple[_Compiled, ...]]:
        routes = self._routes[label]

        def match(tag: str) -> tuple[_Compiled, ...]:
            chosen = []
            for compiled in routes:
                if compiled.route.matcher.matches(tag):
                    chosen.append(compiled)
                    if not compiled.route.continue_:
                        break
            return tuple(chosen)

        return match

    def _decide_fn(self, label: str) -> Callable[[str], Ingest]:
        """The cache-miss path of ``label``'s entries: decide for a tag and remember it.

        The cache is a plain dict, evicting the oldest decision when full (Fluentd's MatchCache does the
        same): a hit then costs one dict lookup, where an LRU's bookkeeping would double the hot path.
        """
        matched_for = self._matched[label]
        in_error = label == self._error
        cache = self._decisions[label]
        size = self._cache_size

        def decide(tag: str) -> Ingest:
            matched = matched_for(tag)
            handle: Ingest
            if not matched:
                handle = self._unmatched_ingest(label)
            elif len(matched) == 1 and matched[0].relabel is None and len(matched[0].sinks) == 1:
                if matched[0].filters:
                    handle = self._linear_ingest(matched[0], in_error)
                else:
                    handle = self._single_sink_ingest(matched[0].sinks[0], in_error)
            else:
                handle = self._general_ingest(matched, in_error)
            if len(cache) >= size:
                del cache[next(iter(cache))]
            cache[tag] = handle
            return handle

        return decide

    # --- per-decision callables -------------------------------------------------------------------------

    def _unmatched_ingest(self, label: str) -> Ingest:
        def unmatched(chunk: Chunk) -> None:
            self._note_unmatched(label, chunk)

        return unmatched

    def _single_sink_ingest(self, named: tuple[str, Sink], in_error: bool) -> Ingest:
        """One route, no filters, one sink: the hot path, kept to a counter and the sink's submit."""
        stats = self.stats
        submit = self._single_submit(named, in_error)

        def single(chunk: Chunk) -> Awaitable[None] | None:
            stats.routed += 1
            return submit(chunk)

        return single

    def _single_submit(self, named: tuple[str, Sink], in_error: bool) -> Ingest:
        name, sink = named
        if self._error is None or in_error:
            # Rejections go straight to the session: nothing to redirect, nothing to wrap.
            return sink.submit
        submit = sink.submit
        guard = self._guard

        def guarded(chunk: Chunk) -> Awaitable[None] | None:
            try:
                result = submit(chunk)
            except ChunkRejected as exc:
                if not exc.permanent:
                    raise
                return self._reject_to_error(name, chunk, exc)
            if result is None:
                return None
            return guard(result, name, chunk)

        return guarded

    def _linear_ingest(self, compiled: _Compiled, in_error: bool) -> Ingest:
        """One route with filters into one sink (a docker stream with a partial-line joiner): no lists
        unless a filter fails or splits the chunk, when the general walk takes over from there."""
        stats = self.stats
        calls = compiled.calls
        submit = self._single_submit(compiled.sinks[0], in_error)

        def linear(chunk: Chunk) -> Awaitable[None] | None:
            stats.routed += 1
            for pos, call in enumerate(calls):
                try:
                    out = call(chunk)
                except ChunkRejected:
                    raise  # a filter that cannot take the chunk now (its journal): as a sink refusing it
                except Exception as exc:
                    pending: list[Awaitable[None]] = []
                    errors: list[ChunkRejected] = []
                    self._filter_failed(compiled, pos, chunk, exc, pending, errors, in_error)
                    return self._finish(pending, errors)
                if out is None:
                    return None
                if type(out) is not Chunk:  # a list, or a Held
                    return self._continue(compiled, pos + 1, out, in_error)
                chunk = out
            return submit(chunk)

        return linear

    def _continue(
        self, compiled: _Compiled, start: int, pieces: FilterResult, in_error: bool
    ) -> Awaitable[None] | None:
        pending: list[Awaitable[None]] = []
        errors: list[ChunkRejected] = []
        if isinstance(pieces, Held):
            pieces = _unwrap(pieces, pending)
        for piece in pieces if isinstance(pieces, list) else (pieces,):
            if piece is not None:
                self._run(compiled, start, piece, pending, errors, in_error)
        return self._finish(pending, errors)

    def _general_ingest(self, matched: tuple[_Compiled, ...], in_error: bool) -> Ingest:
        stats = self.stats
        run = self._run

        def general(chunk: Chunk) -> Awaitable[None] | None:
            stats.routed += 1
            pending: list[Awaitable[None]] = []
            errors: list[ChunkRejected] = []
            for compiled in matched:
                run(compiled, 0, chunk, pending, errors, in_error)
            return self._finish(pending, errors)

        return general

    # --- the general walk -------------------------------------------------------------------------------

    def _deliver(
        self,
        label: str,
        chunk: Chunk,
        pending: list[Awaitable[None]],
        errors: list[ChunkRejected],
        in_error: bool,
    ) -> None:
        matched = self._matched[label](chunk.tag)
        if not matched:
            self._note_unmatched(label, chunk)
            return
        self.stats.routed += 1
        for compiled in matched:
            self._run(compiled, 0, chunk, pending, errors, in_error)

    def _run(
        self,
        compiled: _Compiled,
        start: int,
        chunk: Chunk,
        pending: list[Awaitable[None]],
        errors: list[ChunkRejected],
        in_error: bool,
    ) -> None:
        """Apply ``compiled``'s filters from position ``start``, then its outputs and relabel."""
        calls = compiled.calls
        for pos in range(start, len(calls)):
            try:
                out = calls[pos](chunk)
            except ChunkRejected as exc:  # cannot take it now (a filter's journal): as a sink refusing it
                errors.append(exc)
                return
            except Exception as exc:  # a filter's bug must not take the session down: isolate it
                self._filter_failed(compiled, pos, chunk, exc, pending, errors, in_error)
                return
            if isinstance(out, Held):
                out = _unwrap(out, pending)
            if out is None:
                return
            if isinstance(out, list):
                for piece in out:
                    self._run(compiled, pos + 1, piece, pending, errors, in_error)
                return
            chunk = out
        guard = self._error is not None and not in_error
        for name, sink in compiled.sinks:
            try:
                result = sink.submit(chunk)
            except ChunkRejected as exc:
                if exc.permanent and guard:
                    self._reject_to_error(name, chunk, exc, pending, errors)
                else:
                    errors.append(exc)
                continue
            if result is not None:
                pending.append(self._guard(result, name, chunk) if guard else result)
        if compiled.relabel is not None:
            self._deliver(compiled.relabel, chunk, pending, errors, in_error)

    def _finish(self, pending: list[Awaitable[None]], errors: list[ChunkRejected]) -> Awaitable[None] | None:
        callbacks = [p for p in pending if isinstance(p, _OnAccepted)]
        if callbacks:
            pending = [p for p in pending if not isinstance(p, _OnAccepted)]
            if not pending and not errors:
                for cb in callbacks:
                    cb.fn()
                return None
            return self._gather_then(pending, errors, callbacks)
        if not pending:
            if errors:
                raise _combine(errors)
            return None
        if len(pending) == 1 and not errors:
            return pending[0]
        return self._gather(pending, errors)

    async def _gather_then(
        self, pending: list[Awaitable[None]], errors: list[ChunkRejected], callbacks: list[_OnAccepted]
    ) -> None:
        """:meth:`_gather`, then the callbacks: when all was accepted, and also when the only refusals were
        permanent (the client is acked and will not resend: what a filter kept for a resend is of no use)."""
        try:
            await self._gather(pending, errors)
        except ChunkRejected as exc:
            if exc.permanent:
                for cb in callbacks:
                    cb.fn()
            raise
        for cb in callbacks:
            cb.fn()

    async def _gather(self, pending: list[Awaitable[None]], errors: list[ChunkRejected]) -> None:
        """Wait for every sink, then fail if any did: a chunk is accepted only when all outputs have it."""
        failures = list(errors)
        bug: Exception | None = None
        for i, awaitable in enumerate(pending):
            try:
                await awaitable
            except ChunkRejected as exc:
                failures.append(exc)
            except Exception as exc:  # a sink's bug: surface it, but only after the others settled
                bug = bug or exc
            except BaseException:
                for rest in pending[i + 1 :]:
                    if asyncio.iscoroutine(rest):
                        rest.close()
                raise
        if bug is not None:
            raise bug
        if failures:
            raise _combine(failures)

    async def _guard(self, awaitable: Awaitable[None], name: str, chunk: Chunk) -> None:
        """Await a sink; on a permanent rejection hand the chunk to the error label instead."""
        try:
            await awaitable
        except ChunkRejected as exc:
            if not exc.permanent:
                raise
            redirected = self._reject_to_error(name, chunk, exc)
            if redirected is not None:
                await redirected

    def _reject_to_error(
        self,
        name: str,
        chunk: Chunk,
        exc: ChunkRejected,
        pending: list[Awaitable[None]] | None = None,
        errors: list[ChunkRejected] | None = None,
    ) -> Awaitable[None] | None:
        """Send a permanently rejected chunk to the error label (which exists when this is called).

        With ``pending``/``errors`` given, the error label's results join them and None is returned;
        otherwise the error label's combined result is returned (or its rejection raised).
        """
        assert self._error is not None
        self.stats.to_error_label += 1
        _log().warning("sink.rejected", output=name, tag=chunk.tag, reason=exc.reason, to_label=self._error)
        if pending is not None and errors is not None:
            self._deliver(self._error, chunk, pending, errors, True)
            return None
        own_pending: list[Awaitable[None]] = []
        own_errors: list[ChunkRejected] = []
        self._deliver(self._error, chunk, own_pending, own_errors, True)
        return self._finish(own_pending, own_errors)

    def _filter_failed(
        self,
        compiled: _Compiled,
        pos: int,
        chunk: Chunk,
        exc: Exception,
        pending: list[Awaitable[None]],
        errors: list[ChunkRejected],
        in_error: bool,
    ) -> None:
        """Filter ``pos`` of ``compiled`` raised on ``chunk``: isolate the events that make it raise (see the
        module doc), send the others on through the route, and those to @ERROR or a dead-letter folder."""
        stats = self.stats
        stats.filter_errors += 1
        call = compiled.calls[pos]
        bad: list[Chunk] = []
        passed = 0
        budget = FILTER_ISOLATION_BUDGET
        cut = halves(chunk, entry_ends(chunk.entries)) if chunk.count > 1 else None
        todo = [] if cut is None else [cut[1], cut[0]]  # a stack: the left half is tried first
        if cut is None:
            bad.append(chunk)
        while todo:
            piece, ends = todo.pop()
            try:
                out = call(piece)
            except ChunkRejected as rej:  # its journal cannot take it now: as a sink refusing it
                errors.append(rej)
                continue
            except Exception:
                budget -= 1
                cut = halves(piece, ends) if budget > 0 else None
                if cut is None:
                    bad.append(piece)
                else:
                    todo += [cut[1], cut[0]]
                continue
            passed += piece.count
            self._after_filter(compiled, pos + 1, out, pending, errors, in_error)
        failed = bad[0] if len(bad) == 1 else _concat(bad)
        stats.filter_failed_events += failed.count
        f = compiled.filters[pos]
        name = getattr(f, "name", type(f).__name__)
        to_error = self._error is not None and not in_error
        folder = None
        if not to_error and self.dead_letter_dir is not None:
            folder = os.path.join(self.dead_letter_dir, _folder_name(compiled, name))
        if _rate_limited(stats.filter_errors):
            _log().error(
                "filter.failed",
                filter=name,
                tag=chunk.tag,
                label=compiled.label,
                route=compiled.index,
                error=f"{type(exc).__name__}: {exc}",
                events=failed.count,
                passed=passed,
                to_label=self._error if to_error else None,
                dead_letter=folder,
                count=stats.filter_errors,
            )
        if to_error:
            assert self._error is not None
            stats.to_error_label += 1
            self._deliver(self._error, failed, pending, errors, True)
        elif folder is not None:
            meta = {
                "reason": "filter_failed",
                "error": f"{type(exc).__name__}: {exc}"[:2000],
                "filter": name,
                "label": compiled.label,
                "route": compiled.index,
            }
            pending.append(self._filter_dead_letter(folder, name, failed, meta))
        else:
            stats.filter_dropped += failed.count

    def _after_filter(
        self,
        compiled: _Compiled,
        start: int,
        out: FilterResult,
        pending: list[Awaitable[None]],
        errors: list[ChunkRejected],
        in_error: bool,
    ) -> None:
        """What a filter returned, through the rest of its route from filter ``start``."""
        if isinstance(out, Held):
            out = _unwrap(out, pending)
        if out is None:
            return
        for piece in out if isinstance(out, list) else (out,):
            self._run(compiled, start, piece, pending, errors, in_error)

    async def _filter_dead_letter(
        self, folder: str, name: str, chunk: Chunk, meta: dict[str, object]
    ) -> None:
        """Write the events a filter failed on to its dead-letter folder before the client is acked; a
        failed write refuses the chunk for now (no ack: the client resends, nothing is lost)."""
        try:
            path = await asyncio.to_thread(write_dead_letter, folder, name, chunk, meta)
        except OSError as exc:
            _log().error("filter.dead_letter_failed", filter=name, tag=chunk.tag, error=str(exc))
            raise ChunkRejected(
                f"cannot write the dead letter of filter {name}: {exc}", permanent=False
            ) from None
        self.stats.filter_dead_lettered += chunk.count
        if _rate_limited(self.stats.filter_dead_lettered):
            _log().warning(
                "filter.dead_letter",
                filter=name,
                tag=chunk.tag,
                count=chunk.count,
                path=path,
                dead_lettered=self.stats.filter_dead_lettered,
            )

    def _note_unmatched(self, label: str, chunk: Chunk) -> None:
        self.stats.unmatched += 1
        count = self.stats.unmatched
        if _rate_limited(count):
            _log().warning("route.unmatched", tag=chunk.tag, label=label, count=count)

    # --- held pieces ------------------------------------------------------------------------------------

    def expire(self, now: float) -> Awaitable[None] | None:
        """Pass on what filters have held too long; the result resolves when the sinks have it."""
        return self._release("expire", now)

    def drain(self) -> Awaitable[None] | None:
        """Pass on everything filters hold (at shutdown, before the sinks stop), upstream filters first."""
        return self._release("drain", None)

    def _release(self, hook: str, now: float | None) -> Awaitable[None] | None:
        pending: list[Awaitable[None]] = []
        errors: list[ChunkRejected] = []
        for compiled, pos, f in self._held:
            in_error = compiled.label == self._error
            try:
                got = f.drain() if now is None else f.expire(now)
                released = _unwrap(got, pending) if isinstance(got, Held) else got
            except Exception as exc:
                self.stats.filter_errors += 1
                _log().error(
                    "filter.failed",
                    filter=f.name,
                    hook=hook,
                    label=compiled.label,
                    route=compiled.index,
                    error=f"{type(exc).__name__}: {exc}",
                    count=self.stats.filter_errors,
                )
                continue
            for chunk in released if isinstance(released, list) else (released,):
                if chunk is not None:
                    self._run(compiled, pos + 1, chunk, pending, errors, in_error)
        return self._finish(pending, errors)

    async def run_expiry(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        """Call :meth:`expire` every ``interval`` seconds until cancelled.

        The clients of expired pieces were acked long ago, so a rejection here can only be counted and
        logged (``held_rejected``).
        """
        while True:
            await asyncio.sleep(interval)
            try:
                result = self.expire(clock())
                if result is not None:
                    await result
            except ChunkRejected as exc:
                self.stats.held_rejected += 1
                _log().error("route.expired_rejected", reason=exc.reason, permanent=exc.permanent)


def _concat(pieces: list[Chunk]) -> Chunk:
    """Pieces of one chunk (same tag) as one chunk, entries in order."""
    first = pieces[0]
    return Chunk(
        first.tag, b"".join(p.entries for p in pieces), sum(p.count for p in pieces), first.received_ns
    )


def _folder_name(compiled: _Compiled, name: str) -> str:
    """A folder name of its own for one filter of one route: ``filter-root-route0-grep_0_``."""
    raw = f"filter-{compiled.label.lstrip('@').lower()}-route{compiled.index}-{name}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in raw)


def _unwrap(held: Held, pending: list[Awaitable[None]]) -> Chunk | list[Chunk] | None:
    """A Held's result; its commit joins ``pending`` and its callback waits there for the rest."""
    if held.commit is not None:
        pending.append(held.commit)
    if held.on_accepted is not None:
        pending.append(_OnAccepted(held.on_accepted))
    return held.result
