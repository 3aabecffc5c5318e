"""A filter that raises costs the events that make it raise, not the chunk: finding them, and parking them.

The filter is run again on halves of the chunk it was given (its msgpack entries framed, not decoded),
recursively, so the good events go on through the route and the offending ones are isolated in
O(k log n) calls: at most ``FILTER_ISOLATION_BUDGET`` failing calls per chunk, on the event loop; past
it a failing piece counts as offending whole. Where those events go is the walk's decision (the error
label when there is one); without one they are written to the filter's own dead-letter folder
(``<dead_letter_dir>/filter-<label>-route<N>-<filter>/``) before the client's ack, since an ack means the
events are safe: a failed write is a temporary refusal, so the client resends. A ChunkRejected from a
filter (its journal cannot take the chunk now) is no bug: it is refused as a sink's refusal would be.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from forwardd.buffer import write_dead_letter
from forwardd.errors import ChunkRejected
from forwardd.filters.base import FilterResult
from forwardd.model import Chunk
from forwardd.pieces import entry_ends, halves
from forwardd.router.stats import RouterStats, log, rate_limited

__all__ = ["FILTER_ISOLATION_BUDGET", "dead_letter_folder", "isolate", "write_filter_dead_letter"]

#: Failing filter calls one chunk may cost while its offending events are isolated (on the event loop).
FILTER_ISOLATION_BUDGET = 64


def isolate(
    call: Callable[[Chunk], FilterResult],
    chunk: Chunk,
    passed: Callable[[FilterResult], None],
    refused: Callable[[ChunkRejected], None],
    budget: int = FILTER_ISOLATION_BUDGET,
) -> tuple[Chunk, int]:
    """Run ``call`` again on halves of ``chunk`` (on which it raised), in entry order.

    What it returns for a piece it takes goes to ``passed`` at once (the rest of the route runs before
    the next piece is tried); a piece it cannot take now goes to ``refused``. Returns the events it fails
    on, as one chunk, and how many events passed.
    """
    bad: list[Chunk] = []
    n_passed = 0
    cut = halves(chunk, entry_ends(chunk.entries)) if chunk.count > 1 else None
    todo = [] if cut is None else [cut[1], cut[0]]  # a stack: the left half is tried first
    if cut is None:
        bad.append(chunk)
    while todo:
        piece, ends = todo.pop()
        try:
            out = call(piece)
        except ChunkRejected as rej:  # its journal cannot take it now: as a sink refusing it
            refused(rej)
            continue
        except Exception:
            budget -= 1
            cut = halves(piece, ends) if budget > 0 else None
            if cut is None:
                bad.append(piece)
            else:
                todo += [cut[1], cut[0]]
            continue
        n_passed += piece.count
        passed(out)
    return (bad[0] if len(bad) == 1 else _concat(bad)), n_passed


def dead_letter_folder(base: str, label: str, route: int, name: str) -> str:
    """A folder of its own for one filter of one route: ``<base>/filter-root-route0-grep_0_``."""
    raw = f"filter-{label.lstrip('@').lower()}-route{route}-{name}"
    return os.path.join(base, "".join(c if c.isalnum() or c in "-_." else "_" for c in raw))


async def write_filter_dead_letter(
    folder: str, name: str, chunk: Chunk, meta: dict[str, object], stats: RouterStats
) -> None:
    """Write the events a filter failed on to its dead-letter folder before the client is acked; a
    failed write refuses the chunk for now (no ack: the client resends, nothing is lost)."""
    try:
        path = await asyncio.to_thread(write_dead_letter, folder, name, chunk, meta)
    except OSError as exc:
        log().error("filter.dead_letter_failed", filter=name, tag=chunk.tag, error=str(exc))
        raise ChunkRejected(
            f"cannot write the dead letter of filter {name}: {exc}", permanent=False
        ) from None
    stats.filter_dead_lettered += chunk.count
    if rate_limited(stats.filter_dead_lettered):
        log().warning(
            "filter.dead_letter",
            filter=name,
            tag=chunk.tag,
            count=chunk.count,
            path=path,
            dead_lettered=stats.filter_dead_lettered,
        )


def _concat(pieces: list[Chunk]) -> Chunk:
    """Pieces of one chunk (same tag) as one chunk, entries in order."""
    first = pieces[0]
    return Chunk(
        first.tag, b"".join(p.entries for p in pieces), sum(p.count for p in pieces), first.received_ns
    )
