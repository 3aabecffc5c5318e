"""A session's requests: each protocol event read, in request order, becomes an ingest call and an owed ack.

This is the hot path of the edge (one call per read): chunks go to the source's ingest, their acks are queued
in :class:`~forwardd.server.acks.Pending` (written by :class:`~forwardd.server.acks.AckFlow` once accepted), a
big request goes to a worker thread (:class:`~forwardd.server.offload.Offload`), and what is not a request
(handshake, heartbeat, protocol violation) goes to :class:`~forwardd.server.control.Control`. It is apart from
the connection's life (:mod:`forwardd.server.session`) so that what becomes of a request reads in one place.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

from forwardd.errors import ChunkRejected
from forwardd.model import Chunk
from forwardd.protocol import (
    EntriesReceived,
    Event,
    HandshakeCompleted,
    HandshakeFailed,
    Heartbeat,
    PayloadReceived,
    ProtocolViolation,
    Rejected,
)
from forwardd.server.acks import Pending
from forwardd.server.logs import EdgeLog
from forwardd.server.offload import CHUNK_WEIGHT, TURN_BUDGET
from forwardd.server.settings import SessionSettings
from forwardd.server.stats import SourceStats
from forwardd.sink import Ingest

__all__ = ["Requests"]

#: Events that are no request: deny_keepalive waits for a request's response before it closes.
_NOT_REQUESTS = (HandshakeCompleted, Heartbeat)


class Requests:
    """The part of a session that handles what it reads (a mixin of the session)."""

    __slots__ = ()

    settings: SessionSettings
    stats: SourceStats
    ingest: Ingest
    transport: Any
    peer: str
    peer_address: str | None
    peer_hostname: str | None
    _log: EdgeLog
    _pending: deque[Pending]
    _job: asyncio.Future[list[Event]] | None
    _backlog: list[Event]
    _draining: bool
    _closing: bool
    _requests: int
    _last_activity: float
    _transform: bool

    if TYPE_CHECKING:  # the session's other parts; only declared, so that no stub shadows them at run time

        def _update_reading(self) -> None: ...
        def _continue(self) -> None: ...
        def _start_job(self, ev: PayloadReceived) -> None: ...
        def _flush_acks(self) -> None: ...
        def _rejected_by_pipeline(
            self, exc: ChunkRejected, tag: str, count: int, ack: bytes | None
        ) -> None: ...
        def _handshake_completed(self, ev: HandshakeCompleted) -> None: ...
        def _handshake_failed(self, ev: HandshakeFailed) -> None: ...
        def _protocol_error(self, exc: ProtocolViolation) -> None: ...
        def _close_after_response(self) -> None: ...

    def _handle(self, events: list[Event]) -> None:
        """Handle events in request order. A big request goes to a worker thread; the events after it
        wait in the backlog until its own events are handled (acks and chunks keep their order)."""
        stats = self.stats
        pending = self._pending
        hooks = self.settings.hooks
        warn_size = self.settings.limits.chunk_size_warn
        received = self._last_activity  # the read that completed these requests (ack latency)
        spent = 0
        for i, ev in enumerate(events):
            if type(ev) is EntriesReceived:
                if self._draining:
                    break  # closing after a fault: what follows is not read, not acked, resent
                chunk = ev.chunk
                if spent >= TURN_BUDGET:
                    self._backlog = events[i:]  # type: ignore[misc]  # a slot of Session  # the rest in the next turns of the loop
                    asyncio.get_running_loop().call_soon(self._continue)
                    self._update_reading()
                    break
                spent += len(chunk.entries) + CHUNK_WEIGHT
                stats.chunks += ev.requests
                self._requests += ev.requests  # type: ignore[misc]  # a slot of Session
                if hooks is not None and hooks.closes_after(self._requests):
                    self._draining = True  # type: ignore[misc]  # a slot of Session
                    self._closing = True  # type: ignore[misc]  # a slot of Session
                    if self.transport is not None:
                        self.transport.pause_reading()
                stats.events += chunk.count
                if ev.invalid is not None:
                    self._invalid_entries(ev)
                    if not chunk.count:  # nothing in it could be delivered: acked and dropped (counted)
                        if ev.ack is not None:
                            pending.append(Pending(None, ev.ack, chunk.tag, 0, ev.acks, received))
                        continue
                if self._transform:
                    chunk = self._transformed(chunk)
                try:
                    waiter = self.ingest(chunk)
                except ChunkRejected as exc:
                    self._rejected_by_pipeline(exc, chunk.tag, chunk.count, ev.ack)
                    continue
                if waiter is None:
                    if ev.ack is not None:
                        pending.append(Pending(None, ev.ack, chunk.tag, chunk.count, ev.acks, received))
                else:
                    fut = waiter if isinstance(waiter, asyncio.Future) else asyncio.ensure_future(waiter)
                    pending.append(Pending(fut, ev.ack, chunk.tag, chunk.count, ev.acks, received))
                if ev.size > warn_size:
                    self._log.limited(
                        "warning",
                        "chunk.large",
                        listener=self.settings.listener,
                        peer=self.peer,
                        tag=chunk.tag,
                        size=ev.size,
                    )
            elif type(ev) is PayloadReceived:
                if self._draining:
                    break
                self._start_job(ev)
                self._backlog = events[i + 1 :]  # type: ignore[misc]  # a slot of Session
                break
            elif type(ev) is Heartbeat:
                stats.heartbeats += 1
            elif type(ev) is Rejected:
                self._rejected(ev)
            elif type(ev) is HandshakeCompleted:
                self._handshake_completed(ev)
            elif type(ev) is HandshakeFailed:
                self._handshake_failed(ev)
                return
            elif type(ev) is ProtocolViolation:
                self._protocol_error(ev)
                return
        if pending:
            self._flush_acks()
        elif self._idle_after(events):
            self._close_after_response()

    def _idle_after(self, events: list[Event]) -> bool:
        """Whether, nothing being owed, the connection is to close after these events."""
        if self._job is not None or self._backlog:
            return False
        if self._draining:
            return True
        # deny_keepalive closes after the first request's response; the PONG (or a heartbeat) is none.
        return self.settings.deny_keepalive and any(type(ev) not in _NOT_REQUESTS for ev in events)

    def _rejected(self, ev: Rejected) -> None:
        self.stats.rejected += 1
        self._log.limited(
            "warning",
            "chunk.rejected",
            listener=self.settings.listener,
            peer=self.peer,
            tag=ev.tag,
            reason=ev.reason,
            detail=ev.detail,
            size=ev.size,
            acked=ev.ack is not None,
        )
        if ev.ack is not None:
            # Acked and dropped: no retry can make it valid, and an unacked client resends forever.
            self._pending.append(Pending(None, ev.ack, ev.tag or "", 0))

    def _invalid_entries(self, ev: EntriesReceived) -> None:
        """Entries that decoding will drop: counted and shown (with a sample) where the peer is known."""
        bad = ev.invalid
        assert bad is not None
        self.stats.invalid_entries += bad.count
        self.stats.invalid_times += bad.bad_times
        self._log.limited(
            "warning",
            "chunk.invalid_entries",
            listener=self.settings.listener,
            peer=self.peer,
            tag=ev.chunk.tag,
            invalid=bad.count,
            bad_times=bad.bad_times,
            events=ev.chunk.count,
            reason=bad.reason,
            sample=bad.sample,
        )

    # --- per-connection record changes ----------------------------------------------------------------

    def _transformed(self, chunk: Chunk) -> Chunk:
        s = self.settings
        if s.tag is not None:
            chunk = chunk.with_tag(s.tag)
        elif s.add_tag_prefix:
            chunk = chunk.with_tag(f"{s.add_tag_prefix}.{chunk.tag}")
        extra: dict[str, Any] = {}
        if s.source_address_key:
            extra[s.source_address_key] = self.peer_address or self.peer
        if s.source_hostname_key:
            extra[s.source_hostname_key] = self.peer_hostname or self.peer_address or self.peer
        if extra:
            chunk = chunk.map_records(lambda r: {**r, **extra})
        return chunk
