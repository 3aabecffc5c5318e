"""Acceptance: what one chunk's walk through the routes led to, and when the client may be acked.

A walk may reach several sinks (fan-out, ``continue``, relabel, the error label), a filter's journal
commit, and refusals along the way; the chunk counts as accepted only when every one of them has it
(:mod:`forwardd.sink`). An :class:`Outcome` collects them as the walk goes, and :meth:`Outcome.result`
turns them into what an entry returns: ``None`` when everything was accepted synchronously, the one
awaitable when there is exactly one, else one that waits for all and then fails if any did (a
rejection is permanent only when every failure is): a future joined by callbacks when every sink gave a
future (the disk buffer's submit), a coroutine otherwise. Callbacks of filters that hold events
(:attr:`forwardd.filters.base.Held.on_accepted`) run once all is in, or after a permanent refusal (the
client is acked anyway and will not resend), never after a temporary one.

The fast paths of the router build no Outcome: one is made only when a chunk goes more than one way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from forwardd.errors import ChunkRejected
from forwardd.filters.base import Held
from forwardd.model import Chunk

__all__ = ["Outcome", "combine"]


def combine(failures: list[ChunkRejected]) -> ChunkRejected:
    """One rejection for several: permanent only when every one is (else the client must resend)."""
    if len(failures) == 1:
        return failures[0]
    return ChunkRejected("; ".join(f.reason for f in failures), permanent=all(f.permanent for f in failures))


class Outcome:
    """The awaitables, refusals and after-acceptance callbacks of one chunk's walk (each list made only
    when something goes in it)."""

    __slots__ = ("callbacks", "refusals", "waits")

    def __init__(self) -> None:
        self.waits: list[Awaitable[None]] | None = None
        self.refusals: list[ChunkRejected] | None = None
        self.callbacks: list[Callable[[], None]] | None = None

    def wait(self, awaitable: Awaitable[None]) -> None:
        """Accepted only once ``awaitable`` resolves."""
        if self.waits is None:
            self.waits = [awaitable]
        else:
            self.waits.append(awaitable)

    def refuse(self, exc: ChunkRejected) -> None:
        if self.refusals is None:
            self.refusals = [exc]
        else:
            self.refusals.append(exc)

    def then(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once everything is accepted (or refused for good)."""
        if self.callbacks is None:
            self.callbacks = [callback]
        else:
            self.callbacks.append(callback)

    def unwrap(self, held: Held) -> Chunk | list[Chunk] | None:
        """A Held's result; its commit and its callback join this outcome."""
        if held.commit is not None:
            self.wait(held.commit)
        if held.on_accepted is not None:
            self.then(held.on_accepted)
        return held.result

    def result(self) -> Awaitable[None] | None:
        """What the entry returns (see the module doc); raises a synchronous refusal when nothing waits."""
        waits, refusals, callbacks = self.waits, self.refusals, self.callbacks
        if callbacks is not None:
            if waits is None and refusals is None:
                for cb in callbacks:
                    cb()
                return None
            return _gather_then(waits or [], refusals or [], callbacks)
        if waits is None:
            if refusals is not None:
                raise combine(refusals)
            return None
        if refusals is None and len(waits) == 1:
            return waits[0]
        if all(type(w) is asyncio.Future for w in waits):
            return _join(waits, refusals or [])  # type: ignore[arg-type]  # checked just above
        return _gather(waits, refusals or [])


def _join(waits: list[asyncio.Future[None]], refusals: list[ChunkRejected]) -> asyncio.Future[None]:
    """:func:`_gather` for sinks that all returned futures (the disk buffer's submit), without a task: a
    fan-out is taken for every request of a copy route, and a task with its steps (``ensure_future`` in
    the session included) cost more than the rest of the route. Resolves when the last future does, with
    the outcome :func:`_gather` gives: cancelled if a sink's future was, else the first bug, else the
    rejections combined, else success."""
    joined: asyncio.Future[None] = waits[0].get_loop().create_future()
    left = len(waits)

    def one_done(_: asyncio.Future[None]) -> None:
        nonlocal left
        left -= 1
        if left:
            return
        failures = list(refusals)
        bug: BaseException | None = None
        cancelled = False
        for w in waits:  # every exception is retrieved, even when the owner gave up on `joined`
            if w.cancelled():
                cancelled = True  # _gather raises the CancelledError when it meets it, before any bug
                continue
            exc = w.exception()
            if isinstance(exc, ChunkRejected):
                failures.append(exc)
            elif exc is not None and bug is None:
                bug = exc
        if joined.done():  # cancelled by its owner
            return
        if cancelled:
            joined.cancel()
        elif bug is not None:
            joined.set_exception(bug)
        elif failures:
            joined.set_exception(combine(failures))
        else:
            joined.set_result(None)

    for w in waits:
        w.add_done_callback(one_done)
    return joined


async def _gather_then(
    waits: list[Awaitable[None]], refusals: list[ChunkRejected], callbacks: list[Callable[[], None]]
) -> None:
    """:func:`_gather`, then the callbacks: when all was accepted, and also when the only refusals were
    permanent (the client is acked and will not resend: what a filter kept for a resend is of no use)."""
    try:
        await _gather(waits, refusals)
    except ChunkRejected as exc:
        if exc.permanent:
            for cb in callbacks:
                cb()
        raise
    for cb in callbacks:
        cb()


async def _gather(waits: list[Awaitable[None]], refusals: list[ChunkRejected]) -> None:
    """Wait for every sink, then fail if any did: a chunk is accepted only when all outputs have it."""
    failures = list(refusals)
    bug: Exception | None = None
    for i, awaitable in enumerate(waits):
        try:
            await awaitable
        except ChunkRejected as exc:
            failures.append(exc)
        except Exception as exc:  # a sink's bug: surface it, but only after the others settled
            bug = bug or exc
        except BaseException:
            for rest in waits[i + 1 :]:
                if asyncio.iscoroutine(rest):
                    rest.close()
            raise
    if bug is not None:
        raise bug
    if failures:
        raise combine(failures)
