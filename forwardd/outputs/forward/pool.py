"""The forward output's connections between writes: opening them the way the receivers want (TLS, the
HELO/PING/PONG handshake) and keeping them alive for the next writes.

Apart from the write path because reusing a connection has rules of its own: a connection is kept
(``keepalive``) while its endpoint is still one of the balancer's and the receiver did not refuse
keep-alive, up to ``max_idle`` per endpoint (the writes that may be in flight at once: each takes a
connection of its own, so its acks are matched on it alone), and replaced once it is older than
``keepalive_timeout`` or closed. Heartbeat probes open connections here too, without counting them as
connects.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from forwardd.outputs.forward.balance import Balancer, Endpoint
from forwardd.outputs.forward.connection import Connection
from forwardd.outputs.forward.stats import ForwardStats
from forwardd.protocol.client import ClientSecurity

__all__ = ["Pool"]


class Pool:
    """Connections to the balancer's endpoints (each endpoint holds its idle ones: ``Endpoint.idle``)."""

    def __init__(
        self,
        balancer: Balancer,
        stats: ForwardStats,
        *,
        ssl_context: ssl.SSLContext | None,
        tls_server_name: str | None,
        security: ClientSecurity | None,
        connect_timeout: float,
        keepalive: bool,
        keepalive_timeout: float,
        clock: Callable[[], float],
        max_idle: int = 1,
    ) -> None:
        self.balancer = balancer
        self._stats = stats
        self.ssl_context = ssl_context
        self.tls_server_name = tls_server_name
        self.security = security
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self.keepalive_timeout = keepalive_timeout
        self._clock = clock
        self.max_idle = max_idle
        #: Set by the output's stop: a write that ends later closes its connection instead of keeping it.
        self.closing = False

    async def open(self, ep: Endpoint, *, count: bool = True) -> Connection:
        conn = await Connection.open(
            ep.address,
            ep.port,
            ssl_context=self.ssl_context,
            server_hostname=self.tls_server_name or ep.server.host,
            security=self.security,
            timeout=self.connect_timeout,
        )
        if count:  # heartbeat probes are counted as heartbeats
            self._stats.connects += 1
        return conn

    async def probe(self, ep: Endpoint) -> None:
        """A transport heartbeat: a connection opened as a write would open it, then closed."""
        conn = await self.open(ep, count=False)
        await conn.close()

    async def checkout(self, ep: Endpoint) -> tuple[Connection, bool]:
        """A connection to ``ep`` for one write alone: its most recently used idle one if still good
        (True), else a new one (False). An idle one the receiver ended is found here, before a request is
        written to it (``stale_connections``); those past ``keepalive_timeout`` are closed."""
        idle = ep.idle
        now = self._clock()
        expired = 0
        while expired < len(idle) and now - idle[expired].idle_since >= self.keepalive_timeout:
            expired += 1  # oldest first: these are older still than any kept
        ended = idle[:expired]
        del idle[:expired]
        found: Connection | None = None
        while idle and found is None:
            conn = idle.pop()
            if conn.ended_by_peer():
                self._stats.stale_connections += 1
                ended.append(conn)
            else:
                found = conn
        if ended:
            await asyncio.gather(*(conn.close() for conn in ended))
        if found is not None:
            return found, True
        return await self.open(ep), False

    async def checkin(self, ep: Endpoint, conn: Connection) -> None:
        live = any(e is ep for e in self.balancer.endpoints)
        keep = self.keepalive and conn.keepalive and not conn.closed and live and not self.closing
        if keep and len(ep.idle) < self.max_idle:
            conn.idle_since = self._clock()
            ep.idle.append(conn)
        else:
            await conn.close()

    async def drop_idle(self, ep: Endpoint) -> None:
        conns, ep.idle = ep.idle, []
        await asyncio.gather(*(conn.close() for conn in conns))
