"""A forward source: its TCP (optionally TLS) or Unix listener, its UDP heartbeat, its sessions.

Port 0 binds an ephemeral port (tests, the embedded test server); the UDP heartbeat then takes the same
number. ``reuse_port`` lets several worker processes share one port (``SO_REUSEPORT``), the kernel spreading
connections between them. Shutdown follows uvicorn's order: stop accepting, let each session send the acks
it owes as its chunks are accepted, close; after the grace period, abort what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import stat
from dataclasses import dataclass

import structlog

from forwardd.server.budget import BufferBudget
from forwardd.server.logs import EdgeLog
from forwardd.server.session import Session, SessionSettings
from forwardd.server.stats import SourceStats
from forwardd.server.tls import TlsSettings, server_context
from forwardd.sink import Gate, Ingest

__all__ = ["ForwardListener", "ListenerSettings"]

log = structlog.get_logger("forwardd.server")


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    name: str
    session: SessionSettings
    bind: str = "0.0.0.0"
    port: int = 24224
    unix_path: str | None = None
    unix_mode: int = 0o660
    udp_heartbeat: bool = True
    tls: TlsSettings | None = None
    max_connections: int = 10000
    #: Bytes all connections may hold at once (incomplete frames, big requests being finished); beyond
    #: it, those holding some stop reading until it falls. 0: no budget.
    max_buffered_bytes: int = 256 * 1024 * 1024
    reuse_port: bool = False
    backlog: int = 1024


class _Heartbeat(asyncio.DatagramProtocol):
    """Fluentd's UDP heartbeat: any datagram is answered with one 0x00 byte to its sender."""

    def __init__(self, stats: SourceStats) -> None:
        self.stats = stats
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no DatagramTransport subclass

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.stats.heartbeats += 1
        if self.transport is not None:
            self.transport.sendto(b"\x00", addr)


class ForwardListener:
    """One configured forward source."""

    def __init__(
        self,
        settings: ListenerSettings,
        ingest: Ingest,
        stats: SourceStats | None = None,
        gate: Gate | None = None,
    ) -> None:
        """``stats``: a reload replacing a source of the same name goes on counting where it was.
        ``gate``: the ingest path's back-pressure across connections (the router's, see Gate)."""
        self.settings = settings
        self.ingest = ingest
        self.gate = gate
        self.stats = SourceStats() if stats is None else stats
        self.sessions: set[Session] = set()
        self._server: asyncio.base_events.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._log = EdgeLog(log)
        self.budget = BufferBudget(settings.max_buffered_bytes, settings.name, self.stats, self._log.log)
        self._tls: ssl.SSLContext | None = None
        self._flusher: asyncio.TimerHandle | None = None
        self.port: int | None = None
        self.address: str | None = None
        #: Its listening socket went to the listener that replaced it (a reload): not closed, not unlinked.
        self._handed_over = False

    @property
    def serving(self) -> bool:
        """Whether it accepts connections now (started and not stopped)."""
        return self._server is not None and self._server.is_serving()

    def _session(self) -> asyncio.Protocol:
        if len(self.sessions) >= self.settings.max_connections:
            self.stats.refused_connections += 1
            return _Refuse(self._log, self.settings.name, self.settings.max_connections)
        s = Session(
            self.settings.session,
            self.ingest,
            self.stats,
            self.sessions.discard,
            self._log,
            self.budget,
            self._tls,
            self.gate,
        )
        self.sessions.add(s)
        return s

    def _flush_logs(self) -> None:
        """Say how many per-connection lines were suppressed in the last period (none go unmentioned)."""
        self._log.flush()
        self._flusher = asyncio.get_running_loop().call_later(self._log.period, self._flush_logs)

    async def start(self, take_from: ForwardListener | None = None, *, serve: bool = True) -> None:
        """Bind and accept. ``take_from``: a listener on the same address that this one replaces (a
        reload): its listening socket (and UDP heartbeat) is taken over, so that no connection is refused
        in between; it stops accepting at once and its connections are left to drain. ``serve=False``
        binds without accepting yet (:meth:`serve`): a reload binds new addresses before it changes
        anything, so that an address in use refuses the reload and leaves the running configuration."""
        loop = asyncio.get_running_loop()
        self._flusher = loop.call_later(self._log.period, self._flush_logs)
        s = self.settings
        # TLS is not given to the server: each session does its handshake, so that a failed one is seen.
        ssl_ctx = self._tls = server_context(s.tls) if s.tls is not None else None
        taken = take_from._give_socket() if take_from is not None else None
        if s.unix_path is not None:
            path = s.unix_path
            if taken is None:
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISSOCK(os.stat(path).st_mode):
                        os.unlink(path)  # a stale socket from a previous run
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # noqa: ASYNC240
                self._server = await loop.create_unix_server(
                    self._session, path, backlog=s.backlog, start_serving=serve
                )
            else:
                self._server = await loop.create_unix_server(
                    self._session, sock=taken, backlog=s.backlog, start_serving=serve
                )
            os.chmod(path, s.unix_mode)
            self.address = path
            self._log.log(
                "info",
                "listener.started",
                listener=s.name,
                unix=path,
                mode=oct(s.unix_mode),
                tls=ssl_ctx is not None,
            )
            return
        if taken is None:
            self._server = await loop.create_server(
                self._session,
                s.bind,
                s.port,
                reuse_port=s.reuse_port or None,
                backlog=s.backlog,
                start_serving=serve,
            )
        else:
            self._server = await loop.create_server(
                self._session, sock=taken, backlog=s.backlog, start_serving=serve
            )
        sock = self._server.sockets[0]
        self.address, self.port = sock.getsockname()[:2]
        if take_from is not None and take_from._udp is not None and s.udp_heartbeat:
            self._udp, take_from._udp = take_from._udp, None
            protocol = self._udp.get_protocol()
            if isinstance(protocol, _Heartbeat):
                protocol.stats = self.stats
        if s.udp_heartbeat and self._udp is None:
            family = socket.AF_INET6 if ":" in s.bind else socket.AF_INET
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: _Heartbeat(self.stats),
                local_addr=(s.bind, self.port),
                family=family,
                reuse_port=s.reuse_port or None,
            )
        self._log.log(
            "info",
            "listener.started",
            listener=s.name,
            bind=self.address,
            port=self.port,
            tls=ssl_ctx is not None,
            udp_heartbeat=s.udp_heartbeat,
        )

    async def serve(self) -> None:
        """Accept, after a ``start(serve=False)``."""
        if self._server is not None and not self._server.is_serving():
            await self._server.start_serving()

    def _give_socket(self) -> socket.socket:
        """The listening socket, for the listener that replaces this one; this one stops accepting."""
        assert self._server is not None, "start() first"
        own = self._server.sockets[0]
        sock = socket.fromfd(own.fileno(), own.family, own.type)  # a dup: it outlives our close
        sock.setblocking(False)
        self._handed_over = True
        self._server.close()
        return sock

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting; give sessions ``grace`` seconds to send the acks they owe; abort the rest."""
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        if self._server is not None:
            self._server.close()
        if self._udp is not None:
            self._udp.close()
        sessions = list(self.sessions)
        if sessions:
            _done, pending = await asyncio.wait(
                [asyncio.ensure_future(x.drain()) for x in sessions], timeout=grace
            )
            for t in pending:
                t.cancel()
            for x in sessions:
                x.abort()
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        if self.settings.unix_path is not None and not self._handed_over:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.settings.unix_path)
        self._log.flush_all()
        self._log.log("info", "listener.stopped", listener=self.settings.name, **self.stats.as_dict())


class _Refuse(asyncio.Protocol):
    """Over the connection limit: close at once, say so in a (rate-limited) log line."""

    def __init__(self, edgelog: EdgeLog, listener: str, limit: int) -> None:
        self._log = edgelog
        self._listener = listener
        self._limit = limit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._log.limited(
            "warning",
            "conn.refused",
            listener=self._listener,
            peer=transport.get_extra_info("peername"),
            reason="connection limit",
            limit=self._limit,
        )
        transport.close()
