"""The output contract shared by every destination (file, Kafka, HTTP, the test server's capture).

An output is told :meth:`Output.write` one chunk at a time by the delivery loop of its buffer (or a few at
once, see :attr:`Output.concurrent_writes`). It either returns (the whole chunk is delivered), or raises
:class:`~forwardd.errors.RetryableError` (nothing or part of it may have been delivered; the same chunk will
be written again later, so outputs are at-least-once) or :class:`~forwardd.errors.PermanentError` (the
chunk goes to the dead-letter folder). Outputs own no retry loops and no queues: the buffer does.

An output may defer making its writes durable (:attr:`Output.defers_sync`, the file output's grouped
fsyncs): a write that returned is then only *written*, and the buffer keeps its chunks in the queue until
:meth:`Output.sync` returned after it, so that a crash before that delivers them again
(:mod:`forwardd.buffer.unsynced`).

An output that keeps counters of its own (requests, retries by status, broker errors) exposes them as
:attr:`Output.stats`, an object with ``as_dict()`` of plain values, so that a report or a metrics endpoint
reads every output the same way.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

from forwardd.model import Chunk
from forwardd.stats import Stats, StatValue

__all__ = ["Output", "OutputStats", "StatValue"]

#: An output's own counters: the :class:`~forwardd.stats.Stats` shape every component exports in.
OutputStats = Stats


class Output(abc.ABC):
    """A destination for chunks."""

    #: The output's name in the configuration; used in logs and metrics.
    name: str
    #: When set (by the buffer, before :meth:`stop`), the ``time.monotonic()`` by which stop() must have
    #: returned: the daemon's stop has one deadline (:mod:`forwardd.lifecycle`), and an output that waits
    #: in stop() (Kafka's flush) waits at most until then.
    stop_deadline: float | None = None

    #: How many writes the delivery loop may have in flight at once. 1 (the default): each write returns
    #: before the next is called. More: the loop calls write() again while earlier calls still wait for
    #: their destination (the next batch is written while the last one is acknowledged); each call's
    #: outcome must concern its own chunk only. Chunks still leave the queue in order.
    concurrent_writes: int = 1
    #: With ``concurrent_writes`` > 1: a batch none of whose writes (one per tag) holds this many entry
    #: bytes is written one write at a time, as by an output that takes no concurrent writes (0: every
    #: batch goes concurrently). For an output whose concurrency pays only on big writes (the file
    #: output's: an fsync overlapping the next append), where small ones would pay a task each and a
    #: hand-over between threads.
    concurrent_min_bytes: int = 0

    #: True: a write that returned may not be durable yet; the buffer calls :meth:`sync` (at most every
    #: :attr:`sync_interval` seconds, or sooner) before its chunks leave the queue, so that one fsync
    #: covers many writes. False (the default): a write that returned is delivered for good. An output
    #: that defers its sync takes one write at a time (``concurrent_writes`` 1): a failed sync must be
    #: able to say which writes it concerns, and with one write at a time it concerns all since the last.
    defers_sync: bool = False
    #: The longest the buffer lets a written chunk wait for :meth:`sync` (it syncs sooner under load).
    sync_interval: float = 0.5

    #: True: the delivery loop (one write at a time) sets :attr:`peek_next`, so that the output can get
    #: the next chunk ready while a write waits for its destination, instead of after it (HTTP encodes
    #: its next body while the request before it is answered).
    prepares_ahead: bool = False
    #: Set by the delivery loop of an output that :attr:`prepares_ahead`: the chunk the loop will write
    #: next (it takes the next batch from the queue when a whole one is committed), or None. Calling it
    #: delivers nothing and changes no order; the chunk may still never be written here (a stop).
    peek_next: Callable[[], Chunk | None] | None = None

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections or files before the first write."""

    @abc.abstractmethod
    async def write(self, chunk: Chunk) -> None:
        """Deliver every event of ``chunk`` or raise RetryableError / PermanentError."""

    async def sync(self) -> None:  # noqa: B027 - optional hook
        """Make every write that returned before this call durable, or raise RetryableError: then any of
        them may be lost, and the buffer writes them all again (:attr:`defers_sync`)."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Flush and close; called once after the last write."""

    @property
    def stats(self) -> OutputStats | None:
        """A snapshot of the output's own counters; None for an output that keeps none."""
        return None
