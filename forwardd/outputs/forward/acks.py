"""Sending a write's requests over one connection and matching the acks that come back to them.

Apart from the write path because this is where "delivered" is decided, request by request: a request
is ``done`` when its ack came (with ``require_ack_response``), or once its bytes are written (without).
Requests are pipelined on a kept-alive connection and their acks waited for together, within
``ack_response_timeout``; a receiver that closes after each reply (``deny_keepalive``) gets one request
per connection. A request whose ack did not come counts in ``unacked_events`` (it will be sent again: the
bound on the duplicates a receiver can see), one sent a second time within the write in
``resent_events``. Any failure aborts the connection, so that no late ack can be matched to a request
that was given up on.
"""

from __future__ import annotations

import asyncio

from forwardd.outputs.forward.connection import Connection, ConnectionFailed
from forwardd.outputs.forward.messages import Message
from forwardd.outputs.forward.stats import ForwardStats
from forwardd.protocol.client import Compression

__all__ = ["Sender"]


class Sender:
    """Sends requests over a connection and waits for their acks, moving the counters of what it sends."""

    def __init__(
        self,
        stats: ForwardStats,
        *,
        compression: Compression,
        require_ack: bool,
        send_timeout: float,
        ack_timeout: float,
    ) -> None:
        self._stats = stats
        self.compression: Compression = compression
        self.require_ack = require_ack
        self.send_timeout = send_timeout
        self.ack_timeout = ack_timeout

    async def send(
        self, conn: Connection, tag: str, pending: list[Message]
    ) -> tuple[bool, ConnectionFailed | None]:
        """Sends ``pending`` (all of them, or the first alone on a connection that is not kept alive) and
        marks those that got through ``done``. Returns whether any did, and the failure if not all."""
        stats = self._stats
        # A receiver that closes after one reply (deny_keepalive) gets one request per connection.
        batch = pending if conn.keepalive else pending[:1]
        acks: list[tuple[asyncio.Future[None], Message]] = []
        written: list[Message] = []
        failure: ConnectionFailed | None = None
        try:
            for m in batch:
                if m.sent:
                    stats.resent_events += m.events
                m.sent = True
                fut = await conn.send(
                    tag, m.payload, m.events, compressed=self.compression, ack=self.require_ack,
                    timeout=self.send_timeout,
                )  # fmt: skip
                written.append(m)
                stats.requests += 1
                stats.bytes += len(m.payload)
                if fut is None:
                    m.done = True
                    stats.events += m.events
                else:
                    acks.append((fut, m))
            if acks:
                futs = [f for f, _ in acks]
                _, not_done = await asyncio.wait(futs, timeout=self.ack_timeout)
                for fut, m in acks:
                    if fut.done() and not fut.cancelled() and fut.exception() is None:
                        m.done = True
                        stats.acks += 1
                        stats.events += m.events
                if not_done:
                    failure = ConnectionFailed(
                        "ack_timeout", f"no ack within {self.ack_timeout}s for {len(not_done)} request(s)"
                    )
                elif not all(m.done for _, m in acks):
                    failure = conn.failure or ConnectionFailed("lost", "the connection ended before the acks")
        except ConnectionFailed as exc:
            failure = exc
        except asyncio.CancelledError:
            conn.abort()
            raise
        lost = [m for m in written if not m.done]
        if lost and self.require_ack:
            stats.unacked_events += sum(m.events for m in lost)
        if failure is not None:
            conn.abort()
        return any(m.done for m in batch), failure
