"""Shared pieces of the forward output's tests: chunks with numbered events, an output with fast timers,
waiting on a condition (never a bare sleep), and the checks every delivery test makes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

from forwardd.model import Chunk, Event
from forwardd.outputs.forward import ForwardOutput, ServerSpec
from forwardd.testing import TestServer
from forwardd.testing.capture import CapturedEvent

T0 = 1_795_000_000 * 1_000_000_000


def chunk(tag: str, start: int, n: int, pad: int = 0) -> Chunk:
    """Events ``{"seq": start..start+n-1}`` (with ``pad`` bytes of text each) as one chunk."""
    events = [Event(T0 + i, {"seq": i, "pad": "x" * pad}) for i in range(start, start + n)]
    return Chunk.from_events(tag, events, time.time_ns())


def server(port: int, host: str = "127.0.0.1", **kw: Any) -> ServerSpec:
    return ServerSpec(host, port, **kw)


def output(servers: Sequence[ServerSpec], **kw: Any) -> ForwardOutput:
    """An output with test-sized timers; heartbeats off unless asked for (they open connections)."""
    settings: dict[str, Any] = {
        "heartbeat_type": "none",
        "heartbeat_interval": 0.05,
        "ack_response_timeout": 5.0,
        "connect_timeout": 2.0,
        "send_timeout": 5.0,
        "recover_wait": 0.0,
        "hard_timeout": 0.3,
    }
    settings.update(kw)
    return ForwardOutput(name="fwd", servers=servers, **settings)


@contextlib.asynccontextmanager
async def started(out: ForwardOutput) -> AsyncIterator[ForwardOutput]:
    await out.start()
    try:
        yield out
    finally:
        await out.stop()


async def wait_until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Wait for ``pred()`` to hold, checking every few ms; fails the test after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def seqs(events: Iterable[CapturedEvent], tag: str | None = None) -> list[int]:
    return [e.record["seq"] for e in events if tag is None or e.tag == tag]


def check_delivery(
    received: Sequence[int], expected: int, duplicates_bound: int, *, ordered: bool = True
) -> None:
    """Every event at least once, duplicates within the bound the output counted, and (``ordered``, one
    write at a time) no reordering beyond a re-send: the first occurrences come in order."""
    counts = Counter(received)
    assert set(counts) == set(range(expected)), f"missing: {sorted(set(range(expected)) - set(counts))[:20]}"
    dups = sum(c - 1 for c in counts.values())
    assert dups <= duplicates_bound, (dups, duplicates_bound)
    if not ordered:
        return
    seen: set[int] = set()
    firsts = []
    for s in received:
        if s not in seen:
            seen.add(s)
            firsts.append(s)
    assert firsts == sorted(firsts), "first occurrences out of order"


async def restart(srv: TestServer, **kw: Any) -> TestServer:
    """A new test server on the same address and port as ``srv`` (stopped already)."""
    again = TestServer(host=srv.host, port=srv.port, **kw)
    return await again.start()
