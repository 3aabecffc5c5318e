"""The operators' HTTP endpoint (aiohttp): ``/metrics``, ``/health``, ``/ready``, ``/status``.

It serves whatever status its ``read`` gives: in a single process, the daemon's own snapshot, read at
request time on the daemon's loop; with ``workers: N``, the parent process's sum of every worker's
(:mod:`forwardd.ops.workers`). ``/health`` only says that the process answers (and, with workers, that
none of them has exited): an orchestrator restarts on it, so a busy or failing output must not fail it.
``/ready`` is for load balancers and deploys: 503 with the reasons as JSON while a listener is down, an
output is stuck or a buffer is full.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from forwardd.ops.collector import StatusCollector
from forwardd.ops.snapshot import Status

__all__ = ["Endpoint"]

log = structlog.get_logger("forwardd.ops")

#: The status now (read at request time).
ReadStatus = Callable[[], Awaitable[Status]]
#: None when alive, else why not.
ReadHealth = Callable[[], str | None]


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


class Endpoint:
    """The aiohttp application and its site, on the running loop."""

    def __init__(self, read: ReadStatus, health: ReadHealth | None = None) -> None:
        self._read = read
        self._health = health
        self._runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health_handler)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/status", self._status)
        self.app = app

    async def start(
        self, *, host: str | None = None, port: int | None = None, sock: socket.socket | None = None
    ) -> None:
        """Listen on ``host:port``, or on an already bound ``sock`` (the parent binds before forking)."""
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runner = runner
        site: web.BaseSite
        if sock is not None:
            site = web.SockSite(runner, sock)
        else:
            site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            self._runner = None
            raise
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or ([sock] if sock is not None else [])
        if sockets:
            name = sockets[0].getsockname()
            self.address = (str(name[0]), int(name[1]))
        log.info(
            "http_server.started",
            bind=self.address[0] if self.address else host,
            port=self.address[1] if self.address else port,
            paths=["/metrics", "/health", "/ready", "/status"],
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _request: web.Request) -> web.Response:
        status = await self._read()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StatusCollector(status))
        body = generate_latest(registry)
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def _health_handler(self, _request: web.Request) -> web.Response:
        problem = self._health() if self._health is not None else None
        if problem is not None:
            return _json({"status": "down", "reason": problem}, 503)
        return _json({"status": "ok"})

    async def _ready(self, _request: web.Request) -> web.Response:
        status = await self._read()
        if status["ready"]:
            return _json({"ready": True})
        return _json({"ready": False, "reasons": status["reasons"]}, 503)

    async def _status(self, _request: web.Request) -> web.Response:
        return _json(await self._read())
