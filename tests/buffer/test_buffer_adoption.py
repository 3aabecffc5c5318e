"""A queue adopts the queues of workers that no longer exist: their records come out first, from where
their ledger says, are marked delivered there, and the adopted directory goes away once it is empty."""

from __future__ import annotations

import asyncio
from pathlib import Path

from structlog.testing import capture_logs

from forwardd.buffer import DiskQueue
from forwardd.buffer.journal import PieceJournal
from forwardd.buffer.segment import frame_size
from forwardd.buffer.store import SegmentStore
from forwardd.model import Chunk

TIMEOUT = 5.0


def chunk(n: int) -> Chunk:
    return Chunk(f"w.{n}", str(n).encode() * 40, n, n)


def leave_queue(directory: Path, numbers: range, delivered: int) -> None:
    """A queue as an old worker left it: ``numbers`` committed, the first ``delivered`` of them delivered."""
    store = SegmentStore.open(str(directory), max_segment_size=1024, fsync="never")
    store.publish(store.write([chunk(n) for n in numbers]))
    for _ in range(delivered):
        t = store.take()
        assert t is not None
        store.mark_delivered(t)
    store.close()


async def test_adopted_queues_are_delivered_first_then_removed(tmp_path: Path) -> None:
    own, old1, old3 = tmp_path / "q", tmp_path / "q" / "worker-1", tmp_path / "q" / "worker-3"
    leave_queue(old1, range(100, 130), delivered=10)
    leave_queue(old3, range(300, 305), delivered=0)
    q = DiskQueue(str(own), max_segment_size=1024, max_size=10 * frame_size(chunk(0)))
    q.adopt([str(old1), str(old3)])
    with capture_logs() as logs:
        await q.start()
        adopted = [(e["directory"], e["chunks"]) for e in logs if e["event"] == "buffer.adopted"]
        assert adopted == [(str(old1), 20), (str(old3), 5)]
        assert q.queued_chunks == 25
        # New chunks go to the queue's own directory; the adopted backlog does not count against max_size.
        await asyncio.wait_for(asyncio.gather(*(q.submit(chunk(i)) for i in range(5))), TIMEOUT)
        assert q.queued_chunks == 30
        got = []
        for _ in range(30):
            t = await asyncio.wait_for(q.get(), TIMEOUT)
            got.append(t.chunk.count)
            q.mark_delivered(t)
        assert got == [*range(110, 130), *range(300, 305), *range(5)]
        assert q.queued_chunks == 0
        await q.close()
    # Each is removed once delivered; which removal ends first is not fixed (a removal waits for its
    # finished segments' deletions, which run in threads).
    drained = [e["directory"] for e in logs if e["event"] == "buffer.adopted_drained"]
    assert sorted(drained) == [str(old1), str(old3)]
    assert not old1.exists()
    assert not old3.exists()
    store = SegmentStore.open(str(own))
    assert store.queued_chunks == 0
    store.close()


async def test_a_stop_in_the_middle_of_an_adopted_queue_resumes_from_its_ledger(tmp_path: Path) -> None:
    own, old = tmp_path / "q", tmp_path / "q" / "worker-1"
    leave_queue(old, range(100, 120), delivered=0)
    q = DiskQueue(str(own), max_segment_size=1024)
    q.adopt([str(old)])
    await q.start()
    for _ in range(7):
        q.mark_delivered(await asyncio.wait_for(q.get(), TIMEOUT))
    await q.close()
    assert old.is_dir()
    again = DiskQueue(str(own), max_segment_size=1024)
    again.adopt([str(old)])
    await again.start()
    got = []
    while (t := again.take_nowait()) is not None:
        got.append(t.chunk.count)
        again.mark_delivered(t)
    assert got == list(range(107, 120))
    await again.close()
    assert not old.exists()


async def test_an_empty_adopted_queue_is_removed_at_start(tmp_path: Path) -> None:
    own, old = tmp_path / "q", tmp_path / "q" / "worker-1"
    leave_queue(old, range(100, 103), delivered=3)
    q = DiskQueue(str(own))
    q.adopt([str(old)])
    await q.start()
    assert q.queued_chunks == 0
    assert not old.exists()
    await q.close()


async def test_a_journal_holds_again_what_an_old_workers_journal_held(tmp_path: Path) -> None:
    """docker_partial's journal is a disk queue too: pieces an old worker acked are held by the adopter."""
    own, old = tmp_path / "j", tmp_path / "j" / "worker-1"
    leave_queue(old, range(100, 103), delivered=1)
    journal = PieceJournal(str(own))
    journal.queue.adopt([str(old)])
    recovered = await journal.start()
    assert [c.count for _, c in recovered] == [101, 102]
    entry, committed = journal.append(chunk(7))  # a new piece goes to this worker's own journal
    await asyncio.wait_for(committed, TIMEOUT)
    for e, _ in recovered:
        journal.release(e)
    journal.release(entry)
    await journal.close()
    assert not old.exists()
    store = SegmentStore.open(str(own))
    assert store.queued_chunks == 0
    store.close()
