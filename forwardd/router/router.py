"""Tag routing: which filters and outputs a chunk goes through, decided once per tag and cached.

The router puts together the parts of routing, each in its own module: the checked table of labels and
routes (:mod:`.table`), the shapes a per-tag decision compiles to (:mod:`.decisions`), the walk of a
chunk through filters, sinks and relabels (:mod:`.walk`, with :mod:`.isolation` for a filter that raises),
the acceptance bookkeeping (:mod:`.outcome`), and the chunks kept while a reload holds the routes
(:mod:`.pile`). What it adds is the entry a session hands chunks to, its per-tag cache, the switch of a
reload, and the release of what stateful filters hold.

Why a per-tag decision: a stream is a handful of tags, and most of them take the simplest shape. The
decision for a (label, tag) is compiled into one callable and kept in a plain dict: the common case (one
route, no filters, one sink) is the sink's ``submit`` behind a counter, so the hot path costs one dict
lookup and one extra call; one route with filters into one sink runs them with no lists (the *linear*
case) until a filter fails, splits or holds; anything else is the general walk.

Acceptance follows the :mod:`forwardd.sink` contract: an entry returns ``None`` when every sink accepted
synchronously, else one awaitable that resolves when all did: the sink's own when there is one and no
error label to redirect to, else a coroutine (await it once, or close it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

from forwardd.errors import ChunkRejected
from forwardd.filters.base import Held, StatefulFilter
from forwardd.model import Chunk
from forwardd.router.decisions import decision, make_gone
from forwardd.router.outcome import Outcome
from forwardd.router.pile import MAX_PARKED_BYTES, MAX_PARKED_CHUNKS, Pile
from forwardd.router.stats import RouterStats, log
from forwardd.router.table import (
    DEFAULT_CACHE_SIZE,
    ERROR_LABEL,
    ROOT_LABEL,
    Route,
    RouteTable,
    RoutingError,
)
from forwardd.router.walk import Walk
from forwardd.sink import Ingest, Sink

__all__ = ["Router"]


class Router:
    """Routes chunks from sources' entries through filters to sinks; see the module doc."""

    def __init__(
        self,
        labels: Mapping[str, Iterable[Route]],
        sinks: Mapping[str, Sink],
        error_label: str = ERROR_LABEL,
        root_label: str = ROOT_LABEL,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        dead_letter_dir: str | None = None,
        max_parked_chunks: int = MAX_PARKED_CHUNKS,
        max_parked_bytes: int = MAX_PARKED_BYTES,
    ) -> None:
        self.stats = RouterStats()
        self.table = RouteTable(
            labels, sinks, root_label=root_label, error_label=error_label, cache_size=cache_size
        )
        self.root_label = root_label
        self._error_name = error_label
        self._dead_letter_dir = dead_letter_dir
        self._walk = Walk(self.table, self.stats, dead_letter_dir)
        #: Per label: tag -> the compiled decision for it (see the module doc). Each label keeps its dict
        #: for the router's life (a reload clears it): the entries handed to sessions hold it.
        self._decisions: dict[str, dict[str, Ingest]] = {label: {} for label in self.table.routes}
        self._deciders: dict[str, Callable[[str], Ingest]] = {
            label: self._decide_fn(label) for label in self.table.routes
        }
        #: The chunks that come during a reload (see :meth:`hold`), and the gate they shut when too many.
        self._pile = Pile(
            self._handle_for, self.stats, max_chunks=max_parked_chunks, max_bytes=max_parked_bytes
        )
        self.gate = self._pile.gate

    @property
    def labels(self) -> tuple[str, ...]:
        return self.table.labels

    @property
    def error_label(self) -> str | None:
        """The error label's name, or None when the configuration has none."""
        return self.table.error_label

    @property
    def dead_letter_dir(self) -> str | None:
        """Where the events a filter fails on go when there is no error label (a folder per filter)."""
        return self._walk.dead_letter_dir

    @property
    def stateful(self) -> tuple[StatefulFilter, ...]:
        """The filters that hold events across calls, upstream first: the daemon starts, stops and reports
        them (each appears once: the table refuses a second place)."""
        return tuple(f for _, _, f in self.table.stateful)

    def entry(self, label: str | None = None) -> Ingest:
        """The callable a session hands each chunk to, for sources of ``label`` (default: the root).

        It stays valid across :meth:`replace`: a hit is one dict lookup in the label's cache, which a
        replace empties, and a miss asks the current table.
        """
        name = self.root_label if label is None else label
        if name not in self._decisions:
            raise RoutingError(f"no label {name!r}; known: {sorted(self._decisions)}")
        cache = self._decisions[name]
        miss = self._miss

        def ingest(chunk: Chunk) -> Awaitable[None] | None:
            try:
                handle = cache[chunk.tag]
            except KeyError:
                handle = miss(name, chunk.tag)
            return handle(chunk)

        return ingest

    def _miss(self, label: str, tag: str) -> Ingest:
        if self._pile.active:
            return self._pile.park(label)
        decide = self._deciders.get(label)
        if decide is None:
            return make_gone(label)
        return decide(tag)

    # --- reload -----------------------------------------------------------------------------------------

    def hold(self) -> None:
        """Until :meth:`replace`, keep every chunk that comes (its session waits for its ack) instead of
        routing it: what a reload does meanwhile (draining and restarting stateful filters) must see no
        chunk. Chunks already routed finish on the old table; their acks follow their sinks as always.
        A replay of an earlier reload's pile still under way stops until the next :meth:`replace`."""
        self._pile.hold()
        for cache in self._decisions.values():
            cache.clear()

    def replace(self, labels: Mapping[str, Iterable[Route]], sinks: Mapping[str, Sink]) -> RouteTable:
        """Route every chunk from now on by a new table (a reload); the old one is returned.

        Synchronous, on the loop, between two chunks: a chunk is routed wholly by the old table or wholly
        by the new one. Chunks kept since :meth:`hold` are routed by the new one, in the order they came,
        in slices of at most :data:`.pile.REPLAY_SLICE` seconds of the loop (a pile left by thousands of
        connections, routed at once, would keep every connection waiting for as long); chunks that come
        meanwhile join the end of the pile, so each connection's chunks still go in the order they came.
        :meth:`replayed` waits for the end. Raises :class:`RoutingError` (and changes nothing) when the new
        table cannot work.
        """
        table = RouteTable(
            labels,
            sinks,
            root_label=self.table.root_label,
            error_label=self._error_name,
            cache_size=self.table.cache_size,
        )
        old = self.table
        self.table = table
        self._walk = Walk(table, self.stats, self._dead_letter_dir)
        for label in table.routes:
            self._decisions.setdefault(label, {})
        for cache in self._decisions.values():
            cache.clear()
        self._deciders = {label: self._decide_fn(label) for label in table.routes}
        self._pile.replay()
        return old

    async def replayed(self) -> None:
        """Wait until the chunks kept during a reload have all been routed (not necessarily accepted)."""
        await self._pile.replayed()

    @property
    def parked(self) -> int:
        """Chunks kept during a reload and not routed yet."""
        return self._pile.parked

    # --- per-tag decisions ------------------------------------------------------------------------------

    def _decide_fn(self, label: str) -> Callable[[str], Ingest]:
        """The cache-miss path of ``label``'s entries: decide for a tag and remember it.

        The cache is a plain dict, evicting the oldest decision when full (Fluentd's MatchCache does the
        same): a hit then costs one dict lookup, where an LRU's bookkeeping would double the hot path.
        """
        cache = self._decisions[label]
        size = self.table.cache_size
        handle_for = self._handle_for

        def decide(tag: str) -> Ingest:
            handle = handle_for(label, tag)
            if len(cache) >= size:
                del cache[next(iter(cache))]
            cache[tag] = handle
            return handle

        return decide

    def _handle_for(self, label: str, tag: str) -> Ingest:
        """The decision for ``tag`` in ``label`` by the current table, not remembered."""
        return decision(self.table, self._walk, self.stats, label, tag)

    # --- what stateful filters hold ---------------------------------------------------------------------

    def expire(self, now: float) -> Awaitable[None] | None:
        """Pass on what filters have held too long; the result resolves when the sinks have it."""
        return self._release("expire", now)

    def drain(self) -> Awaitable[None] | None:
        """Pass on everything filters hold (at shutdown, before the sinks stop), upstream filters first."""
        return self._release("drain", None)

    def drain_filters(
        self, filters: Iterable[StatefulFilter], *, keep: bool = True
    ) -> Awaitable[None] | None:
        """Pass on everything these filters hold, through the rest of their routes in the current table
        (a reload removing or changing them, between :meth:`hold` and :meth:`replace`). ``keep``: as
        :meth:`StatefulFilter.drain` says (False: what their journals keep comes out too)."""
        return self._release("drain", None, {id(f) for f in filters}, keep)

    def _release(
        self, hook: str, now: float | None, only: set[int] | None = None, keep: bool = True
    ) -> Awaitable[None] | None:
        if now is not None and self._pile.active:
            return None  # a reload is switching stateful filters: the next call expires what is due
        outcome = Outcome()
        walk = self._walk
        error_label = self.table.error_label
        for compiled, pos, f in self.table.stateful:
            if only is not None and id(f) not in only:
                continue
            try:
                released = f.drain(keep=keep) if now is None else f.expire(now)
                chunks = outcome.unwrap(released) if isinstance(released, Held) else released
            except Exception as exc:
                self.stats.filter_errors += 1
                log().error(
                    "filter.failed",
                    filter=f.name,
                    hook=hook,
                    label=compiled.label,
                    route=compiled.index,
                    error=f"{type(exc).__name__}: {exc}",
                    count=self.stats.filter_errors,
                )
                continue
            walk.go_on(compiled, pos + 1, chunks, outcome, compiled.label == error_label)
        return outcome.result()

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
                log().error("route.expired_rejected", reason=exc.reason, permanent=exc.permanent)
