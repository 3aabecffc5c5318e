"""The one delivery loop shared by every output: take the oldest chunks, hand them to the output, and let
them leave the queue once every event is delivered or dead-lettered.

Outputs own no retries and no queues (:mod:`forwardd.outputs.base`). This loop does. It takes what is
committed (:mod:`forwardd.buffer.batching`: held up to :class:`Batching`'s ``max_wait`` to let a batch grow,
then merged per tag into one chunk each) and gives each such :class:`~forwardd.buffer.isolation.Work`
to the :class:`~forwardd.buffer.isolation.Deliverer`, which writes it piece by piece: retries with back-off,
partial deliveries, and isolating the events that fail are described in :mod:`forwardd.buffer.isolation`.
The batch's chunks leave the queue only when no piece is left. An output that takes concurrent writes
gets the next works while the earlier ones still wait for their destination
(:mod:`forwardd.buffer.in_flight`), their chunks leaving the queue oldest work first (the file output only
for batches with a big write: :attr:`~forwardd.outputs.base.Output.concurrent_min_bytes`); one that writes one
at a time but prepares ahead (HTTP) is shown the next batch while a write waits
(:meth:`~forwardd.buffer.batching.BatchTaker.take_ahead`: only a batch that holding would not grow).
"Dead-lettered" means: to the ``@ERROR`` label's routes when the configuration has one, else to
``<storage>/dead-letter/<output>/`` (:mod:`forwardd.buffer.dead_letter`). Nothing of this costs anything
while writes succeed: the hot path hands the batch to the output and marks its chunks.

An output that defers its sync (:attr:`~forwardd.outputs.base.Output.defers_sync`: the file output's
grouped fsyncs) has its written works kept, chunks unmarked, until a sync after them succeeded
(:mod:`forwardd.buffer.unsynced` says when the loop syncs and what a failed sync costs). A kill -9 or a
power cut then delivers again what was written and not yet synced: at most the output's ``sync_interval``
(0.5 s by default) or :data:`~forwardd.buffer.unsynced.UNSYNCED_BYTES` of deliveries, on top of what the
ledger's own sync interval redelivers.

The delivery task itself cannot die silently: its supervisor restarts it after a crash, and parks a batch
that crashes it again and again (:mod:`forwardd.buffer.delivery_loop`).

Time is injected (``clock``, ``sleep``, ``rand``) so tests run in no wall time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from forwardd.buffer.base import ChunkQueue, Taken
from forwardd.buffer.batching import Batching, BatchTaker, merge
from forwardd.buffer.dead_letter import DeadLetters, read_dead_letter, write_dead_letter
from forwardd.buffer.delivery_loop import DeliveryLoop
from forwardd.buffer.in_flight import InFlight
from forwardd.buffer.isolation import Deliverer, Work
from forwardd.buffer.retry import RetryPolicy
from forwardd.buffer.unsynced import UNSYNCED_BYTES, Syncer, Unsynced
from forwardd.lifecycle import Deadline
from forwardd.model import Chunk
from forwardd.ops.counters import DELIVERY_BUCKETS, LatencyHistogram, TagCounts
from forwardd.outputs.base import Output, StatValue
from forwardd.sink import Ingest

# read_dead_letter, write_dead_letter: still importable from here, where they were (the router imports one).
__all__ = ["Batching", "BufferedSink", "SinkStats", "read_dead_letter", "write_dead_letter"]

log = structlog.get_logger("forwardd.delivery")

#: How many recent deliveries the latency percentiles are computed over.
LATENCY_WINDOW = 1024


@dataclass(slots=True)
class SinkStats:
    """A snapshot of one sink. Events and bytes are entry counts and entry bytes; ``dropped`` is events.

    ``delivered_*`` count what the output took; for an output that defers its sync (the file output's
    grouped fsyncs) that is what it wrote, and its chunks stay in ``queued_*`` until the sync after it.
    """

    queued_chunks: int = 0
    queued_bytes: int = 0
    delivered_events: int = 0
    delivered_bytes: int = 0
    retries: int = 0
    #: Dead-letter files written, and the events in them.
    dead_lettered: int = 0
    dead_lettered_events: int = 0
    to_error_label: int = 0
    dropped: int = 0
    #: Writes that raised something no output should (not a DeliveryError): bugs, or data nobody checked.
    unexpected_errors: int = 0
    #: Batches whose failing events were isolated by splitting them.
    isolations: int = 0
    #: Crashes of the delivery loop itself (each logged as delivery.loop_crashed, then restarted).
    loop_crashes: int = 0
    last_error: str | None = None
    #: Receive-to-delivery latency of the last deliveries (up to LATENCY_WINDOW chunks), in ms.
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None

    def as_dict(self) -> dict[str, StatValue]:
        return {f: getattr(self, f) for f in self.__slots__}


class BufferedSink(DeliveryLoop):
    """A :class:`~forwardd.sink.Sink`: a queue (disk or memory) in front of an output, and its delivery task.

    ``stop`` stops accepting, keeps delivering what is queued while the output succeeds (up to
    ``drain_timeout``; at once if it is failing: a write backs off and none succeeded since it failed; one
    that failed before others went through is tried again at once, :meth:`Deliverer.retry_recovered`),
    lets a write in progress finish (up to ``stop_timeout``),
    then closes the queue and the output. What is left stays on disk for the next start (at-least-once);
    a memory queue loses it, with a ``buffer.discarded`` error. The loop and its supervisor:
    :class:`~forwardd.buffer.delivery_loop.DeliveryLoop`.
    """

    def __init__(
        self,
        name: str,
        output: Output,
        queue: ChunkQueue,
        retry_policy: RetryPolicy | None = None,
        dead_letter_dir: str | None = None,
        *,
        stop_timeout: float = 5.0,
        drain_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        batching: Batching | None = None,
        sync_bytes: int = UNSYNCED_BYTES,
    ) -> None:
        self.name = name
        self.output = output
        self.queue = queue
        self.retry_policy = retry_policy or RetryPolicy()
        self.dead_letter_dir = dead_letter_dir
        self.stop_timeout = stop_timeout
        self.drain_timeout = drain_timeout
        self._clock = clock
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self._dead = DeadLetters(name, dead_letter_dir, max_delay=self.retry_policy.max, sleep=sleep)
        #: Writes one batch at a time and owns the flags stop and drain watch (idle, backing_off, progress).
        self._deliverer = Deliverer(
            name, output, self.retry_policy, self._dead, clock=clock, sleep=sleep, rand=rand
        )
        self._latencies: deque[int] = deque(maxlen=LATENCY_WINDOW)
        #: Receive to delivered, per delivered batch (by tag), and the events delivered per tag: read by the
        #: metrics endpoint; one bisect and one dict update per batch, not per chunk.
        self.delivery_latency = LatencyHistogram(DELIVERY_BUCKETS)
        self.tag_events = TagCounts()
        self._crashes = 0
        #: Set while the loop waits to restart after a crash (the endpoint's /ready says so).
        self.restarting = False
        #: What the loop has taken and not finished, kept here so that a restart after a crash goes on
        #: with it: chunks taken for the next batch (the taker's ``gathered``), and the batch's per-tag
        #: works still to deliver.
        self._works: deque[Work] = deque()
        if output.defers_sync and output.concurrent_writes > 1:
            raise ValueError(f"output {name}: an output that defers its sync takes one write at a time")
        #: Works written by an output that defers its sync, not yet synced (their chunks stay unmarked).
        self._unsynced = Unsynced(output.sync_interval, sync_bytes)
        self._syncer = Syncer(name, self._unsynced, self._deliverer, self._record)
        self._taker = BatchTaker(queue, batching or Batching(), self._unsynced, self._syncer.flush, clock)
        #: For an output that takes concurrent writes: the works begun (it shares self._works, which is
        #: therefore never replaced, only emptied and refilled).
        self._in_flight = InFlight(self._deliverer, self._taker, self._works, self._finish)

    @property
    def batching(self) -> Batching:
        """How the loop lets a small batch grow (:class:`Batching`)."""
        return self._taker.batching

    @batching.setter
    def batching(self, batching: Batching) -> None:
        self._taker.batching = batching

    @property
    def error_route(self) -> Ingest | None:
        """Where chunks this output rejects for good go before the dead-letter folder: the router's entry
        for the @ERROR label, set by the daemon when the configuration has one."""
        return self._dead.error_route

    @error_route.setter
    def error_route(self, route: Ingest | None) -> None:
        self._dead.error_route = route

    @property
    def _last_error(self) -> str | None:
        """The text of the last failed write (the report's ``last_error``)."""
        return self._deliverer.last_error

    @_last_error.setter
    def _last_error(self, text: str | None) -> None:
        self._deliverer.last_error = text

    def submit(self, chunk: Chunk) -> Awaitable[None] | None:
        return self.queue.submit(chunk)

    async def start(self) -> None:
        await self.queue.start()
        await self.output.start()
        self._task = asyncio.create_task(self._supervise(), name=f"delivery:{self.name}")

    async def _drain(self, until: float) -> None:
        """Deliver what is queued before stopping, while the output keeps succeeding, until ``until``
        (``time.monotonic``)."""
        q = self.queue
        q.stop_accepting()
        self._taker.hurry_up()
        if self._task is None:
            return
        deliverer = self._deliverer
        while q.queued_chunks or q.pending_chunks:
            if deliverer.backing_off and not deliverer.retry_recovered():
                return  # the output is failing: what is queued waits for the next start
            deliverer.progress.clear()
            try:
                await asyncio.wait_for(deliverer.progress.wait(), max(0.0, until - time.monotonic()))
            except TimeoutError:
                log.warning("delivery.drain_timeout", output=self.name, queued_chunks=q.queued_chunks)
                return

    async def stop(self, deadline: Deadline | None = None) -> None:
        """See the class doc. With a ``deadline`` (the daemon's stop) every step shares it: delivery and the
        write in progress until its ``soft`` part, closing the queue and the output in what is left;
        without one, the drain and the write in progress get ``drain_timeout`` and ``stop_timeout``."""
        deliverer = self._deliverer
        if deliverer.stopping:
            return
        await self._drain(time.monotonic() + self.drain_timeout if deadline is None else deadline.soft)
        deliverer.stopping = True
        task = self._task
        if task is not None:
            if not deliverer.idle.is_set():
                wait = self.stop_timeout if deadline is None else deadline.soft_left()
                try:
                    await asyncio.wait_for(deliverer.idle.wait(), wait)
                except TimeoutError:
                    # Cut off: the chunks of that write stay queued and are written again after a restart.
                    log.warning("delivery.stop_timeout", output=self.name, timeout=round(wait, 3))
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        await self._in_flight.cancel()  # what is still in flight stays queued
        # What the output wrote and did not sync yet is marked only if this last sync succeeds.
        await self._syncer.last(self.stop_timeout if deadline is None else deadline.left())
        q = self.queue
        # What is left here is what the next start delivers (a memory queue loses it, and says so).
        log.info(
            "output.stopped",
            output=self.name,
            left_chunks=q.queued_chunks,
            left_bytes=q.queued_bytes,
            delivered_events=deliverer.delivered_events,
            last_error=deliverer.last_error if q.queued_chunks else None,
        )
        await q.close()
        if deadline is not None:
            self.output.stop_deadline = deadline.at
        await self.output.stop()

    # --- a reload that rebuilds the output over the same queue ------------------------------------------

    async def retire(self, timeout: float) -> tuple[list[Taken], deque[Work]]:
        """Stop delivering and stop the output, leaving the queue open and accepting: a reload builds a
        new output in front of it (:meth:`take_over`). The write in progress finishes (up to ``timeout``
        seconds; one cut off is written again by the new output: at least once). What the loop had taken
        and not delivered is returned; the queue never hands a taken chunk out twice in one process, so
        without it those chunks would wait for a restart."""
        deliverer = self._deliverer
        deliverer.stopping = True
        self._taker.hurry_up()
        task = self._task
        if task is not None:
            if not deliverer.idle.is_set():
                try:
                    await asyncio.wait_for(deliverer.idle.wait(), timeout)
                except TimeoutError:
                    log.warning("delivery.stop_timeout", output=self.name, timeout=round(timeout, 3))
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Writes still in flight end here: their works go to the new output with the pieces not yet
        # confirmed, never written by two outputs at once.
        await self._in_flight.cancel()
        if not await self._syncer.last(timeout):
            # The old output's last writes may be lost: the new output writes them again, first, and
            # the work it was in the middle of from its first piece.
            rewrite = [Work(takens, merge(takens)) for takens in self._unsynced.take_all()]
            rewrite.extend(Work(w.takens, w.chunk) for w in self._works)
            self._works.clear()
            self._works.extend(rewrite)
        self.output.stop_deadline = time.monotonic() + timeout
        try:
            await self.output.stop()
        except Exception as exc:  # the old output failing to close must not stop the new one
            log.error("output.stop_failed", output=self.name, error=repr(exc))
        gathered, works = self._taker.gathered, deque(self._works)
        self._taker.gathered = []
        self._works.clear()
        return gathered, works

    async def take_over(self, gathered: list[Taken], works: deque[Work]) -> None:
        """Start in place of a sink that :meth:`retire` stopped, over its queue (already started and
        accepting): what it had taken is delivered first, in order."""
        self._taker.gathered = gathered
        self._works.clear()
        self._works.extend(works)
        await self.output.start()
        self._task = asyncio.create_task(self._supervise(), name=f"delivery:{self.name}")

    @property
    def stats(self) -> SinkStats:
        q = self.queue
        d = self._deliverer
        dead = self._dead
        lat = sorted(self._latencies)
        p50 = round(lat[len(lat) // 2] / 1e6, 2) if lat else None
        p99 = round(lat[min(len(lat) - 1, len(lat) * 99 // 100)] / 1e6, 2) if lat else None
        return SinkStats(
            latency_p50_ms=p50,
            latency_p99_ms=p99,
            queued_chunks=q.queued_chunks,
            queued_bytes=q.queued_bytes,
            delivered_events=d.delivered_events,
            delivered_bytes=d.delivered_bytes,
            retries=d.retries,
            dead_lettered=dead.files,
            dead_lettered_events=dead.events,
            to_error_label=dead.to_error_label,
            dropped=dead.dropped + q.dropped_events,
            unexpected_errors=d.unexpected,
            isolations=d.isolations,
            loop_crashes=self._crashes,
            last_error=d.last_error,
        )

    @property
    def oldest_received_ns(self) -> int | None:
        """When the oldest chunk still to deliver was received (time.time_ns), None when there is none.

        The loop takes chunks in queue order (adopted queues first: older), so the oldest undelivered chunk
        is the first of what it holds; each per-tag work's chunk starts with its oldest. What is queued and
        not yet taken is newer than what is held.
        """
        oldest = self._unsynced.oldest_received_ns()  # written before anything the loop still holds
        if oldest is not None:
            return oldest
        gathered = self._taker.gathered
        if gathered:
            oldest = gathered[0].chunk.received_ns
        for work in self._works:
            if work.pieces:
                t = work.chunk.received_ns
                oldest = t if oldest is None else min(oldest, t)
        return oldest

    @property
    def failing_seconds(self) -> float:
        """Seconds the head of the queue has been failing (retries with back-off), 0.0 while it is not."""
        since = self._deliverer.failing_since
        return 0.0 if since is None else max(0.0, self._clock() - since)

    @property
    def last_error_at(self) -> float | None:
        """Wall-clock time (time.time) of the last failed write, None if none failed."""
        return self._deliverer.last_error_at

    @property
    def loop_alive(self) -> bool:
        """Whether the delivery loop runs (or was not started yet); False when it ended or waits to
        restart after a crash."""
        task = self._task
        if self.restarting:
            return False
        return task is None or not task.done() or self._deliverer.stopping
