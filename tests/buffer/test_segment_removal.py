"""Finished segments are deleted beside the event loop, not on it.

Unlinking a 16 MiB segment took ext4 11-15 ms on the benchmark machine; done on the loop it paused every
connection, ack and output once per segment delivered. These tests watch which thread unlinks (the real
unlink does the work) and hold one unlink to stand for a slow disk, which cannot be made on demand.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from forwardd.buffer import DiskQueue
from forwardd.buffer import reader as reader_module
from forwardd.buffer.segment import parse_segment_name
from forwardd.model import Chunk
from tests.buffer.test_buffer_adoption import leave_queue

TIMEOUT = 5.0


def chunk(n: int) -> Chunk:
    return Chunk(f"r.{n}", bytes([n % 256]) * 900, n, n)


def segment_files(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if parse_segment_name(name) is not None)


async def deliver_all(queue: DiskQueue, n: int) -> None:
    for _ in range(n):
        taken = await asyncio.wait_for(queue.get(), TIMEOUT)
        queue.mark_delivered(taken)


@pytest.fixture
def unlinks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The thread of every unlink of a segment (the real unlink still runs)."""
    threads: list[int] = []
    real: Callable[[str], None] = os.unlink

    def watched(path: str) -> None:
        threads.append(threading.get_ident())
        real(path)

    monkeypatch.setattr(reader_module.os, "unlink", watched)
    return threads


async def test_finished_segments_are_unlinked_in_a_thread_and_gone_once_closed(
    tmp_path: Path, unlinks: list[int]
) -> None:
    queue = DiskQueue(str(tmp_path), max_segment_size=4096)
    await queue.start()
    await asyncio.wait_for(asyncio.gather(*(queue.submit(chunk(i)) for i in range(40))), TIMEOUT)
    assert len(segment_files(tmp_path)) > 5
    await deliver_all(queue, 40)
    await queue.close()
    assert unlinks, "no segment was finished"
    assert threading.get_ident() not in unlinks  # never on the loop's thread
    assert len(segment_files(tmp_path)) == 1  # only the open segment is left, as before


async def test_a_slow_unlink_does_not_hold_the_loop_and_close_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = threading.Event(), threading.Event()
    real: Callable[[str], None] = os.unlink

    def slow(path: str) -> None:  # a disk that takes its time to free a segment
        entered.set()
        assert release.wait(TIMEOUT)
        real(path)

    monkeypatch.setattr(reader_module.os, "unlink", slow)
    queue = DiskQueue(str(tmp_path), max_segment_size=4096)
    await queue.start()
    await asyncio.wait_for(asyncio.gather(*(queue.submit(chunk(i)) for i in range(10))), TIMEOUT)
    before = segment_files(tmp_path)
    await deliver_all(queue, 10)  # returns while the unlink is held: the loop is not blocked by it
    assert await asyncio.to_thread(entered.wait, TIMEOUT)
    more = queue.submit(chunk(99))  # the queue still commits meanwhile
    assert more is not None
    await asyncio.wait_for(more, TIMEOUT)
    closing = asyncio.ensure_future(queue.close())
    await asyncio.sleep(0.05)
    assert not closing.done()  # close waits for the finished segments to be deleted
    release.set()
    await asyncio.wait_for(closing, TIMEOUT)
    assert len(segment_files(tmp_path)) < len(before)


async def test_an_adopted_queue_is_removed_only_after_its_segments_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The adopted directory is removed once its last record is delivered; a finished segment of it still
    being deleted in a thread must not race that removal (one of the two would meet a missing file)."""
    own, old = tmp_path / "q", tmp_path / "q" / "worker-1"
    leave_queue(old, range(100, 130), delivered=0)
    entered, release = threading.Event(), threading.Event()
    held: list[str] = []
    real: Callable[[str], None] = os.unlink

    def slow_once(path: str) -> None:  # the first segment of the old queue takes its time to go
        if "worker-1" in path and not held:
            held.append(path)
            entered.set()
            assert release.wait(TIMEOUT)
        real(path)

    monkeypatch.setattr(reader_module.os, "unlink", slow_once)
    q = DiskQueue(str(own), max_segment_size=1024)
    q.adopt([str(old)])
    with capture_logs() as logs:
        await q.start()
        await deliver_all(q, 30)
        assert await asyncio.to_thread(entered.wait, TIMEOUT)
        retiring = set(q._retiring)
        assert retiring
        # Bounded on purpose: the removal must still be waiting for the held deletion.
        done, _ = await asyncio.wait(retiring, timeout=0.3)
        assert not done
        release.set()
        await asyncio.wait_for(asyncio.wait(retiring), TIMEOUT)
        await q.close()
    assert not old.exists()
    events = [e["event"] for e in logs]
    assert "buffer.adopted_drained" in events
    assert not {"buffer.unlink_failed", "buffer.adopted_remove_failed"} & set(events)
