"""The one delivery loop shared by every output: take the oldest chunks, write them, retry, or dead-letter
exactly the events that cannot be delivered.

Outputs own no retries and no queues (:mod:`forwardd.outputs.base`). This loop does. It takes what is
committed (merged per tag into one chunk, see :meth:`BufferedSink._batch`) and keeps, for each such batch,
the pieces still to deliver, in order; the batch's chunks leave the queue only when none is left. What
``write()`` raises decides what happens to the piece it was given:

``RetryableError`` (connection refused, timeout, ENOSPC, 5xx)
    back off (:class:`RetryPolicy`, the destination's ``retry_after``) and write the same piece again; when
    the policy gives up, the piece goes to the dead-letter folder alone (Fluentd purges the whole queue
    when retries run out; we do not).
``PermanentError`` (a 400, an oversized message, a path that cannot exist)
    the destination's verdict on the piece it names: the whole piece, or only ``err.rejected`` (the rest
    was delivered). No bisection: an endpoint that refuses everything costs one request per piece.
``PartialDelivery``
    the output got through part of the piece (one request of several, some Kafka messages): ``rejected`` is
    dead-lettered, what was delivered is never written again, ``unsent`` becomes the piece, and ``cause``
    is then handled as if writing ``unsent`` had raised it.
``UnprocessableError`` (an encoder met a record it cannot represent) and any other exception
    data forwardd cannot process, or a bug. An unexpected exception first gets a few quick attempts
    (``UNEXPECTED_ATTEMPTS``, so a transient bug loses nothing); then, and at once for UnprocessableError,
    the piece is cut in halves by framing its msgpack entries (no decoding) and each half is tried, left
    first, recursively: the events that fail are isolated in O(k log n) writes and dead-lettered one by
    one, all the others are delivered, in order. A RetryableError met while isolating backs off and
    resumes with the pieces still left. ``ISOLATION_BUDGET`` bounds the failed writes spent on one batch
    (past it, a piece that fails is dead-lettered whole) and ``QUICK_RETRIES_PER_BATCH`` its quick waits.

"Dead-lettered" means: to the ``@ERROR`` label's routes when the configuration has one, else to
``<storage>/dead-letter/<output>/`` (:func:`write_dead_letter`: the piece's entries as they came, and a
JSON sidecar naming the reason and the exception). Nothing of this runs while writes succeed: the hot path
hands the batch to the output and marks its chunks, as before.

The delivery task itself cannot die silently: an exception escaping the loop (a bug here, in a queue, in a
log processor) is logged as ``delivery.loop_crashed`` with its traceback, counted (``loop_crashes``), and the
loop starts again after a short back-off with the batch it was delivering, whose chunks it still holds
(a disk queue does not hand a taken chunk out twice in one process, so the loop keeps them; after a
process restart they are delivered again from the ledger). A batch that crashes the loop
``CRASHES_PER_BATCH`` times is parked in the dead-letter folder so the rest of the queue moves.

Time is injected (``clock``, ``sleep``, ``rand``) so tests run in no wall time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
import structlog

from forwardd.buffer.base import ChunkQueue, Taken
from forwardd.buffer.retry import RetryPolicy
from forwardd.buffer.segment import decode_record, encode_prefix, fsync_dir
from forwardd.errors import (
    PartialDelivery,
    PermanentError,
    RetryableError,
    UnprocessableError,
)
from forwardd.logging import safe_text, safe_value
from forwardd.model import Chunk
from forwardd.outputs.base import Output
from forwardd.pieces import entry_ends, halves
from forwardd.sink import Ingest

__all__ = ["Batching", "BufferedSink", "SinkStats", "read_dead_letter", "write_dead_letter"]

log = structlog.get_logger("forwardd.delivery")

_seq = itertools.count()

#: How many recent deliveries the latency percentiles are computed over.
LATENCY_WINDOW = 1024

#: Most chunks and bytes merged into one write of the output (see BufferedSink._batch).
BATCH_MAX_CHUNKS = 4096
BATCH_MAX_BYTES = 4 * 1024 * 1024

#: Attempts an unexpected exception (not a DeliveryError) gets on one piece before the piece is taken for
#: data that cannot be processed; the waits between them start at UNEXPECTED_DELAY seconds and double.
#: One batch gets at most QUICK_RETRIES_PER_BATCH such waits in all, so a batch of many events that all
#: fail costs seconds, not minutes.
UNEXPECTED_ATTEMPTS = 3
UNEXPECTED_DELAY = 0.1
QUICK_RETRIES_PER_BATCH = 16
#: Failed writes one batch may spend isolating its bad events; past it a failing piece is parked whole.
ISOLATION_BUDGET = 256
#: The restart back-off of a crashed delivery loop, and the crashes one batch may cause before it is parked.
CRASH_DELAY = 0.1
CRASH_DELAY_MAX = 5.0
CRASHES_PER_BATCH = 3
#: Longest exception text kept in a log line or a dead-letter sidecar.
ERROR_TEXT_MAX = 2000


@dataclass(frozen=True, slots=True)
class Batching:
    """How long the delivery loop may hold a small batch to let it grow, and what counts as big enough.

    Without it, a chunk is written as soon as it is committed, with whatever else is committed by then.
    Docker clients that wait for each ack make those batches a handful of events. Each batch costs the
    file output a write and an fsync per file, and the HTTP output a request. ``max_wait`` bounds the extra
    delay; the batch goes as soon as it holds ``max_events`` events or ``enough_bytes`` bytes (default
    ``max_bytes``, the most one batch takes). The chunks wait in the queue, not in memory beyond it, and
    an ack never waits for this: acks follow the commit.

    ``enough_bytes`` below ``max_bytes`` suits the file output: a batch of 64 KiB is already worth its own
    write and fsync, and holding bulk traffic (PackedForward chunks of ~240 KB) until it reaches the 4 MiB
    cap only delays it (measured: 186k -> 165k events/s and twice the ack p99 into files, 1 connection).
    """

    max_wait: float = 0.0
    max_events: int = sys.maxsize
    max_bytes: int = BATCH_MAX_BYTES
    enough_bytes: int | None = None


@dataclass(slots=True)
class SinkStats:
    """A snapshot of one sink. Events and bytes are entry counts and entry bytes; ``dropped`` is events."""

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

    def as_dict(self) -> dict[str, object]:
        return {f: getattr(self, f) for f in self.__slots__}


class BufferedSink:
    """A :class:`~forwardd.sink.Sink`: a queue (disk or memory) in front of an output, and its delivery task.

    ``stop`` stops accepting, keeps delivering what is queued while the output succeeds (up to
    ``drain_timeout``; at once if it is failing), lets a write in progress finish (up to ``stop_timeout``),
    then closes the queue and the output. What is left stays on disk for the next start (at-least-once);
    a memory queue loses it, with a ``buffer.discarded`` error.
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
    ) -> None:
        self.name = name
        self.output = output
        self.queue = queue
        self.batching = batching or Batching()
        #: Set when stopping: a batch held to grow (Batching.max_wait) goes at once.
        self._hurry = asyncio.Event()
        self.retry_policy = retry_policy or RetryPolicy()
        self.dead_letter_dir = dead_letter_dir
        self.stop_timeout = stop_timeout
        self.drain_timeout = drain_timeout
        self._backing_off = False
        self._progress = asyncio.Event()
        self._clock = clock
        self._sleep = sleep
        self._rand = rand
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._delivered_events = 0
        self._latencies: deque[int] = deque(maxlen=LATENCY_WINDOW)
        self._delivered_bytes = 0
        self._retries = 0
        self._dead_lettered = 0
        self._dead_lettered_events = 0
        self._dropped = 0
        self._unexpected = 0
        self._isolations = 0
        self._crashes = 0
        self._last_error: str | None = None
        #: What the loop has taken and not finished, kept here so that a restart after a crash goes on
        #: with it: chunks taken for the next batch, and the batch's per-tag works still to deliver.
        self._gathered: list[Taken] = []
        self._works: deque[_Work] = deque()
        #: Where chunks this output rejects for good go before the dead-letter folder: the router's entry
        #: for the @ERROR label, set by the daemon when the configuration has one (see _dead_letter).
        self.error_route: Ingest | None = None
        self._to_error_label = 0

    def submit(self, chunk: Chunk) -> Awaitable[None] | None:
        return self.queue.submit(chunk)

    async def start(self) -> None:
        await self.queue.start()
        await self.output.start()
        self._task = asyncio.create_task(self._supervise(), name=f"delivery:{self.name}")

    async def _drain(self) -> None:
        """Deliver what is queued before stopping, while the output keeps succeeding."""
        q = self.queue
        q.stop_accepting()
        self._hurry.set()
        if self._task is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout
        while (q.queued_chunks or q.pending_chunks) and not self._backing_off:
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                log.warning("delivery.drain_timeout", output=self.name, queued_chunks=q.queued_chunks)
                return

    async def stop(self) -> None:
        if self._stopping:
            return
        await self._drain()
        self._stopping = True
        task = self._task
        if task is not None:
            if not self._idle.is_set():
                try:
                    await asyncio.wait_for(self._idle.wait(), self.stop_timeout)
                except TimeoutError:
                    log.warning("delivery.stop_timeout", output=self.name, timeout=self.stop_timeout)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        await self.queue.close()
        await self.output.stop()

    @property
    def stats(self) -> SinkStats:
        q = self.queue
        lat = sorted(self._latencies)
        p50 = round(lat[len(lat) // 2] / 1e6, 2) if lat else None
        p99 = round(lat[min(len(lat) - 1, len(lat) * 99 // 100)] / 1e6, 2) if lat else None
        return SinkStats(
            latency_p50_ms=p50,
            latency_p99_ms=p99,
            queued_chunks=q.queued_chunks,
            queued_bytes=q.queued_bytes,
            delivered_events=self._delivered_events,
            delivered_bytes=self._delivered_bytes,
            retries=self._retries,
            dead_lettered=self._dead_lettered,
            dead_lettered_events=self._dead_lettered_events,
            to_error_label=self._to_error_label,
            dropped=self._dropped + q.dropped_events,
            unexpected_errors=self._unexpected,
            isolations=self._isolations,
            loop_crashes=self._crashes,
            last_error=self._last_error,
        )

    # --- the loop and its supervisor ------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Run the loop; if it crashes, say so, count it, and run it again (see the module doc)."""
        delay = CRASH_DELAY
        last_crash = -1e18
        while True:
            try:
                await self._run()
                return
            except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # an output may raise anything; the loop must outlive it
                self._idle.set()
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
                        error=_describe(exc),
                        crashes=self._crashes,
                        tag=work.chunk.tag if work is not None else None,
                        restart_in=delay,
                        exc_info=exc,
                    )
                if self._stopping:
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
                                log.error("delivery.park_failed", output=self.name, error=_describe(park_exc))
                await self._sleep(delay)
                delay = min(delay * 2, CRASH_DELAY_MAX)

    async def _run(self) -> None:
        while not self._stopping:
            if not self._works:
                if not self._gathered:
                    await self._gather()
                self._works.extend(_Work(group, chunk) for group, chunk in self._batch(self._gathered))
                self._gathered = []
            works = self._works
            while works:
                if self._stopping:
                    return  # the rest stays queued and is delivered after the restart
                work = works[0]
                await self._deliver(work)
                if work.pieces:
                    return  # stopping in the middle of it
                works.popleft()

    async def _gather(self) -> None:
        """Take the next batch into ``self._gathered``: what is committed now, or held to grow for up to
        ``Batching.max_wait``."""
        batching = self.batching
        takens = self._gathered
        first = await self.queue.get()
        takens.append(first)
        size, events = self._take_ready(takens, len(first.chunk.entries), first.chunk.count)
        if batching.max_wait > 0:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + batching.max_wait
            enough = batching.max_bytes if batching.enough_bytes is None else batching.enough_bytes
            while (
                size < enough
                and events < batching.max_events
                and len(takens) < BATCH_MAX_CHUNKS
                and not self._hurry.is_set()
            ):
                t = await self._next_within(deadline - loop.time())
                if t is None:
                    break
                takens.append(t)
                size, events = self._take_ready(takens, size + len(t.chunk.entries), events + t.chunk.count)

    async def _next_within(self, timeout: float) -> Taken | None:
        """The next committed chunk if one comes within ``timeout`` and before a stop, else None."""
        if timeout <= 0:
            return None
        get = asyncio.ensure_future(self.queue.get())
        hurry = asyncio.ensure_future(self._hurry.wait())
        try:
            await asyncio.wait((get, hurry), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hurry.cancel()
            if not get.done():
                get.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await get
        # A get that completed while being cancelled still took its chunk: keep it, never drop it.
        return get.result() if get.done() and not get.cancelled() else None

    def _take_ready(self, takens: list[Taken], size: int, events: int) -> tuple[int, int]:
        """Append to ``takens`` what is committed now, up to the batch limits; the new size and events."""
        batching = self.batching
        max_bytes = min(BATCH_MAX_BYTES, batching.max_bytes)
        max_events = batching.max_events
        take = self.queue.take_nowait
        while len(takens) < BATCH_MAX_CHUNKS and size < max_bytes and events < max_events:
            t = take()
            if t is None:
                break
            takens.append(t)
            size += len(t.chunk.entries)
            events += t.chunk.count
        return size, events

    def _batch(self, takens: list[Taken]) -> list[tuple[list[Taken], Chunk]]:
        """The taken chunks merged into one chunk per tag.

        Docker sends one event per message, so without this every event would cost the output a write
        (and the file output an fsync). Entries of one tag are concatenated as bytes, not decoded. A
        merged chunk's receive time is its first chunk's, which only matters for events sent with no
        time (0 or nil), whose time is taken from it.
        """
        first = takens[0]
        if len(takens) == 1:
            return [(takens, first.chunk)]
        groups: dict[str, list[Taken]] = {}
        for t in takens:
            groups.setdefault(t.chunk.tag, []).append(t)
        return [(ts, _merge(ts)) for ts in groups.values()]

    # --- one batch ------------------------------------------------------------------------------------

    async def _deliver(self, work: _Work) -> None:
        """Deliver every piece of ``work`` (see the module doc), then let its chunks go."""
        policy = self.retry_policy
        pieces = work.pieces
        attempts = 0
        first = 0.0
        while pieces:
            piece = pieces[0]
            if attempts == 0:
                first = self._clock()
            attempts += 1
            self._idle.clear()
            try:
                await self.output.write(piece.chunk)
            except Exception as exc:
                failure: Exception | None = exc
            else:
                failure = None
            finally:
                self._idle.set()
            if failure is None:
                pieces.popleft()
                self._delivered_events += piece.chunk.count
                self._delivered_bytes += len(piece.chunk.entries)
                attempts = 0
                continue
            step = await self._failed(work, piece, failure, attempts)
            if step is _NEXT:
                attempts = 0
                continue
            if self._stopping:
                return
            if step is _QUICK:
                self._backing_off = True
                self._progress.set()
                try:
                    await self._sleep(UNEXPECTED_DELAY * 2 ** (pieces[0].failures - 1))
                finally:
                    self._backing_off = False
                continue
            assert isinstance(step, RetryableError)
            head = pieces[0]
            if policy.exhausted(attempts, self._clock() - first):
                pieces.popleft()
                await self._dead_letter(head.chunk, "retries_exhausted", step, attempts, head.isolated)
                attempts = 0
                continue
            delay = policy.delay(attempts, step.retry_after, self._rand)
            self._retries += 1
            log.warning(
                "delivery.retry",
                output=self.name,
                tag=head.chunk.tag,
                count=head.chunk.count,
                attempt=attempts,
                delay=round(delay, 3),
                retry_after=step.retry_after,
                error=_describe(step),
            )
            self._backing_off = True
            self._progress.set()
            try:
                await self._sleep(delay)
            finally:
                self._backing_off = False
        for taken in work.takens:
            self.queue.mark_delivered(taken)
        self._latencies.append(time.time_ns() - work.chunk.received_ns)
        self._backing_off = False
        self._progress.set()

    async def _failed(self, work: _Work, piece: _Piece, exc: Exception, attempts: int) -> object:
        """Act on what ``write(piece)`` raised; what the loop does next: _NEXT (go on with the pieces now
        at the head), _QUICK (a short wait, then the head again) or a RetryableError (back off, then the
        head again)."""
        pieces = work.pieces
        self._last_error = _describe(exc)
        if isinstance(exc, PartialDelivery):
            self._delivered_events += max(exc.delivered, 0)
            if exc.rejected is not None and exc.rejected.count:
                why = exc.rejection if exc.rejection is not None else exc
                await self._dead_letter(exc.rejected, "permanent_error", why, attempts, piece.isolated)
            unsent = exc.unsent
            if unsent is None or not unsent.count:
                pieces.popleft()
                return _NEXT
            pieces[0] = _Piece(unsent, piece.isolated)
            cause = exc.cause
            if cause is None:
                return _NEXT
            if not isinstance(cause, Exception):
                raise cause
            if isinstance(cause, PartialDelivery):  # not meaningful as a cause: take it as a bug
                cause = RuntimeError(f"PartialDelivery as the cause of a PartialDelivery: {cause}")
            return await self._failed(work, pieces[0], cause, attempts)
        if isinstance(exc, RetryableError):
            return exc
        if isinstance(exc, PermanentError):
            rejected = exc.rejected
            pieces.popleft()
            if isinstance(rejected, Chunk):
                self._delivered_events += max(piece.chunk.count - rejected.count, 0)
                await self._dead_letter(rejected, "permanent_error", exc, attempts, piece.isolated)
            else:
                await self._dead_letter(piece.chunk, "permanent_error", exc, attempts, piece.isolated)
            return _NEXT
        if isinstance(exc, UnprocessableError):
            reason = "unprocessable"
        else:
            reason = "unexpected_error"
            self._unexpected += 1
            piece.failures += 1
            if _rate_limited(self._unexpected):
                with contextlib.suppress(Exception):
                    log.error(
                        "delivery.unexpected_error",
                        output=self.name,
                        tag=piece.chunk.tag,
                        count=piece.chunk.count,
                        attempt=piece.failures,
                        error=_describe(exc),
                        unexpected_errors=self._unexpected,
                        exc_info=exc,
                    )
            splittable = piece.chunk.count > 1
            if (
                piece.failures < UNEXPECTED_ATTEMPTS
                and not (piece.isolated and splittable)
                and work.quick > 0
            ):
                work.quick -= 1
                return _QUICK
        if self._split(work, piece, exc):
            return _NEXT
        pieces.popleft()
        await self._dead_letter(piece.chunk, reason, exc, attempts, piece.isolated)
        return _NEXT

    def _split(self, work: _Work, piece: _Piece, exc: Exception) -> bool:
        """Replace ``piece`` (the head) by its two halves; False when it is one entry or the batch's
        isolation budget is spent."""
        if work.budget <= 0:
            return False
        if piece.ends is None:
            piece.ends = entry_ends(piece.chunk.entries)
        cut = halves(piece.chunk, piece.ends)
        if cut is None:
            return False
        work.budget -= 1
        (left, left_ends), (right, right_ends) = cut
        pieces = work.pieces
        pieces.popleft()
        pieces.appendleft(_Piece(right, True, right_ends))
        pieces.appendleft(_Piece(left, True, left_ends))
        if not work.isolating:
            work.isolating = True
            self._isolations += 1
            with contextlib.suppress(Exception):
                log.warning(
                    "delivery.isolating",
                    output=self.name,
                    tag=piece.chunk.tag,
                    count=piece.chunk.count,
                    error=_describe(exc),
                    isolations=self._isolations,
                )
        return True

    async def _park(self, work: _Work, exc: BaseException) -> None:
        """The batch crashed the loop again and again: its pieces go to the dead-letter folder as they are
        (no @ERROR route, no isolation: either may be what crashes), so the rest of the queue moves."""
        if self.dead_letter_dir is not None:
            meta = {"reason": "loop_crashed", "error": _describe(exc), "attempts": work.crashes}
            for piece in list(work.pieces):
                await asyncio.to_thread(write_dead_letter, self.dead_letter_dir, self.name, piece.chunk, meta)
                work.pieces.popleft()
                self._dead_lettered += 1
                self._dead_lettered_events += piece.chunk.count
        else:
            for piece in work.pieces:
                self._dropped += piece.chunk.count
            work.pieces.clear()
        for taken in work.takens:
            self.queue.mark_delivered(taken)
        self._works.popleft()
        self._progress.set()
        log.error("delivery.batch_parked", output=self.name, tag=work.chunk.tag, error=_describe(exc))

    # --- where rejected events go ---------------------------------------------------------------------

    async def _to_error_route(self, chunk: Chunk, meta: dict[str, object]) -> bool:
        """Hand ``chunk`` to the @ERROR label's routes; True once they have committed it (only then may it
        leave this queue), False if they refused it (the dead-letter folder takes it then)."""
        assert self.error_route is not None
        try:
            accepted = self.error_route(chunk)
            if accepted is not None:
                await accepted
        except Exception as exc:  # a refusal of any kind: the dead-letter folder is the fallback
            log.error("delivery.error_label_failed", output=self.name, tag=chunk.tag, error=_describe(exc))
            return False
        self._to_error_label += chunk.count
        log.warning("delivery.to_error_label", output=self.name, tag=chunk.tag, count=chunk.count, **meta)
        return True

    async def _dead_letter(
        self, chunk: Chunk, reason: str, err: BaseException, attempts: int, isolated: bool = False
    ) -> None:
        """Park ``chunk`` (a piece of a batch) in the @ERROR label or the dead-letter folder; retried until
        the folder takes it (a full disk), so nothing acked is ever dropped while a folder is configured."""
        meta: dict[str, object] = {
            "reason": reason,
            "error": _describe(err),
            "attempts": attempts,
            "isolated": isolated,
        }
        if self.error_route is not None and await self._to_error_route(chunk, meta):
            self._progress.set()
            return
        if self.dead_letter_dir is None:
            log.error("delivery.dropped", output=self.name, tag=chunk.tag, count=chunk.count, **meta)
            self._dropped += chunk.count
            self._progress.set()
            return
        delay = min(1.0, self.retry_policy.max)
        failing = False
        while True:
            try:
                path = await asyncio.to_thread(
                    write_dead_letter, self.dead_letter_dir, self.name, chunk, meta
                )
                break
            except OSError as exc:
                if not failing:
                    failing = True
                    log.error("delivery.dead_letter_failed", output=self.name, error=_describe(exc))
                await self._sleep(delay)
                delay = min(delay * 2, self.retry_policy.max)
        self._dead_lettered += 1
        self._dead_lettered_events += chunk.count
        if _rate_limited(self._dead_lettered):
            log.warning(
                "delivery.dead_letter",
                output=self.name,
                tag=chunk.tag,
                count=chunk.count,
                path=path,
                dead_lettered=self._dead_lettered,
                **meta,
            )
        self._progress.set()


class _Piece:
    """Entries of a batch still to deliver. ``isolated``: it came from splitting a failing piece (an
    unexpected error then splits it at once); ``failures``: unexpected errors on it so far; ``ends``: its
    entries' end offsets, once framed."""

    __slots__ = ("chunk", "ends", "failures", "isolated")

    def __init__(self, chunk: Chunk, isolated: bool = False, ends: list[int] | None = None) -> None:
        self.chunk = chunk
        self.isolated = isolated
        self.ends = ends
        self.failures = 0


class _Work:
    """One tag's part of a taken batch: its chunks (marked delivered once no piece is left), the merged
    chunk, and the pieces still to deliver, in order (at first, the whole merged chunk)."""

    __slots__ = ("budget", "chunk", "crashes", "isolating", "pieces", "quick", "takens")

    def __init__(self, takens: list[Taken], chunk: Chunk) -> None:
        self.takens = takens
        self.chunk = chunk
        self.pieces: deque[_Piece] = deque((_Piece(chunk),))
        self.budget = ISOLATION_BUDGET
        self.quick = QUICK_RETRIES_PER_BATCH
        self.isolating = False
        self.crashes = 0


#: What BufferedSink._failed returns besides a RetryableError.
_NEXT = object()
_QUICK = object()


def _rate_limited(count: int) -> bool:
    """Log at 1, 2, 4, ... 256, then every 512: a hostile stream must not make one line per event."""
    return (count & (count - 1)) == 0 if count < 512 else count % 512 == 0


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, as safe text of bounded length (its str() may raise, or quote
    undecodable bytes)."""
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:
        text = f"{type(exc).__name__}: <str() failed>"
    if len(text) > ERROR_TEXT_MAX:
        text = text[:ERROR_TEXT_MAX] + "..."
    return safe_text(text)


def write_dead_letter(directory: str, output: str, chunk: Chunk, meta: dict[str, object]) -> str:
    """Write ``chunk`` (one framed record, as in a segment: the exact tag and entries) and a ``.json``
    sidecar (values made safe text: a tag that is not UTF-8 shows its bytes as ``\\xNN``); the chunk's
    path."""
    os.makedirs(directory, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in output)
    base = os.path.join(directory, f"{time.time_ns()}-{os.getpid()}-{next(_seq)}-{safe}")
    sidecar = safe_value(
        {
            **meta,
            "output": output,
            "tag": chunk.tag,
            "count": chunk.count,
            "bytes": len(chunk.entries),
            "received_ns": chunk.received_ns,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    for path, parts in (
        (base + ".chunk", (encode_prefix(chunk), chunk.entries)),
        (base + ".json", (orjson.dumps(sidecar, option=orjson.OPT_INDENT_2),)),
    ):
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if os.writev(fd, parts) != sum(len(p) for p in parts):
                raise OSError(28, "short write (disk full?)", path)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(path + ".tmp", path)
    fsync_dir(directory)
    return base + ".chunk"


def read_dead_letter(path: str) -> Chunk:
    """The chunk of a dead-letter ``.chunk`` file (to inspect or replay it)."""
    with open(path, "rb") as f:
        chunk, _ = decode_record(f.read())
    return chunk


def _merge(takens: list[Taken]) -> Chunk:
    if len(takens) == 1:
        return takens[0].chunk
    first = takens[0].chunk
    chunks = [t.chunk for t in takens]
    merged = Chunk(
        first.tag, b"".join(c.entries for c in chunks), sum(c.count for c in chunks), first.received_ns
    )
    merged.invalid = sum(c.invalid for c in chunks)
    return merged
