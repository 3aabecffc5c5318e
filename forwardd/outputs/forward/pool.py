"""The forward output's connections between writes: opening them the way the receivers want (TLS, the
HELO/PING/PONG handshake) and keeping one alive per endpoint.

Apart from the write path because reusing a connection has rules of its own: one idle connection per
endpoint is kept (``keepalive``) while the endpoint is still one of the balancer's and the receiver did
not refuse keep-alive, and it is replaced once it is older than ``keepalive_timeout`` or closed. Heartbeat
probes open connections here too, without counting them as connects.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

from forwardd.outputs.forward.balance import Balancer, Endpoint
from forwardd.outputs.forward.connection import Connection
from forwardd.outputs.forward.stats import ForwardStats
from forwardd.protocol.client import ClientSecurity

__all__ = ["Pool"]


class Pool:
    """Connections to the balancer's endpoints (each endpoint holds its idle one: ``Endpoint.idle``)."""

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
        """A connection to ``ep``: its idle one if still good (True), else a new one (False). An idle one
        the receiver ended is found here, before a request is written to it (``stale_connections``)."""
        conn = ep.idle
        ep.idle = None
        if conn is not None:
            if self._clock() - ep.idle_since >= self.keepalive_timeout:
                await conn.close()
            elif conn.ended_by_peer():
                self._stats.stale_connections += 1
                await conn.close()
            else:
                return conn, True
        return await self.open(ep), False

    async def checkin(self, ep: Endpoint, conn: Connection) -> None:
        live = any(e is ep for e in self.balancer.endpoints)
        if self.keepalive and conn.keepalive and not conn.closed and live and ep.idle is None:
            ep.idle = conn
            ep.idle_since = self._clock()
        else:
            await conn.close()

    async def drop_idle(self, ep: Endpoint) -> None:
        conn, ep.idle = ep.idle, None
        if conn is not None:
            await conn.close()
