"""The delivery loop for an output that takes concurrent writes (Output.concurrent_writes > 1, the Kafka
output): the next works are begun while the oldest is in flight, within the depth and IN_FLIGHT_BYTES, each
is delivered on its own, and chunks leave the queue oldest first; stop, crash and park keep what they kept
with one write at a time."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from forwardd.buffer import BufferedSink, DiskQueue, MemorySink, RetryPolicy, in_flight
from forwardd.buffer.delivery_loop import CRASHES_PER_BATCH
from forwardd.errors import RetryableError
from forwardd.model import Chunk
from forwardd.outputs.base import Output
from tests.buffer.test_buffer_delivery import FakeTime
from tests.buffer.test_delivery_isolation import (
    CrashingQueue,
    Escape,
    dead_letters,
    entries_chunk,
    numbered,
    submit_all,
    wait_for,
)


class Gated(Output):
    """Each write waits until its tag's gate opens; counts writes in flight. ``fail`` holds tags whose
    next write raises a RetryableError (once each); ``escape`` tags whose writes raise past Exception."""

    name = "gated"

    def __init__(self, depth: int) -> None:
        self.concurrent_writes = depth
        self.gates: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.begun: list[str] = []
        self.delivered: list[int] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.fail: set[str] = set()
        self.escape: dict[str, int] = {}

    def open(self, *tags: str) -> None:
        for tag in tags:
            self.gates[tag].set()

    async def write(self, chunk: Chunk) -> None:
        self.begun.append(chunk.tag)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.gates[chunk.tag].wait()
        finally:
            self.in_flight -= 1
        if self.escape.get(chunk.tag):
            self.escape[chunk.tag] -= 1
            raise Escape("out of band")
        if chunk.tag in self.fail:
            self.fail.discard(chunk.tag)
            raise RetryableError(f"{chunk.tag} not now")
        self.delivered += [e.record["seq"] for e in chunk.events()]


@pytest.fixture
async def sinks() -> AsyncIterator[list[BufferedSink]]:
    made: list[BufferedSink] = []
    yield made
    for s in made:
        await s.stop()


def make(out: Output, tmp_path: Path, made: list[BufferedSink], t: FakeTime, memory: bool) -> BufferedSink:
    kw = {"clock": t.clock, "sleep": t.sleep, "rand": lambda: 1.0}
    if memory:
        sink: BufferedSink = MemorySink("out", out, RetryPolicy(jitter=0.0), str(tmp_path / "dead"), **kw)  # type: ignore[arg-type]
    else:
        q = DiskQueue(str(tmp_path / "q"), fsync="never")
        sink = BufferedSink("out", out, q, RetryPolicy(jitter=0.0), str(tmp_path / "dead"), **kw)  # type: ignore[arg-type]
    made.append(sink)
    return sink


def tagged(tag: str, start: int, n: int = 2) -> Chunk:
    return entries_chunk(tag, numbered(n, start=start))


@pytest.mark.parametrize("memory", [False, True])
async def test_the_next_batches_are_written_while_the_oldest_is_in_flight(
    tmp_path: Path, sinks: list[BufferedSink], memory: bool
) -> None:
    out = Gated(depth=3)
    sink = make(out, tmp_path, sinks, FakeTime(), memory)
    await sink.start()
    await submit_all(sink, [tagged("a", 0)])
    await wait_for(lambda: out.begun == ["a"], "the first write")
    await submit_all(sink, [tagged("b", 2)])
    await wait_for(lambda: out.begun == ["a", "b"], "the second batch, begun behind the first")
    await submit_all(sink, [tagged("c", 4), tagged("d", 6)])
    await wait_for(lambda: out.begun == ["a", "b", "c"], "a third write, up to the depth")
    assert out.in_flight == 3
    out.open("b", "c")
    # A write that is done but not the oldest holds no slot: d begins while a is still in flight...
    await wait_for(lambda: out.begun == ["a", "b", "c", "d"], "the fourth, in a slot b or c left")
    assert out.in_flight == 2
    # ...and chunks leave the queue oldest first: b and c wait for a.
    assert sink.stats.queued_chunks == 4
    out.open("a")
    await wait_for(lambda: sink.stats.queued_chunks == 1, "a, b and c to leave the queue")
    out.open("d")
    await wait_for(lambda: sink.stats.queued_chunks == 0, "d")
    assert sorted(out.delivered) == list(range(8))
    assert out.most_in_flight == 3
    assert sink.stats.delivered_events == 8


@pytest.mark.parametrize("memory", [False, True])
async def test_small_commits_made_while_a_write_is_in_flight_share_a_write(
    tmp_path: Path, sinks: list[BufferedSink], memory: bool
) -> None:
    """Clients that wait for an ack per event commit one small chunk at a time. While a write is in
    flight, the next one waits a moment (COALESCE_SECONDS) for the commits after it, instead of a write
    per commit (the code before made ten writes of b here)."""
    out = Gated(depth=4)
    out.open("b")
    sink = make(out, tmp_path, sinks, FakeTime(), memory)
    await sink.start()
    await submit_all(sink, [tagged("a", 0)])
    await wait_for(lambda: out.begun == ["a"], "the first write, held open")
    for k in range(10):  # one commit each, the loop's turns between them
        await submit_all(sink, [tagged("b", 2 + 2 * k)])
        for _ in range(3):
            await asyncio.sleep(0)
    await wait_for(lambda: sorted(out.delivered) == list(range(2, 22)), "every b")
    assert 1 <= out.begun.count("b") < 10
    out.open("a")
    await wait_for(lambda: sink.stats.queued_chunks == 0, "every chunk")


@pytest.mark.parametrize("memory", [False, True])
async def test_waiting_for_a_commit_beside_a_write_in_flight_takes_no_task(
    tmp_path: Path, sinks: list[BufferedSink], memory: bool
) -> None:
    """While a write is in flight the loop waits for the next commit or for the write to end. It did so by
    racing a queue.get() task against the writes (a task, its cancellation and an asyncio.wait per commit
    of a client that waits for each ack); now one future wakes it, and the tasks alive while it waits are
    the loop's own and the write's."""
    out = Gated(depth=4)
    sink = make(out, tmp_path, sinks, FakeTime(), memory)
    await sink.start()
    await submit_all(sink, [tagged("a", 0)])
    await wait_for(lambda: out.begun == ["a"], "the first write, held open")
    for _ in range(5):
        await asyncio.sleep(0)  # the loop is waiting for a commit or for a to end
    waiting = {t.get_coro().__qualname__ for t in asyncio.all_tasks()}  # type: ignore[union-attr]
    assert not any("get" in name.split(".")[-1] for name in waiting), waiting
    await submit_all(sink, [tagged("b", 2)])
    await wait_for(lambda: out.begun == ["a", "b"], "b, begun beside a on its commit")
    out.open("a", "b")
    await wait_for(lambda: sink.stats.queued_chunks == 0, "every chunk")
    assert sorted(out.delivered) == list(range(4))


async def test_what_waits_behind_a_slow_write_is_bounded(
    tmp_path: Path, sinks: list[BufferedSink], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes done behind a slow oldest one hold no slot, but they hold their chunks until it is done:
    at most UNMARKED_PER_SLOT times the depth of them are begun, the rest wait in the queue."""
    monkeypatch.setattr(in_flight, "UNMARKED_PER_SLOT", 2)
    out = Gated(depth=2)
    out.open(*"bcdefg")
    sink = make(out, tmp_path, sinks, FakeTime(), memory=False)
    await sink.queue.start()
    await submit_all(sink, [tagged(tag, 2 * k) for k, tag in enumerate("abcdefg")])
    await sink.start()
    await wait_for(lambda: sorted(out.delivered) == list(range(2, 8)), "b, c and d, while a is gated")
    for _ in range(50):  # let the loop run on: nothing it waits for is left but a (no I/O, no timer)
        await asyncio.sleep(0)
    assert out.begun == ["a", "b", "c", "d"]  # 2 x 2 begun and not marked: e, f and g wait
    assert sink.stats.queued_chunks == 7
    out.open("a")
    await wait_for(lambda: sink.stats.queued_chunks == 0, "every chunk")
    assert sorted(out.delivered) == list(range(14))
    assert out.begun == list("abcdefg")


async def test_entries_in_flight_are_bounded_in_bytes(
    tmp_path: Path, sinks: list[BufferedSink], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four works of a batch, each more than half the byte bound: one in flight at a time, whatever the
    depth."""
    first = tagged("a", 0)
    monkeypatch.setattr(in_flight, "IN_FLIGHT_BYTES", len(first.entries) * 3 // 2)
    out = Gated(depth=8)
    sink = make(out, tmp_path, sinks, FakeTime(), memory=False)
    await sink.queue.start()
    await submit_all(sink, [first, tagged("b", 2), tagged("c", 4), tagged("d", 6)])
    await sink.start()
    for k, tag in enumerate("abcd"):
        await wait_for(lambda k=k: len(out.begun) == k + 1, f"write {tag}")  # type: ignore[misc]
        assert out.in_flight == 1
        out.open(tag)
    await wait_for(lambda: sink.stats.queued_chunks == 0, "every chunk")
    assert out.most_in_flight == 1
    assert sorted(out.delivered) == list(range(8))


async def test_a_retry_of_the_oldest_holds_the_queue_order_not_the_others(
    tmp_path: Path, sinks: list[BufferedSink]
) -> None:
    t = FakeTime()
    out = Gated(depth=4)
    out.fail.add("a")
    out.open("b", "c")
    sink = make(out, tmp_path, sinks, t, memory=False)
    await sink.queue.start()
    await submit_all(sink, [tagged("a", 0), tagged("b", 2), tagged("c", 4)])
    await sink.start()
    await wait_for(lambda: sorted(out.delivered) == [2, 3, 4, 5], "b and c, while a is gated")
    assert sink.stats.queued_chunks == 3
    out.open("a")  # fails once, backs off, then goes through
    await wait_for(lambda: sink.stats.queued_chunks == 0, "a after its retry")
    assert sorted(out.delivered) == list(range(6))  # each once
    assert out.begun.count("a") == 2
    assert (out.begun.count("b"), out.begun.count("c")) == (1, 1)
    assert sink.stats.retries == 1
    assert t.sleeps == [1.0]


async def test_stop_keeps_what_was_in_flight_queued_and_a_restart_delivers_it(
    tmp_path: Path, sinks: list[BufferedSink]
) -> None:
    out = Gated(depth=3)
    out.open("a", "c")
    sink = make(out, tmp_path, sinks, FakeTime(), memory=False)
    sink.stop_timeout = 0.05  # b never finishes: stop gives up on it
    sink.drain_timeout = 0.05
    await sink.queue.start()
    await submit_all(sink, [tagged("a", 0), tagged("b", 2), tagged("c", 4)])
    await sink.start()
    await wait_for(lambda: sorted(out.delivered) == [0, 1, 4, 5], "a and c")
    await sink.stop()
    sinks.remove(sink)
    again = Gated(depth=3)
    again.open("a", "b", "c")
    sink2 = make(again, tmp_path, sinks, FakeTime(), memory=False)
    await sink2.start()
    await wait_for(lambda: sink2.stats.queued_chunks == 0, "what was left after the restart")
    # a left the queue; b did not (still in flight at the stop), nor c (done, but behind b): at least once.
    assert again.delivered == [2, 3, 4, 5]


async def test_a_crash_of_the_loop_leaves_the_writes_in_flight_alone(tmp_path: Path) -> None:
    t = FakeTime()
    out = Gated(depth=3)
    q = CrashingQueue(str(tmp_path / "q"), fsync="never")
    sink = BufferedSink("out", out, q, RetryPolicy(), str(tmp_path / "dead"), clock=t.clock, sleep=t.sleep)
    await q.start()
    await submit_all(sink, [tagged("a", 0), tagged("b", 2), tagged("c", 4)])
    await sink.start()
    try:
        with capture_logs() as logs:
            await wait_for(lambda: out.in_flight == 3, "three writes in flight")
            out.open("a")  # marking a crashes the loop once; b and c are still in flight
            await wait_for(lambda: sink.stats.loop_crashes == 1, "the crash")
            out.open("b", "c")
            await wait_for(lambda: sink.stats.queued_chunks == 0, "delivery after the crash")
    finally:
        await sink.stop()
    assert sorted(out.delivered) == list(range(6))
    assert sorted(out.begun) == ["a", "b", "c"]  # nothing written twice: b and c went on through the crash
    assert [e["event"] for e in logs].count("delivery.loop_crashed") == 1


async def test_a_write_that_keeps_crashing_the_loop_is_parked_and_the_others_go_on(tmp_path: Path) -> None:
    t = FakeTime()
    out = Gated(depth=3)
    out.escape["a"] = CRASHES_PER_BATCH
    out.open("a", "b")
    q = DiskQueue(str(tmp_path / "q"), fsync="never")
    sink = BufferedSink("out", out, q, RetryPolicy(), str(tmp_path / "dead"), clock=t.clock, sleep=t.sleep)
    await q.start()
    await submit_all(sink, [tagged("a", 0), tagged("b", 2)])
    await sink.start()
    try:
        await wait_for(lambda: sink.stats.queued_chunks == 0, "a parked, b delivered")
    finally:
        await sink.stop()
    assert out.delivered == [2, 3]
    assert out.begun.count("b") == 1
    assert sink.stats.loop_crashes == CRASHES_PER_BATCH
    [(chunk, sidecar)] = dead_letters(tmp_path / "dead")
    assert [e.record["seq"] for e in chunk.events()] == [0, 1]
    assert sidecar["reason"] == "loop_crashed"


class HeldSleeps:
    """A sleep that waits until the test releases it, oldest first: back-offs that overlap for as long as
    the test wants (FakeTime's end at once)."""

    def __init__(self) -> None:
        self.waiting: list[asyncio.Event] = []
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        gate = asyncio.Event()
        self.waiting.append(gate)
        await gate.wait()

    def release_oldest(self) -> None:
        self.waiting.pop(0).set()


async def stop_after_an_outage(tmp_path: Path, fails_again: bool) -> tuple[Gated, BufferedSink, list[str]]:
    """Two writes in flight both fail and back off; one tries again and goes through while the other
    still waits (its back-off held). Then a stop; with ``fails_again`` the waiting one's next write fails
    too. The stop's events and the sink, stopped."""
    held = HeldSleeps()
    out = Gated(depth=2)
    out.fail.update({"a", "b"})
    out.open("a", "b")
    q = DiskQueue(str(tmp_path / "q"), fsync="never")
    sink = BufferedSink(
        "out", out, q, RetryPolicy(jitter=0.0), str(tmp_path / "dead"), clock=held.clock, sleep=held.sleep,
        drain_timeout=30.0,
    )  # fmt: skip
    await q.start()
    await submit_all(sink, [tagged("a", 0), tagged("b", 2)])
    await sink.start()
    stopped = False
    try:
        await wait_for(lambda: len(held.waiting) == 2, "both writes backing off")
        held.release_oldest()
        await wait_for(lambda: len(out.delivered) == 2, "one of them delivered on its second try")
        if fails_again:
            out.fail.add("b")
        loop = asyncio.get_running_loop()
        began = loop.time()
        with capture_logs() as logs:
            await asyncio.wait_for(sink.stop(), 10)
        stopped = True
        assert loop.time() - began < 5.0  # neither the held back-off nor drain_timeout was waited for
    finally:
        if not stopped:
            await sink.stop()
    return out, sink, [e["event"] for e in logs]


async def test_a_stop_tries_at_once_a_write_that_backs_off_since_before_another_went_through(
    tmp_path: Path,
) -> None:
    """After an outage each write in flight backs off on its own: a stop that gave up at the first back-off
    left b queued (and would write again every later chunk already written). The output took a's write
    since b failed, so the stop tries b at once, and the queue is empty."""
    out, sink, events = await stop_after_an_outage(tmp_path, fails_again=False)
    assert out.begun == ["a", "b", "a", "b"]
    assert sorted(out.delivered) == [0, 1, 2, 3]
    assert sink.stats.queued_chunks == 0
    assert "delivery.drain_timeout" not in events


async def test_a_stop_does_not_wait_for_a_write_that_fails_again_when_tried_at_once(tmp_path: Path) -> None:
    """The same, but b fails again when the stop tries it: the output is failing, so the drain ends at once
    (backing_off counts the waits: a's wait ending did not hide b's), and b stays for the next start."""
    out, sink, events = await stop_after_an_outage(tmp_path, fails_again=True)
    assert out.begun == ["a", "b", "a", "b"]  # b tried once more, not again after it failed
    assert out.delivered == [0, 1]
    assert sink.stats.queued_chunks == 1
    assert "delivery.drain_timeout" not in events


async def test_a_stop_after_a_crash_of_the_loop_waits_for_the_writes_still_in_flight(tmp_path: Path) -> None:
    """The loop crashed while two writes were in flight; they go on. A stop then waits for them (up to
    stop_timeout) as for any write in flight, rather than cancelling them and sending them again after
    the restart: the crash must not make the delivery look idle."""
    t = FakeTime()
    out = Gated(depth=3)
    q = CrashingQueue(str(tmp_path / "q"), fsync="never")
    sink = BufferedSink(
        "out", out, q, RetryPolicy(), str(tmp_path / "dead"), clock=t.clock, sleep=t.sleep,
        stop_timeout=30.0, drain_timeout=0.05,  # b and c are gated: the drain gives up on them at once
    )  # fmt: skip
    await q.start()
    await submit_all(sink, [tagged("a", 0), tagged("b", 2), tagged("c", 4)])
    await sink.start()
    stopping: asyncio.Task[None] | None = None
    try:
        await wait_for(lambda: out.in_flight == 3, "three writes in flight")
        out.open("a")  # marking a crashes the loop once; b and c are still in flight
        await wait_for(
            lambda: sink.stats.loop_crashes == 1 and sink.stats.queued_chunks == 2, "a, after the crash"
        )
        stopping = asyncio.create_task(sink.stop())
        await wait_for(lambda: sink._deliverer.stopping, "the stop to begin")
        await asyncio.sleep(0.05)  # the stop must still be waiting: nothing it waits on has changed
        assert not stopping.done()
        out.open("b", "c")
        await asyncio.wait_for(stopping, 10)
    finally:
        if stopping is None:
            await sink.stop()
    assert sorted(out.delivered) == list(range(6))
    assert sink.stats.queued_chunks == 0  # b and c finished before the stop closed the queue: not sent again


class ConcurrentBuggy(Output):
    """Takes ``depth`` writes at once (each yields to the loop before it acts, so they overlap) and raises
    KeyError on any chunk holding a record with ``"boom"``: an output with a bug that some events trigger."""

    name = "buggy"

    def __init__(self, depth: int) -> None:
        self.concurrent_writes = depth
        self.in_flight = 0
        self.most_in_flight = 0
        self.delivered: defaultdict[str, list[int]] = defaultdict(list)

    async def write(self, chunk: Chunk) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        finally:
            self.in_flight -= 1
        records = [e.record for e in chunk.events()]
        if any("boom" in r for r in records):
            raise KeyError("boom")
        self.delivered[chunk.tag] += [r["seq"] for r in records]


@pytest.mark.parametrize("memory", [False, True])
async def test_poison_events_of_works_in_flight_together_are_isolated_each_in_its_own(
    tmp_path: Path, sinks: list[BufferedSink], memory: bool
) -> None:
    """Four tags' works in flight at once, each with its own poison events: every work isolates its own
    (halves of its own chunk, its own budget), the good events of all of them are delivered once and in
    order per tag, exactly the poison is dead-lettered, and every chunk leaves the queue."""
    out = ConcurrentBuggy(depth=4)
    sink = make(out, tmp_path, sinks, FakeTime(), memory)
    poison = {"a": (3,), "b": (), "c": (0, 31), "d": (17,)}
    chunks = []
    for k, (tag, bad) in enumerate(poison.items()):
        records = numbered(32, start=100 * k)
        for i in bad:
            records[i]["boom"] = True
        chunks.append(entries_chunk(tag, records))
    if not memory:
        await sink.queue.start()
        await submit_all(sink, chunks)  # before the loop runs: one batch, one work per tag
    await sink.start()
    if memory:
        await submit_all(sink, chunks)
    await wait_for(lambda: sink.stats.queued_chunks == 0, "every chunk")
    if not memory:
        assert out.most_in_flight > 1  # the works were in flight together
    for k, (tag, bad) in enumerate(poison.items()):
        assert out.delivered[tag] == [100 * k + i for i in range(32) if i not in bad]
    dead = sorted(e.record["seq"] for c, _ in dead_letters(tmp_path / "dead") for e in c.events())
    assert dead == [3, 200, 231, 317]
    stats = sink.stats
    assert (stats.delivered_events, stats.dead_lettered_events, stats.isolations) == (124, 4, 3)


@pytest.mark.parametrize("memory", [False, True])
async def test_small_batches_go_one_at_a_time_and_big_ones_concurrently(
    tmp_path: Path, sinks: list[BufferedSink], memory: bool
) -> None:
    """Output.concurrent_min_bytes (the file output's: its concurrency pays only on big writes): a batch
    whose writes (one per tag) are all smaller is written one write at a time, whatever its total; one with
    a bigger write concurrently, and small ones after it one at a time again once nothing is in flight."""
    out = Gated(depth=3)
    out.concurrent_min_bytes = len(tagged("c", 4, n=8).entries)  # c's chunk below is that big
    sink = make(out, tmp_path, sinks, FakeTime(), memory)
    await sink.start()
    await submit_all(sink, [tagged("a", 0), tagged("b", 2)])
    await wait_for(lambda: out.begun == ["a"], "the first write")
    assert out.in_flight == 1  # b waits: the batch is small
    out.open("a")
    await wait_for(lambda: out.begun == ["a", "b"], "b, after a")
    # Committed while b is written: the loop takes them as one batch after it.
    await submit_all(sink, [tagged("c", 4, n=8)] + [tagged(t, 12 + 2 * i) for i, t in enumerate("def")])
    assert out.most_in_flight == 1
    out.open("b")
    await wait_for(lambda: out.begun[2:] == ["c", "d", "e"], "a big batch: three at once")
    assert out.in_flight == 3
    out.open("c", "d", "e", "f")
    await wait_for(lambda: sink.stats.queued_chunks == 0, "the big batch")
    out.most_in_flight = 0
    await submit_all(sink, [tagged(t, 18 + 2 * i) for i, t in enumerate("ghijk")])
    await wait_for(lambda: out.begun[-1:] == ["g"], "the next batch: as big in all as c, in small writes")
    assert out.in_flight == 1  # one at a time again
    for t in "ghijk":
        out.open(t)
    await wait_for(lambda: sink.stats.queued_chunks == 0, "g to k")
    assert out.most_in_flight == 1
    assert out.begun[-5:] == list("ghijk")
    assert sorted(out.delivered) == list(range(28))


class Flaky(Output):
    """Writes at once (a loop turn each); each tag's writes fail or succeed as its script says (then
    succeed)."""

    name = "flaky"

    def __init__(self, depth: int, scripts: dict[str, list[bool]]) -> None:
        self.concurrent_writes = depth
        self.scripts = {tag: list(script) for tag, script in scripts.items()}
        self.delivered: list[int] = []

    async def write(self, chunk: Chunk) -> None:
        await asyncio.sleep(0)
        script = self.scripts.get(chunk.tag)
        if script and script.pop(0):
            raise RetryableError(f"{chunk.tag} not now")
        self.delivered += [e.record["seq"] for e in chunk.events()]


class NeverEnding:
    """Back-offs that never end by themselves: only a stop's early retry ends one."""

    now = 1000.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        await asyncio.Event().wait()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    depth=st.integers(1, 4),
    scripts=st.lists(st.lists(st.booleans(), max_size=3), min_size=1, max_size=6),
    turns=st.integers(0, 40),
)
async def test_a_stop_amid_failing_concurrent_writes_loses_nothing_and_waits_for_no_back_off(
    tmp_path_factory: pytest.TempPathFactory, depth: int, scripts: list[list[bool]], turns: int
) -> None:
    """Writes in flight fail and back off (for ever, unless the stop's early retry ends the wait) as their
    scripts say; a stop comes after some loop turns. It ends without waiting for any back-off or for
    drain_timeout, and every chunk is delivered or still in the queue's files for the next start."""
    path = tmp_path_factory.mktemp("q")
    tags = [f"t{k}" for k in range(len(scripts))]
    out = Flaky(depth, dict(zip(tags, scripts, strict=True)))
    clock = NeverEnding()
    q = DiskQueue(str(path / "q"), fsync="never")
    sink = BufferedSink(
        "out", out, q, RetryPolicy(jitter=0.0), str(path / "dead"), clock=clock.clock, sleep=clock.sleep,
        drain_timeout=30.0, stop_timeout=30.0,
    )  # fmt: skip
    await q.start()
    await submit_all(sink, [tagged(tag, 2 * k) for k, tag in enumerate(tags)])
    await sink.start()
    for _ in range(turns):
        await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with capture_logs() as logs:
        await asyncio.wait_for(sink.stop(), 20)
    assert loop.time() - began < 10.0
    assert "delivery.drain_timeout" not in [e["event"] for e in logs]
    again = DiskQueue(str(path / "q"), fsync="never")
    await again.start()
    left: list[int] = []
    try:
        while (taken := again.take_nowait()) is not None:
            left += [e.record["seq"] for e in taken.chunk.events()]
    finally:
        await again.close()
    assert set(out.delivered) | set(left) == set(range(2 * len(tags)))  # nothing lost
    assert len(left) == 2 * sink.stats.queued_chunks  # what the stop says it left is what the files hold
