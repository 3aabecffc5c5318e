"""Big requests, finished in a worker thread, their chunks handed on a bounded amount per turn of the loop.

The protocol core hands a request over the inline size out as a PayloadReceived; the session runs the pure
:func:`forwardd.protocol.finish_payload` in a small thread pool (decompression and the entry scan release
the GIL), stops reading meanwhile, and keeps the events read after it in a backlog, so that acks and chunks
keep their order. Then it hands the chunks on, at most about 1 MiB per turn of the event loop.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from forwardd.protocol import Event, PayloadReceived, ProtocolViolation, finish_payload
from forwardd.server.logs import EdgeLog
from forwardd.server.settings import SessionSettings
from forwardd.server.stats import SourceStats

__all__ = ["CHUNK_WEIGHT", "TURN_BUDGET", "Offload", "payload_executor"]

#: How much a session hands on per turn of the event loop: entry bytes, plus a weight per chunk. A big
#: request's chunks (thousands, once finished) go on over several turns, other connections served between.
TURN_BUDGET = 1 << 20
CHUNK_WEIGHT = 64 * 1024


_executor: ThreadPoolExecutor | None = None


def payload_executor() -> ThreadPoolExecutor:
    """The worker threads that finish big requests (decompression and the entry scan release the GIL):
    two, for this class of machine; requests beyond that wait their turn, their connections not read."""
    global _executor  # one pool per process, made on first use
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="forwardd-payload")
    return _executor


class Offload:
    """The part of a session that finishes big requests (a mixin of the session)."""

    __slots__ = ()

    settings: SessionSettings
    stats: SourceStats
    transport: Any
    peer: str
    _log: EdgeLog
    _job: asyncio.Future[list[Event]] | None
    _job_bytes: int
    _backlog: list[Event]

    if TYPE_CHECKING:  # the session's other parts; only declared, so that no stub shadows them at run time

        def _handle(self, events: list[Event]) -> None: ...
        def _flush_acks(self) -> None: ...
        def _update_reading(self) -> None: ...
        def _account(self) -> None: ...

    def _continue(self) -> None:
        if self.transport is None or self._job is not None:
            return
        backlog, self._backlog = self._backlog, []  # type: ignore[misc]  # a slot of Session
        self._handle(backlog)
        if self._job is None and not self._backlog:
            self._flush_acks()

    def _start_job(self, ev: PayloadReceived) -> None:
        self.stats.offloaded += 1
        self._job_bytes = len(ev.data)  # type: ignore[misc]  # a slot of Session
        self._job = asyncio.get_running_loop().run_in_executor(payload_executor(), finish_payload, ev)  # type: ignore[misc]  # a slot of Session
        self._job.add_done_callback(self._job_done)
        self._update_reading()

    def _job_done(self, job: asyncio.Future[list[Event]]) -> None:
        self._job = None  # type: ignore[misc]  # a slot of Session
        self._job_bytes = 0  # type: ignore[misc]  # a slot of Session
        backlog, self._backlog = self._backlog, []  # type: ignore[misc]  # a slot of Session
        if self.transport is None:
            return  # the connection is gone: nothing of this request was acked, the client resends it
        try:
            events = job.result()
        except Exception as exc:  # a bug in finishing it: the connection closes, the client resends
            self._log.limited(
                "error",
                "chunk.finish_failed",
                listener=self.settings.listener,
                peer=self.peer,
                error=repr(exc),
            )
            events = [ProtocolViolation("internal_error", repr(exc))]
        self._handle(events + backlog)
        if self._job is None and not self._backlog:
            self._flush_acks()
        self._account()
