"""Errors that cross module boundaries. Every failure is one of: a peer's protocol error (see
``forwardd.protocol.errors``), a retryable delivery error, a permanent delivery error, or a configuration
error. Nothing else is expected; anything else is a bug."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from forwardd.model import Chunk

__all__ = ["ChunkRejected", "DeliveryError", "PermanentError", "RecordsRejected", "RetryableError"]


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


class ChunkRejected(Exception):
    """The pipeline did not accept a chunk.

    ``permanent`` says whether the same chunk can never be accepted (so the client should be acked and stop
    resending) or whether this is a temporary condition (no ack; the client resends).
    """

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
