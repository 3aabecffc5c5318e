"""What the delivery loop needs from a queue, so disk and memory queues share one loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

from forwardd.model import Chunk

__all__ = ["ChunkQueue", "FsyncPolicy", "Readable", "Taken", "WhenFull"]

WhenFull = Literal["block", "drop_oldest"]
FsyncPolicy = Literal["always", "interval", "never"]


class Taken:
    """A chunk handed to the delivery loop; give it back to :meth:`ChunkQueue.mark_delivered` when done.

    Until then it stays in the queue: a crash or a stop delivers it again (at-least-once).
    """

    __slots__ = ("chunk", "done")

    def __init__(self, chunk: Chunk) -> None:
        self.chunk = chunk
        self.done = False


class Readable(asyncio.Event):
    """Whether a queue has chunks to take: the event :meth:`ChunkQueue.get` waits on, with one-shot callbacks
    (:meth:`when_set`) for the in-flight delivery loop, which waits for a commit *or* for a write to end.
    Racing a ``get()`` task against the writes with ``asyncio.wait`` cost more than the wait itself when
    each docker request is a commit of its own; a future woken by callbacks costs one."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        super().set()
        callbacks = self._callbacks
        if callbacks:
            self._callbacks = []
            for callback in callbacks:
                callback()

    def when_set(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (once) at the next :meth:`set`; returns what forgets it before then."""
        self._callbacks.append(callback)

        def forget() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return forget


class ChunkQueue(Protocol):
    """A bounded FIFO of chunks with an accept side (:meth:`submit`) and a delivery side."""

    def submit(self, chunk: Chunk) -> Awaitable[None] | None: ...

    async def start(self) -> None: ...

    async def get(self) -> Taken:
        """The oldest chunk not yet taken; waits for one."""
        ...

    def take_nowait(self) -> Taken | None:
        """The oldest chunk not yet taken if one is ready now, else None (for batching)."""
        ...

    def when_readable(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` once, when chunks are next made ready to take (see :class:`Readable`);
        returns what forgets it before then."""
        ...

    def mark_delivered(self, taken: Taken) -> None:
        """Forget ``taken`` for good (delivered or dead-lettered)."""
        ...

    def stop_accepting(self) -> None:
        """Refuse new chunks (and those waiting for room) as temporary; keep delivering the rest."""
        ...

    @property
    def pending_chunks(self) -> int:
        """Accepted chunks not yet available to :meth:`get` (a disk queue's commit in progress)."""
        ...

    #: Bytes of accepted, undelivered records the queue holds at most.
    max_size: int

    @property
    def full(self) -> bool:
        """Whether a chunk now would wait for room (or be refused): what /ready reports."""
        ...

    async def close(self) -> None:
        """Stop accepting; make what was accepted as safe as the queue can; release files."""
        ...

    @property
    def queued_chunks(self) -> int: ...

    @property
    def queued_bytes(self) -> int: ...

    @property
    def dropped_events(self) -> int: ...
