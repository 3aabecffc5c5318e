"""The delivery loop: back-off timing on an injected clock, retry_after, dead letters, stats, memory sink."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from forwardd.buffer import Batching, BufferedSink, DiskQueue, MemorySink, RetryPolicy, read_dead_letter
from forwardd.errors import PermanentError, RetryableError
from forwardd.model import Chunk
from forwardd.outputs.base import Output

TIMEOUT = 5.0


def chunk(n: int) -> Chunk:
    return Chunk(f"d.{n}", bytes([n]) * 100, n + 1, n)


class FakeTime:
    """A monotonic clock that only moves when the loop sleeps; every sleep is recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await asyncio.sleep(0)


class ScriptedOutput(Output):
    """Fails each write with the next scripted error (None = succeed); records what it delivered."""

    name = "scripted"

    def __init__(self, script: list[Exception | None] | None = None) -> None:
        self.script = deque(script or [])
        self.attempts: list[str] = []
        self.delivered: list[Chunk] = []
        self.stopped = False
        self._changed = asyncio.Event()

    async def write(self, chunk: Chunk) -> None:
        self.attempts.append(chunk.tag)
        outcome = self.script.popleft() if self.script else None
        if outcome is not None:
            raise outcome
        self.delivered.append(chunk)
        self._changed.set()

    async def stop(self) -> None:
        self.stopped = True

    async def wait_delivered(self, n: int) -> None:
        async def wait() -> None:
            while len(self.delivered) < n:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), TIMEOUT)


SinkFactory = Callable[..., BufferedSink]


@pytest.fixture
async def make_sink(tmp_path: Path) -> AsyncIterator[SinkFactory]:
    sinks: list[BufferedSink] = []

    def make(
        output: Output,
        policy: RetryPolicy,
        t: FakeTime,
        *,
        memory: bool = False,
        batching: Batching | None = None,
    ) -> BufferedSink:
        dl = str(tmp_path / "dead")
        kw = {"clock": t.clock, "sleep": t.sleep, "rand": lambda: 1.0, "batching": batching}
        if memory:
            sink: BufferedSink = MemorySink("out", output, policy, dl, **kw)  # type: ignore[arg-type]
        else:
            q = DiskQueue(str(tmp_path / f"q{len(sinks)}"), fsync="never")
            sink = BufferedSink("out", output, q, policy, dl, **kw)  # type: ignore[arg-type]
        sinks.append(sink)
        return sink

    yield make
    for s in sinks:
        await s.stop()


async def submit_all(sink: BufferedSink, chunks: list[Chunk]) -> None:
    for c in chunks:
        fut = sink.submit(c)
        if fut is not None:
            await asyncio.wait_for(fut, TIMEOUT)


@pytest.mark.parametrize("memory", [False, True])
async def test_backoff_doubles_with_jitter_up_to_the_cap(make_sink: SinkFactory, memory: bool) -> None:
    t = FakeTime()
    out = ScriptedOutput([RetryableError("down")] * 6)
    sink = make_sink(out, RetryPolicy(initial=1.0, max=10.0, multiplier=2.0, jitter=0.25), t, memory=memory)
    await sink.start()
    with capture_logs() as logs:
        await submit_all(sink, [chunk(0), chunk(1)])
        await out.wait_delivered(2)
    # rand() == 1.0 takes the full jitter off: 1, 2, 4, 8, then the 10 s cap, each times 0.75.
    assert t.sleeps == [0.75, 1.5, 3.0, 6.0, 7.5, 7.5]
    assert out.attempts == ["d.0"] * 7 + ["d.1"]  # the same chunk until it went through
    retries = [e for e in logs if e["event"] == "delivery.retry"]
    assert [e["attempt"] for e in retries] == [1, 2, 3, 4, 5, 6]
    assert sink.stats.retries == 6
    assert sink.stats.delivered_events == 1 + 2
    assert sink.stats.last_error == "RetryableError: down"


async def test_retry_after_replaces_the_computed_delay_capped_at_max(make_sink: SinkFactory) -> None:
    t = FakeTime()
    out = ScriptedOutput([RetryableError("429", retry_after=42.0), RetryableError("429", retry_after=900.0)])
    sink = make_sink(out, RetryPolicy(initial=1.0, max=300.0), t)
    await sink.start()
    await submit_all(sink, [chunk(0)])
    await out.wait_delivered(1)
    assert t.sleeps == [42.0, 300.0]


async def test_permanent_error_dead_letters_that_chunk_and_delivers_the_next(
    make_sink: SinkFactory, tmp_path: Path
) -> None:
    t = FakeTime()
    out = ScriptedOutput([PermanentError("400 bad record")])
    sink = make_sink(out, RetryPolicy(), t)
    await sink.start()
    with capture_logs() as logs:
        await submit_all(sink, [chunk(0), chunk(1)])
        await out.wait_delivered(1)
    assert [c.tag for c in out.delivered] == ["d.1"]
    assert t.sleeps == []
    (dl,) = [e for e in logs if e["event"] == "delivery.dead_letter"]
    assert dl["reason"] == "permanent_error"
    back = read_dead_letter(dl["path"])
    assert (back.tag, back.entries, back.count, back.received_ns) == ("d.0", bytes(100), 1, 0)
    sidecar = json.loads(Path(dl["path"]).with_suffix(".json").read_text())
    assert sidecar["reason"] == "permanent_error"
    assert sidecar["error"] == "PermanentError: 400 bad record"
    assert (sidecar["output"], sidecar["tag"], sidecar["count"]) == ("out", "d.0", 1)
    assert "time" in sidecar
    assert sorted(p.suffix for p in (tmp_path / "dead").iterdir()) == [".chunk", ".json"]
    assert sink.stats.dead_lettered == 1


async def test_exhausted_attempts_dead_letter_one_chunk_not_the_queue(make_sink: SinkFactory) -> None:
    t = FakeTime()
    out = ScriptedOutput([RetryableError("down")] * 3)
    sink = make_sink(out, RetryPolicy(initial=1.0, jitter=0.0, max_attempts=3), t)
    await sink.start()
    with capture_logs() as logs:
        await submit_all(sink, [chunk(0), chunk(1), chunk(2)])
        await out.wait_delivered(2)
    assert t.sleeps == [1.0, 2.0]
    assert [c.tag for c in out.delivered] == ["d.1", "d.2"]
    assert [e["reason"] for e in logs if e["event"] == "delivery.dead_letter"] == ["retries_exhausted"]


async def test_max_age_gives_up_by_the_clock(make_sink: SinkFactory) -> None:
    t = FakeTime()
    out = ScriptedOutput([RetryableError("down")] * 3)
    sink = make_sink(out, RetryPolicy(initial=4.0, jitter=0.0, max_age=10.0), t)
    await sink.start()
    await submit_all(sink, [chunk(0), chunk(1)])
    await out.wait_delivered(1)
    assert t.sleeps == [4.0, 8.0]  # failed at 0, 4 and 12 s: 12 >= 10, dead-lettered
    assert sink.stats.dead_lettered == 1
    assert out.attempts == ["d.0"] * 3 + ["d.1"]


async def test_delivery_resumes_after_restart_without_duplicates(tmp_path: Path) -> None:
    out = ScriptedOutput()
    sink = BufferedSink("out", out, DiskQueue(str(tmp_path / "q")))
    await sink.start()
    await submit_all(sink, [chunk(i) for i in range(5)])
    await out.wait_delivered(5)
    await sink.stop()
    assert out.stopped
    out2 = ScriptedOutput()
    sink2 = BufferedSink("out", out2, DiskQueue(str(tmp_path / "q")))
    await sink2.start()
    await submit_all(sink2, [chunk(5)])
    await out2.wait_delivered(1)
    assert [c.tag for c in out2.delivered] == ["d.5"]
    await sink2.stop()


async def test_memory_sink_accepts_at_once_blocks_when_full_and_drains_on_stop() -> None:
    gate = asyncio.Event()

    class Gated(ScriptedOutput):
        async def write(self, chunk: Chunk) -> None:
            await gate.wait()
            await super().write(chunk)

    out = Gated()
    sink = MemorySink("mem", out, max_size=250)
    await sink.start()
    assert sink.submit(chunk(0)) is None
    assert sink.submit(chunk(1)) is None
    third = sink.submit(chunk(2))
    assert third is not None
    assert not third.done()  # type: ignore[attr-defined]
    gate.set()
    await asyncio.wait_for(third, TIMEOUT)
    await sink.stop()  # drains: all three delivered before the output stops
    assert [c.tag for c in out.delivered] == ["d.0", "d.1", "d.2"]
    assert out.stopped


async def test_memory_sink_drop_oldest_counts_dropped_events() -> None:
    gate, entered = asyncio.Event(), asyncio.Event()

    class Gated(ScriptedOutput):
        async def write(self, chunk: Chunk) -> None:
            entered.set()
            await gate.wait()
            await super().write(chunk)

    out = Gated()
    sink = MemorySink("mem", out, max_size=250, when_full="drop_oldest")
    await sink.start()
    assert sink.submit(chunk(0)) is None
    await asyncio.wait_for(entered.wait(), TIMEOUT)  # chunk 0 is in flight: it still counts, never dropped
    with capture_logs() as logs:
        for i in range(1, 5):
            assert sink.submit(chunk(i)) is None
    assert sink.stats.dropped == 2 + 3 + 4  # chunks 1, 2, 3 (count = n + 1) made room for the next
    assert [e["event"] for e in logs] == ["buffer.full"]
    gate.set()
    await sink.stop()
    assert [c.tag for c in out.delivered] == ["d.0", "d.4"]


@given(
    attempt=st.integers(1, 10_000),
    r=st.floats(0, 1),
    jitter=st.floats(0, 0.99),
    initial=st.floats(0.001, 10),
)
def test_delay_never_exceeds_the_cap_and_never_goes_below_jittered_base(
    attempt: int, r: float, jitter: float, initial: float
) -> None:
    p = RetryPolicy(initial=initial, max=60.0, jitter=jitter)
    d = p.delay(attempt, rand=lambda: r)
    base = min(initial * 2.0 ** min(attempt - 1, 100), 60.0)
    assert base * (1 - jitter) - 1e-9 <= d <= base + 1e-9


class GatedOutput(Output):
    """Holds its first write until released, so that more chunks queue up behind it."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.writes: list[Chunk] = []
        self.three = asyncio.Event()

    async def write(self, chunk: Chunk) -> None:
        self.entered.set()
        await self.gate.wait()
        self.writes.append(chunk)
        if len(self.writes) == 3:
            self.three.set()


@pytest.mark.parametrize("memory", [False, True])
async def test_chunks_queued_behind_a_write_are_merged_per_tag(make_sink: SinkFactory, memory: bool) -> None:
    """Docker sends one event per message: what queued meanwhile goes out as one write per tag."""
    out = GatedOutput()
    sink = make_sink(out, RetryPolicy(), FakeTime(), memory=memory)
    await sink.start()
    await submit_all(sink, [Chunk("a", b"\x01", 1, 1)])
    await asyncio.wait_for(out.entered.wait(), TIMEOUT)
    queued = [Chunk("a", b"\x02", 1, 2), Chunk("b", b"\x03", 1, 3), Chunk("a", b"\x04\x05", 2, 4)]
    await submit_all(sink, queued)
    out.gate.set()
    await asyncio.wait_for(out.three.wait(), TIMEOUT)
    assert [(c.tag, c.entries, c.count) for c in out.writes] == [
        ("a", b"\x01", 1),
        ("a", b"\x02\x04\x05", 3),  # the two "a" chunks, in order, as one write
        ("b", b"\x03", 1),
    ]


async def test_a_partial_rejection_dead_letters_only_the_rejected_events(
    make_sink: SinkFactory, tmp_path: Path
) -> None:
    bad = Chunk("d.bad", b"\x09", 1, 9)
    out = ScriptedOutput([PermanentError("one record too large", rejected=bad)])
    sink = make_sink(out, RetryPolicy(), FakeTime())
    await sink.start()
    await submit_all(sink, [Chunk("d.bad", b"\x07\x08\x09", 3, 9), chunk(1)])
    await out.wait_delivered(1)
    [sidecar] = list((tmp_path / "dead").glob("*.json"))
    back = read_dead_letter(str(sidecar).removesuffix(".json") + ".chunk")
    assert (back.tag, back.entries, back.count) == ("d.bad", b"\x09", 1)
    assert sink.stats.delivered_events == 2 + chunk(1).count  # the two good events, then the next chunk


@pytest.mark.parametrize("memory", [False, True])
async def test_batching_holds_a_small_batch_until_it_has_grown(make_sink: SinkFactory, memory: bool) -> None:
    """Docker clients that each wait for an ack: chunks committed a moment apart go out as one write."""
    out = ScriptedOutput()
    batching = Batching(max_wait=60.0, max_events=4)  # goes when four events are in, not by the clock
    sink = make_sink(out, RetryPolicy(), FakeTime(), memory=memory, batching=batching)
    await sink.start()
    await submit_all(sink, [Chunk("a", b"\x01", 1, 1)])
    # Time for the delivery loop to take the first chunk; without holding, it would be written alone.
    # (Were the loop slower than this, the test would still pass, not fail: it cannot flake.)
    await asyncio.sleep(0.05)
    await submit_all(sink, [Chunk("a", bytes([i]), 1, i) for i in range(2, 5)])
    await out.wait_delivered(1)
    assert [(c.entries, c.count) for c in out.delivered] == [(b"\x01\x02\x03\x04", 4)]


@pytest.mark.parametrize("memory", [False, True])
async def test_batching_sends_at_once_when_the_batch_is_big_enough(
    make_sink: SinkFactory, memory: bool
) -> None:
    out = ScriptedOutput()
    batching = Batching(max_wait=60.0, max_events=3)
    sink = make_sink(out, RetryPolicy(), FakeTime(), memory=memory, batching=batching)
    await sink.start()
    await submit_all(sink, [Chunk("a", bytes([i]), 1, i) for i in range(5)])
    await out.wait_delivered(1)  # long before max_wait: three events are a batch
    assert out.delivered[0].count == 3


@pytest.mark.parametrize("memory", [False, True])
async def test_a_held_batch_does_not_wake_the_loop_per_committed_chunk(
    make_sink: SinkFactory, memory: bool
) -> None:
    """An ack-per-request client commits one chunk at a time. While a batch is held to grow, the loop
    takes what was committed every few milliseconds; racing a ``queue.get()`` per chunk cost over a
    quarter of forwardd's CPU per request. Counted by the queue's ``get`` calls: one per batch, not one
    per chunk."""
    out = ScriptedOutput()
    batching = Batching(max_wait=2.0, max_events=40)
    sink = make_sink(out, RetryPolicy(), FakeTime(), memory=memory, batching=batching)
    queue = sink.queue
    real_get = queue.get
    gets = 0

    async def counting_get() -> object:
        nonlocal gets
        gets += 1
        return await real_get()

    queue.get = counting_get  # type: ignore[method-assign]
    await sink.start()
    for i in range(40):  # one commit each, and loop turns between them as a client's round trip gives
        await submit_all(sink, [Chunk("a", bytes([i]), 1, i)])
        for _ in range(3):
            await asyncio.sleep(0)
    await out.wait_delivered(1)
    while sum(c.count for c in out.delivered) < 40:  # a slow machine may have split the batch
        await out.wait_delivered(len(out.delivered) + 1)
    assert gets <= len(out.delivered) + 1, (gets, len(out.delivered))


def test_small_chunks_are_held_to_small_enough_bytes_and_big_ones_go_at_enough_bytes() -> None:
    b = Batching(max_wait=0.1, enough_bytes=64 * 1024, small_enough_bytes=1024 * 1024)
    assert b.enough(240_000, 1)  # one PackedForward chunk: worth its own write
    assert b.enough(64 * 1024, 16)  # 4 KiB chunks are not small
    assert not b.enough(100_000, 400)  # 400 docker events of 250 bytes: held on
    assert b.enough(1024 * 1024, 4000)
    assert Batching(max_wait=0.1, enough_bytes=64 * 1024).enough(100_000, 400)  # not set: as before


@pytest.mark.parametrize("memory", [False, True])
async def test_a_batch_of_small_chunks_is_held_past_enough_bytes(
    make_sink: SinkFactory, memory: bool
) -> None:
    """Ack-per-event clients: past ``enough_bytes`` their batch is held on to ``small_enough_bytes``."""
    out = ScriptedOutput()
    batching = Batching(max_wait=60.0, enough_bytes=1000, small_enough_bytes=3000)
    sink = make_sink(out, RetryPolicy(), FakeTime(), memory=memory, batching=batching)
    await sink.start()
    for i in range(40):
        await submit_all(sink, [Chunk("a", bytes([i]) * 100, 1, i)])
        for _ in range(3):
            await asyncio.sleep(0)
    await out.wait_delivered(1)
    assert len(out.delivered[0].entries) >= 3000  # not cut at 1000


@pytest.mark.parametrize("memory", [False, True])
async def test_stop_does_not_wait_for_a_held_batch(make_sink: SinkFactory, memory: bool) -> None:
    out = ScriptedOutput()
    sink = make_sink(out, RetryPolicy(), FakeTime(), memory=memory, batching=Batching(max_wait=60.0))
    await sink.start()
    await submit_all(sink, [Chunk("a", b"\x01", 1, 1)])
    await asyncio.wait_for(sink.stop(), TIMEOUT)
    assert [c.entries for c in out.delivered] == [b"\x01"]


@pytest.mark.parametrize("memory", [False, True])
async def test_a_batch_of_enough_bytes_is_not_held(make_sink: SinkFactory, memory: bool) -> None:
    """Bulk traffic (the file output's case): a batch already worth its own write goes at once."""
    out = ScriptedOutput()
    batching = Batching(max_wait=60.0, enough_bytes=1000)
    sink = make_sink(out, RetryPolicy(), FakeTime(), memory=memory, batching=batching)
    await sink.start()
    await submit_all(sink, [Chunk("a", b"\x01" * 1500, 10, 1)])
    await out.wait_delivered(1)  # long before max_wait
    assert out.delivered[0].count == 10
