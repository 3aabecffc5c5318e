"""A real, scriptable HTTP server for the HTTP output's tests, and helpers around it.

:class:`Recorder` is an aiohttp.web app on 127.0.0.1 (ephemeral port unless told) that records every
request (headers, raw body, decoded events, the client's address) and answers what the test scripted:
a queue of :class:`Reply` consumed one per request, then ``default``; or ``rule(request) -> Reply``.
It runs in the test's loop (``http_server`` fixture) or in a thread of its own (``threaded_server``) for
tests that block (the daemon's ForwardClient).

For tests of requests in flight at once it counts the requests open now (``open``, ``max_open``: read,
not yet answered) and may ``hold`` a request, once its body is read and before it is answered, on any
condition the test awaits (e.g. :meth:`Recorder.until_open`). A request is recorded when it is answered,
so ``requests`` is in the order of the answers.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
from aiohttp import web

from forwardd.model import Chunk, Event
from forwardd.outputs.http import HttpOutput

T0 = 1_700_000_000 * 10**9


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    #: "respond"; "hang" (never answer until the server stops); "close" (drop the connection unanswered).
    action: str = "respond"
    body: bytes = b""


@dataclass
class Seen:
    method: str
    path: str
    raw_path: str
    headers: dict[str, str]
    raw: bytes
    events: list[dict[str, Any]]
    peer: tuple[Any, ...]
    peercert: dict[str, Any] | None
    status: int | None  # what was answered; None for hang/close


def decode_body(headers: dict[str, str], raw: bytes) -> list[dict[str, Any]]:
    """The events of a request body, by its Content-Encoding and Content-Type."""
    data = gzip.decompress(raw) if headers.get("content-encoding") == "gzip" else raw
    ctype = headers.get("content-type", "").split(";")[0].strip()
    if ctype == "application/x-ndjson":
        assert data.endswith(b"\n"), "NDJSON body must end with a newline"
        return [json.loads(line) for line in data.split(b"\n")[:-1]]
    if ctype == "application/json":
        value = json.loads(data)
        assert isinstance(value, list)
        return value
    if ctype == "application/msgpack":
        value = msgpack.unpackb(data, raw=False, strict_map_key=False)
        assert isinstance(value, list)
        return value
    raise AssertionError(f"unexpected content type {ctype!r}")


class Recorder:
    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.script: deque[Reply] = deque()
        self.default = Reply()
        self.rule: Callable[[Seen], Reply | None] | None = None
        self.requests: list[Seen] = []
        self.cond = threading.Condition()
        self.port = 0
        #: Awaited for each request once its body is read, before it is answered (on the server's loop).
        self.hold: Callable[[Seen], Awaitable[None]] | None = None
        #: Requests being handled now, and the most at once so far.
        self.open = 0
        self.max_open = 0
        self._runner: web.AppRunner | None = None
        self._release: asyncio.Event | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def events(self, status: int = 200) -> list[dict[str, Any]]:
        """Events of requests answered with ``status``, in arrival order."""
        with self.cond:
            return [e for r in self.requests if r.status == status for e in r.events]

    def peers(self) -> set[tuple[Any, ...]]:
        with self.cond:
            return {r.peer for r in self.requests}

    def wait_until(self, predicate: Callable[[Recorder], bool], timeout: float = 15.0) -> None:
        """Block until ``predicate(self)`` holds after some request (for threaded use)."""
        with self.cond:
            if not self.cond.wait_for(lambda: predicate(self), timeout):
                raise AssertionError(f"condition not met in {timeout}s; {len(self.requests)} requests")

    async def until_open(self, n: int, timeout: float) -> bool:
        """Wait (on the server's loop) until ``n`` requests are open at once; False if not within
        ``timeout`` seconds. Checked as each request opens, so a moment of ``n`` open is never missed."""
        if self.open >= n:
            return True
        waiter = (n, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter[1], timeout)
        except TimeoutError:
            return False
        finally:
            self._waiters.remove(waiter)
        return True

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        for n, opened in self._waiters:
            if self.open >= n and not opened.done():
                opened.set_result(None)
        try:
            return await self._answer(request)
        finally:
            self.open -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        headers = {k.lower(): v for k, v in request.headers.items()}
        peer = request.transport.get_extra_info("peername")
        cert = request.transport.get_extra_info("peercert")
        seen = Seen(request.method, request.path, request.raw_path, headers, b"", [], peer, cert, None)
        with self.cond:
            reply = self.rule(seen) if self.rule is not None else None
            if reply is None:
                reply = self.script.popleft() if self.script else self.default
        if reply.action == "close":
            # Mid-request: headers read, body unread, no answer.
            request.transport.close()
            with self.cond:
                self.requests.append(seen)
                self.cond.notify_all()
            assert self._release is not None
            await self._release.wait()
            return web.Response(status=500)
        seen.raw = await request.read()
        seen.events = decode_body(headers, seen.raw)
        if self.hold is not None:
            await self.hold(seen)
        if reply.action == "hang":
            with self.cond:
                self.requests.append(seen)
                self.cond.notify_all()
            assert self._release is not None
            await self._release.wait()
            return web.Response(status=500)
        seen.status = reply.status
        with self.cond:
            self.requests.append(seen)
            self.cond.notify_all()
        return web.Response(status=reply.status, headers=reply.headers, body=reply.body)

    async def start(self, port: int = 0) -> None:
        self._release = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # auto_decompress=False: the tests must see the gzip bytes the client really sent.
        self._runner = web.AppRunner(app, auto_decompress=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=self.ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._release is not None:
            self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class ThreadedRecorder:
    """A Recorder on its own loop and thread: for tests that block the calling thread."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.recorder = Recorder(ssl_context)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="http-recorder", daemon=True)
        self.thread.start()
        self.running = False

    def start(self, port: int = 0) -> None:
        asyncio.run_coroutine_threadsafe(self.recorder.start(port), self.loop).result(10)
        self.running = True

    def stop(self) -> None:
        if self.running:
            asyncio.run_coroutine_threadsafe(self.recorder.stop(), self.loop).result(10)
            self.running = False

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
async def http_server() -> AsyncIterator[Recorder]:
    server = Recorder()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def threaded_server() -> Iterator[ThreadedRecorder]:
    server = ThreadedRecorder()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def make_output() -> AsyncIterator[Callable[..., HttpOutput]]:
    """Builds started-on-first-write outputs and stops every one of them at teardown."""
    made: list[HttpOutput] = []

    def make(endpoint: str, **kwargs: Any) -> HttpOutput:
        out = HttpOutput(name=kwargs.pop("name", "web"), endpoint=endpoint, **kwargs)
        made.append(out)
        return out

    try:
        yield make
    finally:
        for out in made:
            await out.stop()


def make_chunk(tag: str, records: list[dict[str, Any]], t0: int = T0) -> Chunk:
    """A chunk as the buffer hands it over: entries bytes, not yet decoded."""
    events = [Event(t0 + i * 1000, r) for i, r in enumerate(records)]
    built = Chunk.from_events(tag, events, t0)
    return Chunk(tag, built.entries, built.count, built.received_ns)
