"""Back-pressure by volume: when a full queue makes big chunks wait for room, a small chunk (one docker
line) of another tag goes past them into a little room kept beyond max_size, so that a container's ack does
not wait behind a forwarder's megabytes. Each tag keeps its order; small chunks keep theirs; the room is
bounded. Real DiskQueue on real files; every wait is on a future with a timeout."""

from __future__ import annotations

import asyncio
from pathlib import Path

from forwardd.buffer import DiskQueue
from forwardd.buffer.queue import SMALL_ROOM, SMALL_ROOM_CHUNK
from forwardd.buffer.segment import frame_size
from forwardd.model import Chunk

TIMEOUT = 5.0
MAX = 64 * 1024
ROOM = min(SMALL_ROOM, MAX // 16)


def big(n: int, tag: str = "bulk") -> Chunk:
    return Chunk(tag, bytes([n % 256]) * 20_000, n, n)


def small(n: int, tag: str = "docker.a") -> Chunk:
    return Chunk(tag, bytes([n % 256]) * 200, n, n)


async def full_queue(tmp_path: Path) -> tuple[DiskQueue, asyncio.Future[None]]:
    """A queue holding three big chunks, with a fourth waiting for room."""
    assert frame_size(small(0)) <= SMALL_ROOM_CHUNK < frame_size(big(0))
    q = DiskQueue(str(tmp_path), max_size=MAX)
    await q.start()
    await asyncio.wait_for(asyncio.gather(*(q.submit(big(i)) for i in range(3))), TIMEOUT)
    waiting = q.submit(big(3))
    assert not waiting.done()
    return q, waiting  # type: ignore[return-value]


async def test_a_small_chunk_of_another_tag_goes_past_big_ones_waiting(tmp_path: Path) -> None:
    q, waiting = await full_queue(tmp_path)
    await asyncio.wait_for(q.submit(small(10)), TIMEOUT)  # committed: acked while the big one waits
    assert not waiting.done()
    q.mark_delivered(await q.get())  # room for the big one
    await asyncio.wait_for(waiting, TIMEOUT)
    assert [(await q.get()).chunk.count for _ in range(4)] == [1, 2, 10, 3]
    await q.close()


async def test_a_small_chunk_waits_behind_a_waiting_chunk_of_its_own_tag(tmp_path: Path) -> None:
    q, waiting = await full_queue(tmp_path)
    same = q.submit(small(10, tag="bulk"))
    other = q.submit(small(11))  # a small one waits now: small ones keep their order too
    assert not same.done()
    assert not other.done()
    q.mark_delivered(await q.get())
    await asyncio.wait_for(asyncio.gather(waiting, same, other), TIMEOUT)
    assert [(await q.get()).chunk.count for _ in range(5)] == [1, 2, 3, 10, 11]
    await q.close()


async def test_the_room_is_bounded_then_small_chunks_wait_in_line(tmp_path: Path) -> None:
    q, waiting = await full_queue(tmp_path)
    used0, size = q.used_bytes, frame_size(small(0))
    passed: list[int] = []
    n = 100
    while True:
        fut = q.submit(small(n, tag=f"docker.{n}"))
        if not q.pending_chunks:
            break  # neither committed nor pending: it waits, the room is used up
        await asyncio.wait_for(fut, TIMEOUT)
        passed.append(n)
        assert q.used_bytes <= MAX + ROOM
        n += 1
    assert len(passed) == (MAX + ROOM - used0) // size  # up to max_size, then the room, not beyond
    later = q.submit(small(999, tag="docker.other"))
    assert not later.done()  # behind the small one waiting
    for _ in range(4):
        q.mark_delivered(await q.get())
    await asyncio.wait_for(asyncio.gather(waiting, fut, later), TIMEOUT)
    await q.close()


async def test_without_big_chunks_waiting_small_ones_wait_for_room_as_before(tmp_path: Path) -> None:
    size = frame_size(small(0))
    q = DiskQueue(str(tmp_path), max_size=3 * size)
    await q.start()
    await asyncio.wait_for(asyncio.gather(*(q.submit(small(i, tag=f"t{i}")) for i in range(3))), TIMEOUT)
    first = q.submit(small(3, tag="t3"))
    second = q.submit(small(4, tag="t4"))
    assert not first.done()
    assert not second.done()
    q.mark_delivered(await q.get())
    await asyncio.wait_for(first, TIMEOUT)
    assert not second.done()
    await q.close()
