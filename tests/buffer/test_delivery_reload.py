"""BufferedSink.retire and take_over: a reload rebuilds an output over the same open disk queue.

The contract: what the retired sink had queued, taken or in flight is delivered by its successor, once
and in order; a write in flight when retire is called either completes (and is not written again) or is
cut off (and is written again by the successor); never both lost and not retried. Real asyncio, a real
DiskQueue on tmp_path; the outputs are test destinations whose writes wait at a gate the test opens.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from forwardd.buffer import BufferedSink, DiskQueue, RetryPolicy
from forwardd.buffer.base import Taken
from forwardd.buffer.delivery import Batching
from forwardd.buffer.isolation import Work
from forwardd.errors import RetryableError
from forwardd.model import Chunk
from forwardd.outputs.base import Output
from tests.buffer.test_delivery_isolation import entries_chunk, numbered, submit_all, wait_for

TIMEOUT = 10.0
PER_CHUNK = 3


class Gate(Output):
    """A destination whose writes wait until the test opens their tag's gate (``opened``: all open from the
    start). Records the writes begun, the events delivered, and the writes cancelled before delivering."""

    def __init__(self, name: str, depth: int = 1, *, opened: bool = False) -> None:
        self.name = name
        self.concurrent_writes = depth
        self.gates: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.opened = opened
        self.begun: list[str] = []
        self.delivered: list[int] = []
        self.cancelled: list[str] = []
        #: Tags whose next write fails with a RetryableError (once each).
        self.fail: set[str] = set()
        self.stopped = False

    def open(self, *tags: str) -> None:
        for tag in tags:
            self.gates[tag].set()

    async def write(self, chunk: Chunk) -> None:
        self.begun.append(chunk.tag)
        if not self.opened:
            try:
                await self.gates[chunk.tag].wait()
            except asyncio.CancelledError:
                self.cancelled.append(chunk.tag)
                raise
        if chunk.tag in self.fail:
            self.fail.discard(chunk.tag)
            raise RetryableError(f"{chunk.tag} not now")
        self.delivered += [e.record["seq"] for e in chunk.events()]

    async def stop(self) -> None:
        self.stopped = True


def tagged(tag: str, index: int) -> Chunk:
    """Chunk ``index`` of a test: PER_CHUNK events numbered from index * PER_CHUNK."""
    return entries_chunk(tag, numbered(PER_CHUNK, start=index * PER_CHUNK))


def seqs(*indexes: int) -> list[int]:
    return [s for i in indexes for s in range(i * PER_CHUNK, (i + 1) * PER_CHUNK)]


@pytest.fixture
async def queue(tmp_path: Path) -> AsyncIterator[DiskQueue]:
    q = DiskQueue(str(tmp_path / "queue"), fsync="never")
    await q.start()
    yield q
    await q.close()


@pytest.fixture
async def successors() -> AsyncIterator[list[BufferedSink]]:
    """Successor sinks, stopped at the end (which also closes the queue they share)."""
    made: list[BufferedSink] = []
    yield made
    for s in made:
        await s.stop()


async def rebuild(
    old: BufferedSink, new_output: Output, made: list[BufferedSink], timeout: float
) -> BufferedSink:
    """What a reload does: retire the running sink, and start a new one over the same queue with what the
    old one had taken."""
    gathered, works = await old.retire(timeout)
    return await succeed(old, new_output, made, (gathered, works))


async def succeed(
    old: BufferedSink, new_output: Output, made: list[BufferedSink], handed: tuple[list[Taken], deque[Work]]
) -> BufferedSink:
    """A new sink over ``old``'s queue that takes over what ``old``'s retire handed (``handed``)."""
    new = BufferedSink(old.name, new_output, old.queue)
    made.append(new)
    await new.take_over(*handed)
    return new


async def retire_begun(sink: BufferedSink) -> asyncio.Future[tuple[list[Taken], deque[Work]]]:
    """``sink.retire(TIMEOUT)`` running: returns once retire has run up to its first wait (for the writes
    in flight), so that what the test does next happens while it retires."""
    begun = asyncio.Event()

    async def retire() -> tuple[list[Taken], deque[Work]]:
        begun.set()
        return await sink.retire(TIMEOUT)  # runs on, in this same step, until it waits

    retiring = asyncio.ensure_future(retire())
    await begun.wait()
    return retiring


async def left_after_restart(tmp_path: Path) -> int:
    """Chunks a start would deliver again from what the queue's files say (none, if every delivery was
    marked)."""
    again = DiskQueue(str(tmp_path / "queue"), fsync="never")
    await again.start()
    try:
        return again.queued_chunks
    finally:
        await again.close()


async def test_a_write_that_completes_while_retiring_is_not_written_again(
    queue: DiskQueue, successors: list[BufferedSink], tmp_path: Path
) -> None:
    old_out = Gate("old")
    old = BufferedSink("out", old_out, queue)
    await old.start()
    await submit_all(old, [tagged("a", 0)])
    await wait_for(lambda: old_out.begun == ["a"], "the first write")
    await submit_all(old, [tagged("b", 1), tagged("a", 2)])  # queued behind it, not taken yet
    retiring = await retire_begun(old)
    old_out.open("a")  # the write in flight completes while retire waits for it
    gathered, works = await asyncio.wait_for(retiring, TIMEOUT)
    assert old_out.stopped
    new_out = Gate("new", opened=True)
    new = await succeed(old, new_out, successors, (gathered, works))
    await submit_all(new, [tagged("c", 3)])  # the queue accepted all along
    await wait_for(lambda: queue.queued_chunks == 0, "every chunk delivered")
    assert old_out.delivered == seqs(0)
    assert old_out.cancelled == []
    assert new_out.delivered == seqs(1, 2, 3)  # not chunk 0 again, and in queue order
    assert await left_after_restart(tmp_path) == 0


async def test_a_write_cut_off_by_retire_is_written_once_by_the_successor(
    queue: DiskQueue, successors: list[BufferedSink], tmp_path: Path
) -> None:
    old_out = Gate("old")  # its gates never open: the destination hangs
    old = BufferedSink("out", old_out, queue)
    await old.start()
    await submit_all(old, [tagged("a", 0)])
    await wait_for(lambda: old_out.begun == ["a"], "the first write")
    await submit_all(old, [tagged("b", 1)])
    new_out = Gate("new", opened=True)
    await rebuild(old, new_out, successors, timeout=0.0)  # no wait: the write is cut off at once
    await wait_for(lambda: queue.queued_chunks == 0, "every chunk delivered")
    assert old_out.cancelled == ["a"]
    assert old_out.delivered == []
    assert new_out.delivered == seqs(0, 1)
    assert await left_after_restart(tmp_path) == 0


async def test_what_the_loop_took_for_a_batch_still_growing_goes_to_the_successor(
    queue: DiskQueue, successors: list[BufferedSink], tmp_path: Path
) -> None:
    """The loop holds a small batch to let it grow (Batching.max_wait): taken from the queue, not written.
    The queue never hands a taken chunk out twice in one process, so retire must hand it over."""
    old_out = Gate("old", opened=True)
    old = BufferedSink("out", old_out, queue, batching=Batching(max_wait=3600.0))
    await old.start()
    await submit_all(old, [tagged("a", 0), tagged("a", 1)])
    await wait_for(lambda: old.oldest_received_ns is not None, "the loop to take the batch")
    new_out = Gate("new", opened=True)
    await rebuild(old, new_out, successors, timeout=TIMEOUT)
    await wait_for(lambda: queue.queued_chunks == 0, "every chunk delivered")
    assert old_out.begun == []
    assert new_out.delivered == seqs(0, 1)
    assert await left_after_restart(tmp_path) == 0


async def test_concurrent_writes_in_flight_each_completed_or_cut_off_never_both_lost(
    queue: DiskQueue, successors: list[BufferedSink], tmp_path: Path
) -> None:
    """Three writes in flight (an output with concurrent_writes, as Kafka): b completes before retire,
    behind a that has not (so b's chunks cannot leave the queue yet), and d takes the slot b left; a, c
    and d are cut off. The successor writes a, c and d once each, b not again, and every chunk leaves the
    queue."""
    old_out = Gate("old", depth=3)
    old = BufferedSink("out", old_out, queue)
    await old.start()
    for i, tag in enumerate("abc"):
        await submit_all(old, [tagged(tag, i)])
        await wait_for(lambda n=i + 1: len(old_out.begun) == n, f"write {tag} begun")  # type: ignore[misc]
    await submit_all(old, [tagged("d", 3)])
    old_out.open("b")
    await wait_for(lambda: old_out.delivered == seqs(1), "b delivered")
    await wait_for(lambda: old_out.begun == ["a", "b", "c", "d"], "d begun in the slot b left")
    assert queue.queued_chunks == 4  # chunks leave the queue oldest first: b waits for a
    new_out = Gate("new", depth=3, opened=True)
    await rebuild(old, new_out, successors, timeout=0.0)
    await wait_for(lambda: queue.queued_chunks == 0, "every chunk delivered")
    assert sorted(old_out.cancelled) == ["a", "c", "d"]
    assert old_out.delivered == seqs(1)
    assert new_out.begun == ["a", "c", "d"]
    assert new_out.delivered == seqs(0, 2, 3)
    assert await left_after_restart(tmp_path) == 0


async def test_concurrent_writes_that_complete_while_retiring_are_not_written_again(
    queue: DiskQueue, successors: list[BufferedSink], tmp_path: Path
) -> None:
    old_out = Gate("old", depth=3)
    old = BufferedSink("out", old_out, queue)
    await old.start()
    for i, tag in enumerate("abc"):
        await submit_all(old, [tagged(tag, i)])
        await wait_for(lambda n=i + 1: len(old_out.begun) == n, f"write {tag} begun")  # type: ignore[misc]
    await submit_all(old, [tagged("d", 3)])
    retiring = await retire_begun(old)
    # The writes in flight complete while retire waits for them, one after another.
    old_out.open("b")
    await wait_for(lambda: old_out.delivered == seqs(1), "b delivered")
    old_out.open("c", "a")
    gathered, works = await asyncio.wait_for(retiring, TIMEOUT)
    new_out = Gate("new", depth=3, opened=True)
    await succeed(old, new_out, successors, (gathered, works))
    await wait_for(lambda: queue.queued_chunks == 0, "every chunk delivered")
    assert old_out.cancelled == []
    assert sorted(old_out.delivered) == seqs(0, 1, 2)
    assert new_out.delivered == seqs(3)
    assert await left_after_restart(tmp_path) == 0


async def test_a_chunk_taken_in_the_loop_turn_that_retire_cuts_goes_to_the_successor(
    queue: DiskQueue, successors: list[BufferedSink], tmp_path: Path
) -> None:
    """With a write backing off (nothing writing: retire cuts the loop at once) and room for more, the loop
    waits for the head or for the next committed chunk. A reload that comes in the very loop turn that
    chunk is taken must still find it in what retire hands over: the queue will not hand it out again."""
    old_out = Gate("old", depth=3, opened=True)
    old_out.fail.add("a")
    old = BufferedSink("out", old_out, queue, RetryPolicy(initial=3600.0, max=3600.0, jitter=0.0))
    await old.start()
    await submit_all(old, [tagged("a", 0)])
    await wait_for(lambda: old.stats.retries == 1, "the first write to fail and back off")
    retiring: list[asyncio.Future[tuple[list[Taken], deque[Work]]]] = []
    committed = old.submit(tagged("b", 1))
    assert isinstance(committed, asyncio.Future)
    # Retire from the commit's own callback: it runs before the loop's get has taken the chunk, and the
    # retire after it, in the turn where the get is done and the loop has not woken yet.
    committed.add_done_callback(lambda _: retiring.append(asyncio.ensure_future(old.retire(0.0))))
    await wait_for(lambda: bool(retiring) and retiring[0].done(), "retire")
    gathered, works = retiring[0].result()
    new_out = Gate("new", depth=3, opened=True)
    await succeed(old, new_out, successors, (gathered, works))
    await wait_for(lambda: queue.queued_chunks == 0, "every chunk delivered")
    assert old_out.delivered == []
    assert new_out.delivered == seqs(0, 1)
    assert await left_after_restart(tmp_path) == 0


async def test_a_chunk_taken_in_the_loop_turn_that_retire_cuts_a_growing_batch_goes_to_the_successor(
    queue: DiskQueue, successors: list[BufferedSink], tmp_path: Path
) -> None:
    """The same turn while the loop holds a small batch to let it grow (Batching.max_wait) and waits for
    the next committed chunk: taken then, it belongs to the batch that retire hands over."""
    old_out = Gate("old", opened=True)
    old = BufferedSink("out", old_out, queue, batching=Batching(max_wait=3600.0))
    await old.start()
    await submit_all(old, [tagged("a", 0)])
    await wait_for(lambda: old.oldest_received_ns is not None, "the loop to take the first chunk")
    retiring: list[asyncio.Future[tuple[list[Taken], deque[Work]]]] = []
    committed = old.submit(tagged("a", 1))
    assert isinstance(committed, asyncio.Future)
    committed.add_done_callback(lambda _: retiring.append(asyncio.ensure_future(old.retire(0.0))))
    await wait_for(lambda: bool(retiring) and retiring[0].done(), "retire")
    gathered, works = retiring[0].result()
    new_out = Gate("new", opened=True)
    await succeed(old, new_out, successors, (gathered, works))
    await wait_for(lambda: queue.queued_chunks == 0, "every chunk delivered")
    assert old_out.begun == []
    assert new_out.delivered == seqs(0, 1)
    assert await left_after_restart(tmp_path) == 0
