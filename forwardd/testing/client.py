"""forwardd's own forward-protocol client: blocking sockets, every mode, acks, the handshake.

For tests (forwardd's and anyone's) that need more than fluent-logger offers: PackedForward,
compression, pipelined chunks, raw bytes, a handshake with a chosen key.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterable, Mapping
from typing import Any

import msgpack

from forwardd.protocol import encode
from forwardd.protocol.handshake import client_ping, verify_pong

__all__ = ["AckError", "ForwardClient"]


class AckError(AssertionError):
    """The server answered something other than the expected ack, or nothing in time."""


class ForwardClient:
    """A blocking client for one connection."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 24224,
        *,
        unix_path: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        timeout: float = 10.0,
        shared_key: str | None = None,
        hostname: str = "forwardd-client",
        username: str = "",
        password: str = "",
    ) -> None:
        self.timeout = timeout
        if unix_path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(unix_path)
        else:
            sock = socket.create_connection((host, port), timeout=timeout)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname or host)
        self.sock = sock
        self._unpacker = msgpack.Unpacker(raw=False)
        self.pong: list[Any] | None = None
        if shared_key is not None:
            self.handshake(shared_key, hostname=hostname, username=username, password=password)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ForwardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- raw I/O ----------------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_value(self, timeout: float | None = None) -> Any:
        """The next msgpack value from the server; raises AckError if none arrives in time or on EOF."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            try:
                return next(self._unpacker)
            except StopIteration:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                raise AckError("no reply from the server in time")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise AckError("no reply from the server in time") from None
            if not data:
                raise AckError("the server closed the connection")
            self._unpacker.feed(data)

    def closed_by_server(self, timeout: float | None = None) -> bool:
        """Whether the server closes the connection (EOF or reset) within ``timeout``, reading past data."""
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except OSError:
            return True
        return True

    # --- handshake ----------------------------------------------------------------------------------------

    def handshake(
        self, shared_key: str, *, hostname: str, username: str = "", password: str = ""
    ) -> list[Any]:
        helo = self.read_value()
        if not (isinstance(helo, list) and helo and helo[0] == "HELO"):
            raise AckError(f"expected HELO, got {helo!r}")
        ping, salt = client_ping(
            helo[1], hostname=hostname, shared_key=shared_key, username=username, password=password
        )
        self.send(ping)
        pong = self.read_value()
        self.pong = pong
        if not (isinstance(pong, list) and pong and pong[0] == "PONG"):
            raise AckError(f"expected PONG, got {pong!r}")
        if pong[1]:
            nonce = helo[1]["nonce"]
            if not verify_pong(pong, salt=salt, nonce=nonce, shared_key=shared_key):
                raise AckError("PONG digest does not match the shared key")
        return pong

    # --- requests -----------------------------------------------------------------------------------------

    def _ack(self, chunk: str | None) -> None:
        if chunk is None:
            return
        reply = self.read_value()
        if not (isinstance(reply, dict) and reply.get("ack") == chunk):
            raise AckError(f"expected ack {chunk!r}, got {reply!r}")

    def message(
        self, tag: str, record: Mapping[Any, Any], *, time_ns: int | None = None, ack: bool = False
    ) -> str | None:
        """Send one Message-mode event; with ``ack``, wait for its ack; returns the chunk id."""
        chunk = encode.new_chunk_id() if ack else None
        t = encode.event_time(time.time_ns() if time_ns is None else time_ns)
        self.send(encode.message(tag, t, record, chunk=chunk))
        self._ack(chunk)
        return chunk

    def forward(self, tag: str, records: Iterable[Mapping[Any, Any]], *, ack: bool = False) -> str | None:
        chunk = encode.new_chunk_id() if ack else None
        t = encode.event_time(time.time_ns())
        self.send(encode.forward(tag, [(t, r) for r in records], chunk=chunk))
        self._ack(chunk)
        return chunk

    def packed(
        self,
        tag: str,
        records: Iterable[Mapping[Any, Any]],
        *,
        ack: bool = False,
        compressed: str | None = None,
        wait: bool = True,
    ) -> str | None:
        """Send PackedForward (compressed with "gzip" or "zstd" if asked); ``wait=False`` pipelines."""
        chunk = encode.new_chunk_id() if ack else None
        t = encode.event_time(time.time_ns())
        self.send(encode.packed_forward(tag, [(t, r) for r in records], chunk=chunk, compressed=compressed))
        if wait:
            self._ack(chunk)
        return chunk

    def expect_ack(self, chunk: str) -> None:
        self._ack(chunk)
