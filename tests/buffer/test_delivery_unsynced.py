"""The delivery loop with an output that defers its sync: the file output's grouped fsyncs.

A written chunk must not leave the queue (ledger, segment files) before a sync that followed its write
succeeded; the loop syncs when the written bytes reach the bound, when the oldest reaches the interval,
and before a stop or a reload's retire lets them go; a failed sync writes everything not yet synced again
and marks nothing until a sync after that succeeded. Real files (FileOutput), a real DiskQueue on
tmp_path; the only thing injected is a failing fsync (``Disk.fsync_file``), which no real filesystem here
can be made to produce on demand: it also cuts the file back to what the last good sync made durable, as
the lost pages of a real failed fsync would.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from forwardd.buffer import BufferedSink, DiskQueue, RetryPolicy
from forwardd.buffer.base import Taken
from forwardd.buffer.delivery import Batching
from forwardd.model import Chunk
from forwardd.outputs.file import FileOutput
from tests.buffer.test_delivery_isolation import entries_chunk, numbered, submit_all, wait_for
from tests.buffer.test_delivery_reload import Gate

PER_CHUNK = 10


class Journal:
    """What happened, in order: ("write", seqs), ("sync", ok), ("mark", seqs)."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, Any]] = []

    def marked(self) -> list[int]:
        return [s for kind, seqs in self.steps if kind == "mark" for s in seqs]

    def check_marks_follow_a_good_sync_after_their_last_write(self) -> None:
        """Every mark comes after a good sync that followed a write of its events made after the last
        failed sync (a failed sync may lose anything written before it)."""
        fresh: dict[int, bool] = {}  # written since the last failed sync
        durable: dict[int, bool] = {}  # and a good sync followed
        for kind, value in self.steps:
            if kind == "write":
                for s in value:
                    fresh[s], durable[s] = True, False
            elif kind == "sync" and not value:
                for s in fresh:
                    fresh[s] = durable[s] = False
            elif kind == "sync":
                for s in fresh:
                    durable[s] = durable[s] or fresh[s]
            else:
                for s in value:
                    assert s in fresh, f"{s} marked, never written"
                    assert durable[s], f"{s} marked before a good sync after its last write"


def seqs_of(chunk: Chunk) -> list[int]:
    return [e.record["seq"] for e in chunk.events()]


class JournalingQueue(DiskQueue):
    """A real DiskQueue that notes each chunk it is told is delivered."""

    def __init__(self, path: str, journal: Journal) -> None:
        super().__init__(path, fsync="never")
        self.journal = journal

    def mark_delivered(self, taken: Taken) -> None:
        self.journal.steps.append(("mark", seqs_of(taken.chunk)))
        super().mark_delivered(taken)


class JournalingFiles(FileOutput):
    """The real file output, grouped syncs, noting its writes and syncs; ``fail`` fsyncs fail (and lose
    what they should have made durable) before one succeeds again."""

    def __init__(self, path: Path, journal: Journal, interval: float) -> None:
        super().__init__(name="files", path=str(path), fsync="grouped", fsync_interval=interval)
        self.journal = journal
        self.fail = 0
        self._durable: dict[int, int] = {}  # inode -> size the last good fsync made durable
        self._disk.fsync_file = self._fsync

    def _fsync(self, fd: int) -> None:
        st = os.fstat(fd)
        if self.fail:
            os.ftruncate(fd, self._durable.get(st.st_ino, 0))  # the pages the failed fsync lost
            raise OSError(errno.EIO, "Input/output error")
        os.fsync(fd)
        self._durable[st.st_ino] = st.st_size

    async def write(self, chunk: Chunk) -> None:
        await super().write(chunk)
        self.journal.steps.append(("write", seqs_of(chunk)))

    async def sync(self) -> None:
        try:
            await super().sync()
        except Exception:
            self.fail -= 1
            self.journal.steps.append(("sync", False))
            raise
        self.journal.steps.append(("sync", True))


def file_seqs(path: Path) -> list[int]:
    files = sorted(path.parent.glob(path.name + "*"))
    return [json.loads(line)["seq"] for p in files for line in p.read_text().splitlines()]


def chunks(n: int, start: int = 0) -> list[Chunk]:
    return [entries_chunk("app", numbered(PER_CHUNK, start=start + i * PER_CHUNK), first=i) for i in range(n)]


@pytest.fixture
async def made() -> AsyncIterator[list[BufferedSink]]:
    sinks: list[BufferedSink] = []
    yield sinks
    for s in sinks:
        await s.stop()


def sink_of(
    made: list[BufferedSink],
    tmp_path: Path,
    *,
    interval: float = 60.0,
    sync_bytes: int = 1 << 30,
    queue_dir: str = "q",
) -> tuple[BufferedSink, JournalingFiles, JournalingQueue, Journal]:
    journal = Journal()
    out = JournalingFiles(tmp_path / "out" / "app.log", journal, interval)
    q = JournalingQueue(str(tmp_path / queue_dir), journal)
    policy = RetryPolicy(initial=0.01, max=0.05)
    sink = BufferedSink("files", out, q, policy, str(tmp_path / "dead"), sync_bytes=sync_bytes)
    made.append(sink)
    return sink, out, q, journal


async def queued_after_restart(tmp_path: Path, queue_dir: str = "q") -> int:
    q = DiskQueue(str(tmp_path / queue_dir), fsync="never")
    await q.start()
    try:
        return q.queued_chunks
    finally:
        await q.close()


async def test_written_chunks_stay_queued_until_a_sync_and_stop_syncs_them_first(
    made: list[BufferedSink], tmp_path: Path
) -> None:
    sink, out, q, journal = sink_of(made, tmp_path)
    await sink.start()
    await submit_all(sink, chunks(20))
    await wait_for(lambda: out.events_written == 20 * PER_CHUNK, "the writes")
    assert file_seqs(tmp_path / "out" / "app.log") == list(range(20 * PER_CHUNK))
    # Written, in the files, but not synced: nothing left the queue (a crash now delivers it again).
    assert out.syncs == 0
    assert q.queued_chunks == 20
    assert journal.marked() == []
    await sink.stop()
    assert out.syncs == 1  # one fsync for twenty chunks
    assert journal.marked() == list(range(20 * PER_CHUNK))  # in order
    journal.check_marks_follow_a_good_sync_after_their_last_write()
    assert await queued_after_restart(tmp_path) == 0


async def test_the_interval_makes_the_loop_sync_written_chunks_while_it_is_idle(
    made: list[BufferedSink], tmp_path: Path
) -> None:
    sink, out, q, journal = sink_of(made, tmp_path, interval=0.2)
    await sink.start()
    loop = asyncio.get_running_loop()
    await submit_all(sink, chunks(3))
    await wait_for(lambda: out.events_written == 3 * PER_CHUNK, "the writes")
    written_at = loop.time()
    await wait_for(lambda: q.queued_chunks == 0, "the sync the interval calls for")
    assert loop.time() - written_at >= 0.1  # not at once: the interval, from the write (0.2 s)
    assert out.syncs == 1
    journal.check_marks_follow_a_good_sync_after_their_last_write()


async def test_the_bytes_bound_makes_the_loop_sync_before_the_interval(
    made: list[BufferedSink], tmp_path: Path
) -> None:
    one = len(chunks(1)[0].entries)
    sink, out, q, journal = sink_of(made, tmp_path, sync_bytes=5 * one)
    sink.batching = Batching()  # every chunk its own write: the bound is met after the fifth
    await sink.start()
    for c in chunks(12):  # one at a time, so that each is its own write
        await submit_all(sink, [c])
        await wait_for(lambda c=c: out.events_written >= seqs_of(c)[-1] + 1, "the write")
    # The interval is a minute: only the bound can have made it sync, and it did at least twice.
    assert out.syncs >= 2
    assert q.queued_chunks < 12
    assert len(journal.marked()) >= 10 * PER_CHUNK
    journal.check_marks_follow_a_good_sync_after_their_last_write()


async def test_a_full_queue_makes_the_loop_sync_so_that_clients_get_room(tmp_path: Path) -> None:
    journal = Journal()
    out = JournalingFiles(tmp_path / "out" / "app.log", journal, 60.0)
    one = len(chunks(1)[0].entries)
    q = DiskQueue(str(tmp_path / "q"), fsync="never", max_size=4 * one, when_full="block")
    sink = BufferedSink("files", out, q, RetryPolicy(initial=0.01), str(tmp_path / "dead"))
    await sink.start()
    try:
        # Twelve chunks through room for four: only syncs before the interval let them all in.
        await asyncio.wait_for(submit_all(sink, chunks(12)), 10)
        await wait_for(lambda: out.events_written == 12 * PER_CHUNK, "the writes")
        assert out.syncs >= 2
    finally:
        await sink.stop()
    assert file_seqs(tmp_path / "out" / "app.log") == list(range(12 * PER_CHUNK))


async def test_a_failed_sync_writes_everything_unsynced_again_and_marks_nothing_before_a_good_sync(
    made: list[BufferedSink], tmp_path: Path
) -> None:
    sink, out, q, journal = sink_of(made, tmp_path, interval=0.05)
    await sink.start()
    await submit_all(sink, chunks(4))
    await wait_for(lambda: q.queued_chunks == 0, "the first sync")
    out.fail = 2  # the next two syncs fail, and lose what they should have made durable
    with capture_logs() as logs:
        await submit_all(sink, chunks(6, start=4 * PER_CHUNK))
        await wait_for(lambda: q.queued_chunks == 0, "a good sync after the failed ones")
    syncs = [ok for kind, ok in journal.steps if kind == "sync"]
    assert syncs[-3:] == [False, False, True]
    journal.check_marks_follow_a_good_sync_after_their_last_write()
    # What the failed syncs lost was written again: every event is in the files, the first four chunks'
    # once (they were synced before), the others at least once.
    seen = file_seqs(tmp_path / "out" / "app.log")
    assert sorted(set(seen)) == list(range(10 * PER_CHUNK))
    assert [s for s in seen if s < 4 * PER_CHUNK] == list(range(4 * PER_CHUNK))
    assert journal.marked() == list(range(10 * PER_CHUNK))  # each once, in order
    failed = [e for e in logs if e["event"] == "delivery.sync_failed"]
    assert [e["attempt"] for e in failed] == [1, 2]
    assert "EIO" in failed[0]["error"]
    # The file the failed fsync concerned is never appended to again: the rewrite went to a new one.
    assert (tmp_path / "out" / "app.log.1").exists()
    assert sink.stats.retries == 2


async def five_written_to_be_retired(
    made: list[BufferedSink], tmp_path: Path
) -> tuple[BufferedSink, JournalingFiles, JournalingQueue, Journal]:
    """A started sink that wrote five chunks, not synced yet; the test retires it (not the fixture)."""
    sink, out, q, journal = sink_of(made, tmp_path)
    made.remove(sink)
    await sink.start()
    await submit_all(sink, chunks(5))
    await wait_for(lambda: out.events_written == 5 * PER_CHUNK, "the writes")
    return sink, out, q, journal


async def test_retire_syncs_what_the_old_output_wrote_before_handing_over(
    made: list[BufferedSink], tmp_path: Path
) -> None:
    sink, out, q, journal = await five_written_to_be_retired(made, tmp_path)
    assert q.queued_chunks == 5
    gathered, works = await sink.retire(5.0)
    assert out.syncs == 1
    assert q.queued_chunks == 0  # synced, then marked: nothing for the successor to write again
    assert not gathered
    assert not works
    journal.check_marks_follow_a_good_sync_after_their_last_write()
    await q.close()


async def test_retire_hands_what_a_failed_last_sync_concerned_to_the_successor(
    made: list[BufferedSink], tmp_path: Path
) -> None:
    sink, out, q, journal = await five_written_to_be_retired(made, tmp_path)
    out.fail = 1
    gathered, works = await sink.retire(5.0)
    assert journal.marked() == []
    assert q.queued_chunks == 5
    # The successor writes them all again, first, then syncs and marks them.
    successor_journal = Journal()
    new = JournalingFiles(tmp_path / "out" / "app.log", successor_journal, 60.0)
    q.journal = successor_journal
    successor = BufferedSink("files", new, q, RetryPolicy(initial=0.01), str(tmp_path / "dead"))
    made.append(successor)
    await successor.take_over(gathered, works)
    await wait_for(lambda: new.events_written == 5 * PER_CHUNK, "the successor's writes")
    await successor.stop()
    assert successor_journal.marked() == list(range(5 * PER_CHUNK))
    successor_journal.check_marks_follow_a_good_sync_after_their_last_write()
    assert sorted(set(file_seqs(tmp_path / "out" / "app.log"))) == list(range(5 * PER_CHUNK))
    assert await queued_after_restart(tmp_path) == 0


async def test_a_stop_whose_last_sync_fails_leaves_the_written_chunks_queued(
    made: list[BufferedSink], tmp_path: Path
) -> None:
    sink, out, _, journal = sink_of(made, tmp_path)
    await sink.start()
    await submit_all(sink, chunks(5))
    await wait_for(lambda: out.events_written == 5 * PER_CHUNK, "the writes")
    out.fail = 1
    with capture_logs() as logs:
        await sink.stop()
    assert journal.marked() == []
    assert any(e["event"] == "delivery.last_sync_failed" for e in logs)
    assert await queued_after_restart(tmp_path) == 5  # the next start delivers them again


def test_an_output_that_defers_its_sync_takes_one_write_at_a_time(tmp_path: Path) -> None:
    out = Gate("gate", depth=4)
    out.defers_sync = True
    with pytest.raises(ValueError, match="one write at a time"):
        BufferedSink("gate", out, DiskQueue(str(tmp_path / "q"), fsync="never"))
