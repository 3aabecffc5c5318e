"""A poison piece costs its own events, never an output: isolation by halves, quick attempts for unexpected
errors, partial deliveries, and a delivery loop that survives its own crash.

The outputs are real (a FileOutput into tmp_path) where the fault can be made with real data; an output
that raises an unexpected exception on chosen records stands in for a bug, which no real output has on
purpose.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from structlog.testing import capture_logs

from forwardd.buffer import BufferedSink, DiskQueue, MemorySink, RetryPolicy, read_dead_letter
from forwardd.buffer.base import Taken
from forwardd.buffer.delivery_loop import CRASHES_PER_BATCH
from forwardd.buffer.isolation import ISOLATION_BUDGET, QUICK_RETRIES_PER_BATCH, UNEXPECTED_ATTEMPTS
from forwardd.errors import PartialDelivery, PermanentError, RetryableError, UnprocessableError
from forwardd.model import Chunk
from forwardd.outputs.base import Output
from forwardd.outputs.file import FileOutput
from forwardd.pieces import entry_ends, slice_entries
from tests.buffer.test_buffer_delivery import FakeTime

TIMEOUT = 10.0
T0 = 1_700_000_000 * 10**9
POISON_TAG = b"\xff\xfe".decode("utf-8", "surrogateescape")


def deep(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = [value]
    return value


def entries_chunk(tag: str, records: list[dict[str, Any]], first: int = 0) -> Chunk:
    """A chunk as the buffer hands it over: msgpack entries, not yet decoded."""
    entries = b"".join(msgpack.packb([T0 // 10**9 + first + i, r]) for i, r in enumerate(records))
    return Chunk(tag, entries, len(records), T0)


def numbered(n: int, *, start: int = 0, poison_at: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    return [{"seq": start + i, "log": deep(600)} if i in poison_at else {"seq": start + i} for i in range(n)]


def lines(path: Path) -> list[dict[str, Any]]:
    files = sorted(path.parent.glob(path.name + "*"))
    return [json.loads(line) for p in files for line in p.read_text().splitlines()]


def dead_letters(folder: Path) -> list[tuple[Chunk, dict[str, Any]]]:
    out = []
    for sidecar in sorted(folder.glob("*.json")):
        out.append((read_dead_letter(str(sidecar.with_suffix(".chunk"))), json.loads(sidecar.read_text())))
    return out


class CountingFile(FileOutput):
    """The real file output, counting the writes it is asked for (the cost of isolating)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.calls = 0
        self.ok = 0
        self.changed = asyncio.Event()

    async def write(self, chunk: Chunk) -> None:
        self.calls += 1
        await super().write(chunk)
        self.ok += 1
        self.changed.set()


async def wait_for(cond: Callable[[], bool], what: str = "condition") -> None:
    async def wait() -> None:
        while not cond():
            await asyncio.sleep(0.005)  # polls state the loop changes; the timeout bounds it

    try:
        await asyncio.wait_for(wait(), TIMEOUT)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def submit_all(sink: BufferedSink, chunks: list[Chunk]) -> None:
    for c in chunks:
        fut = sink.submit(c)
        if fut is not None:
            await asyncio.wait_for(fut, TIMEOUT)


@pytest.fixture
async def sinks() -> AsyncIterator[list[BufferedSink]]:
    made: list[BufferedSink] = []
    yield made
    for s in made:
        await s.stop()


def file_sink(tmp_path: Path, made: list[BufferedSink], t: FakeTime | None = None, **kw: Any) -> BufferedSink:
    out = CountingFile(name="files", path=str(tmp_path / "out" / "app.log"), tag_key=None)
    q = DiskQueue(str(tmp_path / "q"), fsync="never")
    t = t or FakeTime()
    sink = BufferedSink(
        "files", out, q, RetryPolicy(jitter=0.0), str(tmp_path / "dead"),
        clock=t.clock, sleep=t.sleep, rand=lambda: 1.0, **kw,
    )  # fmt: skip
    made.append(sink)
    return sink


async def test_a_poison_event_in_a_merged_batch_costs_only_itself(
    tmp_path: Path, sinks: list[BufferedSink]
) -> None:
    """The reported fault: a record nested 600 deep cannot be JSON. Before, it stopped the output for good
    (RecursionError escaped, the log line about it raised, the task died) or blocked it for max_age."""
    sink = file_sink(tmp_path, sinks)
    out = sink.output
    assert isinstance(out, CountingFile)
    # Submitted before the loop runs, so the chunks are merged into one batch of 64 events.
    await sink.queue.start()
    await submit_all(sink, [entries_chunk("app", numbered(16, start=16 * k, poison_at=(5,) if k == 2 else ()))
                            for k in range(4)])  # fmt: skip
    with capture_logs() as logs:
        await sink.output.start()
        sink._task = asyncio.create_task(sink._supervise())
        await wait_for(lambda: sink.stats.queued_chunks == 0, "the batch to be done")
    got = [r["seq"] for r in lines(tmp_path / "out" / "app.log")]
    assert got == [i for i in range(64) if i != 37]  # every good event, in order, once
    [(chunk, sidecar)] = dead_letters(tmp_path / "dead")
    assert [e.record["seq"] for e in chunk.events()] == [37]
    assert sidecar["reason"] == "unprocessable"
    assert sidecar["error"].startswith("UnprocessableError: a value nests more than 254 containers")
    assert sidecar["isolated"] is True
    # O(k log n): 1 failed whole write, then halves down to the one event, never 2n.
    assert out.calls <= 2 * 7 + 1
    stats = sink.stats
    assert (stats.delivered_events, stats.dead_lettered_events, stats.isolations) == (63, 1, 1)
    assert stats.retries == 0
    events = [e["event"] for e in logs]
    assert "delivery.isolating" in events
    assert "delivery.dead_letter" in events
    assert "delivery.retry" not in events


async def test_the_reported_poison_message_with_an_undecodable_tag(
    tmp_path: Path, sinks: list[BufferedSink]
) -> None:
    """Tag b"\\xff\\xfe", record 600 deep, alone: dead-lettered with its exact tag; the rest is written."""
    sink = file_sink(tmp_path, sinks)
    await sink.start()
    poison = entries_chunk(POISON_TAG, [{"log": deep(600)}])
    with capture_logs():
        await submit_all(sink, [poison, entries_chunk("app", numbered(3))])
        await wait_for(lambda: sink.stats.queued_chunks == 0, "both chunks")
    assert [r["seq"] for r in lines(tmp_path / "out" / "app.log")] == [0, 1, 2]
    [(chunk, sidecar)] = dead_letters(tmp_path / "dead")
    assert (chunk.tag, chunk.entries) == (POISON_TAG, poison.entries)  # replayable as it came
    assert sidecar["tag"] == "\\xff\\xfe"
    assert sidecar["reason"] == "unprocessable"
    assert sidecar["isolated"] is False


class BuggyOutput(Output):
    """A stand-in for an output with a bug: raises KeyError on records holding ``"boom"``, and the first
    ``flaky`` writes raise RuntimeError whatever they hold (a transient bug)."""

    name = "buggy"

    def __init__(self, flaky: int = 0) -> None:
        self.flaky = flaky
        self.calls = 0
        self.delivered: list[int] = []

    async def write(self, chunk: Chunk) -> None:
        self.calls += 1
        if self.flaky:
            self.flaky -= 1
            raise RuntimeError("transient")
        records = [e.record for e in chunk.events()]
        if any("boom" in r for r in records):
            raise KeyError("boom")
        self.delivered += [r["seq"] for r in records]


def mem_sink(out: Output, tmp_path: Path, made: list[BufferedSink], t: FakeTime) -> BufferedSink:
    sink = MemorySink(
        "mem", out, RetryPolicy(jitter=0.0), str(tmp_path / "dead"),
        clock=t.clock, sleep=t.sleep, rand=lambda: 1.0,
    )  # fmt: skip
    made.append(sink)
    return sink


async def test_a_transient_bug_gets_quick_attempts_and_loses_nothing(
    tmp_path: Path, sinks: list[BufferedSink]
) -> None:
    t = FakeTime()
    out = BuggyOutput(flaky=UNEXPECTED_ATTEMPTS - 1)
    sink = mem_sink(out, tmp_path, sinks, t)
    await sink.start()
    with capture_logs() as logs:
        await submit_all(sink, [entries_chunk("app", numbered(8))])
        await wait_for(lambda: out.delivered == list(range(8)), "delivery")
    assert t.sleeps == [0.1, 0.2]  # quick, not the retry policy's back-off
    assert not (tmp_path / "dead").exists()
    assert sink.stats.unexpected_errors == UNEXPECTED_ATTEMPTS - 1
    crash = [e for e in logs if e["event"] == "delivery.unexpected_error"]
    assert crash[0]["error"] == "RuntimeError: transient"


async def test_a_persistent_bug_isolates_the_events_that_trigger_it(
    tmp_path: Path, sinks: list[BufferedSink]
) -> None:
    t = FakeTime()
    out = BuggyOutput()
    sink = mem_sink(out, tmp_path, sinks, t)
    await sink.start()
    records = numbered(100)
    for i in (3, 4, 71):
        records[i]["boom"] = True
    await submit_all(sink, [entries_chunk("app", records)])
    await wait_for(lambda: sink.stats.queued_chunks == 0, "the chunk")
    assert out.delivered == [i for i in range(100) if i not in (3, 4, 71)]
    dead = dead_letters(tmp_path / "dead")
    assert [[e.record["seq"] for e in c.events()] for c, _ in dead] == [[3], [4], [71]]
    assert {s["reason"] for _, s in dead} == {"unexpected_error"}
    assert {s["error"] for _, s in dead} == {"KeyError: 'boom'"}
    # Quick attempts on the whole chunk and on each single bad event; halves are split at once.
    assert out.calls < 3 * (2 * 7) + 3 * UNEXPECTED_ATTEMPTS
    assert sink.stats.dead_lettered_events == 3


class FailsOnce(Output):
    """Delivers records to a list; raises the scripted errors on the writes whose number is given."""

    name = "scripted"

    def __init__(self, script: dict[int, Exception]) -> None:
        self.script = script
        self.calls = 0
        self.delivered: list[int] = []

    async def write(self, chunk: Chunk) -> None:
        self.calls += 1
        err = self.script.get(self.calls)
        if err is not None:
            raise err
        records = [e.record for e in chunk.events()]
        if any("boom" in r for r in records):
            raise UnprocessableError("boom")
        self.delivered += [r["seq"] for r in records]


async def test_a_retryable_error_while_isolating_backs_off_and_resumes_where_it_was(
    tmp_path: Path, sinks: list[BufferedSink]
) -> None:
    t = FakeTime()
    out = FailsOnce({4: RetryableError("down"), 5: RetryableError("still down")})
    sink = mem_sink(out, tmp_path, sinks, t)
    await sink.start()
    records = numbered(16)
    records[13]["boom"] = True
    await submit_all(sink, [entries_chunk("app", records)])
    await wait_for(lambda: sink.stats.queued_chunks == 0, "the chunk")
    # Each good event exactly once: what was written before the outage is not written again.
    assert out.delivered == [i for i in range(16) if i != 13]
    assert t.sleeps[:2] == [1.0, 2.0]  # the retry policy's back-off, then it went on
    assert [[e.record["seq"] for e in c.events()] for c, _ in dead_letters(tmp_path / "dead")] == [[13]]


async def test_a_permanent_error_is_the_destinations_verdict_without_bisection(
    tmp_path: Path, sinks: list[BufferedSink]
) -> None:
    t = FakeTime()
    out = FailsOnce({1: PermanentError("HTTP 400")})
    sink = mem_sink(out, tmp_path, sinks, t)
    await sink.start()
    await submit_all(sink, [entries_chunk("app", numbered(64))])
    await wait_for(lambda: sink.stats.queued_chunks == 0, "the chunk")
    assert out.calls == 1  # not 2n requests to an endpoint that refuses
    [(chunk, sidecar)] = dead_letters(tmp_path / "dead")
    assert (chunk.count, sidecar["reason"]) == (64, "permanent_error")


async def test_a_partial_delivery_dead_letters_the_rejected_and_resends_only_the_unsent(
    tmp_path: Path, sinks: list[BufferedSink]
) -> None:
    t = FakeTime()
    whole = entries_chunk("app", numbered(9))
    ends = entry_ends(whole.entries)
    partial = PartialDelivery(
        "request 2 of 3 refused, 3 failed",
        delivered=3,
        rejected=slice_entries(whole, ends, 3, 6),
        unsent=slice_entries(whole, ends, 6, 9),
        cause=RetryableError("503", retry_after=7.0),
    )
    out = FailsOnce({1: partial})
    sink = mem_sink(out, tmp_path, sinks, t)
    await sink.start()
    await submit_all(sink, [whole])
    await wait_for(lambda: sink.stats.queued_chunks == 0, "the chunk")
    assert out.delivered == [6, 7, 8]  # the unsent part, once; the first three were delivered before
    assert t.sleeps == [7.0]
    [(chunk, sidecar)] = dead_letters(tmp_path / "dead")
    assert [e.record["seq"] for e in chunk.events()] == [3, 4, 5]
    assert sidecar["reason"] == "permanent_error"
    assert sink.stats.delivered_events == 6


async def test_the_isolation_budget_bounds_the_writes_spent_on_one_batch(
    tmp_path: Path, sinks: list[BufferedSink]
) -> None:
    t = FakeTime()
    out = FailsOnce({})
    sink = mem_sink(out, tmp_path, sinks, t)
    await sink.start()
    records = numbered(2000)
    for r in records:
        r["boom"] = True  # every event fails: isolating them one by one would cost 4000 writes
    await submit_all(sink, [entries_chunk("app", records)])
    await wait_for(lambda: sink.stats.queued_chunks == 0, "the chunk")
    assert out.calls <= 2 * ISOLATION_BUDGET + 1
    dead = dead_letters(tmp_path / "dead")
    assert sum(c.count for c, _ in dead) == 2000  # nothing lost: parked in bigger pieces
    assert sorted(e.record["seq"] for c, _ in dead for e in c.events()) == list(range(2000))


async def test_success_hands_the_very_chunk_over_without_framing_or_copies(
    tmp_path: Path, sinks: list[BufferedSink]
) -> None:
    got: list[Chunk] = []

    class Keep(Output):
        name = "keep"

        async def write(self, chunk: Chunk) -> None:
            got.append(chunk)

    sink = mem_sink(Keep(), tmp_path, sinks, FakeTime())
    await sink.start()
    c = entries_chunk("app", numbered(3))
    await submit_all(sink, [c])
    await wait_for(lambda: bool(got), "the write")
    assert got[0] is c


class CrashingQueue(DiskQueue):
    """A disk queue whose mark_delivered raises once: stands in for a bug that escapes the loop."""

    crashes = 1

    def mark_delivered(self, taken: Taken) -> None:
        if self.crashes:
            self.crashes -= 1
            raise RuntimeError("bug in the queue \udcff")
        super().mark_delivered(taken)


async def test_a_crash_of_the_loop_is_logged_counted_and_the_loop_restarts_with_what_it_took(
    tmp_path: Path,
) -> None:
    t = FakeTime()
    out = BuggyOutput()
    q = CrashingQueue(str(tmp_path / "q"), fsync="never")
    sink = BufferedSink("out", out, q, RetryPolicy(), str(tmp_path / "dead"), clock=t.clock, sleep=t.sleep)
    await sink.start()
    with capture_logs() as logs:
        await submit_all(
            sink, [entries_chunk("app", numbered(3)), entries_chunk("app", numbered(2, start=3))]
        )
        await wait_for(lambda: sink.stats.queued_chunks == 0, "delivery after the crash")
        await submit_all(sink, [entries_chunk("app", numbered(1, start=5))])
        await wait_for(lambda: out.delivered[-1:] == [5], "delivery of a chunk after the crash")
    await sink.stop()
    assert out.delivered == list(range(6))  # no loss, no duplicate: the taken chunks were kept
    [crash] = [e for e in logs if e["event"] == "delivery.loop_crashed"]
    assert crash["error"] == "RuntimeError: bug in the queue \\xff"
    assert crash["crashes"] == 1
    assert sink.stats.loop_crashes == 1
    assert t.sleeps == [0.1]
    # The ledger moved past them: a restarted process does not deliver them again.
    out2 = BuggyOutput()
    sink2 = BufferedSink("out", out2, DiskQueue(str(tmp_path / "q"), fsync="never"))
    await sink2.start()
    await submit_all(sink2, [entries_chunk("app", numbered(1, start=6))])
    await wait_for(lambda: bool(out2.delivered), "the next chunk")
    await sink2.stop()
    assert out2.delivered == [6]


class CrashingTake(DiskQueue):
    """A disk queue whose take_nowait raises once: the loop crashes holding a chunk it took with get()."""

    crashes = 1

    def take_nowait(self) -> Taken | None:
        if self.crashes:
            self.crashes -= 1
            raise RuntimeError("bug while batching")
        return super().take_nowait()


async def test_a_chunk_taken_before_a_crash_is_delivered_by_the_restarted_loop(tmp_path: Path) -> None:
    """A disk queue hands a taken chunk out only once per process (its read cursor moved past it; only the
    ledger brings it back, at the next start): the restarted loop must deliver what it held."""
    t = FakeTime()
    out = BuggyOutput()
    q = CrashingTake(str(tmp_path / "q"), fsync="never")
    await q.start()
    for k in range(2):
        await asyncio.wait_for(q.submit(entries_chunk("app", numbered(2, start=2 * k))), TIMEOUT)
    sink = BufferedSink("out", out, q, RetryPolicy(), str(tmp_path / "dead"), clock=t.clock, sleep=t.sleep)
    await sink.output.start()
    sink._task = asyncio.create_task(sink._supervise())  # get() takes chunk 1, batching crashes
    await wait_for(lambda: sink.stats.queued_chunks == 0, "both chunks, the one taken before the crash too")
    assert out.delivered == [0, 1, 2, 3]
    assert sink.stats.loop_crashes == 1
    await sink.stop()


class Escape(BaseException):
    """Not an Exception: what a careless output could raise, past every ``except Exception``."""


class EscapingOutput(BuggyOutput):
    def __init__(self, escapes: int) -> None:
        super().__init__()
        self.escapes = escapes

    async def write(self, chunk: Chunk) -> None:
        if self.escapes:
            self.escapes -= 1
            raise Escape("out of band")
        await super().write(chunk)


async def test_a_batch_that_keeps_crashing_the_loop_is_parked_and_the_queue_moves(tmp_path: Path) -> None:
    t = FakeTime()
    out = EscapingOutput(escapes=CRASHES_PER_BATCH)
    q = DiskQueue(str(tmp_path / "q"), fsync="never")
    sink = BufferedSink("out", out, q, RetryPolicy(), str(tmp_path / "dead"), clock=t.clock, sleep=t.sleep)
    await sink.start()
    with capture_logs() as logs:
        await submit_all(sink, [entries_chunk("app", numbered(2))])
        await wait_for(lambda: sink.stats.queued_chunks == 0, "the parked batch to leave the queue")
        await submit_all(sink, [entries_chunk("app", numbered(1, start=2))])
        await wait_for(lambda: out.delivered == [2], "the next chunk")
    await sink.stop()
    assert sink.stats.loop_crashes == CRASHES_PER_BATCH
    assert t.sleeps == [0.1, 0.2]  # restarted twice, parked at the third crash
    assert [e["event"] for e in logs].count("delivery.batch_parked") == 1
    [(chunk, sidecar)] = dead_letters(tmp_path / "dead")
    assert [e.record["seq"] for e in chunk.events()] == [0, 1]
    assert (sidecar["reason"], sidecar["error"]) == ("loop_crashed", "Escape: out of band")


async def test_a_batch_whose_events_all_hit_a_bug_costs_seconds_not_minutes(
    tmp_path: Path, sinks: list[BufferedSink]
) -> None:
    t = FakeTime()
    out = BuggyOutput()
    sink = mem_sink(out, tmp_path, sinks, t)
    await sink.start()
    records = numbered(2000)
    for r in records:
        r["boom"] = True
    await submit_all(sink, [entries_chunk("app", records)])
    await wait_for(lambda: sink.stats.queued_chunks == 0, "the chunk")
    assert len(t.sleeps) <= QUICK_RETRIES_PER_BATCH
    assert sum(t.sleeps) <= QUICK_RETRIES_PER_BATCH * 0.2
    assert out.calls <= 2 * ISOLATION_BUDGET + 1 + QUICK_RETRIES_PER_BATCH
    dead = dead_letters(tmp_path / "dead")
    assert sorted(e.record["seq"] for c, _ in dead for e in c.events()) == list(range(2000))
