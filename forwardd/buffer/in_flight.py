"""The delivery loop for an output that takes concurrent writes
(:attr:`~forwardd.outputs.base.Output.concurrent_writes`: the Kafka output, the HTTP and forward outputs'
``in_flight``, the file output's big writes): it gets the next works while the earlier ones still wait for
their destination. Up to that many, and :data:`IN_FLIGHT_BYTES` of entries, are in flight, each delivered
(retried, isolated) on its own by the :class:`~forwardd.buffer.isolation.Deliverer`, and their chunks leave
the queue oldest work first.

The works themselves (taken, begun or not, not yet marked) are the sink's
(:mod:`forwardd.buffer.delivery`): a crash of this loop, a stop or a reload's retire finds them there;
what is begun is in :attr:`InFlight.started`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from forwardd.buffer.batching import BATCH_MAX_BYTES, BatchTaker
from forwardd.buffer.isolation import Deliverer, Work

__all__ = ["IN_FLIGHT_BYTES", "UNMARKED_BYTES", "UNMARKED_PER_SLOT", "InFlight"]

#: Entries in writes in flight at once, for an output that takes concurrent writes (at least one write goes).
IN_FLIGHT_BYTES = 2 * BATCH_MAX_BYTES
#: Works begun and not yet marked delivered (running, or done and waiting behind an older one), per write
#: the output takes at once, and their entries: how much may pile up behind one slow write.
UNMARKED_PER_SLOT = 4
UNMARKED_BYTES = 4 * IN_FLIGHT_BYTES


class InFlight:
    """Begins the delivery of the sink's ``works`` (a deque it shares, oldest first) up to ``depth`` at once
    (the output's ``concurrent_writes``), and hands each to ``finish`` (which takes it off the head) once
    it and every older one is done."""

    def __init__(
        self,
        deliverer: Deliverer,
        taker: BatchTaker,
        works: deque[Work],
        finish: Callable[[Work], None],
    ) -> None:
        self._deliverer = deliverer
        self._taker = taker
        self._works = works
        self._finish = finish
        #: The delivery of each work begun, in works order.
        self.started: dict[Work, asyncio.Task[None]] = {}

    async def run(self, depth: int, keep: Callable[[], bool] | None = None) -> None:
        """The works of the next batches are begun while the oldest is still in flight, and marked
        delivered oldest first. When stopping, nothing more is begun and what is in flight is marked as it
        finishes. Works begun before a crash of this loop go on; the loop picks them up again when it
        restarts. With ``keep``: returns when, nothing being in flight, it took a batch that ``keep`` says
        is not for concurrent writes (the batch stays in the works, for the caller to write)."""
        deliverer, taker = self._deliverer, self._taker
        works, started = self._works, self.started
        while True:
            self._begin_ready(depth)
            if not works:
                if deliverer.stopping:
                    return
                await taker.gather()
                works.extend(taker.take_works())
                if keep is not None and not started and not keep():
                    return
                continue
            head = works[0]
            task = started.get(head)
            if task is None:
                return  # stopping: the rest stays queued and is delivered after the restart
            if not task.done():
                await self._head_or_more(task, depth)
                if not task.done():
                    continue  # more is committed: begin it while the head is in flight
            del started[head]
            task.result()  # what deliver() raised is a crash of this loop, for the head work
            if head.pieces:
                return  # stopping in the middle of it
            self._finish(head)

    async def cancel(self) -> None:
        """End the writes still in flight; their works keep the pieces not yet confirmed."""
        in_flight = list(self.started.values())
        for started in in_flight:
            started.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
        self.started.clear()

    def _begin_ready(self, depth: int) -> None:
        """Begin the delivery of works not begun yet, taking what is committed now into new works (no
        waiting, no holding to grow: a write is in flight), while fewer than ``depth`` writes and
        IN_FLIGHT_BYTES of entries are still running. A write that is done but not the oldest holds no
        slot (it only waits to be marked, in order), or one slow write would hold back all the others;
        what may wait so behind a slow one is bounded by UNMARKED_PER_SLOT and UNMARKED_BYTES."""
        deliverer, taker = self._deliverer, self._taker
        works, started = self._works, self.started
        running = [w for w, task in started.items() if not task.done()]
        in_flight = sum(len(w.chunk.entries) for w in running)
        unmarked = sum(len(w.chunk.entries) for w in started)
        n_running = len(running)
        while not deliverer.stopping:
            work = next((w for w in works if w not in started), None)
            if work is None:
                if not started:
                    return  # nothing in flight: the loop waits for a batch as the plain loop does
                if not taker.gather_ready():
                    return
                works.extend(taker.take_works())
                continue
            size = len(work.chunk.entries)
            if started and (
                n_running >= depth
                or in_flight + size > IN_FLIGHT_BYTES
                or len(started) >= depth * UNMARKED_PER_SLOT
                or unmarked + size > UNMARKED_BYTES
            ):
                return
            started[work] = asyncio.ensure_future(deliverer.deliver(work))
            n_running += 1
            in_flight += size
            unmarked += size

    async def _head_or_more(self, head: asyncio.Task[None], depth: int) -> None:
        """Wait until the oldest work in flight is done, or another write ends (its slot may take the next
        work), or, when there is room for another, until a chunk is committed (the taker keeps it)."""
        if self._deliverer.stopping:
            await asyncio.wait((head,))
            return
        started = self.started
        running = {task for task in started.values() if not task.done()}
        room = (
            len(running) < depth
            and len(started) < depth * UNMARKED_PER_SLOT
            and all(w in started for w in self._works)
        )
        if not room:
            await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            return
        await self._taker.gather_or_wait(running)
        await self._taker.coalesce()
