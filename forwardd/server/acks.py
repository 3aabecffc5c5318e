"""Acks in request order: what a session owes its client, written once each chunk is accepted.

An ack is written only when the ingest's awaitable has resolved (the chunk is committed where it was
routed), and never before the acks of earlier requests. A chunk refused for good is acked and dropped (no
retry can fix it); a chunk refused for now gets Vector's negative ack and the connection closes, so that
the client resends it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from forwardd.errors import ChunkRejected
from forwardd.server.logs import EdgeLog
from forwardd.server.settings import SessionSettings
from forwardd.server.stats import SourceStats

__all__ = ["AckFlow", "Pending"]


class Pending:
    """One request the client waits on: its acceptance and the ack to send when accepted."""

    __slots__ = ("ack", "acks", "count", "received", "tag", "waiter")

    def __init__(
        self,
        waiter: asyncio.Future[Any] | None,
        ack: bytes | None,
        tag: str,
        count: int,
        acks: int = 1,
        received: float = 0.0,
    ) -> None:
        self.waiter = waiter
        self.ack = ack
        self.tag = tag
        self.count = count
        self.acks = acks
        #: time.monotonic() of the read that completed the request (0.0: not measured).
        self.received = received


class AckFlow:
    """The part of a session that writes its acks (a mixin of :class:`forwardd.server.session.Session`)."""

    __slots__ = ()

    settings: SessionSettings
    stats: SourceStats
    transport: Any
    peer: str
    _log: EdgeLog
    _pending: deque[Pending]
    _watched: asyncio.Future[Any] | None
    _job: Any
    _backlog: list[Any]
    _draining: bool
    _responded: bool
    _drained: asyncio.Future[None] | None

    if TYPE_CHECKING:  # the session's other parts; only declared, so that no stub shadows them at run time

        def _update_reading(self) -> None: ...
        def _close_after_response(self) -> None: ...

    def _flush_acks(self) -> None:
        pending = self._pending
        transport = self.transport
        out: list[bytes] = []
        now = 0.0
        while pending:
            p = pending[0]
            w = p.waiter
            if w is not None:
                if not w.done():
                    if w is not self._watched:  # once per waiter: each request's read flushes too
                        self._watched = w  # type: ignore[misc]  # a slot of Session
                        w.add_done_callback(self._flush_acks_cb)
                    break
                exc = w.exception() if not w.cancelled() else ChunkRejected("cancelled", permanent=False)
                if exc is not None:
                    if not self._owe_no_ack(p, exc):
                        pending.clear()
                        break
                    pending.popleft()
                    continue
            pending.popleft()
            if p.ack is not None:
                out.append(p.ack)
                stats = self.stats
                stats.acks += p.acks
                if p.received:
                    if not now:
                        now = time.monotonic()  # once per flush: its acks go out in one write
                    stats.ack_latency.observe(now - p.received)
        if out and transport is not None:
            transport.write(b"".join(out) if len(out) > 1 else out[0])
            self._responded = True  # type: ignore[misc]  # a slot of Session
        self._update_reading()
        if not pending and transport is not None and self._job is None and not self._backlog:
            if self._draining or (self.settings.deny_keepalive and self._responded):
                self._close_after_response()
            if self._drained is not None and not self._drained.done():
                self._drained.set_result(None)

    def _flush_acks_cb(self, _fut: asyncio.Future[Any]) -> None:
        if self.transport is not None:
            self._flush_acks()

    def _owe_no_ack(self, p: Pending, exc: BaseException) -> bool:
        """A chunk was not accepted. Returns True to go on with later acks (permanent: ack and drop),
        False after closing the connection (temporary: the client must resend)."""
        if isinstance(exc, ChunkRejected) and exc.permanent:
            self.stats.dropped_events += p.count
            self._log.limited(
                "warning",
                "chunk.dropped",
                listener=self.settings.listener,
                peer=self.peer,
                tag=p.tag,
                events=p.count,
                reason=exc.reason,
            )
            if p.ack is not None and self.transport is not None:
                self.transport.write(p.ack)
            return True
        reason = exc.reason if isinstance(exc, ChunkRejected) else repr(exc)
        self._log.limited(
            "warning",
            "chunk.not_accepted",
            listener=self.settings.listener,
            peer=self.peer,
            tag=p.tag,
            events=p.count,
            reason=reason,
        )
        self.stats.nacks += 1
        if self.transport is not None:
            # Vector's negative ack: a map without "ack", then close; the client resends elsewhere/later.
            self.transport.write(b"\x80")
            self._close_after_response()
        return False

    def _rejected_by_pipeline(self, exc: ChunkRejected, tag: str, count: int, ack: bytes | None) -> None:
        p = Pending(None, ack, tag, count)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_exception(exc)
        p.waiter = fut
        self._pending.append(p)


def retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
