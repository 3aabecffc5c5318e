"""How a daemon takes part in the operators' endpoint: it serves it (one process), answers the parent's
requests for its snapshot (``workers: N``), or does nothing (no ``http_server``: no port, no cost).

The daemon calls :meth:`OpsHook.start` before anything else starts, so that ``/health`` answers while the
buffers recover and ``/ready`` says 503 until the listeners are up, and :meth:`OpsHook.stop` after
everything else has stopped.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import orjson

from forwardd.ops.snapshot import DaemonView, Status, merge, snapshot

__all__ = ["OpsHook", "attach"]


class OpsHook:
    """Nothing to serve (the default: no ``http_server``)."""

    async def start(self) -> None:
        """Start serving."""

    async def stop(self) -> None:
        """Stop serving."""


class _LocalEndpoint(OpsHook):
    """One process: the endpoint on the daemon's own loop, reading its live counters per request."""

    def __init__(self, daemon: DaemonView) -> None:
        from forwardd.ops.endpoint import Endpoint  # aiohttp and prometheus_client only when configured

        self.daemon = daemon
        self.endpoint = Endpoint(self._read)

    async def _read(self) -> Status:
        return merge([snapshot(self.daemon)], [self.daemon.worker])

    async def start(self) -> None:
        settings = self.daemon.config.http_server
        assert settings is not None  # attach() makes a local endpoint only when http_server is set
        await self.endpoint.start(host=settings.bind, port=settings.port)

    async def stop(self) -> None:
        await self.endpoint.stop()


class _Answer(asyncio.Protocol):
    """A worker's end of its pipe to the parent: each line ``<id>`` is answered ``<id> <snapshot JSON>``."""

    def __init__(self, daemon: DaemonView) -> None:
        self.daemon = daemon
        self.transport: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\n" in self.buf:
            line, _, self.buf = self.buf.partition(b"\n")
            if self.transport is not None:
                self.transport.write(line + b" " + orjson.dumps(snapshot(self.daemon)) + b"\n")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class _WorkerAnswer(OpsHook):
    """``workers: N``: the parent serves the endpoint; this worker answers it through ``channel``."""

    def __init__(self, daemon: DaemonView, channel: socket.socket) -> None:
        self.daemon = daemon
        self.channel = channel
        self.transport: Any = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.connect_accepted_socket(lambda: _Answer(self.daemon), self.channel)

    async def stop(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


def attach(daemon: DaemonView, channel: socket.socket | None = None) -> OpsHook:
    """The daemon's part in the endpoint (see the module doc); ``channel`` is its pipe to the parent."""
    if channel is not None:
        return _WorkerAnswer(daemon, channel)
    if daemon.config.http_server is not None:
        return _LocalEndpoint(daemon)
    return OpsHook()
