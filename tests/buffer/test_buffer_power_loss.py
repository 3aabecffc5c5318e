"""A power cut, for real below the filesystem (tests/powercut.py): the delivery position survives it up to
the last ledger sync, which the queue makes at most a second after delivery moved it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from forwardd.buffer import DiskQueue
from forwardd.buffer.store import SegmentStore
from forwardd.model import Chunk
from tests.powercut import PowerCutDisk

TIMEOUT = 10.0


def chunk(n: int) -> Chunk:
    return Chunk("power", str(n).encode() * 100, n, n)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[PowerCutDisk]:
    d = PowerCutDisk(tmp_path / "disk")
    yield d
    d.close()


async def abandon(q: DiskQueue) -> None:
    """What the power cut did to the process: it stops, with no close (whose path-based writes would now
    reach the filesystem that came back)."""
    for task in q._tasks:
        task.cancel()
    await asyncio.gather(*q._tasks, return_exceptions=True)
    await q.checkpoints.wait_idle()
    assert q._executor is not None
    q._executor.shutdown(wait=True)
    assert q._store is not None
    q._store.ledger.close()
    q._store.reader.close()


async def wait_until(cond: object, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def test_a_power_cut_redelivers_only_what_followed_the_last_ledger_sync(disk: PowerCutDisk) -> None:
    directory = disk.mount / "q"
    q = DiskQueue(str(directory), max_segment_size=16 * 1024)  # many segments: rolls and unlinks happen
    q.checkpoints.sync_seconds = 3600.0  # one sync, at the first move; the cut below comes before the next
    await q.start()
    store = q._store
    assert store is not None
    await asyncio.wait_for(asyncio.gather(*(q.submit(chunk(i)) for i in range(300))), TIMEOUT)
    for _ in range(100):
        q.mark_delivered(await q.get())
    # The first move after a quiet spell is synced at once; the next sync waits ledger_sync_seconds.
    await wait_until(lambda: store.ledger.syncs == 1, "the ledger sync")
    for _ in range(50):
        q.mark_delivered(await q.get())
    await asyncio.sleep(0)  # the round's ledger write: in the page cache, not on the disk
    assert store.ledger.syncs == 1
    disk.cut()
    await abandon(q)
    again = SegmentStore.open(str(directory))
    got = []
    while (t := again.take()) is not None:
        got.append(t.chunk.count)
    again.close()
    # From the synced position (100), or later if the kernel flushed the ledger on its own; never before.
    # Without the sync the ledger on disk is the one written at start: all 300 would come again.
    assert 100 <= got[0] <= 150, got[:3]
    assert got == list(range(got[0], 300))


async def test_the_ledger_is_synced_about_once_a_second_not_per_delivery(tmp_path: Path) -> None:
    q = DiskQueue(str(tmp_path), max_segment_size=16 * 1024)
    q.checkpoints.sync_seconds = 0.2
    await q.start()
    store = q._store
    assert store is not None
    await asyncio.wait_for(asyncio.gather(*(q.submit(chunk(i)) for i in range(2000))), TIMEOUT)
    t0 = time.monotonic()
    for _ in range(2000):  # one delivery per loop iteration: 2000 ledger writes
        q.mark_delivered(await q.get())
        await asyncio.sleep(0)
    await wait_until(
        lambda: not q.checkpoints._moved.is_set() and q.checkpoints.job and q.checkpoints.job.done(), "sync"
    )
    elapsed = time.monotonic() - t0
    assert 1 <= store.ledger.syncs <= elapsed / 0.2 + 2
    await q.close()
    # And the last position is the one a restart (or a power cut after the close) resumes from.
    again = SegmentStore.open(str(tmp_path))
    assert again.take() is None
    again.close()


async def test_fsync_never_leaves_the_ledger_to_the_kernel(tmp_path: Path) -> None:
    q = DiskQueue(str(tmp_path), fsync="never")
    await q.start()
    await q.submit(chunk(0))
    q.mark_delivered(await q.get())
    await asyncio.sleep(0)
    assert q._store is not None
    assert q._store.ledger.syncs == 0
    assert not [t for t in q._tasks if "ledger" in t.get_name()]
    await q.close()
