"""BatchTaker.take_ahead: what the delivery loop takes while a write is in flight, so that an output that
prepares ahead (HTTP) can encode the next batch meanwhile, without changing what a batch holds.

A whole batch (one that ``gather`` would not hold to grow) is taken as works; a partial one stays in
``gathered`` and ``gather`` goes on growing it, as if it had never been looked at. Real MemoryQueue, real
loop; holding is bounded by conditions (a batch big enough), never by the clock.
"""

from __future__ import annotations

import asyncio

from forwardd.buffer.batching import Batching, BatchTaker
from forwardd.buffer.memory import MemoryQueue
from forwardd.buffer.unsynced import Unsynced
from forwardd.model import Chunk

TIMEOUT = 5.0


def chunk(tag: str, events: int, first: int = 0) -> Chunk:
    return Chunk(tag, bytes([first % 256]) * (10 * events), events, first)


async def never_flush() -> bool:
    raise AssertionError("nothing defers its sync here")


async def taker(batching: Batching, *chunks: Chunk) -> tuple[MemoryQueue, BatchTaker]:
    queue = MemoryQueue()
    await queue.start()
    for c in chunks:
        done = queue.submit(c)
        if done is not None:
            await asyncio.wait_for(done, TIMEOUT)
    return queue, BatchTaker(queue, batching, Unsynced(0.5), never_flush, lambda: 0.0)


async def test_a_whole_batch_is_taken_ahead_as_works() -> None:
    _, t = await taker(Batching(max_wait=5.0, max_events=20), *(chunk("a", 10, i) for i in range(5)))
    works = t.take_ahead()
    assert [w.chunk.count for w in works] == [20]  # two chunks of 10: as gather would have cut it
    assert t.gathered == []
    assert [w.chunk.count for w in t.take_ahead()] == [20]


async def test_without_holding_whatever_is_ready_is_a_batch() -> None:
    _, t = await taker(Batching(), chunk("a", 3), chunk("b", 4))
    works = t.take_ahead()
    assert sorted((w.chunk.tag, w.chunk.count) for w in works) == [("a", 3), ("b", 4)]


async def test_a_partial_batch_stays_gathered_and_gather_grows_it() -> None:
    queue, t = await taker(Batching(max_wait=5.0, max_events=30), chunk("a", 10, 0), chunk("a", 10, 1))
    assert t.take_ahead() == []
    assert [x.chunk.count for x in t.gathered] == [10, 10]  # kept, not handed out, not lost
    assert t.take_ahead() == []  # already gathered: nothing more is taken ahead
    growing = asyncio.ensure_future(t.gather())
    await asyncio.sleep(0)
    assert not growing.done()  # 20 of 30 events: held to grow, as a batch taken by gather would be
    done = queue.submit(chunk("a", 10, 2))
    if done is not None:
        await done
    await asyncio.wait_for(growing, TIMEOUT)
    works = t.take_works()
    assert [(w.chunk.count, len(w.takens)) for w in works] == [(30, 3)]


async def test_nothing_is_taken_ahead_once_the_loop_hurries_to_stop() -> None:
    queue, t = await taker(Batching(max_events=10), chunk("a", 10))
    t.hurry_up()
    assert t.take_ahead() == []
    assert queue.queued_chunks == 1
    assert t.gathered == []
