"""One TCP (or TLS) connection to a receiver, around the sans-IO :class:`ClientConnection`, and the TLS
client context connections are opened with.

A reader task feeds what the receiver sends to the protocol core and resolves the future of each chunk id
as its ack comes; a protocol error or the end of the stream fails every future still waiting, so a write
never waits on a dead connection longer than it takes the kernel to say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import ssl
import time
from typing import Any

from forwardd.protocol.client import (
    Acked,
    ClientConnection,
    ClientProtocolError,
    ClientSecurity,
    Compression,
    HandshakeDone,
    HandshakeRefused,
)

__all__ = ["Connection", "ConnectionFailed", "client_tls_context"]

_READ = 64 * 1024
#: What makes an idle connection's socket unusable: bytes or a FIN to read, a reset, a hang-up.
_ENDED = select.POLLIN | select.POLLRDHUP | select.POLLERR | select.POLLHUP


def client_tls_context(
    *,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    key_password: str | None = None,
    verify: bool = True,
    min_version: str = "1.2",
) -> ssl.SSLContext:
    """A TLS client context: the system's roots or ``ca_file``, a client certificate for mutual TLS."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file, password=key_password)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class ConnectionFailed(Exception):
    """The connection cannot be used (any more). ``kind`` names the stage for stats and logs: connect,
    tls, handshake, refused (the receiver refused the handshake), send_timeout, lost, protocol."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Connection:
    """An open connection: handshake done, ready for requests."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: ClientConnection
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.client = client
        self.opened = time.monotonic()
        self.failure: ConnectionFailed | None = None
        self._acks: dict[bytes, asyncio.Future[None]] = {}
        self._handshake: asyncio.Future[HandshakeDone] = asyncio.get_running_loop().create_future()
        if client.ready:
            self._handshake.set_result(HandshakeDone("", True))
        self._task = asyncio.create_task(self._read(), name="forward-out-reader")
        #: Requests sent on this connection (with deny_keepalive a receiver closes after the first reply).
        self.requests = 0
        #: When it was last put back in the pool (the pool's clock).
        self.idle_since = 0.0

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        server_hostname: str | None,
        security: ClientSecurity | None,
        timeout: float,
    ) -> Connection:
        """Connect (TLS handshake included) and complete the forward handshake, all within ``timeout``."""
        stage = "connect"
        try:
            async with asyncio.timeout(timeout):
                try:
                    reader, writer = await asyncio.open_connection(
                        host, port, ssl=ssl_context, server_hostname=server_hostname if ssl_context else None,
                        limit=_READ,
                    )  # fmt: skip
                except ssl.SSLError as exc:
                    raise ConnectionFailed("tls", f"TLS handshake with {host}:{port} failed: {exc}") from None
                except OSError as exc:
                    raise ConnectionFailed("connect", f"cannot connect to {host}:{port}: {exc}") from None
                conn = cls(reader, writer, ClientConnection(security))
                stage = "handshake"
                try:
                    await asyncio.shield(conn._handshake)
                except BaseException:
                    conn.abort()
                    raise
        except TimeoutError:
            what = "no connection" if stage == "connect" else "no HELO/PONG handshake"
            raise ConnectionFailed(stage, f"{host}:{port}: {what} within {timeout}s") from None
        return conn

    @property
    def closed(self) -> bool:
        return self.failure is not None or self._writer.is_closing()

    def ended_by_peer(self) -> bool:
        """Whether this idle connection is unusable, looking at its socket itself: the receiver's FIN (or
        anything else: an idle connection is owed nothing) may be there before the reader task had a turn
        to see it, and a request written after it is lost without an ack."""
        if self.closed:
            return True
        sock = self._writer.get_extra_info("socket")
        if sock is None:
            return False
        try:
            poller = select.poll()
            poller.register(sock.fileno(), _ENDED)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True

    @property
    def keepalive(self) -> bool:
        return self.client.keepalive

    async def _read(self) -> None:
        reader = self._reader
        try:
            while True:
                data = await reader.read(_READ)
                if not data:
                    self._fail(ConnectionFailed("lost", "the receiver closed the connection"))
                    return
                try:
                    events = self.client.receive_data(data)
                except HandshakeRefused as exc:
                    self._fail(ConnectionFailed("refused", str(exc)))
                    return
                except ClientProtocolError as exc:
                    kind = "handshake" if not self._handshake.done() else "protocol"
                    self._fail(ConnectionFailed(kind, str(exc)))
                    return
                out = self.client.data_to_send()
                if out:
                    self._writer.write(out)
                for ev in events:
                    if type(ev) is Acked:
                        fut = self._acks.pop(ev.chunk_id, None)
                        if fut is not None and not fut.done():
                            fut.set_result(None)
                    elif type(ev) is HandshakeDone and not self._handshake.done():
                        self._handshake.set_result(ev)
        except (OSError, ssl.SSLError) as exc:
            self._fail(ConnectionFailed("lost", f"connection error: {exc}"))
        except asyncio.CancelledError:
            self._fail(ConnectionFailed("lost", "connection closed"))
            raise

    def _fail(self, failure: ConnectionFailed) -> None:
        if self.failure is None:
            self.failure = failure
        futs: list[asyncio.Future[Any]] = [self._handshake, *self._acks.values()]
        for fut in futs:
            if not fut.done():
                fut.set_exception(self.failure)
                fut.exception()  # retrieved: nobody may be waiting on it any more
        self._acks.clear()
        self._writer.close()

    async def send(
        self, tag: str, payload: bytes, count: int, *, compressed: Compression, ack: bool, timeout: float
    ) -> asyncio.Future[None] | None:
        """Write one request; returns the future of its ack (None without ``ack``). Raises
        ConnectionFailed when the connection is gone or the bytes do not leave within ``timeout``."""
        if self.failure is not None:
            raise self.failure
        parts, chunk = self.client.request(tag, payload, count, compressed=compressed, ack=ack)
        fut: asyncio.Future[None] | None = None
        if chunk is not None:
            fut = asyncio.get_running_loop().create_future()
            self._acks[chunk] = fut
        self.requests += 1
        try:
            self._writer.writelines(parts)
            async with asyncio.timeout(timeout):
                await self._writer.drain()
        except TimeoutError:
            failure = ConnectionFailed(
                "send_timeout", f"could not send {len(payload)} bytes within {timeout}s"
            )
            self._fail(failure)
            raise failure from None
        except (OSError, ssl.SSLError, RuntimeError) as exc:
            self._fail(ConnectionFailed("lost", f"send failed: {exc}"))
            raise self.failure from None  # type: ignore[misc]
        return fut

    def abort(self) -> None:
        """Close at once (pending acks fail); used on every failure and when a connection is dropped."""
        self._fail(ConnectionFailed("lost", "connection closed by forwardd"))
        self._task.cancel()
        with contextlib.suppress(Exception):
            transport = self._writer.transport
            transport.abort()

    async def close(self) -> None:
        """Close politely (used when the connection is idle)."""
        if self.failure is None:
            self.failure = ConnectionFailed("lost", "connection closed by forwardd")
        self._task.cancel()
        self._writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
