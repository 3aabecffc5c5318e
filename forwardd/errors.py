"""Errors that cross module boundaries. Every failure is one of: a peer's protocol error (see
``forwardd.protocol.errors``), a retryable delivery error, a permanent delivery error, data forwardd cannot
process (:class:`UnprocessableError`), or a configuration error. Anything else is a bug, and is handled as
data that cannot be processed once a few quick attempts have failed: it costs the events that cause it,
never an output (see :mod:`forwardd.buffer.delivery` and :mod:`forwardd.router.isolation`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from forwardd.model import Chunk

__all__ = [
    "ChunkRejected",
    "DeliveryError",
    "PartialDelivery",
    "PermanentError",
    "RecordsRejected",
    "RetryableError",
    "UnprocessableError",
]


class DeliveryError(Exception):
    """An output could not deliver a chunk."""


class RetryableError(DeliveryError):
    """Try again later: the destination is down, slow, or asked us to back off.

    ``retry_after`` is the destination's own hint in seconds (HTTP ``Retry-After``), if it gave one.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(DeliveryError):
    """Trying again cannot help (a 400, an oversized message, an unserialisable record): dead-letter it.

    ``rejected``, when set, holds only the events that could not be delivered: the output delivered the
    rest of the chunk, and only these go to the dead-letter folder.
    """

    def __init__(self, message: str, *, rejected: Chunk | None = None) -> None:
        super().__init__(message)
        self.rejected = rejected


class RecordsRejected(PermanentError):
    """Some events of a chunk can never be delivered (too big, refused by the destination); the output
    delivered all the others. ``rejected`` holds only those events: the delivery loop parks them, not the
    chunk."""

    def __init__(self, message: str, rejected: Chunk) -> None:
        super().__init__(message, rejected=rejected)
        self.rejected: Chunk = rejected


class UnprocessableError(DeliveryError):
    """forwardd itself cannot process some event of the chunk: a record no encoder can represent (nested
    deeper than the encoder's limit, an integer msgpack cannot hold, a string that is no text at all).

    Not the destination's verdict and not transient: the delivery loop splits the chunk to isolate the
    events that cause it and dead-letters only those (a formatter raises this, and only this, for a record
    it cannot encode). ``index``, when known, is the position of the first such event in what was being
    encoded; it is informative only.
    """

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class PartialDelivery(DeliveryError):
    """An output got through part of the chunk it was given before it had to stop (one request of several
    refused, some Kafka messages failed).

    Relative to that chunk: ``rejected`` holds the events the destination refused for good (they go to
    ``@ERROR`` or the dead-letter folder), ``unsent`` the events not delivered yet; every other event was
    delivered and is not written again. ``rejection`` is the destination's word on ``rejected`` (its text
    goes with them to the dead-letter folder). ``cause`` says why it stopped: a :class:`RetryableError` (then
    ``unsent`` is written again after the back-off, with its ``retry_after``), or anything else (handled as
    if ``write(unsent)`` had raised it). ``delivered`` counts the events that got through.
    """

    def __init__(
        self,
        message: str,
        *,
        delivered: int,
        rejected: Chunk | None = None,
        unsent: Chunk | None = None,
        cause: BaseException | None = None,
        rejection: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.delivered = delivered
        self.rejected = rejected
        self.unsent = unsent
        self.cause = cause
        self.rejection = rejection


class ChunkRejected(Exception):
    """The pipeline did not accept a chunk.

    ``permanent`` says whether the same chunk can never be accepted (so the client should be acked and stop
    resending) or whether this is a temporary condition (no ack; the client resends).
    """

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
