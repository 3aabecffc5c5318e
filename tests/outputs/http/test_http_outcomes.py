"""Per-request outcomes of a merged chunk sent as several requests (issue 18 item 3), through the real
delivery loop, against the real aiohttp server answering 200, 400 or 503 request by request.

A refused request costs exactly its events (dead-lettered); events of accepted requests are neither sent
again nor dead-lettered; a retryable failure re-sends only what was not accepted yet.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from forwardd.buffer import BufferedSink
from forwardd.errors import RecordsRejected
from forwardd.outputs.http import HttpOutput
from tests.buffer.test_buffer_delivery import FakeTime

from .conftest import Recorder, Reply, make_chunk
from .helpers import dead, deliver_all, http_sink, records

TIMEOUT = 10.0


@pytest.fixture
async def sink(http_server: Recorder, tmp_path: Path) -> AsyncIterator[tuple[BufferedSink, FakeTime]]:
    t = FakeTime()
    s = await http_sink(tmp_path, http_server.url + "/in", t, max_events=5)
    yield s, t
    await s.stop()


async def run_until_empty(s: BufferedSink) -> None:
    await deliver_all(s, TIMEOUT)


async def test_each_request_of_a_merged_chunk_has_its_own_outcome(
    sink: tuple[BufferedSink, FakeTime], http_server: Recorder, tmp_path: Path
) -> None:
    s, t = sink
    # Four chunks merged into one batch of 20 events: four requests of 5.
    for k in range(4):
        await asyncio.wait_for(s.submit(make_chunk("app", records(5, 5 * k))), TIMEOUT)  # type: ignore[arg-type]
    http_server.script.extend(
        [Reply(200), Reply(400, body=b"schema"), Reply(200), Reply(503, headers={"Retry-After": "2"})]
    )
    await run_until_empty(s)
    statuses = [r.status for r in http_server.requests]
    assert statuses == [200, 400, 200, 503, 200]  # five requests: the 503'd one re-sent alone
    accepted = [e["seq"] for e in http_server.events(200)]
    assert accepted == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]  # each exactly once
    [(seqs, sidecar)] = dead(tmp_path / "dead")
    assert seqs == [5, 6, 7, 8, 9]  # exactly the refused request's events
    assert sidecar["reason"] == "permanent_error"
    assert "HTTP 400: schema" in sidecar["error"]
    assert t.sleeps == [2.0]
    assert (s.stats.delivered_events, s.stats.dead_lettered_events) == (15, 5)


async def test_a_refusing_endpoint_costs_one_request_per_batch_not_a_bisection(
    sink: tuple[BufferedSink, FakeTime], http_server: Recorder, tmp_path: Path
) -> None:
    s, _ = sink
    await asyncio.wait_for(s.submit(make_chunk("app", records(20))), TIMEOUT)  # type: ignore[arg-type]
    http_server.default = Reply(400)
    await run_until_empty(s)
    assert len(http_server.requests) == 4
    assert [seqs for seqs, _ in dead(tmp_path / "dead")] == [list(range(20))]


async def test_refused_and_oversized_events_are_rejected_together_in_chunk_order(
    http_server: Recorder,
) -> None:
    out = HttpOutput(name="web", endpoint=http_server.url, max_events=2, max_bytes=300)
    recs = records(6)
    recs[4]["pad"] = "x" * 400  # cannot fit any request
    http_server.script.extend([Reply(200), Reply(422)])
    try:
        with pytest.raises(RecordsRejected) as info:
            await out.write(make_chunk("a", recs))
    finally:
        await out.stop()
    assert [e.record["seq"] for e in info.value.rejected.events()] == [2, 3, 4]
    assert [e["seq"] for e in http_server.events(200)] == [0, 1, 5]
