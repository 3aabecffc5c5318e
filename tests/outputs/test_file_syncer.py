"""``fsync: write`` with the fsync in a thread of its own: a write succeeds only after an fsync that began
after its append, the next write appends meanwhile, and a failed fsync fails every write it may concern.

A failing fsync is the one fault here no real filesystem can be made to produce on demand: the disk's
``fsync_file`` seam stands in for it; everything else is real files and threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import resource
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forwardd.errors import RetryableError
from forwardd.model import Chunk, Event
from forwardd.outputs.file import FileOutput, syncer
from forwardd.outputs.file.output import PIPELINE_DEPTH, SMALL_WRITE
from forwardd.outputs.file.segments import Disk

T0 = 1_700_000_000 * 10**9
WAIT = 10.0  # seconds a test waits for a thread before it fails


def chunk(start: int, n: int, tag: str = "app", big: bool = True) -> Chunk:
    """Events numbered start..start+n-1; ``big``: padded to SMALL_WRITE bytes at least (a write that goes
    through the fsync thread), else a few bytes each (one fsynced where it is appended, when nothing is
    queued in the fsync thread)."""
    pad = "x" * (SMALL_WRITE // n) if big else ""
    return Chunk.from_events(tag, [Event(T0 + i, {"seq": start + i, "pad": pad}) for i in range(n)], 0)


def seqs(path: Path) -> list[int]:
    return [json.loads(line)["seq"] for line in path.read_bytes().splitlines()]


class Fsyncs:
    """Records every fsync (the inode and the file's size when it began, and how many had ended before
    it); ``hold`` makes the next one wait for ``release``, ``fail`` makes the next ones fail with EIO."""

    def __init__(self, out: FileOutput) -> None:
        self.begun: list[tuple[int, int]] = []  # (inode, size) per fsync, in the order they began
        self.done: list[tuple[int, int]] = []  # the same, per fsync that succeeded, in the order they ended
        self.threads: list[str] = []  # the thread of each, in the order they began
        self.ended = 0
        self.fail = 0
        self.hold = False
        self.entered = threading.Event()
        self.release = threading.Event()
        out._disk.fsync_file = self

    def __call__(self, fd: int) -> None:
        st = os.fstat(fd)
        self.begun.append((st.st_ino, st.st_size))
        self.threads.append(threading.current_thread().name)
        if self.hold:
            self.hold = False
            self.entered.set()
            assert self.release.wait(WAIT)
        try:
            if self.fail:
                self.fail -= 1
                raise OSError(errno.EIO, "Input/output error")
            os.fsync(fd)
            self.done.append((st.st_ino, st.st_size))
        finally:
            self.ended += 1


class Appends:
    """Signals each append the output's thread finished (``Disk.write`` returned), from that thread."""

    def __init__(self, out: FileOutput) -> None:
        self.done = 0
        self.cond = threading.Condition()
        write = out._disk.write

        def wrapped(groups: list[tuple[str, bytes]]) -> None:
            write(groups)
            with self.cond:
                self.done += 1
                self.cond.notify_all()

        out._disk.write = wrapped  # type: ignore[method-assign]

    async def reach(self, n: int) -> None:
        def wait() -> bool:
            with self.cond:
                return self.cond.wait_for(lambda: self.done >= n, WAIT)

        assert await asyncio.get_running_loop().run_in_executor(None, wait), f"{self.done} appends, not {n}"


async def wait_thread(event: threading.Event) -> None:
    assert await asyncio.get_running_loop().run_in_executor(None, event.wait, WAIT)


def test_only_fsync_write_takes_concurrent_writes(tmp_path):
    out = FileOutput(name="w", path=str(tmp_path / "w"))
    assert out.concurrent_writes == PIPELINE_DEPTH > 1
    assert out.concurrent_min_bytes == SMALL_WRITE  # small batches go one at a time
    assert FileOutput(name="g", path=str(tmp_path / "g"), fsync="grouped").concurrent_writes == 1
    assert FileOutput(name="n", path=str(tmp_path / "n"), fsync_on_write=False).concurrent_writes == 1


async def test_the_next_write_appends_while_the_last_one_is_fsynced(tmp_path):
    path = tmp_path / "a.log"
    out = FileOutput(name="f", path=str(path))
    fsyncs, appends = Fsyncs(out), Appends(out)
    fsyncs.hold = True
    first = asyncio.ensure_future(out.write(chunk(0, 3)))
    await wait_thread(fsyncs.entered)  # the first write's fsync is under way, and waits
    second = asyncio.ensure_future(out.write(chunk(3, 4)))
    await appends.reach(2)  # the second write appended meanwhile
    assert seqs(path) == list(range(7))
    assert not first.done()
    assert not second.done()
    fsyncs.release.set()
    await asyncio.wait_for(asyncio.gather(first, second), WAIT)
    # The second write's lines were in the file before the fsync that made it durable began.
    assert fsyncs.begun[-1][1] == path.stat().st_size
    await out.stop()


async def test_a_failed_fsync_fails_every_write_handed_over_before_it_and_the_next_go_to_a_new_file(tmp_path):
    path = tmp_path / "a.log"
    out = FileOutput(name="f", path=str(path))
    fsyncs, appends = Fsyncs(out), Appends(out)
    await out.write(chunk(0, 2))  # durable before the fault: never concerned by it
    fsyncs.hold, fsyncs.fail = True, 1
    writes = [asyncio.ensure_future(out.write(chunk(2, 3)))]
    await wait_thread(fsyncs.entered)
    writes += [asyncio.ensure_future(out.write(chunk(5 + 3 * i, 3))) for i in range(2)]
    await appends.reach(4)  # both appended to the file whose fsync is about to fail
    calls = len(fsyncs.begun)
    fsyncs.release.set()
    results = await asyncio.wait_for(asyncio.gather(*writes, return_exceptions=True), WAIT)
    assert all(isinstance(r, RetryableError) for r in results), results
    assert "cannot fsync" in str(results[0])
    assert "EIO" in str(results[0])
    assert all("earlier failure" in str(r) for r in results[1:])
    assert len(fsyncs.begun) == calls  # the two behind it were not fsynced: that could not vouch for them
    # What the delivery loop writes again goes to a new file; nothing is appended to the failed one.
    size = path.stat().st_size
    await out.write(chunk(2, 9))
    await out.stop()
    assert path.stat().st_size == size
    assert seqs(tmp_path / "a.log.1") == list(range(2, 11))


async def test_writes_of_one_round_are_fsynced_once_per_file(tmp_path):
    out = FileOutput(name="f", path=str(tmp_path / "${tag}.log"))
    fsyncs, appends = Fsyncs(out), Appends(out)
    fsyncs.hold = True
    first = asyncio.ensure_future(out.write(chunk(0, 1, tag="a")))
    await wait_thread(fsyncs.entered)
    tags = ["b"] * (PIPELINE_DEPTH - 1)  # the same file, twice or more, behind the held fsync
    rest = [asyncio.ensure_future(out.write(chunk(i, 1, tag=t))) for i, t in enumerate(tags, 1)]
    await appends.reach(PIPELINE_DEPTH)
    fsyncs.release.set()
    await asyncio.wait_for(asyncio.gather(first, *rest), WAIT)
    assert len(fsyncs.begun) == 2  # the held one, then one round that fsyncs b once
    await out.stop()
    stats = out.stats  # what an operator sees of it: fewer rounds than writes
    assert (stats.writes, stats.fsync_rounds) == (PIPELINE_DEPTH, 2)


async def test_a_file_closed_before_its_hand_over_is_fsynced_in_the_fsync_thread(tmp_path):
    """The disk hands a file it closes with lines not handed over yet to the fsync thread (in order, ahead
    of the write that closed it), so that every fsync of the files happens there; if it fails, so does that
    write, and the next one goes to a new file."""
    path = tmp_path / "a.log"
    out = FileOutput(name="f", path=str(path))
    fsyncs = Fsyncs(out)
    await out.write(chunk(0, 2))
    disk: Disk = out._disk
    write = disk.write

    def closing_first(groups: list[tuple[str, bytes]]) -> None:
        seg = disk.segments[str(path)]
        seg.dirty = True  # as if lines had gone in since the last hand-over
        disk._close(seg)  # then the file is closed (rotation, the open-file limit): handed over
        disk.write = write  # type: ignore[method-assign]
        write(groups)

    disk.write = closing_first  # type: ignore[method-assign]
    fsyncs.fail = 1
    with pytest.raises(RetryableError, match=r"a\.log.*EIO"):
        await out.write(chunk(2, 2))
    assert fsyncs.begun[1][0] == path.stat().st_ino  # the closed file...
    assert fsyncs.threads == ["file-f-fsync"] * 2  # ...synced in the fsync thread, as every other
    await out.write(chunk(2, 2))  # written again: into a new file
    await out.stop()
    assert seqs(tmp_path / "a.log.1") == [2, 3]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    plan=st.lists(
        st.tuples(st.integers(1, 3), st.sampled_from("ab"), st.booleans(), st.booleans()),
        min_size=1,
        max_size=12,
    )
)
async def test_no_write_succeeds_without_an_fsync_that_covers_it(tmp_path_factory, plan):
    """Rounds of concurrent writes, big and small, some with a failing fsync: every write that succeeded has
    its lines in a file that an fsync had covered (begun once they were all in it, and ended) before the
    write returned."""
    root = tmp_path_factory.mktemp("p")
    out = FileOutput(name="f", path=str(root / "${tag}.log"))
    fsyncs = Fsyncs(out)
    seq = 0
    ok: list[tuple[int, int]] = []  # (first seq, how many fsyncs had succeeded when it returned)

    async def one(tag: str, start: int, big: bool) -> None:
        try:
            await out.write(chunk(start, 2, tag=tag, big=big))
        except RetryableError:
            return
        ok.append((start, len(fsyncs.done)))

    for n, tag, fail, big in plan:
        fsyncs.fail = 1 if fail else 0
        await asyncio.gather(*(one(tag, seq + 2 * i, big or i > 0) for i in range(n)))
        seq += 2 * n
    await out.stop()
    ends: dict[int, tuple[int, int]] = {}  # seq -> (inode, end of its line in that file)
    for p in root.iterdir():
        ino, at = p.stat().st_ino, 0
        for line in p.read_bytes().splitlines(keepends=True):
            at += len(line)
            ends[json.loads(line)["seq"]] = (ino, at)
    assert ok or all(f for _, _, f, _ in plan)
    for start, synced in ok:
        ino, end = ends[start + 1]  # its last line
        assert any(i == ino and size >= end for i, size in fsyncs.done[:synced]), (start, ends[start + 1])


async def test_a_small_write_with_nothing_queued_is_fsynced_where_it_is_appended(tmp_path):
    """One docker line at a time: the fsync thread would only add a hand-over. A small write behind a big
    one whose fsync is under way goes through the fsync thread, behind it (no fsync of the same files at
    once in two threads)."""
    path = tmp_path / "a.log"
    out = FileOutput(name="f", path=str(path))
    fsyncs, appends = Fsyncs(out), Appends(out)
    await out.write(chunk(0, 1, big=False))
    assert fsyncs.threads == ["file-f_0"]  # the output's own thread
    fsyncs.hold = True
    first = asyncio.ensure_future(out.write(chunk(1, 2)))
    await wait_thread(fsyncs.entered)
    second = asyncio.ensure_future(out.write(chunk(3, 1, big=False)))
    await appends.reach(3)
    assert not second.done()  # its fsync waits behind the big one's
    fsyncs.release.set()
    await asyncio.wait_for(asyncio.gather(first, second), WAIT)
    assert fsyncs.threads == ["file-f_0", "file-f-fsync", "file-f-fsync"]
    await out.stop()
    assert seqs(path) == list(range(4))


async def test_a_write_cancelled_during_its_append_leaves_no_descriptor_behind(tmp_path):
    """A stop cancels the writes in flight; an append already running in the output's thread goes on, and
    the duplicated descriptors it made for the fsync thread are closed when it ends."""
    path = tmp_path / "a.log"
    out = FileOutput(name="f", path=str(path))
    await out.write(chunk(0, 2))  # the file is open from here on
    fds = len(os.listdir("/proc/self/fd"))
    entered, release = threading.Event(), threading.Event()
    write = out._disk.write

    def held(groups: list[tuple[str, bytes]]) -> None:
        entered.set()
        assert release.wait(WAIT)
        write(groups)

    out._disk.write = held  # type: ignore[method-assign]
    task = asyncio.ensure_future(out.write(chunk(2, 2)))
    await wait_thread(entered)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    # The output's thread is single: once a job behind the append has run, the append and its callback have.
    await asyncio.get_running_loop().run_in_executor(out._pool(), lambda: None)
    assert len(os.listdir("/proc/self/fd")) == fds
    await out.stop()


async def test_a_failed_folder_fsync_fails_the_write_and_its_retry_goes_to_a_new_file(tmp_path, monkeypatch):
    """The new entry of a file (or folder) is durable only once its folder is fsynced, in the fsync
    thread. If that fails, the write fails (written again by the delivery loop), and the retry goes to a
    new file, whose entry is fsynced in its turn. A folder's fsync failing is a fault no real filesystem
    makes on demand: the syncer's folder fsync is replaced to fail once."""
    failures = []

    def failing_once(folder: str) -> None:
        if not failures:
            failures.append(folder)
            raise OSError(errno.EIO, "Input/output error")
        real_fsync_folder(folder)

    real_fsync_folder = syncer.fsync_folder
    monkeypatch.setattr(syncer, "fsync_folder", failing_once)
    out = FileOutput(name="f", path=str(tmp_path / "${tag}" / "app.log"))
    try:
        with pytest.raises(RetryableError, match="cannot fsync folder"):
            await out.write(chunk(0, 4, tag="web"))
        await asyncio.wait_for(out.write(chunk(0, 4, tag="web")), WAIT)  # the delivery loop's retry
    finally:
        await out.stop()
    assert failures == [str(tmp_path)]  # the first folder with a new entry: the tag's folder, made for it
    # At least once: the failed write's lines may stay in the first file; the retry is whole in a new one.
    assert sorted(p.name for p in (tmp_path / "web").iterdir()) == ["app.log", "app.log.1"]
    assert seqs(tmp_path / "web" / "app.log.1") == list(range(4))


async def test_a_write_whose_files_cannot_be_handed_to_the_fsync_thread_fails_and_its_retry_goes_through(
    tmp_path,
):
    """Out of descriptors (EMFILE) when the output duplicates a file's descriptor for the fsync thread:
    the write fails as retryable, nothing leaks, and once descriptors are free again the retry's fsync
    covers the lines of both attempts. The limit is real: the process's own RLIMIT_NOFILE, filled."""
    path = tmp_path / "a.log"
    out = FileOutput(name="f", path=str(path))
    await out.write(chunk(0, 2))  # the file is open from here on: the next write opens nothing
    fsyncs = Fsyncs(out)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    fds = len(os.listdir("/proc/self/fd"))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (fds + 32, hard))
        with contextlib.suppress(OSError):
            while True:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        with pytest.raises(RetryableError, match="cannot hand the written files to the fsync thread"):
            await out.write(chunk(2, 2))
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(os.listdir("/proc/self/fd")) == fds  # no duplicate left open
    assert fsyncs.begun == []  # nothing was handed over, so nothing of it was fsynced
    await asyncio.wait_for(out.write(chunk(2, 2)), WAIT)
    assert fsyncs.done[-1] == (path.stat().st_ino, path.stat().st_size)  # both attempts' lines
    await out.stop()
    assert seqs(path) == [0, 1, 2, 3, 2, 3]
