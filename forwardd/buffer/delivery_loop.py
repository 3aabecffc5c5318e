"""The loop and its supervisor: the part of :class:`forwardd.buffer.delivery.BufferedSink` that runs (a
mixin of it, so that the hot path, one call per delivered batch, costs no indirection).

The delivery task itself cannot die silently: an exception escaping the loop (a bug here, in a queue, in a
log processor) is logged as ``delivery.loop_crashed`` with its traceback, counted (``loop_crashes``), and the
loop starts again after a short back-off with the batch it was delivering, whose chunks it still holds
(a disk queue does not hand a taken chunk out twice in one process, so the loop keeps them; after a
process restart they are delivered again from the ledger). A batch that crashes the loop
``CRASHES_PER_BATCH`` times is parked in the dead-letter folder so the rest of the queue moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable

import structlog

from forwardd.buffer.base import ChunkQueue
from forwardd.buffer.batching import BatchTaker
from forwardd.buffer.dead_letter import DeadLetters, describe
from forwardd.buffer.in_flight import InFlight
from forwardd.buffer.isolation import Deliverer, Work
from forwardd.buffer.unsynced import Syncer, Unsynced
from forwardd.model import Chunk
from forwardd.ops.counters import LatencyHistogram, TagCounts
from forwardd.outputs.base import Output

__all__ = ["CRASHES_PER_BATCH", "CRASH_DELAY", "CRASH_DELAY_MAX", "DeliveryLoop"]

log = structlog.get_logger("forwardd.delivery")

#: The restart back-off of a crashed delivery loop, and the crashes one batch may cause before it is parked.
CRASH_DELAY = 0.1
CRASH_DELAY_MAX = 5.0
CRASHES_PER_BATCH = 3


class DeliveryLoop:
    """The delivery loop of a sink and the supervisor that restarts it after a crash (a mixin of
    :class:`forwardd.buffer.delivery.BufferedSink`, which sets every attribute below in its ``__init__``)."""

    name: str
    output: Output
    queue: ChunkQueue
    restarting: bool
    delivery_latency: LatencyHistogram
    tag_events: TagCounts
    _clock: Callable[[], float]
    _sleep: Callable[[float], Awaitable[None]]
    _dead: DeadLetters
    _deliverer: Deliverer
    _latencies: deque[int]
    _crashes: int
    _works: deque[Work]
    _unsynced: Unsynced
    _syncer: Syncer
    _taker: BatchTaker
    _in_flight: InFlight

    async def _supervise(self) -> None:
        """Run the loop; if it crashes, say so, count it, and run it again (see the module doc)."""
        delay = CRASH_DELAY
        last_crash = -1e18
        while True:
            try:
                await self._run()
                return
            except (asyncio.CancelledError, GeneratorExit, KeyboardInterrupt, SystemExit):
                raise  # GeneratorExit: the task is being closed (a loop torn down); it must not live on
            except BaseException as exc:  # an output may raise anything; the loop must outlive it
                self._deliverer.settle_idle()
                self._crashes += 1
                now = self._clock()
                if now - last_crash > 60.0:
                    delay = CRASH_DELAY
                last_crash = now
                work = self._works[0] if self._works else None
                with contextlib.suppress(Exception):
                    log.error(
                        "delivery.loop_crashed",
                        output=self.name,
                        error=describe(exc),
                        crashes=self._crashes,
                        tag=work.chunk.tag if work is not None else None,
                        restart_in=delay,
                        exc_info=exc,
                    )
                if self._deliverer.stopping:
                    return
                if work is not None:
                    work.crashes += 1
                    if work.crashes >= CRASHES_PER_BATCH:
                        try:
                            await self._park(work, exc)
                            delay = CRASH_DELAY
                            continue  # the culprit is out of the way: go on at once
                        except Exception as park_exc:
                            with contextlib.suppress(Exception):
                                log.error("delivery.park_failed", output=self.name, error=describe(park_exc))
                self.restarting = True
                try:
                    await self._sleep(delay)
                finally:
                    self.restarting = False
                delay = min(delay * 2, CRASH_DELAY_MAX)

    async def _run(self) -> None:
        output = self.output
        deliverer, taker = self._deliverer, self._taker
        if output.prepares_ahead and output.concurrent_writes == 1:
            output.peek_next = self._peek_next
        while not deliverer.stopping:
            if not self._works:
                await taker.gather()
                self._works.extend(taker.take_works())
            if self._in_flight.started or self._concurrent():
                # Concurrently (for an output with concurrent_min_bytes, until the loop takes a small
                # batch with nothing in flight; for the others, for good).
                await self._in_flight.run(output.concurrent_writes, self._concurrent)
                continue
            works = self._works
            while works:
                if deliverer.stopping:
                    return  # the rest stays queued and is delivered after the restart
                work = works[0]
                await deliverer.deliver(work)
                if work.pieces:
                    return  # stopping in the middle of it
                self._finish(work)
                unsynced = self._unsynced
                if (
                    unsynced
                    and unsynced.due(self._clock(), self.queue.full)
                    and not await self._syncer.flush()
                ):
                    return  # stopping: what is not synced stays queued

    def _concurrent(self) -> bool:
        """Whether the works now queued go concurrently: the output takes concurrent writes, and one of
        them (a write: one per tag) holds at least its
        :attr:`~forwardd.outputs.base.Output.concurrent_min_bytes`. Not the batch's total: 16 docker
        clients held 100 ms make a batch of ~300 KB in 16 writes of ~20 KB, which cost more concurrently
        than one after the other."""
        output = self.output
        if output.concurrent_writes <= 1:
            return False
        need = output.concurrent_min_bytes
        return any(len(w.chunk.entries) >= need for w in self._works)

    def _peek_next(self) -> Chunk | None:
        """The output's :attr:`~forwardd.outputs.base.Output.peek_next`: the chunk of the work after the
        head one, taking the next batch first when a whole one is committed (:meth:`BatchTaker.take_ahead`).
        What is taken joins ``_works`` at once, so a crash, a stop or a retire finds it there."""
        works = self._works
        if self._deliverer.stopping or not works:
            return None
        if len(works) == 1:
            works.extend(self._taker.take_ahead())
        return works[1].chunk if len(works) > 1 else None

    def _finish(self, work: Work) -> None:
        """``work`` (the head of self._works) has no piece left: its chunks leave the queue, or wait for
        the output's sync when it defers it."""
        if self.output.defers_sync:
            self._syncer.add(work, self._clock())
        else:
            self._record(work)
        self._works.popleft()

    def _record(self, work: Work) -> None:
        """``work`` is delivered for good: its chunks leave the queue, and it counts."""
        for taken in work.takens:
            self.queue.mark_delivered(taken)
        latency = time.time_ns() - work.chunk.received_ns
        self._latencies.append(latency)
        self.delivery_latency.observe(latency / 1e9)
        self.tag_events.add(work.chunk.tag, work.chunk.count)
        self._deliverer.progress.set()

    async def _park(self, work: Work, exc: BaseException) -> None:
        """The batch crashed the loop again and again: its pieces go to the dead-letter folder as they are
        (no @ERROR route, no isolation: either may be what crashes), so the rest of the queue moves."""
        meta: dict[str, object] = {"reason": "loop_crashed", "error": describe(exc), "attempts": work.crashes}
        for piece in list(work.pieces):
            await self._dead.park(piece.chunk, meta)
            work.pieces.popleft()
        for taken in work.takens:
            self.queue.mark_delivered(taken)
        self._works.popleft()
        self._in_flight.started.pop(work, None)
        self._deliverer.progress.set()
        log.error("delivery.batch_parked", output=self.name, tag=work.chunk.tag, error=describe(exc))
