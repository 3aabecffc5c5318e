"""Real listeners on a loop in a background thread, so tests can use real blocking clients against them.

The server side runs exactly as in production (one event loop, asyncio.Protocol sessions); the test's
thread plays the client with plain sockets or :class:`~forwardd.testing.ForwardClient`. Everything that
must touch the server's objects goes through :meth:`LoopThread.call` / :meth:`LoopThread.run`.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any, TypeVar

from forwardd.model import Chunk
from forwardd.protocol import Limits
from forwardd.server.listener import ForwardListener, ListenerSettings
from forwardd.server.session import SessionSettings
from forwardd.sink import Ingest
from forwardd.testing import CaptureSink, ForwardClient

T = TypeVar("T")


class LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self, kind: str = "asyncio") -> None:
        self.kind = kind
        if kind == "uvloop":
            import uvloop

            self.loop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="server-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Coroutine[Any, Any, T]) -> Any:
        """Start ``coro`` on the loop without waiting; returns a concurrent future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        async def wrapper() -> T:
            return fn(*args)

        return self.run(wrapper())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class HeldIngest:
    """An ingest whose acceptances the test resolves itself (from the test thread), in any order."""

    def __init__(self, lt: LoopThread) -> None:
        self.lt = lt
        self.chunks: list[Chunk] = []
        self.futures: list[asyncio.Future[None]] = []
        self._cond = threading.Condition()

    def __call__(self, chunk: Chunk) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._cond:
            self.chunks.append(chunk)
            self.futures.append(fut)
            self._cond.notify_all()
        return fut

    def wait(self, n: int, timeout: float = 10.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.futures) >= n, timeout):
                raise AssertionError(f"ingest got {len(self.futures)} chunks, expected {n}")

    @property
    def count(self) -> int:
        with self._cond:
            return len(self.futures)

    def resolve(self, i: int, exc: BaseException | None = None) -> None:
        """Resolve acceptance ``i`` and return once the callbacks it triggers (the session's) have run."""

        async def go() -> None:
            fut = self.futures[i]
            marker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)
            # Done callbacks run in registration order: ours was added last, so the session's ran.
            fut.add_done_callback(lambda _f: marker.set_result(None))
            await marker

        self.lt.run(go())

    def resolve_all(self) -> None:
        for i, fut in enumerate(list(self.futures)):
            if not fut.done():
                self.resolve(i)


class Served:
    """A started listener plus what a test needs to drive it."""

    def __init__(self, lt: LoopThread, listener: ForwardListener, sink: CaptureSink | None) -> None:
        self.lt = lt
        self.listener = listener
        self.sink = sink
        self.stopped = False

    @property
    def port(self) -> int:
        assert self.listener.port is not None
        return self.listener.port

    @property
    def stats(self) -> Any:
        return self.listener.stats

    def client(self, **kw: Any) -> ForwardClient:
        if self.listener.settings.unix_path is not None:
            return ForwardClient(unix_path=self.listener.settings.unix_path, **kw)
        return ForwardClient("127.0.0.1", self.port, **kw)

    def raw(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def stop(self, grace: float = 2.0) -> None:
        if not self.stopped:
            self.stopped = True
            self.lt.run(self.listener.stop(grace=grace), timeout=grace + 10)


def make_listener(
    lt: LoopThread,
    ingest: Ingest | None = None,
    *,
    listener_kw: dict[str, Any] | None = None,
    **session_kw: Any,
) -> Served:
    """Start a listener on 127.0.0.1 (ephemeral port) or a Unix socket; a CaptureSink if no ingest."""
    sink = None
    if ingest is None:
        sink = CaptureSink()
        ingest = sink.submit
    session = SessionSettings(listener="t", limits=session_kw.pop("limits", Limits()))
    session = replace(session, **session_kw)
    lkw: dict[str, Any] = {"bind": "127.0.0.1", "port": 0, "udp_heartbeat": False}
    lkw.update(listener_kw or {})
    listener = ForwardListener(ListenerSettings(name="t", session=session, **lkw), ingest)
    lt.run(listener.start())
    return Served(lt, listener, sink)


def wait_until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``pred`` until true: only for server counters, which have no event to wait on."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.002)


def no_data_within(sock: socket.socket, timeout: float) -> bool:
    """True if nothing (not even EOF) arrives on ``sock`` within ``timeout``: asserting an absence."""
    sock.settimeout(timeout)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except TimeoutError:
        return True
    return False
