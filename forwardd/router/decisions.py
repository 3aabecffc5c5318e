"""The shapes a per-tag decision compiles to (see :mod:`.router`), fastest first.

Each is a closure over what it needs, built once per (label, tag) and called for every chunk of that tag,
so the common shapes do the least per chunk: *single* (one route, no filters, one sink) is a counter and
the sink's submit; *linear* (one route with filters into one sink) runs the filters with no lists until
one fails, splits or holds; *general* walks every matched route with an :class:`~.outcome.Outcome`. Apart
from the router, which is about when to decide (its cache, a reload's switch): these are what a decision
does with each chunk.
"""

from __future__ import annotations

from collections.abc import Awaitable

from forwardd.errors import ChunkRejected
from forwardd.model import Chunk
from forwardd.router.outcome import Outcome
from forwardd.router.stats import RouterStats
from forwardd.router.table import CompiledRoute, RouteTable
from forwardd.router.walk import Walk
from forwardd.sink import Ingest, Sink

__all__ = ["decision", "make_general", "make_gone", "make_linear", "make_single", "make_unmatched"]


def decision(table: RouteTable, walk: Walk, stats: RouterStats, label: str, tag: str) -> Ingest:
    """The decision for ``tag`` in ``label`` by ``table``."""
    if label not in table.routes:
        return make_gone(label)
    matched = table.matching(label)(tag)
    in_error = label == table.error_label
    if not matched:
        return make_unmatched(walk, label)
    if len(matched) == 1 and matched[0].relabel is None and len(matched[0].sinks) == 1:
        if matched[0].filters:
            return make_linear(stats, walk, matched[0], in_error)
        return make_single(stats, walk, matched[0].sinks[0], in_error)
    return make_general(stats, walk, matched, in_error)


def make_gone(label: str) -> Ingest:
    """A label a reload removed, asked by a session of a source that is draining: refused for now
    (no ack, the client resends to the source that replaced it)."""

    def gone(chunk: Chunk) -> None:
        raise ChunkRejected(f"label {label} was removed by a reload", permanent=False)

    return gone


def make_unmatched(walk: Walk, label: str) -> Ingest:
    """No route matches: accepted and dropped, counted and logged (rate-limited) by the walk."""
    note = walk.note_unmatched

    def unmatched(chunk: Chunk) -> None:
        note(label, chunk)

    return unmatched


def make_single(stats: RouterStats, walk: Walk, named: tuple[str, Sink], in_error: bool) -> Ingest:
    """One route, no filters, one sink: the hot path, kept to a counter and the sink's submit."""
    submit = walk.submitter(named, in_error)

    def single(chunk: Chunk) -> Awaitable[None] | None:
        stats.routed += 1
        return submit(chunk)

    return single


def make_linear(stats: RouterStats, walk: Walk, compiled: CompiledRoute, in_error: bool) -> Ingest:
    """One route with filters into one sink (a docker stream with a partial-line joiner): no lists
    unless a filter fails, splits the chunk or holds, when the general walk takes over from there."""
    calls = compiled.calls
    submit = walk.submitter(compiled.sinks[0], in_error)

    def linear(chunk: Chunk) -> Awaitable[None] | None:
        stats.routed += 1
        for pos, call in enumerate(calls):
            try:
                out = call(chunk)
            except ChunkRejected:
                raise  # a filter that cannot take the chunk now (its journal): as a sink refusing it
            except Exception as exc:
                outcome = Outcome()
                walk.filter_failed(compiled, pos, chunk, exc, outcome, in_error)
                return outcome.result()
            if out is None:
                return None
            if type(out) is not Chunk:  # a list, or a Held
                return walk.go_on_alone(compiled, pos + 1, out, in_error)
            chunk = out
        return submit(chunk)

    return linear


def make_general(
    stats: RouterStats, walk: Walk, matched: tuple[CompiledRoute, ...], in_error: bool
) -> Ingest:
    """Anything else (several routes or sinks, a relabel): every matched route walked in turn."""
    run = walk.run

    def general(chunk: Chunk) -> Awaitable[None] | None:
        stats.routed += 1
        outcome = Outcome()
        for compiled in matched:
            run(compiled, 0, chunk, outcome, in_error)
        return outcome.result()

    return general
