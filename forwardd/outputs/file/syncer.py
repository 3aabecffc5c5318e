"""The file output's fsyncs under ``fsync: write``, in a thread of their own beside the one that appends.

Why a second thread: one thread that encodes a batch, appends it and fsyncs it leaves the disk idle while
it encodes and the CPU idle while it waits. Measured here (bench/README.md, "Session 17"): a loop of 1 MiB
appends each followed by its fsync reached 174-197 MB/s; the same appends with the fsync of one handed to a
second thread while the next is appended, 236 MB/s into one file and 310 MB/s into four. So the appending
thread (:class:`~forwardd.outputs.file.segments.Disk` stays single-threaded: it alone opens, appends,
rotates and closes) hands each write's files to this one as :class:`SyncJob` s, and goes on with the next
write while they are fsynced.

What a write's success means is unchanged: its future resolves only after an fsync of every file it
appended to (and of every folder that got a new entry for it) that began after its append ended. A job
holds duplicates of the files' descriptors, so the appending thread may close or rotate a file meanwhile;
a file closed by that thread (rotation, the open-file limit) is handed over the same way, without a future,
ahead of the write that closed it. Jobs are fsynced in the order they were handed over, all those queued at
once in one round (each file once).

A failed fsync: the page cache's state of that file is unknown, and a later fsync can report success for
pages that are gone. So a failure fails its round and every job handed over before the appending thread has
heard of it (their epoch, :meth:`Syncer.begin`, is not newer than the failure's), without fsyncing them: the
delivery loop writes their chunks again. The appending thread hears of it before its next append and starts
a new file for every path (:meth:`~forwardd.outputs.file.segments.Disk.break_all`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from forwardd.errors import RetryableError
from forwardd.outputs.file.opening import fsync_folder
from forwardd.outputs.file.segments import classify, retryable

__all__ = ["SyncJob", "Syncer"]


@dataclass(slots=True, eq=False)
class SyncJob:
    """Files (duplicated descriptors, with their paths for the error) and folders to fsync, handed over
    at ``epoch``; ``future`` is the write's (None: a file the appending thread closed)."""

    files: list[tuple[int, str]] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    epoch: int = 0
    future: asyncio.Future[None] | None = None

    def close(self) -> None:
        for fd, _ in self.files:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.files = []


class Syncer:
    """The fsync thread of one file output (see the module doc). ``fsync_file`` is looked up at every
    fsync (the tests' seam for a failing fsync, a fault no real filesystem makes on demand)."""

    def __init__(
        self, name: str, loop: asyncio.AbstractEventLoop, fsync_file: Callable[[], Callable[[int], None]]
    ) -> None:
        self._loop = loop
        self._fsync_file = fsync_file
        self._queue: queue.SimpleQueue[SyncJob | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        #: The appending thread's epoch: a job carries the one it was appended in.
        self._epoch = 0
        #: Jobs of this epoch or older fail unsynced: a failure came before the appending thread heard of it.
        self._failed_upto = -1
        self._failure: RetryableError | None = None
        #: Writes' jobs submitted and not settled yet (the event loop's count).
        self.outstanding = 0
        #: Rounds that fsynced something, failed or not (this thread's count; read for the stats).
        self.rounds = 0
        self._thread = threading.Thread(target=self._run, name=f"file-{name}-fsync", daemon=True)
        self._thread.start()

    # -- the appending thread

    def begin(self) -> tuple[int, bool]:
        """Before an append: its epoch, and True when a failure came since the last append (the caller then
        starts new files for every path before appending)."""
        with self._lock:
            if self._failed_upto >= self._epoch:
                self._epoch = self._failed_upto + 1
                return self._epoch, True
            return self._epoch, False

    def hand_over(self, job: SyncJob) -> None:
        """Queue ``job`` (any thread; the order of calls is the order of the fsyncs)."""
        self._queue.put(job)

    # -- the event loop

    def submit(self, job: SyncJob) -> asyncio.Future[None]:
        """Queue a write's job; its future resolves once the job is synced, or fails with RetryableError."""
        job.future = self._loop.create_future()
        self.outstanding += 1
        self._queue.put(job)
        return job.future

    async def stop(self) -> None:
        """Sync what is queued, then end the thread."""
        self._queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)

    def _settle(self, outcomes: list[tuple[asyncio.Future[None], RetryableError | None]]) -> None:
        self.outstanding -= len(outcomes)
        for fut, error in outcomes:
            if fut.done():  # the write was cancelled (a stop): nothing waits for it
                continue
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)

    # -- the fsync thread

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            batch = [job]
            stop = False
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._round(batch)
            if stop:
                return

    def _round(self, batch: list[SyncJob]) -> None:
        with self._lock:
            failed_upto, failure = self._failed_upto, self._failure
        doomed = [j for j in batch if j.epoch <= failed_upto]
        live = [j for j in batch if j.epoch > failed_upto]
        error: RetryableError | None = None
        try:
            if live:
                self.rounds += 1
                error = self._sync(live)
        finally:
            for j in batch:
                j.close()
        if error is not None:
            with self._lock:
                self._failed_upto = max(self._epoch, max(j.epoch for j in live))
                self._failure = failure = error
        outcomes: list[tuple[asyncio.Future[None], RetryableError | None]] = []
        for j in doomed:
            if j.future is not None:
                outcomes.append((j.future, RetryableError(f"not synced after an earlier failure: {failure}")))
        for j in live:
            if j.future is not None:
                outcomes.append((j.future, error))
        if outcomes:
            self._loop.call_soon_threadsafe(self._settle, outcomes)

    def _sync(self, jobs: list[SyncJob]) -> RetryableError | None:
        """fsync each file of ``jobs`` once, then each folder; the first failure (the rest is not tried)."""
        fsync = self._fsync_file()
        seen: set[tuple[int, int]] = set()
        for j in jobs:
            for fd, path in j.files:
                try:
                    st = os.fstat(fd)
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                    fsync(fd)
                except OSError as e:
                    return retryable(classify(e, f"cannot fsync {path}"))
        for folder in sorted({f for j in jobs for f in j.folders}):
            try:
                fsync_folder(folder)
            except OSError as e:
                return retryable(classify(e, f"cannot fsync folder {folder}"))
        return None
