"""The walk: one chunk through a route's filters, then its sinks, then the label it relabels to.

A filter that returns a different tag keeps its chunk on the same route (the chunk is not routed again
from the top, which could loop); one that returns a list of chunks sends each through the rest of the
route; one that returns a :class:`~forwardd.filters.base.Held` adds its commit and its callback to the
chunk's :class:`~forwardd.router.outcome.Outcome`. Failures:

* a filter raising costs the events that make it raise (:mod:`forwardd.router.isolation`): the others go
  on, those go to the error label (``@ERROR``) when there is one, else to the filter's dead-letter folder,
  else (no folder configured) they are dropped; counted and logged, rate-limited (``filter.failed``);
* a sink refusing permanently sends the chunk to the error label when there is one (the client is acked,
  as Fluentd does with ``@ERROR``), else the refusal reaches the session;
* a temporary refusal always reaches the session, so the client resends;
* failures inside the error label never go back to it (``in_error``): they are dropped or propagated.

A tag no route of a label matches is accepted and dropped, counted, and logged at counts 1, 2, 4, ... 256
and every 512 after (Fluentd's ``NoMatchMatch``).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable

from forwardd.errors import ChunkRejected
from forwardd.filters.base import FilterResult, Held
from forwardd.model import Chunk
from forwardd.router.isolation import dead_letter_folder, isolate, write_filter_dead_letter
from forwardd.router.outcome import Outcome
from forwardd.router.stats import RouterStats, log, rate_limited
from forwardd.router.table import CompiledRoute, RouteTable
from forwardd.sink import Ingest, Sink

__all__ = ["Walk"]


class Walk:
    """Carries chunks through a :class:`RouteTable`, counting in ``stats`` (see the module doc)."""

    def __init__(self, table: RouteTable, stats: RouterStats, dead_letter_dir: str | None) -> None:
        self.stats = stats
        self.error_label = table.error_label
        #: Where the events a filter fails on go when there is no error label (a folder per filter in it).
        self.dead_letter_dir = dead_letter_dir
        self._matching = {label: table.matching(label) for label in table.routes}

    def deliver(self, label: str, chunk: Chunk, outcome: Outcome, in_error: bool) -> None:
        """``chunk`` into ``label``: every route of it that takes the chunk's tag."""
        matched = self._matching[label](chunk.tag)
        if not matched:
            self.note_unmatched(label, chunk)
            return
        self.stats.routed += 1
        for compiled in matched:
            self.run(compiled, 0, chunk, outcome, in_error)

    def run(
        self, compiled: CompiledRoute, start: int, chunk: Chunk, outcome: Outcome, in_error: bool
    ) -> None:
        """Apply ``compiled``'s filters from position ``start``, then its outputs and relabel."""
        calls = compiled.calls
        for pos in range(start, len(calls)):
            try:
                out = calls[pos](chunk)
            except ChunkRejected as exc:  # cannot take it now (a filter's journal): as a sink refusing it
                outcome.refuse(exc)
                return
            except Exception as exc:  # a filter's bug must not take the session down: isolate it
                self.filter_failed(compiled, pos, chunk, exc, outcome, in_error)
                return
            if type(out) is not Chunk:  # a list, a Held, or nothing left
                self.go_on(compiled, pos + 1, out, outcome, in_error)
                return
            chunk = out
        guard = self.error_label is not None and not in_error
        for name, sink in compiled.sinks:
            try:
                result = sink.submit(chunk)
            except ChunkRejected as exc:
                if exc.permanent and guard:
                    self.to_error_label(name, chunk, exc, outcome)
                else:
                    outcome.refuse(exc)
                continue
            if result is not None:
                outcome.wait(self.guard(result, name, chunk) if guard else result)
        if compiled.relabel is not None:
            self.deliver(compiled.relabel, chunk, outcome, in_error)

    def go_on(
        self, compiled: CompiledRoute, start: int, out: FilterResult, outcome: Outcome, in_error: bool
    ) -> None:
        """What a filter returned, through the rest of its route from filter ``start``."""
        if isinstance(out, Held):
            out = outcome.unwrap(out)
        if out is None:
            return
        for piece in out if isinstance(out, list) else (out,):
            self.run(compiled, start, piece, outcome, in_error)

    def go_on_alone(
        self, compiled: CompiledRoute, start: int, out: FilterResult, in_error: bool
    ) -> Awaitable[None] | None:
        """:meth:`go_on` for a chunk that went one way until now (a fast path that met a list or a Held)."""
        outcome = Outcome()
        self.go_on(compiled, start, out, outcome, in_error)
        return outcome.result()

    # --- sinks and the error label ----------------------------------------------------------------------

    def submitter(self, named: tuple[str, Sink], in_error: bool) -> Ingest:
        """A sink's submit for a route that goes nowhere else: the bare method when there is no error
        label to redirect a permanent refusal to, else that method guarded."""
        name, sink = named
        submit = sink.submit
        if self.error_label is None or in_error:
            return submit  # refusals go straight to the session: nothing to redirect, nothing to wrap
        guard = self.guard
        redirect = self.redirect

        def guarded(chunk: Chunk) -> Awaitable[None] | None:
            try:
                result = submit(chunk)
            except ChunkRejected as exc:
                if not exc.permanent:
                    raise
                return redirect(name, chunk, exc)
            if result is None:
                return None
            return guard(result, name, chunk)

        return guarded

    def guard(self, awaitable: Awaitable[None], name: str, chunk: Chunk) -> Awaitable[None]:
        """Follow a sink's result; on a permanent refusal hand the chunk to the error label instead.

        A future (the disk buffer's submit) is followed by a callback, with the outcome of
        :meth:`guarded_wait`: with an error label configured, every chunk of every route takes this path,
        and the coroutine meant a task per chunk (the session wraps it)."""
        if type(awaitable) is not asyncio.Future:
            return self.guarded_wait(awaitable, name, chunk)
        fut: asyncio.Future[None] = awaitable
        out: asyncio.Future[None] = fut.get_loop().create_future()

        def done(_: asyncio.Future[None]) -> None:
            exc = None if fut.cancelled() else fut.exception()
            if not isinstance(exc, ChunkRejected) or not exc.permanent or out.done():
                _copy_outcome(out, fut)  # accepted, failed, cancelled, or given up by its owner
                return
            try:
                redirected = self.redirect(name, chunk, exc)
            except Exception as refused:  # the error label refused (or failed): as the coroutine raises
                out.set_exception(refused)
                return
            if redirected is None:
                out.set_result(None)
            else:
                inner = asyncio.ensure_future(redirected)  # a future as it is, else a task
                inner.add_done_callback(functools.partial(_copy_outcome, out))

        fut.add_done_callback(done)
        return out

    async def guarded_wait(self, awaitable: Awaitable[None], name: str, chunk: Chunk) -> None:
        """Await a sink; on a permanent refusal hand the chunk to the error label instead."""
        try:
            await awaitable
        except ChunkRejected as exc:
            if not exc.permanent:
                raise
            redirected = self.redirect(name, chunk, exc)
            if redirected is not None:
                await redirected

    def to_error_label(self, name: str, chunk: Chunk, exc: ChunkRejected, outcome: Outcome) -> None:
        """Send a chunk sink ``name`` refused for good to the error label (which exists), as part of
        ``outcome``."""
        assert self.error_label is not None
        self.stats.to_error_label += 1
        log().warning(
            "sink.rejected", output=name, tag=chunk.tag, reason=exc.reason, to_label=self.error_label
        )
        self.deliver(self.error_label, chunk, outcome, True)

    def redirect(self, name: str, chunk: Chunk, exc: ChunkRejected) -> Awaitable[None] | None:
        """:meth:`to_error_label` on its own: the error label's result (or its refusal, raised)."""
        outcome = Outcome()
        self.to_error_label(name, chunk, exc, outcome)
        return outcome.result()

    def note_unmatched(self, label: str, chunk: Chunk) -> None:
        self.stats.unmatched += 1
        count = self.stats.unmatched
        if rate_limited(count):
            log().warning("route.unmatched", tag=chunk.tag, label=label, count=count)

    # --- a filter that raised ---------------------------------------------------------------------------

    def filter_failed(
        self,
        compiled: CompiledRoute,
        pos: int,
        chunk: Chunk,
        exc: Exception,
        outcome: Outcome,
        in_error: bool,
    ) -> None:
        """Filter ``pos`` of ``compiled`` raised on ``chunk``: the events that make it raise go to the error
        label or a dead-letter folder, the others on through the route."""
        stats = self.stats
        stats.filter_errors += 1

        def passed(out: FilterResult) -> None:
            self.go_on(compiled, pos + 1, out, outcome, in_error)

        failed, n_passed = isolate(compiled.calls[pos], chunk, passed, outcome.refuse)
        stats.filter_failed_events += failed.count
        f = compiled.filters[pos]
        name = getattr(f, "name", type(f).__name__)
        error = self.error_label
        to_error = error is not None and not in_error
        folder = None
        if not to_error and self.dead_letter_dir is not None:
            folder = dead_letter_folder(self.dead_letter_dir, compiled.label, compiled.index, name)
        if rate_limited(stats.filter_errors):
            log().error(
                "filter.failed",
                filter=name,
                tag=chunk.tag,
                label=compiled.label,
                route=compiled.index,
                error=f"{type(exc).__name__}: {exc}",
                events=failed.count,
                passed=n_passed,
                to_label=error if to_error else None,
                dead_letter=folder,
                count=stats.filter_errors,
            )
        if to_error:
            assert error is not None
            stats.to_error_label += 1
            self.deliver(error, failed, outcome, True)
        elif folder is not None:
            meta: dict[str, object] = {
                "reason": "filter_failed",
                "error": f"{type(exc).__name__}: {exc}"[:2000],
                "filter": name,
                "label": compiled.label,
                "route": compiled.index,
            }
            outcome.wait(write_filter_dead_letter(folder, name, failed, meta, stats))
        else:
            stats.filter_dropped += failed.count


def _copy_outcome(out: asyncio.Future[None], src: asyncio.Future[None]) -> None:
    """Give ``out`` the outcome of ``src`` (done): its cancellation, exception (always retrieved) or result;
    nothing if ``out`` was given up by its owner meanwhile."""
    exc = None if src.cancelled() else src.exception()
    if out.done():
        return
    if src.cancelled():
        out.cancel()
    elif exc is not None:
        out.set_exception(exc)
    else:
        out.set_result(None)
