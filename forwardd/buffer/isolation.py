"""Delivering one batch: its pieces written in order, retried, backed off, or split until the events that
cannot be delivered are alone, and those dead-lettered.

The delivery loop (:mod:`forwardd.buffer.delivery`) hands over one :class:`Work` at a time: one tag's part
of a taken batch, merged into one chunk, which starts as one piece. What ``write()`` raises decides what
happens to the piece it was given:

``RetryableError`` (connection refused, timeout, ENOSPC, 5xx)
    back off (:class:`~forwardd.buffer.retry.RetryPolicy`, the destination's ``retry_after``) and write the
    same piece again; when the policy gives up, the piece goes to the dead-letter folder alone (Fluentd
    purges the whole queue when retries run out; we do not).
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
    the piece is cut in halves by framing its msgpack entries (:mod:`forwardd.pieces`, no decoding) and each
    half is tried, left first, recursively: the events that fail are isolated in O(k log n) writes and
    dead-lettered one by one, all the others are delivered, in order. A RetryableError met while isolating
    backs off and resumes with the pieces still left. ``ISOLATION_BUDGET`` bounds the failed writes spent
    on one batch (past it, a piece that fails is dead-lettered whole) and ``QUICK_RETRIES_PER_BATCH`` its
    quick waits.

Nothing of this runs while writes succeed: the hot path writes the one piece and goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable

import structlog

from forwardd.buffer.base import Taken
from forwardd.buffer.dead_letter import DeadLetters, describe, rate_limited
from forwardd.buffer.retry import RetryPolicy
from forwardd.errors import PartialDelivery, PermanentError, RetryableError, UnprocessableError
from forwardd.model import Chunk
from forwardd.outputs.base import Output
from forwardd.pieces import entry_ends, halves

__all__ = [
    "ISOLATION_BUDGET",
    "QUICK_RETRIES_PER_BATCH",
    "UNEXPECTED_ATTEMPTS",
    "UNEXPECTED_DELAY",
    "Deliverer",
    "Piece",
    "Work",
]

log = structlog.get_logger("forwardd.delivery")

#: Attempts an unexpected exception (not a DeliveryError) gets on one piece before the piece is taken for
#: data that cannot be processed; the waits between them start at UNEXPECTED_DELAY seconds and double.
#: One batch gets at most QUICK_RETRIES_PER_BATCH such waits in all, so a batch of many events that all
#: fail costs seconds, not minutes.
UNEXPECTED_ATTEMPTS = 3
UNEXPECTED_DELAY = 0.1
QUICK_RETRIES_PER_BATCH = 16
#: Failed writes one batch may spend isolating its bad events; past it a failing piece is parked whole.
ISOLATION_BUDGET = 256


class Piece:
    """Entries of a batch still to deliver. ``isolated``: it came from splitting a failing piece (an
    unexpected error then splits it at once); ``failures``: unexpected errors on it so far; ``ends``: its
    entries' end offsets, once framed."""

    __slots__ = ("chunk", "ends", "failures", "isolated")

    def __init__(self, chunk: Chunk, isolated: bool = False, ends: list[int] | None = None) -> None:
        self.chunk = chunk
        self.isolated = isolated
        self.ends = ends
        self.failures = 0


class Work:
    """One tag's part of a taken batch: its chunks (marked delivered once no piece is left), the merged
    chunk, and the pieces still to deliver, in order (at first, the whole merged chunk)."""

    __slots__ = ("budget", "chunk", "crashes", "isolating", "pieces", "quick", "takens")

    def __init__(self, takens: list[Taken], chunk: Chunk) -> None:
        self.takens = takens
        self.chunk = chunk
        self.pieces: deque[Piece] = deque((Piece(chunk),))
        self.budget = ISOLATION_BUDGET
        self.quick = QUICK_RETRIES_PER_BATCH
        self.isolating = False
        self.crashes = 0


class _Writes:
    """The writes (and syncs) of an output in progress: a context manager around each, so that ``idle`` is
    clear while any runs (several when the output takes concurrent writes); stop and retire wait for it."""

    __slots__ = ("count", "idle")

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def __enter__(self) -> None:
        self.count += 1
        self.idle.clear()

    def __exit__(self, *exc: object) -> None:
        self.count -= 1
        if not self.count:
            self.idle.set()


#: What Deliverer._failed returns besides a RetryableError.
_NEXT = object()
_QUICK = object()


class Deliverer:
    """Writes one output's batches, a piece at a time (see the module doc), and counts what happened.

    Its flags are what the sink's stop and drain watch: ``idle`` is clear while a write is in progress
    (any of them, when the output takes several at once and the sink runs a deliver() per work),
    ``backing_off`` is set while it waits to try again, ``progress`` is set whenever pieces moved on, and
    ``stopping`` (set by the sink) makes it return between attempts with the pieces still left.
    """

    def __init__(
        self,
        name: str,
        output: Output,
        policy: RetryPolicy,
        dead_letters: DeadLetters,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self.output = output
        self.policy = policy
        self.dead_letters = dead_letters
        self._clock = clock
        self._sleep = sleep
        self._rand = rand
        self._writing = _Writes()
        self.idle = self._writing.idle
        self._waiting = 0  # deliver() calls waiting to try again (several, likewise)
        #: Writes that succeeded so far: a back-off that began at a lower count failed before the output
        #: took a write again (:meth:`retry_recovered`).
        self._succeeded = 0
        #: The back-off waits of failed writes, with ``_succeeded`` when their write failed.
        self._sleepers: dict[asyncio.Task[None], int] = {}
        self.progress = asyncio.Event()
        self.stopping = False
        self.delivered_events = 0
        self.delivered_bytes = 0
        self.retries = 0
        #: Writes that raised something no output should (not a DeliveryError): bugs, or data nobody checked.
        self.unexpected = 0
        #: Batches whose failing events were isolated by splitting them.
        self.isolations = 0
        self.last_error: str | None = None
        #: Wall-clock time of the last failed write (the metrics endpoint's last-error timestamp).
        self.last_error_at: float | None = None
        #: ``clock()`` when the head piece began failing with back-off in between; None while writes
        #: succeed. How long an output has been stuck (the endpoint's ``/ready``).
        self.failing_since: float | None = None

    @property
    def backing_off(self) -> bool:
        """Whether a delivery waits to try again: a count, not a flag, so that one of several deliveries in
        flight ending its wait does not hide that another still waits (the drain stops on it)."""
        return self._waiting > 0

    def settle_idle(self) -> None:
        """After a crash of the loop: ``idle`` again, unless writes of other deliveries are in flight."""
        if not self._writing.count:
            self.idle.set()

    def _errored(self, exc: Exception) -> None:
        """A write or sync failed: what the report and the metrics endpoint show as the last error."""
        self.last_error = describe(exc)
        self.last_error_at = time.time()

    def _failing(self, failing: bool) -> None:
        """Whether the head keeps failing, for ``failing_since``: set when it begins failing (back-off
        between attempts), kept while it goes on failing, cleared once it went through or was given up."""
        if not failing:
            self.failing_since = None
        elif self.failing_since is None:
            self.failing_since = self._clock()

    def retry_recovered(self) -> bool:
        """For a stop's drain: end now the back-off of every write that failed before another write
        succeeded, so it is tried once more at once; whether there was one.

        With writes in flight at once, each backs off on its own: after an outage, those begun during it
        still wait (up to the policy's ``max``) when the others already go through. A stop that gave up at
        the first back-off left their chunks queued, and wrote again at the next start every later one
        already written (the chunks leave the queue oldest first). A write that fails again, or failed
        with no success since, still ends the drain at once: the output is failing."""
        woken = False
        for sleeper, failed_at in self._sleepers.items():
            if failed_at < self._succeeded and not sleeper.cancelling():  # not ended early already
                sleeper.cancel()
                woken = True
        return woken

    async def _wait(self, delay: float, failed_at: int | None = None) -> None:
        """Back off ``delay`` seconds; with ``failed_at`` (a failed write's), :meth:`retry_recovered` may
        end the wait early."""
        self._waiting += 1
        self.progress.set()
        try:
            if failed_at is None:
                await self._sleep(delay)
                return
            sleeper = asyncio.ensure_future(self._sleep(delay))
            self._sleepers[sleeper] = failed_at
            try:
                await sleeper
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the delivery itself is cancelled (it cancels its wait with it), not only its wait
            finally:
                del self._sleepers[sleeper]
                if not sleeper.done():
                    sleeper.cancel()
        finally:
            self._waiting -= 1

    async def sync(self) -> Exception | None:
        """The output's :meth:`~forwardd.outputs.base.Output.sync`, counted as a write in progress (stop and
        retire wait for ``idle``); what it raised, or None when it succeeded."""
        try:
            with self._writing:
                await self.output.sync()
        except Exception as exc:
            self._errored(exc)
            self._failing(True)
            return exc
        self._failing(False)
        return None

    async def back_off(self, attempts: int, exc: Exception) -> None:
        """Wait as after ``attempts`` failed writes before trying again (a failed sync)."""
        retry_after = exc.retry_after if isinstance(exc, RetryableError) else None
        self.retries += 1
        await self._wait(self.policy.delay(attempts, retry_after, self._rand))

    async def deliver(self, work: Work) -> None:
        """Deliver every piece of ``work``; returns with pieces left only when stopping."""
        policy = self.policy
        pieces = work.pieces
        attempts = 0
        first = 0.0
        while pieces:
            piece = pieces[0]
            if attempts == 0:
                first = self._clock()
            attempts += 1
            try:
                with self._writing:
                    await self.output.write(piece.chunk)
            except Exception as exc:
                failure: Exception | None = exc
                failed_at = self._succeeded  # what succeeded before it; later successes are the others'
            else:
                failure = None
            if failure is None:
                self._succeeded += 1
                if self._sleepers:  # a stop's drain may now retry them (retry_recovered)
                    self.progress.set()
                pieces.popleft()
                self.delivered_events += piece.chunk.count
                self.delivered_bytes += len(piece.chunk.entries)
                attempts = 0
                self._failing(False)
                continue
            step = await self._failed(work, piece, failure, attempts)
            if step is _NEXT:
                attempts = 0
                self._failing(False)
                continue
            if self.stopping:
                return
            self._failing(True)
            if step is _QUICK:
                await self._wait(UNEXPECTED_DELAY * 2 ** (pieces[0].failures - 1))
                continue
            assert isinstance(step, RetryableError)
            head = pieces[0]
            if policy.exhausted(attempts, self._clock() - first):
                pieces.popleft()
                await self._dead_letter(head.chunk, "retries_exhausted", step, attempts, head.isolated)
                attempts = 0
                self._failing(False)
                continue
            delay = policy.delay(attempts, step.retry_after, self._rand)
            self.retries += 1
            log.warning(
                "delivery.retry",
                output=self.name,
                tag=head.chunk.tag,
                count=head.chunk.count,
                attempt=attempts,
                delay=round(delay, 3),
                retry_after=step.retry_after,
                error=describe(step),
            )
            await self._wait(delay, failed_at)

    async def _failed(self, work: Work, piece: Piece, exc: Exception, attempts: int) -> object:
        """Act on what ``write(piece)`` raised; what the loop does next: _NEXT (go on with the pieces now
        at the head), _QUICK (a short wait, then the head again) or a RetryableError (back off, then the
        head again)."""
        pieces = work.pieces
        self._errored(exc)
        if isinstance(exc, PartialDelivery):
            self.delivered_events += max(exc.delivered, 0)
            if exc.rejected is not None and exc.rejected.count:
                why = exc.rejection if exc.rejection is not None else exc
                await self._dead_letter(exc.rejected, "permanent_error", why, attempts, piece.isolated)
            unsent = exc.unsent
            if unsent is None or not unsent.count:
                pieces.popleft()
                return _NEXT
            pieces[0] = Piece(unsent, piece.isolated)
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
                self.delivered_events += max(piece.chunk.count - rejected.count, 0)
                await self._dead_letter(rejected, "permanent_error", exc, attempts, piece.isolated)
            else:
                await self._dead_letter(piece.chunk, "permanent_error", exc, attempts, piece.isolated)
            return _NEXT
        if isinstance(exc, UnprocessableError):
            reason = "unprocessable"
        else:
            reason = "unexpected_error"
            self.unexpected += 1
            piece.failures += 1
            if rate_limited(self.unexpected):
                with contextlib.suppress(Exception):
                    log.error(
                        "delivery.unexpected_error",
                        output=self.name,
                        tag=piece.chunk.tag,
                        count=piece.chunk.count,
                        attempt=piece.failures,
                        error=describe(exc),
                        unexpected_errors=self.unexpected,
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

    def _split(self, work: Work, piece: Piece, exc: Exception) -> bool:
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
        pieces.appendleft(Piece(right, True, right_ends))
        pieces.appendleft(Piece(left, True, left_ends))
        if not work.isolating:
            work.isolating = True
            self.isolations += 1
            with contextlib.suppress(Exception):
                log.warning(
                    "delivery.isolating",
                    output=self.name,
                    tag=piece.chunk.tag,
                    count=piece.chunk.count,
                    error=describe(exc),
                    isolations=self.isolations,
                )
        return True

    async def _dead_letter(
        self, chunk: Chunk, reason: str, err: BaseException, attempts: int, isolated: bool = False
    ) -> None:
        """Send ``chunk`` (a piece of a batch) the way of rejected events (:class:`DeadLetters`)."""
        meta: dict[str, object] = {
            "reason": reason,
            "error": describe(err),
            "attempts": attempts,
            "isolated": isolated,
        }
        await self.dead_letters.put(chunk, meta)
        self.progress.set()
