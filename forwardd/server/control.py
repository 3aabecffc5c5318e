"""What a session does about everything but requests: the handshake's outcome, protocol violations, the
handshake and idle timeouts, and closing the connection from our side.

These are the ways a connection ends other than the peer closing it; each is logged (rate-limited, since a
peer can cause it) and counted. Acks already owed still go out before a close (the PONG of a failed
handshake, the acks of chunks accepted before a violation).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from forwardd.protocol import HandshakeCompleted, HandshakeFailed, ProtocolViolation, ServerConnection
from forwardd.server.acks import Pending
from forwardd.server.logs import EdgeLog
from forwardd.server.settings import SessionSettings
from forwardd.server.stats import SourceStats

__all__ = ["Control"]


class Control:
    """The part of a session that ends connections (a mixin of :class:`forwardd.server.session.Session`)."""

    __slots__ = ()

    settings: SessionSettings
    stats: SourceStats
    transport: Any
    conn: ServerConnection | None
    peer: str
    _log: EdgeLog
    _pending: deque[Pending]
    _timer: asyncio.TimerHandle | None
    _closing: bool
    _draining: bool
    _bytes_in: int
    _last_activity: float

    if TYPE_CHECKING:  # the session's other parts; only declared, so that no stub shadows them at run time

        def _flush_acks(self) -> None: ...

    def _handshake_completed(self, ev: HandshakeCompleted) -> None:
        assert self.transport is not None
        self.transport.write(ev.reply)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None  # type: ignore[misc]  # a slot of Session
        if self.settings.idle_timeout > 0:
            self._timer = asyncio.get_running_loop().call_later(self.settings.idle_timeout, self._idle_check)  # type: ignore[misc]  # a slot of Session
        self._log.log(
            "debug",
            "handshake.ok",
            listener=self.settings.listener,
            peer=self.peer,
            hostname=ev.hostname,
            username=ev.username or None,
        )

    def _handshake_failed(self, ev: HandshakeFailed) -> None:
        self.stats.handshake_failures += 1
        self._log.limited(
            "warning", "handshake.failed", listener=self.settings.listener, peer=self.peer, reason=ev.reason
        )
        if self.transport is not None:
            self.transport.write(ev.reply)
        self._close_after_response()

    def _protocol_error(self, exc: ProtocolViolation) -> None:
        self.stats.protocol_errors += 1
        self._log.limited(
            "warning",
            "conn.protocol_error",
            listener=self.settings.listener,
            peer=self.peer,
            reason=exc.reason,
            detail=exc.detail,
            bytes_received=self._bytes_in,
        )
        if self.transport is not None:
            if exc.reply:
                self.transport.write(exc.reply)
            # Acks already owed for chunks accepted before the error still go out.
            self._closing = True  # type: ignore[misc]  # a slot of Session
            self._draining = True  # type: ignore[misc]  # a slot of Session
            if not self._pending:
                self._close_after_response()
            else:
                self.transport.pause_reading()
                self._flush_acks()

    def _close_after_response(self) -> None:
        """Close once what was written is flushed (the failure PONG must reach the client)."""
        self._closing = True  # type: ignore[misc]  # a slot of Session
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _handshake_timeout(self) -> None:
        if self.conn is not None and not self.conn.established and self.transport is not None:
            self._log.limited(
                "warning",
                "handshake.timeout",
                listener=self.settings.listener,
                peer=self.peer,
                timeout=self.settings.handshake_timeout,
            )
            self.transport.abort()

    def _idle_check(self) -> None:
        if self.transport is None:
            return
        idle = self.settings.idle_timeout
        quiet = time.monotonic() - self._last_activity
        if quiet >= idle and not self._pending:
            self._log.limited(
                "info", "conn.idle_timeout", listener=self.settings.listener, peer=self.peer, idle=idle
            )
            self.transport.close()
            return
        self._timer = asyncio.get_running_loop().call_later(max(idle - quiet, 0.05), self._idle_check)  # type: ignore[misc]  # a slot of Session
