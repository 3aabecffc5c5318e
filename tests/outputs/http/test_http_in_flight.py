"""The HTTP output's ``in_flight``: several chunks written at once by the real delivery loop (DiskQueue +
BufferedSink), against the real aiohttp server, which holds requests open to see how many are in flight.

With ``in_flight: N`` the requests of different chunks overlap (and may be answered out of order), each
chunk's outcome stays its own (a 503 re-sends only what that chunk did not get through, a 400 dead-letters
only that request's events); with the default 1 the endpoint never sees two requests at once, in order.
Every wait is on a condition with a timeout; the one that must time out (no second request while the
first is open, in_flight 1) is short.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from forwardd.app import load_config, parse_config
from forwardd.buffer import BufferedSink, DiskQueue
from forwardd.buffer.base import Taken
from forwardd.config import ConfigError
from forwardd.outputs.http import HttpOutput
from tests.buffer.test_buffer_delivery import FakeTime

from . import helpers
from .conftest import Recorder, Reply, Seen, make_chunk
from .helpers import dead, http_sink, records

TIMEOUT = 15.0
#: How long a held request waits for others to be open at once before it gives up (and the test fails).
HOLD = 5.0
#: How long the first request waits for a second one that must not come (in_flight 1).
NEGATIVE_HOLD = 0.5

Sinks = Callable[..., Awaitable[BufferedSink]]


@pytest.fixture
async def sinks(tmp_path: Path) -> AsyncIterator[Sinks]:
    """Builds a BufferedSink over a DiskQueue and an HttpOutput(**kwargs), with a clock that only moves
    when the loop backs off (retries cost no wall time); each is stopped at teardown."""
    made: list[BufferedSink] = []

    async def make(endpoint: str, **kwargs: Any) -> BufferedSink:
        s = await http_sink(tmp_path, endpoint, FakeTime(), **kwargs)
        made.append(s)
        return s

    try:
        yield make
    finally:
        for s in made:
            await s.stop()


async def submit_tags(s: BufferedSink, tags: list[str], per_chunk: int = 10) -> None:
    """One committed chunk per tag (so one batch holds as many works as tags), before the loop starts."""
    for k, tag in enumerate(tags):
        done = s.submit(make_chunk(tag, records(per_chunk, k * per_chunk)))
        assert done is not None
        await asyncio.wait_for(done, TIMEOUT)


async def deliver_all(s: BufferedSink) -> None:
    await helpers.deliver_all(s, TIMEOUT)


def accepted(server: Recorder) -> Counter[tuple[str, int]]:
    """(tag, seq) of every event the server answered 200 for, with how often."""
    return Counter((e["tag"], e["seq"]) for e in server.events(200))


def tags_in_answer_order(server: Recorder) -> list[str]:
    return [r.events[0]["tag"] for r in server.requests]


TAGS = ["app.0", "app.1", "app.2", "app.3"]


async def test_in_flight_writes_chunks_at_once_and_delivers_each_event_once(
    sinks: Sinks, http_server: Recorder, tmp_path: Path
) -> None:
    s = await sinks(http_server.url + "/in", in_flight=4)
    assert s.output.concurrent_writes == 4
    saw_later: list[bool] = []

    async def hold(seen: Seen) -> None:
        # The first request stays open until a request of a later chunk is open beside it.
        if seen.events[0]["tag"] == "app.0" and not saw_later:
            saw_later.append(await http_server.until_open(2, HOLD))

    http_server.hold = hold
    await submit_tags(s, TAGS)
    await deliver_all(s)
    assert saw_later == [True]
    assert tags_in_answer_order(http_server)[-1] == "app.0"  # answered last: it was held open
    want = {(tag, k * 10 + i) for k, tag in enumerate(TAGS) for i in range(10)}
    got = accepted(http_server)
    assert set(got) == want
    assert set(got.values()) == {1}  # every event exactly once
    assert len(http_server.requests) == 4
    assert (s.stats.delivered_events, s.stats.dead_lettered_events) == (40, 0)
    assert not (tmp_path / "dead").exists() or not any((tmp_path / "dead").iterdir())


async def test_in_flight_requests_each_get_a_connection_past_the_pools_minimum(
    sinks: Sinks, http_server: Recorder
) -> None:
    # With a pool of 4 connections the other 4 writes would queue for one (and that wait counts against
    # the connect timeout): all 8 requests must be open at the server at once.
    tags = [f"app.{k}" for k in range(8)]
    s = await sinks(http_server.url + "/in", in_flight=8)
    all_open: list[bool] = []

    async def hold(seen: Seen) -> None:
        if len(all_open) < 8:
            i = len(all_open)
            all_open.append(False)
            all_open[i] = await http_server.until_open(8, HOLD)

    http_server.hold = hold
    await submit_tags(s, tags)
    await deliver_all(s)
    assert all_open == [True] * 8
    assert http_server.max_open == 8
    assert len(accepted(http_server)) == 80
    assert set(accepted(http_server).values()) == {1}
    assert len(http_server.peers()) == 8  # a connection each
    # None waited for a connection until its connect timeout (the failure of a pool smaller than 8).
    assert s.output.stats.retries == {}  # type: ignore[attr-defined]


async def test_default_sends_one_request_at_a_time_in_order(sinks: Sinks, http_server: Recorder) -> None:
    s = await sinks(http_server.url + "/in", max_events=5)
    assert s.output.concurrent_writes == 1
    second: list[bool] = []

    async def hold(seen: Seen) -> None:
        # No later request may arrive while the first is open (this wait must time out).
        if not second:
            second.append(await http_server.until_open(2, NEGATIVE_HOLD))

    http_server.hold = hold
    await submit_tags(s, TAGS)
    await deliver_all(s)
    assert second == [False]
    assert http_server.max_open == 1
    # Two requests per chunk (max_events 5), chunks and events in the order they were received.
    assert tags_in_answer_order(http_server) == [t for t in TAGS for _ in range(2)]
    assert [(e["tag"], e["seq"]) for e in http_server.events(200)] == [
        (tag, k * 10 + i) for k, tag in enumerate(TAGS) for i in range(10)
    ]


async def test_in_flight_failures_cost_only_their_own_chunk(
    sinks: Sinks, http_server: Recorder, tmp_path: Path
) -> None:
    # Each chunk of 10 events goes as 2 requests of 5 (max_events 5), the 4 chunks' first requests open at
    # once. app.1's second request gets a 503 once (a partial delivery: only its 5 events go again); app.2's
    # first gets a 400 (those 5 events are dead-lettered, its second request still goes); app.3's first
    # gets a 503 once (nothing of the chunk got through: the whole chunk goes again).
    s = await sinks(http_server.url + "/in/${tag}", in_flight=4, max_events=5, allowed_hosts=["127.0.0.1"])
    seen_per_path: Counter[str] = Counter()
    replies = {
        ("/in/app.1", 2): Reply(503, headers={"Retry-After": "1"}),
        ("/in/app.2", 1): Reply(400, body=b"schema"),
        ("/in/app.3", 1): Reply(503),
    }

    def rule(seen: Seen) -> Reply | None:
        seen_per_path[seen.path] += 1
        return replies.get((seen.path, seen_per_path[seen.path]))

    together: list[bool] = []

    async def hold(seen: Seen) -> None:
        if len(together) < 4:  # the four chunks' first requests
            i = len(together)
            together.append(False)
            together[i] = await http_server.until_open(4, HOLD)

    http_server.rule = rule
    http_server.hold = hold
    await submit_tags(s, TAGS)
    await deliver_all(s)
    assert together == [True] * 4

    statuses: dict[str, list[int | None]] = {}
    for r in http_server.requests:
        statuses.setdefault(r.path, []).append(r.status)
    assert statuses == {
        "/in/app.0": [200, 200],
        "/in/app.1": [200, 503, 200],
        "/in/app.2": [400, 200],
        "/in/app.3": [503, 200, 200],
    }
    # app.1's re-sent request is exactly the 5 events of its refused one.
    resent = [r for r in http_server.requests if r.path == "/in/app.1"][-1]
    assert [e["seq"] for e in resent.events] == [15, 16, 17, 18, 19]
    got = accepted(http_server)
    refused = {("app.2", seq) for seq in range(20, 25)}
    want = {(tag, k * 10 + i) for k, tag in enumerate(TAGS) for i in range(10)} - refused
    assert set(got) == want
    assert set(got.values()) == {1}  # nothing accepted twice
    [(seqs, sidecar)] = dead(tmp_path / "dead")
    assert seqs == [20, 21, 22, 23, 24]  # only the refused request's events
    assert "HTTP 400: schema" in sidecar["error"]
    assert (s.stats.delivered_events, s.stats.dead_lettered_events) == (35, 5)
    assert s.output.stats.retries == {"503": 2}  # type: ignore[attr-defined]
    assert s.output.stats.rejected == {"400": 1}  # type: ignore[attr-defined]
    assert s.output.stats.events == 35  # type: ignore[attr-defined]


def test_in_flight_setting(tmp_path: Path) -> None:
    def output(extra: str) -> HttpOutput:
        config = parse_config(
            f"""
storage: {{path: {tmp_path}}}
sources: [{{port: 0}}]
routes: [{{match: "**", outputs: [web]}}]
outputs:
  web: {{type: http, endpoint: "http://127.0.0.1/in"{extra}}}
"""
        )
        return HttpOutput.from_settings("web", config.outputs["web"])  # type: ignore[arg-type]

    assert output("").concurrent_writes == 1
    assert output(", in_flight: 16").concurrent_writes == 16
    assert output(", in_flight: 16")._client.connections == 16
    with pytest.raises(ValueError, match="in_flight must be between 1 and 64, got 0"):
        HttpOutput(name="web", endpoint="http://127.0.0.1/in", in_flight=0)


@pytest.mark.parametrize(
    ("value", "why"), [(0, "a number >= 1"), (65, "a number <= 64"), ("4x", "an integer")]
)
def test_in_flight_out_of_bounds_is_a_config_error(tmp_path: Path, value: object, why: str) -> None:
    main = tmp_path / "main.yaml"
    main.write_text(
        f"""\
sources: [{{name: main}}]
routes: [{{match: "**", outputs: [web]}}]
outputs:
  web:
    type: http
    endpoint: http://127.0.0.1/in
    in_flight: {value}
"""
    )
    with pytest.raises(ConfigError) as info:
        load_config(main, env={})
    assert str(info.value) == f"{main}:7: outputs.web.in_flight: expected {why}, got {value!r}"


class MarkOrder(DiskQueue):
    """A DiskQueue that notes the tag of each chunk as it leaves the queue."""

    def __init__(self, path: str) -> None:
        super().__init__(path, fsync="never")
        self.marked: list[str] = []

    def mark_delivered(self, taken: Taken) -> None:
        self.marked.append(taken.chunk.tag)
        super().mark_delivered(taken)


async def test_a_slow_request_holds_back_no_other_and_chunks_still_leave_the_queue_in_order(
    http_server: Recorder, tmp_path: Path
) -> None:
    """``in_flight: 2``, six chunks; the oldest one's request is held open until the test lets it go. The
    other five are each written and answered meanwhile, two at a time at most: an answered request that
    is not the oldest holds no slot (it held one before: with app.0 held, app.1 went and nothing after
    it). None leaves the queue before app.0, then all of them, oldest first."""
    tags = [f"app.{k}" for k in range(6)]
    slow = threading.Event()

    async def hold(seen: Seen) -> None:
        if seen.events[0]["tag"] == "app.0":  # on the server's loop: wait for the test in a thread
            assert await asyncio.get_running_loop().run_in_executor(None, slow.wait, TIMEOUT)

    http_server.hold = hold
    q = MarkOrder(str(tmp_path / "q"))
    s = await http_sink(tmp_path, http_server.url + "/in", FakeTime(), queue=q, in_flight=2)
    await submit_tags(s, tags)
    delivering = asyncio.create_task(deliver_all(s))
    try:
        # The five others, answered while app.0 is held (the wait fails past TIMEOUT).
        await asyncio.to_thread(http_server.wait_until, lambda r: len(r.requests) == 5, TIMEOUT)
        assert sorted(tags_in_answer_order(http_server)) == tags[1:]  # all but the held one, answered
        assert q.marked == []  # behind app.0: none has left the queue
        assert s.stats.queued_chunks == 6
        slow.set()
        await asyncio.wait_for(delivering, TIMEOUT)
    finally:
        slow.set()
        await s.stop()
    assert q.marked == tags
    assert http_server.max_open == 2
    got = accepted(http_server)
    assert set(got) == {(tag, k * 10 + i) for k, tag in enumerate(tags) for i in range(10)}
    assert set(got.values()) == {1}
