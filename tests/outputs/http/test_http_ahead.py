"""The HTTP output encodes its next body while a request is answered (one request at a time, order kept).

Through the real delivery loop (DiskQueue + BufferedSink) against the real aiohttp server, which holds each
request open (``Recorder.hold``) and looks at what the output has prepared meanwhile: the next chunk's
body is ready before the endpoint answers, and a chunk the loop takes ahead of its turn still arrives once,
in order, through a retry of the request before it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from forwardd.buffer import BufferedSink, DiskQueue, RetryPolicy
from forwardd.buffer.batching import Batching
from forwardd.outputs.http import HttpOutput
from tests.buffer.test_buffer_delivery import FakeTime

from . import helpers
from .conftest import Recorder, Reply, Seen, make_chunk
from .helpers import records

TIMEOUT = 15.0
PER_CHUNK = 10


async def sink(tmp_path: Path, endpoint: str) -> BufferedSink:
    """One chunk of PER_CHUNK events per batch (as 1000-event chunks are by default), so that the next
    batch is in the queue, not in the works, while a request is answered: the loop takes it ahead."""
    out = HttpOutput(name="web", endpoint=endpoint)
    q = DiskQueue(str(tmp_path / "q"), fsync="never")
    t = FakeTime()
    s = BufferedSink(
        "web", out, q, RetryPolicy(jitter=0.0), str(tmp_path / "dead"),
        clock=t.clock, sleep=t.sleep, rand=lambda: 1.0,
        batching=Batching(max_wait=5.0, max_events=PER_CHUNK),
    )  # fmt: skip
    await q.start()
    return s


async def submit(s: BufferedSink, chunks: int) -> None:
    for k in range(chunks):
        done = s.submit(make_chunk("app", records(PER_CHUNK, k * PER_CHUNK)))
        assert done is not None
        await asyncio.wait_for(done, TIMEOUT)


def first_seq(prepared: Any) -> int | None:
    """The first event's seq of the chunk the output holds encoded ahead, or None."""
    if prepared is None:
        return None
    return int(prepared[0].events()[0].record["seq"])


async def test_the_next_body_is_encoded_before_the_request_before_it_is_answered(
    tmp_path: Path, http_server: Recorder
) -> None:
    s = await sink(tmp_path, http_server.url + "/in")
    out = s.output
    assert isinstance(out, HttpOutput)
    prepared_while_open: list[int | None] = []

    async def hold(seen: Seen) -> None:  # the body is read; the client waits for the answer
        prepared_while_open.append(first_seq(out._ahead))

    http_server.hold = hold
    try:
        await submit(s, 4)
        await helpers.deliver_all(s, TIMEOUT)
    finally:
        await s.stop()
    # While chunk k was being answered, chunk k+1 was already encoded; nothing after the last.
    assert prepared_while_open == [10, 20, 30, None]
    assert [e["seq"] for e in http_server.events(200)] == list(range(40))
    assert len(http_server.requests) == 4


async def test_a_chunk_taken_ahead_goes_once_and_in_order_through_a_retry_of_the_one_before(
    tmp_path: Path, http_server: Recorder
) -> None:
    s = await sink(tmp_path, http_server.url + "/in")
    http_server.script.extend([Reply(200), Reply(503), Reply(503)])  # the second chunk fails twice
    try:
        await submit(s, 4)
        await helpers.deliver_all(s, TIMEOUT)
    finally:
        await s.stop()
    firsts = [r.events[0]["seq"] for r in http_server.requests]
    assert firsts == [0, 10, 10, 10, 20, 30]  # the prepared third chunk waited for the second's retries
    assert [e["seq"] for e in http_server.events(200)] == list(range(40))
    assert (s.stats.delivered_events, s.stats.dead_lettered_events) == (40, 0)


async def test_a_failing_look_ahead_costs_the_request_nothing(http_server: Recorder) -> None:
    out = HttpOutput(name="web", endpoint=http_server.url + "/in")

    def broken() -> None:
        raise RuntimeError("a bug in the look-ahead")

    out.peek_next = broken  # type: ignore[assignment]
    try:
        with capture_logs() as logs:
            await out.write(make_chunk("app", records(3)))
    finally:
        await out.stop()
    assert [e["seq"] for e in http_server.events(200)] == [0, 1, 2]
    assert out.stats.retries == {}
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["http.prepare_failed"]
