"""DiskQueue: group commit, back-pressure (block, drop_oldest), and a full disk (real tmpfs when possible)."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from forwardd.buffer import DiskQueue
from forwardd.buffer.commit import INLINE_COMMIT_CHUNKS
from forwardd.buffer.segment import frame_size, scan
from forwardd.buffer.store import SegmentStore
from forwardd.errors import ChunkRejected
from forwardd.model import Chunk

TIMEOUT = 5.0


def chunk(n: int, size: int = 200) -> Chunk:
    return Chunk(f"q.{n}", bytes([n % 256]) * size, n, n)


@pytest.fixture
async def queue(tmp_path: Path) -> AsyncIterator[DiskQueue]:
    q = DiskQueue(str(tmp_path), max_segment_size=4096)
    await q.start()
    yield q
    await q.close()


async def test_one_commit_serves_every_submit_made_while_another_commit_runs(tmp_path: Path) -> None:
    queue = DiskQueue(str(tmp_path), max_segment_size=4096, inline_commit_max=0)  # commits in the thread
    await queue.start()
    store = queue._store
    assert store is not None
    inside, release = threading.Event(), threading.Event()
    real_write = store.write

    def held_write(chunks: list[Chunk]):  # holds the first commit open while others submit
        inside.set()
        assert release.wait(TIMEOUT)
        return real_write(chunks)

    store.write = held_write  # type: ignore[method-assign]
    first = queue.submit(chunk(0))
    assert await asyncio.to_thread(inside.wait, TIMEOUT)
    store.write = real_write  # type: ignore[method-assign]
    rest = [queue.submit(chunk(i)) for i in range(1, 40)]
    release.set()
    await asyncio.wait_for(asyncio.gather(first, *rest), TIMEOUT)
    assert queue.commits == 2  # 40 chunks, two fsyncs
    got = [(await queue.get()).chunk.count for _ in range(40)]
    assert got == list(range(40))
    assert queue.inline_commits == 0
    await queue.close()


def thread_jobs(queue: DiskQueue) -> list[int]:
    """Counts the jobs ``queue`` hands its writer thread from now on (each a hop there and back)."""
    jobs = [0]
    real = queue._in_thread

    async def counted(fn):  # type: ignore[no-untyped-def]
        jobs[0] += 1
        return await real(fn)

    queue._in_thread = counted  # type: ignore[method-assign]
    return jobs


async def test_the_writer_thread_goes_on_with_what_was_submitted_while_it_committed(tmp_path: Path) -> None:
    """Big commits follow each other in the writer thread: the chunks submitted during one are committed
    right after it in the same job, without a hop back to the loop and out again between them (each
    costs milliseconds when the loop is busy); the first batch's futures resolve while the next is
    written, and each only once its own commit is done."""
    queue = DiskQueue(str(tmp_path), inline_commit_max=0)  # commits in the thread
    await queue.start()
    store = queue._store
    assert store is not None
    jobs = thread_jobs(queue)
    entered = [threading.Event(), threading.Event()]
    release = [threading.Event(), threading.Event()]
    real_write = store.write
    calls: list[int] = []

    def held_write(chunks: list[Chunk]):  # holds each of the first two commits open
        k = len(calls)
        calls.append(len(chunks))
        if k < 2:
            entered[k].set()
            assert release[k].wait(TIMEOUT)
        return real_write(chunks)

    store.write = held_write  # type: ignore[method-assign]
    first = queue.submit(chunk(0))
    assert await asyncio.to_thread(entered[0].wait, TIMEOUT)
    rest = [queue.submit(chunk(i)) for i in range(1, 40)]
    release[0].set()
    assert await asyncio.to_thread(entered[1].wait, TIMEOUT)  # the thread went on by itself
    await asyncio.wait_for(first, TIMEOUT)  # settled on the loop while the next batch is written
    assert not any(f.done() for f in rest)
    release[1].set()
    await asyncio.wait_for(asyncio.gather(*rest), TIMEOUT)
    assert calls == [1, 39]
    assert jobs == [1]
    assert queue.commits == 2
    got = [(await queue.get()).chunk.count for _ in range(40)]
    assert got == list(range(40))
    await queue.close()


async def test_the_writer_threads_run_of_commits_is_bounded(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Past CHAIN_SECONDS the thread hands back to the loop (other jobs wait for the thread)."""
    monkeypatch.setattr("forwardd.buffer.commit.CHAIN_SECONDS", 0.0)
    queue = DiskQueue(str(tmp_path), inline_commit_max=0)
    await queue.start()
    store = queue._store
    assert store is not None
    jobs = thread_jobs(queue)
    entered, release = threading.Event(), threading.Event()
    real_write = store.write

    def held_write(chunks: list[Chunk]):
        if not entered.is_set():
            entered.set()
            assert release.wait(TIMEOUT)
        return real_write(chunks)

    store.write = held_write  # type: ignore[method-assign]
    first = queue.submit(chunk(0))
    assert await asyncio.to_thread(entered.wait, TIMEOUT)
    rest = [queue.submit(chunk(i)) for i in range(1, 10)]
    release.set()
    await asyncio.wait_for(asyncio.gather(first, *rest), TIMEOUT)
    assert jobs == [2]
    assert [(await queue.get()).chunk.count for _ in range(10)] == list(range(10))
    await queue.close()


def test_a_chain_whose_loop_is_gone_stops_and_leaves_the_chunks_it_took(tmp_path: Path) -> None:
    """An abnormal end (the commit task cancelled, the loop closed) while the writer thread commits: the
    thread cannot hand the next batch's predecessor back, so it stops there, raises nothing, and puts the
    chunks it took back in the pending list as they were (uncommitted, never acked)."""
    loop = asyncio.new_event_loop()
    queue = DiskQueue(str(tmp_path), inline_commit_max=0)
    loop.run_until_complete(queue.start())
    store = queue._store
    assert store is not None
    entered, release = threading.Event(), threading.Event()
    real_write = store.write
    writes: list[int] = []

    def held_write(chunks: list[Chunk]):
        writes.append(len(chunks))
        if not entered.is_set():
            entered.set()
            assert release.wait(TIMEOUT)
        return real_write(chunks)

    store.write = held_write  # type: ignore[method-assign]

    async def submit_and_wait() -> None:
        queue.submit(chunk(0))
        assert await asyncio.to_thread(entered.wait, TIMEOUT)
        for i in range(1, 4):
            queue.submit(chunk(i))

    loop.run_until_complete(submit_and_wait())
    for task in queue._tasks:  # the commit task first: its await of the thread's job ends
        task.cancel()
    loop.run_until_complete(asyncio.gather(*queue._tasks, return_exceptions=True))
    loop.close()
    job = queue._executor.submit(lambda: None)  # type: ignore[union-attr]  # runs after the chain's job
    release.set()
    job.result(TIMEOUT)
    assert writes == [1]
    assert [p[0].count for p in queue._pending] == [1, 2, 3]
    queue._executor.shutdown(wait=True)  # type: ignore[union-attr]
    store.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    plan=st.lists(
        st.tuples(st.sampled_from([40, 300, 5_000, 70_000, 300_000]), st.integers(0, 3)),
        min_size=1,
        max_size=60,
    )
)
async def test_every_chunk_is_committed_once_in_order_whoever_commits_it(
    tmp_path_factory: pytest.TempPathFactory, plan: list[tuple[int, int]]
) -> None:
    """Chunks of every size, submitted with some loop turns between them, so that batches go inline,
    to the writer thread, and on from there by themselves: each future resolves only once its chunk is on
    disk, and the queue holds each chunk once, in the order submitted (also after a restart)."""
    path = str(tmp_path_factory.mktemp("q"))
    queue = DiskQueue(path, max_segment_size=1024 * 1024)
    await queue.start()
    futs = []
    for n, (size, turns) in enumerate(plan):
        futs.append(queue.submit(Chunk("t", n.to_bytes(4, "big") * (size // 4), 1, n)))
        for _ in range(turns):
            await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(*futs), TIMEOUT)
    got = [(await asyncio.wait_for(queue.get(), TIMEOUT)).chunk for _ in plan]
    assert [c.received_ns for c in got] == list(range(len(plan)))
    for c, (size, _) in zip(got, plan, strict=True):
        assert c.entries == c.received_ns.to_bytes(4, "big") * (size // 4)
    assert queue.take_nowait() is None
    await queue.close()
    store = SegmentStore.open(path)
    again = []
    while (t := store.take()) is not None:
        again.append(t.chunk.received_ns)
    store.close()
    assert again == list(range(len(plan)))  # nothing delivered: all of it, once, in order


def commit_threads(queue: DiskQueue) -> list[int]:
    """The thread of each of ``queue``'s commits from now on (the loop's, or the writer thread's)."""
    store = queue._store
    assert store is not None
    threads: list[int] = []
    real_write = store.write

    def spied_write(chunks: list[Chunk]):
        threads.append(threading.get_ident())
        return real_write(chunks)

    store.write = spied_write  # type: ignore[method-assign]
    return threads


async def test_small_batches_commit_on_the_loop_thread_large_ones_in_the_writer_thread(
    tmp_path: Path,
) -> None:
    queue = DiskQueue(str(tmp_path), inline_commit_max=64 * 1024)
    await queue.start()
    threads = commit_threads(queue)
    small = [queue.submit(chunk(i)) for i in range(40)]  # 40 x ~250 B: one inline commit
    await asyncio.wait_for(asyncio.gather(*small), TIMEOUT)
    assert threads == [threading.get_ident()]
    assert queue.commits == 1
    assert queue.inline_commits == 1
    await asyncio.wait_for(queue.submit(chunk(1, size=100 * 1024)), TIMEOUT)
    assert len(threads) == 2
    assert threads[1] != threading.get_ident()
    assert queue.inline_commits == 1
    got = [(await queue.get()).chunk.count for _ in range(41)]
    assert got == [*range(40), 1]
    await queue.close()


async def test_many_tiny_chunks_commit_in_the_writer_thread(tmp_path: Path) -> None:
    """64 KiB of tiny chunks is thousands of records to frame: past INLINE_COMMIT_CHUNKS a batch goes to
    the writer thread however few its bytes, so the loop keeps reading while it is framed and written."""
    queue = DiskQueue(str(tmp_path), inline_commit_max=64 * 1024)
    await queue.start()
    threads = commit_threads(queue)
    n = INLINE_COMMIT_CHUNKS + 1
    tiny = [Chunk("t", bytes([i % 256]) * 4, i, i) for i in range(n)]
    assert sum(frame_size(c) for c in tiny) < 64 * 1024  # few bytes: only the count sends it off the loop
    await asyncio.wait_for(asyncio.gather(*(queue.submit(c) for c in tiny)), TIMEOUT)
    assert len(threads) == 1
    assert threads[0] != threading.get_ident()
    assert queue.inline_commits == 0
    got = [(await queue.get()).chunk.count for _ in range(n)]
    assert got == list(range(n))
    await asyncio.wait_for(  # as many as the limit: on the loop
        asyncio.gather(*(queue.submit(c) for c in tiny[:INLINE_COMMIT_CHUNKS])), TIMEOUT
    )
    assert threads[1] == threading.get_ident()
    assert queue.inline_commits == 1
    await queue.close()


async def test_a_commit_waits_briefly_for_as_many_chunks_as_the_last_one(tmp_path: Path) -> None:
    """Clients that wait for their acks answer them a moment apart; one commit should take them all."""
    queue = DiskQueue(str(tmp_path))
    queue.gather_seconds = TIMEOUT  # the arrivals below take a few loop turns, however slow the machine
    await queue.start()
    await asyncio.wait_for(asyncio.gather(*(queue.submit(chunk(i)) for i in range(5))), TIMEOUT)
    assert queue.commits == 1

    async def later(i: int, iterations: int) -> None:  # answers arriving over the next loop iterations
        for _ in range(iterations):
            await asyncio.sleep(0)
        await queue.submit(chunk(i))

    await asyncio.wait_for(asyncio.gather(*(later(i, 3 * i) for i in range(5))), TIMEOUT)
    assert queue.commits == 2  # one commit for the five, not one per arrival

    # Fewer than last time and no more coming: the wait ends at its deadline, and the target follows.
    queue.gather_seconds = 0.01
    await asyncio.wait_for(queue.submit(chunk(9)), TIMEOUT)
    assert queue.commits == 3
    assert queue._last_batch == 1
    await queue.close()


async def test_a_lone_clients_chunk_is_committed_in_the_turn_after_its_read(tmp_path: Path) -> None:
    """One client waiting for each ack (docker with fluentd-request-ack): the commit task wakes after every
    read of that poll, and there is no one else to wait for, so it commits at once; a turn of the loop in
    between is only latency on every ack. Counted in loop turns: a callback chain beside the submit."""
    queue = DiskQueue(str(tmp_path))
    await queue.start()
    loop = asyncio.get_running_loop()
    for n in range(3):  # the first commit sets _last_batch to 1; the others are the lone client's
        turns: list[int] = []  # one entry per loop turn while the ack is awaited (this round's own chain)

        def tick(turns: list[int] = turns) -> None:
            if len(turns) < 100 and turns[-1:] != [-1]:
                turns.append(0)
                loop.call_soon(tick)

        queue.commit_seconds = 0.0  # inline, however slow this machine's first fsyncs were
        loop.call_soon(tick)
        await queue.submit(chunk(n))  # (wait_for would add turns of its own)
        counted = len(turns)
        turns.append(-1)  # stops this round's chain
        assert queue._last_batch == 1
        # The commit task wakes and commits in one turn, this coroutine resumes in the next (3 before: a
        # turn between the wake-up and the commit).
        assert counted <= 2, f"submit {n}: {counted} loop turns to the ack"
    await queue.close()


async def test_a_slow_disk_moves_commits_off_the_loop_thread(tmp_path: Path) -> None:
    """A disk that stalls must not stall the event loop: once commits are slow on average, even small
    batches go to the writer thread (a delay injected into the store stands in for the slow disk)."""
    queue = DiskQueue(str(tmp_path), fsync="never")  # fast real writes: only the injected stall is slow
    await queue.start()
    store = queue._store
    assert store is not None
    threads: list[int] = []
    real_write = store.write
    delay = threading.Event()  # never set: wait() is the injected stall

    def slow_write(chunks: list[Chunk]):
        threads.append(threading.get_ident())
        delay.wait(0.02)
        return real_write(chunks)

    store.write = slow_write  # type: ignore[method-assign]
    for i in range(6):
        await asyncio.wait_for(queue.submit(chunk(i)), TIMEOUT)
    loop_thread = threading.get_ident()
    assert threads[0] == loop_thread  # fast until shown otherwise
    assert threads[-1] != loop_thread  # the average passed INLINE_MAX_SECONDS
    first_off = next(i for i, t in enumerate(threads) if t != loop_thread)
    assert all(t != loop_thread for t in threads[first_off:])
    store.write = real_write  # type: ignore[method-assign]
    for i in range(200):  # fast again: the average decays and commits come back to the loop
        await asyncio.wait_for(queue.submit(chunk(i)), TIMEOUT)
        if queue.commit_seconds < 0.005:
            break
    before = queue.inline_commits
    await asyncio.wait_for(queue.submit(chunk(0)), TIMEOUT)
    assert queue.inline_commits == before + 1
    await queue.close()


def open_segment_records(path: Path) -> tuple[list[tuple[int, int, int]], bytes]:
    """The records of the open segment, and what follows them (the runway's zeros, if any)."""
    data = next(p for p in path.iterdir() if p.suffix == ".open").read_bytes()
    res = scan(data)
    end = res.spans[-1][1] if res.spans else 0
    return res.spans, data[end:]


async def test_committed_chunks_are_on_disk_when_the_future_resolves(tmp_path: Path) -> None:
    q = DiskQueue(str(tmp_path))
    await q.start()
    await asyncio.wait_for(q.submit(chunk(7)), TIMEOUT)
    spans, rest = open_segment_records(tmp_path)
    assert spans == [(0, frame_size(chunk(7)), 7)]
    assert rest.count(0) == len(rest)
    await q.close()


async def test_full_queue_blocks_submit_until_delivery_frees_space(tmp_path: Path) -> None:
    size = frame_size(chunk(0))
    q = DiskQueue(str(tmp_path), max_size=3 * size)
    await q.start()
    with capture_logs() as logs:
        futs = [q.submit(chunk(i)) for i in range(5)]
        await asyncio.wait_for(asyncio.gather(*futs[:3]), TIMEOUT)
        assert not futs[3].done()
        assert not futs[4].done()
        assert q.used_bytes == 3 * size
        t = await q.get()
        q.mark_delivered(t)
        await asyncio.wait_for(futs[3], TIMEOUT)
        assert not futs[4].done()
        q.mark_delivered(await q.get())
        await asyncio.wait_for(futs[4], TIMEOUT)
    # One line per state change: full while anyone waits, freed once the last waiter got in.
    events = [e["event"] for e in logs if e["event"].startswith("buffer.")]
    assert events == ["buffer.full", "buffer.space_freed"]
    assert [(await q.get()).chunk.count for _ in range(3)] == [2, 3, 4]
    await q.close()


async def test_waiting_chunks_are_rejected_as_temporary_on_close(tmp_path: Path) -> None:
    q = DiskQueue(str(tmp_path), max_size=frame_size(chunk(0)))
    await q.start()
    await asyncio.wait_for(q.submit(chunk(0)), TIMEOUT)
    waiting = q.submit(chunk(1))
    await q.close()
    with pytest.raises(ChunkRejected) as info:
        await waiting
    assert info.value.permanent is False
    with pytest.raises(ChunkRejected):
        q.submit(chunk(2))


async def test_drop_oldest_drops_and_counts(tmp_path: Path) -> None:
    size = frame_size(chunk(0))
    q = DiskQueue(str(tmp_path), max_size=3 * size, when_full="drop_oldest")
    await q.start()
    with capture_logs() as logs:
        for i in range(3):
            await asyncio.wait_for(q.submit(chunk(i)), TIMEOUT)
        in_flight = await q.get()  # chunk 0 is being delivered: never dropped from under the output
        for i in range(3, 6):
            await asyncio.wait_for(q.submit(chunk(i)), TIMEOUT)
        assert q.dropped_events == 1 + 2 + 3  # chunks 1, 2, 3 (count == number), not in-flight 0
        q.mark_delivered(in_flight)
        await asyncio.wait_for(q.submit(chunk(6)), TIMEOUT)
    full = [e for e in logs if e["event"] in ("buffer.full", "buffer.space_freed")]
    assert [e["event"] for e in full] == ["buffer.full", "buffer.space_freed"]
    assert full[1]["dropped_events"] == 6
    assert [(await q.get()).chunk.count for _ in range(3)] == [4, 5, 6]
    await q.close()


async def test_chunk_bigger_than_the_queue_is_admitted_alone(tmp_path: Path) -> None:
    q = DiskQueue(str(tmp_path), max_size=100, max_segment_size=100)
    await q.start()
    await asyncio.wait_for(q.submit(chunk(0, 5000)), TIMEOUT)
    assert (await q.get()).chunk.entries == bytes(5000)
    await q.close()


async def test_interval_and_never_policies_commit_without_waiting_for_fsync(tmp_path: Path) -> None:
    for policy in ("interval", "never"):
        q = DiskQueue(str(tmp_path / policy), fsync=policy, fsync_interval=0.01)
        await q.start()
        await asyncio.wait_for(asyncio.gather(*(q.submit(chunk(i)) for i in range(10))), TIMEOUT)
        await q.close()
        store = SegmentStore.open(str(tmp_path / policy))
        assert store.queued_chunks == 10
        store.close()


# ------------------------------------------------------------------------------------------ disk full


def write_until_full(fd: int) -> None:
    while True:
        os.write(fd, b"\0" * 4096)


class DiskFull:
    """A filesystem to fill and empty: a real 1 MiB tmpfs, or an injected ENOSPC if mount fails."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "mnt"
        self.dir.mkdir()
        self.real = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(self.dir)], capture_output=True
            ).returncode
            == 0
        )
        self.filler = self.dir / "filler"
        self.failing = False

    def fill(self, store: SegmentStore) -> None:
        if self.real:
            fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                with pytest.raises(OSError) as info:
                    write_until_full(fd)
                assert info.value.errno == errno.ENOSPC
            finally:
                os.close(fd)
        else:
            real = store.writer._pwritev

            def pwritev(fd: int, bufs: list[bytes], pos: int) -> int:
                if self.failing:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real(fd, bufs, pos)

            store.writer._pwritev = pwritev  # type: ignore[method-assign]
            self.failing = True

    def free(self) -> None:
        if self.real:
            self.filler.unlink()
        self.failing = False

    def close(self) -> None:
        if self.real:
            subprocess.run(["umount", "-l", str(self.dir)], check=True)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[DiskFull]:
    d = DiskFull(tmp_path)
    yield d
    d.close()


async def delivered_once_each(q: DiskQueue, n: int, size: int) -> None:
    """``q`` hands out chunk(0..n-1, size) once each, in order; after its close a restart finds nothing
    left over and nothing duplicated from failed attempts."""
    got = []
    for _ in range(n):
        t = await asyncio.wait_for(q.get(), TIMEOUT)
        got.append(t.chunk)
        q.mark_delivered(t)
    assert [c.count for c in got] == list(range(n))
    assert all(c.entries == bytes([c.count]) * size for c in got)
    await q.close()
    store = SegmentStore.open(q.directory)
    assert store.take() is None
    store.close()


async def test_full_disk_keeps_futures_pending_until_space_returns(disk: DiskFull) -> None:
    backoff_started = asyncio.Event()
    go_on = asyncio.Event()
    delays: list[float] = []

    async def sleep(delay: float) -> None:  # the writer's back-off, under the test's control
        delays.append(delay)
        backoff_started.set()
        await go_on.wait()
        go_on.clear()

    q = DiskQueue(str(disk.dir / "q"), max_segment_size=64 * 1024, sleep=sleep)
    await q.start()
    before = [chunk(i, 3000) for i in range(5)]
    await asyncio.wait_for(asyncio.gather(*(q.submit(c) for c in before)), TIMEOUT)
    assert q._store is not None
    with capture_logs() as logs:
        disk.fill(q._store)
        futs = [q.submit(chunk(i, 3000)) for i in range(5, 25)]
        await asyncio.wait_for(backoff_started.wait(), TIMEOUT)
        backoff_started.clear()
        go_on.set()  # one more failed attempt, still no room
        await asyncio.wait_for(backoff_started.wait(), TIMEOUT)
        # Chunks that fit in space the segment already had (its runway) are committed; from the first
        # that did not, none is, in order.
        done = [f.done() for f in futs]
        assert not done[-1]
        assert done == sorted(done, reverse=True)
        assert delays == [0.05, 0.1]
        late = q.submit(chunk(25, 3000))  # arrives during the outage: joins the retried batch
        disk.free()
        go_on.set()
        await asyncio.wait_for(asyncio.gather(*futs, late), TIMEOUT)
    events = [e["event"] for e in logs if e["event"].startswith("buffer.write")]
    assert events == ["buffer.write_failed", "buffer.write_recovered"]
    assert [e.get("errno") for e in logs if e["event"] == "buffer.write_failed"] == [errno.ENOSPC]
    await delivered_once_each(q, 26, 3000)


async def test_a_full_disk_met_by_the_writer_threads_next_batch_keeps_it_pending(disk: DiskFull) -> None:
    """The disk fills between two commits that the writer thread makes one after the other: the first
    batch is acked, the second is not, and it is written after the back-off once there is room again
    (nothing lost, nothing twice)."""
    backoff_started = asyncio.Event()
    go_on = asyncio.Event()

    async def sleep(delay: float) -> None:
        backoff_started.set()
        await go_on.wait()

    q = DiskQueue(str(disk.dir / "q"), max_segment_size=64 * 1024, inline_commit_max=0, sleep=sleep)
    await q.start()
    store = q._store
    assert store is not None
    entered, release = threading.Event(), threading.Event()
    real_write = store.write

    def write_then_fill(chunks: list[Chunk]):  # the first commit goes through, then the disk is full
        if entered.is_set():
            return real_write(chunks)
        entered.set()
        assert release.wait(TIMEOUT)
        res = real_write(chunks)
        disk.fill(store)
        return res

    store.write = write_then_fill  # type: ignore[method-assign]
    with capture_logs() as logs:
        first = q.submit(chunk(0, 3000))
        assert await asyncio.to_thread(entered.wait, TIMEOUT)
        futs = [q.submit(chunk(i, 3000)) for i in range(1, 31)]  # 90 KB: more than the segment holds
        release.set()
        await asyncio.wait_for(first, TIMEOUT)
        await asyncio.wait_for(backoff_started.wait(), TIMEOUT)
        done = [f.done() for f in futs]
        assert not done[-1]
        assert done == sorted(done, reverse=True)  # what fit before the full disk, in order
        disk.free()
        go_on.set()
        await asyncio.wait_for(asyncio.gather(*futs), TIMEOUT)
    events = [e["event"] for e in logs if e["event"].startswith("buffer.write")]
    assert events == ["buffer.write_failed", "buffer.write_recovered"]
    await delivered_once_each(q, 31, 3000)


async def test_close_does_not_wait_out_a_write_back_off(disk: DiskFull) -> None:
    """A stop while the disk is full: close() makes its last attempt at once instead of sleeping through
    the back-off (up to write_retry_max), refuses what still cannot be written (no ack: the client sends
    it again) and keeps what was committed (issue 17: a stop with a full disk took 12 s)."""
    q = DiskQueue(str(disk.dir / "q"), max_segment_size=64 * 1024, write_retry_initial=60.0)
    await q.start()
    committed = [chunk(i, 3000) for i in range(3)]
    await asyncio.wait_for(asyncio.gather(*(q.submit(c) for c in committed)), TIMEOUT)
    assert q._store is not None
    with capture_logs() as logs:
        disk.fill(q._store)
        futs = [q.submit(chunk(i, 3000)) for i in range(3, 40)]

        async def failed() -> None:
            while not any(e["event"] == "buffer.write_failed" for e in logs):
                await asyncio.sleep(0.01)  # polling the log: the failed write has no event of its own

        await asyncio.wait_for(failed(), TIMEOUT)
        assert not futs[-1].done()
        t0 = time.monotonic()
        await asyncio.wait_for(q.close(), TIMEOUT)
        assert time.monotonic() - t0 < 2.0
    refused = [f for f in futs if f.done() and isinstance(f.exception(), ChunkRejected)]
    assert refused
    assert all(not f.exception().permanent for f in refused)  # type: ignore[union-attr]
    disk.free()
    store = SegmentStore.open(str(disk.dir / "q"))
    got = []
    while (t := store.take()) is not None:
        got.append(t.chunk.count)
    store.close()
    assert got[:3] == [0, 1, 2]


async def test_ledger_is_written_once_per_loop_iteration_and_restart_resumes_after_it(tmp_path: Path) -> None:
    """A delivery round marks many chunks; the ledger follows once the loop comes round, not per chunk.
    Until then a crash would redeliver them (allowed); afterwards a restart starts behind them."""
    q = DiskQueue(str(tmp_path))
    await q.start()
    await asyncio.gather(*(q.submit(chunk(i)) for i in range(5)))
    store = q._store
    assert store is not None
    writes = 0
    real = store.write_ledger

    def counting() -> None:
        nonlocal writes
        writes += 1
        real()

    store.write_ledger = counting  # type: ignore[method-assign]
    for _ in range(3):
        q.mark_delivered(await q.get())
    assert writes == 0
    ledger = (tmp_path / "ledger.json").read_bytes()
    await asyncio.sleep(0)  # one loop iteration: the scheduled ledger write runs
    assert writes == 1
    assert (tmp_path / "ledger.json").read_bytes() != ledger
    crashed = tmp_path.parent / (tmp_path.name + "-at-kill")
    shutil.copytree(tmp_path, crashed)  # the files as a kill -9 at this moment would leave them
    await q.close()
    again = SegmentStore.open(str(crashed))
    try:
        assert [again.take().chunk.count for _ in range(2)] == [3, 4]  # type: ignore[union-attr]
        assert again.take() is None
    finally:
        again.close()


@pytest.mark.parametrize("hot_max", [0, 700, 10**9])
async def test_delivery_order_is_the_same_whether_records_come_from_memory_or_the_file(
    tmp_path: Path, hot_max: int
) -> None:
    """The newest records are kept in memory up to hot_max bytes; the rest are read back from the
    segment files. Either way every record comes out once, in commit order, across segment rolls."""
    q = DiskQueue(str(tmp_path), max_segment_size=2048)
    await q.start()
    assert q._store is not None
    q._store.hot_max = hot_max
    for burst in range(4):
        await asyncio.gather(*(q.submit(chunk(burst * 10 + i)) for i in range(10)))
    got: list[int] = []
    for _ in range(40):
        t = await q.get()
        got.append(t.chunk.count)
        q.mark_delivered(t)
    assert got == list(range(40))
    assert q.take_nowait() is None
    await q.close()


async def test_records_behind_drop_oldest_are_not_served_from_memory(tmp_path: Path) -> None:
    size = frame_size(chunk(0))
    q = DiskQueue(str(tmp_path), max_size=3 * size, when_full="drop_oldest")
    await q.start()
    for i in range(6):  # each commit past the third drops the oldest
        await q.submit(chunk(i))
    got = []
    while (t := q.take_nowait()) is not None:
        got.append(t.chunk.count)
        q.mark_delivered(t)
    assert got == [3, 4, 5]
    assert q.dropped_events == 0 + 1 + 2
    await q.close()


async def test_records_committed_behind_a_backlog_are_not_held_in_memory(tmp_path: Path) -> None:
    """Only what the reader reaches within hot_max bytes is kept in memory: behind a backlog (a restart,
    a slow output) new records would wait there for as long as the backlog takes (issue 18)."""
    q = DiskQueue(str(tmp_path), max_segment_size=64 * 1024)
    await q.start()
    store = q._store
    assert store is not None
    store.hot_max = 10 * frame_size(chunk(0))
    await asyncio.gather(*(q.submit(chunk(i)) for i in range(30)))
    assert [r[3].count for r in store.reader._hot] == list(range(10))
    got = []
    for _ in range(25):
        t = await q.get()
        got.append(t.chunk.count)
        q.mark_delivered(t)
    await asyncio.gather(*(q.submit(chunk(i)) for i in range(30, 33)))  # 5 + 3 ahead of the reader: kept
    assert [r[3].count for r in store.reader._hot] == [30, 31, 32]
    while (t := q.take_nowait()) is not None:
        got.append(t.chunk.count)
    assert got == list(range(33))
    await q.close()


async def test_close_right_after_a_submit_commits_it_and_returns(tmp_path: Path) -> None:
    """A close in the same loop turn as a submit (a reload closing a filter's journal just after a piece
    came): the commit loop takes the chunk with the close's wake-up, and must still see the close after
    committing it rather than wait for a wake-up that already came."""
    q = DiskQueue(str(tmp_path))
    await q.start()
    await asyncio.wait_for(q.submit(chunk(6)), TIMEOUT)  # the commit loop now waits for the next one
    closing = asyncio.ensure_future(q.close())  # runs before the commit loop hears of the chunk
    committed = q.submit(chunk(7))
    await asyncio.wait_for(closing, TIMEOUT)
    await asyncio.wait_for(committed, TIMEOUT)
    again = DiskQueue(str(tmp_path))
    await again.start()
    assert [(await asyncio.wait_for(again.get(), TIMEOUT)).chunk.count for _ in range(2)] == [6, 7]
    await again.close()
