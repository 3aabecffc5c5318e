"""The whole daemon (sources, routes, filters, buffers, outputs) in-process, for end-to-end tests.

``run_daemon(config)`` starts :class:`forwardd.app.Daemon` on an event loop in a background thread and
yields it; sources configured with ``port: 0`` get an ephemeral port, readable from :meth:`port`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from forwardd.app.config import Config, parse_config

__all__ = ["RunningDaemon", "run_daemon"]


class RunningDaemon:
    def __init__(self, daemon: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.daemon = daemon
        self.loop = loop

    def port(self, source: str | None = None) -> int:
        for listener in self.daemon.listeners:
            if source is None or listener.settings.name == source:
                assert listener.port is not None
                return int(listener.port)
        raise KeyError(source)

    def received(self) -> int:
        """Events received by every source so far (accepted or not)."""
        return sum(listener.stats.events for listener in self.daemon.listeners)

    def wait_received(self, n: int, timeout: float = 10.0) -> None:
        """Wait until the sources have received ``n`` events, for clients that get no acks."""
        deadline = time.monotonic() + timeout
        while self.received() < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {n} events within {timeout}s, received {self.received()}")
            time.sleep(0.01)

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the daemon's loop (a coroutine function is awaited) and return its result."""

        async def run() -> Any:
            result = fn(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)


@contextlib.contextmanager
def run_daemon(config: Config | Mapping[str, Any] | str, *, grace: float = 5.0) -> Iterator[RunningDaemon]:
    """Start the daemon for the ``with`` block; ``config`` is a Config, a dict or YAML text."""
    from forwardd.app import Daemon

    if isinstance(config, str):
        config = parse_config(config)
    elif not isinstance(config, Config):
        config = Config.model_validate(dict(config))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="forwardd-daemon", daemon=True)
    thread.start()
    daemon = asyncio.run_coroutine_threadsafe(_make(Daemon, config), loop).result(30)
    try:
        asyncio.run_coroutine_threadsafe(daemon.start(), loop).result(60)
        yield RunningDaemon(daemon, loop)
    finally:
        asyncio.run_coroutine_threadsafe(daemon.stop(grace), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def _make(factory: Any, config: Config) -> Any:
    # Built on the loop: queues and events bind to the running loop.
    return factory(config)
