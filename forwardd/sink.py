"""The hand-off contract between the ack path and whatever holds chunks next.

A session hands each decoded chunk to an :data:`Ingest` (the router's entry for its source) and acks the
client only when the returned awaitable has resolved. The router hands the chunk on to one :class:`Sink` per
output it routed to (an output's buffer) and resolves when every one of them has accepted it. "Accepted"
means what the sink promises: for the disk buffer, written and committed (fsync'd per its policy); for a
memory sink, handed to the output's queue.

Returning ``None`` instead of an awaitable means "accepted already" and spares the hot path a future.
Rejection is signalled by raising :class:`~forwardd.errors.ChunkRejected` from the awaitable (or from the
call), with ``permanent`` telling the session whether to ack-and-drop or to withhold the ack.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from forwardd.model import Chunk

if TYPE_CHECKING:
    from forwardd.lifecycle import Deadline

__all__ = ["Ingest", "Sink"]

#: Where a session hands a chunk; bound to one source's label.
Ingest = Callable[[Chunk], Awaitable[None] | None]


class Sink(Protocol):
    """The front of one output: its buffer."""

    name: str

    def submit(self, chunk: Chunk) -> Awaitable[None] | None:
        """Take the chunk; resolve once it is safe (see module doc). Must not block the event loop."""
        ...

    async def start(self) -> None: ...

    async def stop(self, deadline: Deadline | None = None) -> None:
        """Stop taking chunks, finish or persist what is held, and close the output; by ``deadline``
        when one is given (the daemon's stop, :mod:`forwardd.lifecycle`)."""
        ...
