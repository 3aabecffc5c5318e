"""Fixtures: a server loop in a background thread, and a factory of listeners stopped at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .support import LoopThread, Served, make_listener


@pytest.fixture(params=["asyncio", "uvloop"])
def lt(request: pytest.FixtureRequest) -> Iterator[LoopThread]:
    """The server's loop: plain asyncio, and uvloop as the daemon runs it in production."""
    loop_thread = LoopThread(request.param)
    yield loop_thread
    loop_thread.close()


@pytest.fixture
def serve(lt: LoopThread) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def factory(ingest: Any = None, **kw: Any) -> Served:
        served = make_listener(lt, ingest, **kw)
        started.append(served)
        return served

    yield factory
    for served in started:
        if served.sink is not None:
            lt.call(served.sink.release_acks)
        served.stop(grace=0.5)
