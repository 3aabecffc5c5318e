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

import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from forwardd.model import Chunk

if TYPE_CHECKING:
    from forwardd.lifecycle import Deadline

__all__ = ["Gate", "GateWaiter", "Ingest", "Sink"]

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


class GateWaiter(Protocol):
    """A reader the gate stops (a session); weakly referenced, so a closed one is not kept alive."""

    def gate_opened(self) -> None:
        """The gate is open again: the reader may read."""
        ...


class Gate:
    """Back-pressure that the ingest path shares with every reader, across connections and sources.

    Each session bounds only its own chunks awaiting acks (``max_inflight``); what the router keeps while a
    reload holds it is the sum over every connection. While the router's pile is over its bound it shuts
    the gate, and a reader that owes acks stops reading until the gate opens, so the pile stays within
    the bound plus one read per connection.
    """

    __slots__ = ("_waiting", "closed")

    def __init__(self) -> None:
        self.closed = False
        self._waiting: weakref.WeakSet[GateWaiter] = weakref.WeakSet()

    def wait(self, waiter: GateWaiter) -> None:
        """Call ``waiter.gate_opened()`` once the gate opens."""
        self._waiting.add(waiter)

    def close(self) -> None:
        self.closed = True

    def open(self) -> None:
        if not self.closed:
            return
        self.closed = False
        waiting = list(self._waiting)
        self._waiting.clear()
        for waiter in waiting:
            waiter.gate_opened()
