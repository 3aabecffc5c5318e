"""The durable disk queue in front of every output: a client is acked only after its chunk is committed here.

Design
======

Invariants
----------
1. A chunk whose :meth:`DiskQueue.submit` awaitable resolved is on disk (fsync'd, under the default
   ``fsync: always``) and stays there until the delivery loop marks it delivered or dead-lettered. No crash
   (``kill -9``), destination outage or full disk loses it. (``drop_oldest``, opt-in, is the one exception,
   counted and logged.)
2. Chunks are delivered in commit order. A chunk is delivered again after a crash only if its delivery was
   in flight (taken, not yet marked) when the crash came: delivery is at-least-once, never at-most-once.
   For an output that defers its sync (the file output's grouped fsyncs) a written chunk stays in flight
   until the output's sync after it succeeded (:mod:`~forwardd.buffer.unsynced`), so a crash or a power
   loss also redelivers what was written and not yet synced: at most the output's ``sync_interval``
   (0.5 s) or 8 MiB of it.
3. Starting never fails because of a bad file: damage is cut off or quarantined, and logged with its cost.

Files (one directory per output)
--------------------------------
``00000012.sealed``, ``00000013.open``
    Segments: append-only files of records, named by a sequence number that only grows. A segment is
    written while ``.open`` and renamed ``.sealed`` (after an fsync) once the next record would push it
    past ``max_segment_size`` (default 16 MiB); a record bigger than that gets a segment of its own.
    A segment is unlinked once every record in it is delivered. Under ``fsync: always`` an open segment
    may end in zeros written ahead of small commits (the runway, see ``SegmentWriter._extend_runway``):
    an fdatasync into blocks already written is faster than one that also journals a new file size.
    Sealing and a clean stop truncate the zeros; recovery cuts them off without calling them a torn tail.
``ledger.json``
    ``{"seq": 12, "offset": 4096}``: everything before byte ``offset`` of segment ``seq`` is delivered, and
    so is every segment with a smaller sequence (recovery deletes any that a crash left behind). Fixed
    width, overwritten in place with one ``pwrite`` once per delivery round, so a ``kill -9`` redelivers
    only what was in flight. That write reaches the page cache, not the disk: the ledger is also
    fdatasync'd at most ``LEDGER_SYNC_SECONDS`` (1 s) after delivery moved it, on a worker thread
    (:mod:`~forwardd.buffer.checkpoint`), so a power loss redelivers about the last second of deliveries
    plus what was in flight, never more (tests/e2e/test_power_loss.py measures it: ~0.6 s of traffic per
    cut). At start and at a clean stop it is replaced atomically (temp file, fsync, rename). Under
    ``fsync: never`` it is never synced while running (the kernel writes it back within ~30 s).
``quarantine/``
    Damaged segments, moved aside for a human, after their readable undelivered records were copied out.
``worker-<k>/``
    With ``workers: N``, worker k's queue for the same output (worker 0's is the directory itself). One left
    by a worker that no longer exists is adopted by a remaining one (:meth:`DiskQueue.adopt`,
    :mod:`~forwardd.buffer.adoption`): delivered first, then removed.

Code: :mod:`~forwardd.buffer.segment` (framing, files), :mod:`~forwardd.buffer.recovery`,
:mod:`~forwardd.buffer.writer`, :mod:`~forwardd.buffer.reader`, :mod:`~forwardd.buffer.ledger`, joined by
:mod:`~forwardd.buffer.store`; this module adds the asyncio side (limits, back-pressure), with the group
commit in :mod:`~forwardd.buffer.commit`.

Record framing (:mod:`forwardd.buffer.segment`): ``magic | length | crc32 | tag_len count received_ns tag
entries``. The length and CRC find torn and flipped bytes; the magic lets recovery find the next good record
after damage, so a bad sector costs the records in it, not the rest of the segment.

Group commit, the fsync policies and write failures: :mod:`forwardd.buffer.commit`.

Recovery
--------
At start (in the writer thread) every segment is read and every record's CRC checked.

* Damage with no good record after it is a torn write: the file is truncated to the last good record.
* Damage followed by good records is corruption: the undelivered good records before *and* after it are
  copied to a ``.salvage`` file (fsync'd), the original moves to ``quarantine/`` with a
  ``buffer.quarantined`` warning (``lost_bytes``, ``lost_records``), and the copy takes the original's name.
  A crash during this is finished or redone at the next start.
* A segment that cannot be read at all is quarantined as a whole.
* Delivery resumes at the ledger's position; then a ``buffer.recovered`` line reports what is queued.

Memory
------
What a queue holds in memory is bounded by fixed windows, never by the size of its backlog: recovery reads a
segment ``SCAN_WINDOW`` (1 MiB) at a time; the reader reads ``READ_AHEAD`` (1 MiB) at a time and decodes
records straight from that buffer; the newest committed records are also kept in memory (up to ``HOT_MAX``,
16 MiB), but only while the reader is within that distance of them, so a backlog (a restart, a slow
output) does not pin them; the delivery loop takes at most ``BATCH_MAX_BYTES`` (4 MiB) at a time.
tests/e2e/test_backlog_memory.py restarts a daemon over 110 MB queued for each of three outputs: 112 MB RSS
at the peak (172 MB before these windows).

Limits and back-pressure
------------------------
``max_size`` bounds the bytes of accepted, undelivered records (frames included). When a chunk does not fit:

``block`` (default)
    ``submit`` returns a future that resolves once delivery freed room and the chunk was committed. The
    caller keeps holding the chunk (no copy here); it withholds the client's ack and, once its window of
    unacked chunks is full, stops reading the socket. Memory stays bounded; the client sees TCP pressure.
    Waiters are admitted in order; a chunk bigger than ``max_size`` is admitted alone into an empty queue.
    Back-pressure goes by volume: a small chunk (a frame of at most ``SMALL_ROOM_CHUNK`` bytes: one
    docker line) does not wait behind big ones. While no small chunk and no chunk of its tag waits, it is
    admitted into room kept beyond ``max_size`` (``SMALL_ROOM``, at most a sixteenth of ``max_size``).
    Each tag's chunks keep their order; once that room is used, small chunks wait in line like the rest.
    Without it a docker client beside a forwarder whose PackedForward outran the output waited for room
    behind 240 KB chunks: 17 acks a second (bench.ingest ``message-ack-w1-1conn-bulk``).
``drop_oldest``
    the oldest committed, not-in-flight chunks are dropped (counted in ``dropped_events``) until the new one
    fits; if nothing can be dropped it blocks as above.

Either way ``buffer.full`` is logged once when the queue becomes full, ``buffer.space_freed`` once when it
accepts again, never once per chunk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import deque
from collections.abc import Awaitable, Callable
from typing import get_args

import structlog

from forwardd.buffer.adoption import AdoptedQueues
from forwardd.buffer.base import FsyncPolicy, Readable, Taken, WhenFull
from forwardd.buffer.checkpoint import LedgerCheckpoints
from forwardd.buffer.commit import COMMIT_GATHER_SECONDS, INLINE_COMMIT_MAX, GroupCommit, Pending, reject
from forwardd.buffer.segment import Compression, frame_size
from forwardd.buffer.store import DEFAULT_MAX_SEGMENT_SIZE, SegmentStore
from forwardd.errors import ChunkRejected
from forwardd.model import Chunk

__all__ = [
    "DEFAULT_MAX_SEGMENT_SIZE",
    "DEFAULT_MAX_SIZE",
    "DiskQueue",
]

log = structlog.get_logger("forwardd.buffer")

#: Default bound on undelivered bytes per output: an hour of a busy source, far below a normal disk.
DEFAULT_MAX_SIZE = 1024 * 1024 * 1024
#: Chunks of up to this frame size do not wait behind big ones for room (see "Limits and back-pressure")...
SMALL_ROOM_CHUNK = 4096
#: ...in up to this much room beyond max_size (and at most a sixteenth of it).
SMALL_ROOM = 1024 * 1024


class DiskQueue(GroupCommit):
    """A durable, bounded FIFO of chunks for one output (see the module docstring); its commit side is
    :class:`~forwardd.buffer.commit.GroupCommit`."""

    def __init__(
        self,
        directory: str,
        *,
        name: str = "",
        max_size: int = DEFAULT_MAX_SIZE,
        max_segment_size: int = DEFAULT_MAX_SEGMENT_SIZE,
        fsync: FsyncPolicy = "always",
        fsync_interval: float = 1.0,
        when_full: WhenFull = "block",
        compression: Compression = "none",
        write_retry_initial: float = 0.05,
        write_retry_max: float = 5.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        inline_commit_max: int = INLINE_COMMIT_MAX,
    ) -> None:
        if fsync not in ("always", "interval", "never"):
            raise ValueError(f"unknown fsync policy {fsync!r}")
        if when_full not in ("block", "drop_oldest"):
            raise ValueError(f"unknown when_full {when_full!r}")
        self.directory = directory
        self.name = name or directory
        self.max_size = max_size
        self.max_segment_size = max_segment_size
        self.fsync: FsyncPolicy = fsync
        self.fsync_interval = fsync_interval
        self.when_full: WhenFull = when_full
        if compression not in get_args(Compression):
            raise ValueError(f"unknown compression {compression!r}")
        #: How records' entries are written (see :mod:`forwardd.buffer.segment`); read back either way.
        self.compression: Compression = compression
        self._retry_initial = write_retry_initial
        self._retry_max = write_retry_max
        self._sleep = sleep
        self.inline_commit_max = inline_commit_max
        #: Moving average of the seconds a commit's write took; decides inline or thread.
        self.commit_seconds = 0.0
        self.inline_commits = 0
        self._thread_jobs = 0
        self._last_batch = 0
        #: See _gather; an attribute so that tests can make the deadline irrelevant.
        self.gather_seconds = COMMIT_GATHER_SECONDS
        self._store: SegmentStore | None = None
        #: Queues of workers that no longer exist, delivered before this one's (see adopt()).
        self._adopted = AdoptedQueues(self.name, [], max_segment_size, fsync)
        self._retiring: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: list[Pending] = []
        self._pending_bytes = 0
        self._waiters: deque[Pending] = deque()
        self._wake = asyncio.Event()
        self._readable = Readable()
        self._tasks: list[asyncio.Task[None]] = []
        self._accepting = False
        self._closing = False
        self._closing_event = asyncio.Event()
        self._full = False
        self._failing = False
        self._dropped_while_full = 0
        self._committing = 0
        #: Writes the ledgers once per delivery round and syncs them at most once a second.
        self.checkpoints = LedgerCheckpoints(self._ledger_stores)
        self._closed = False
        self.dropped_events = 0
        self.commits = 0

    # ---------------------------------------------------------------------------------------- lifecycle

    def adopt(self, directories: list[str]) -> None:
        """Deliver what the queues in ``directories`` hold before this queue's own (call before start).

        For the queues of workers that no longer exist (:mod:`forwardd.buffer.adoption`): nothing is
        written to them, their records count in ``queued_chunks`` but not against ``max_size``, and each
        one's files are removed once it is delivered.
        """
        self._adopted.directories = list(directories)

    async def start(self) -> None:
        """Recover the directory (in the writer thread) and start committing."""
        self._loop = asyncio.get_running_loop()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="forwardd-buffer")
        self._store = await self._in_thread(
            lambda: SegmentStore.open(
                self.directory,
                max_segment_size=self.max_segment_size,
                fsync=self.fsync,
                compression=self.compression,
            ),
        )
        if self._adopted.directories:
            await self._in_thread(self._adopted.open)
        self._accepting = True
        self._tasks.append(asyncio.create_task(self._commit_loop(), name=f"buffer-commit:{self.name}"))
        if self.fsync == "interval":
            self._tasks.append(asyncio.create_task(self._sync_loop(), name=f"buffer-sync:{self.name}"))
        if self.fsync != "never":
            self._tasks.append(asyncio.create_task(self.checkpoints.run(), name=f"buffer-ledger:{self.name}"))
        if self._store.queued_chunks or self._adopted:
            self._readable.set()

    async def close(self) -> None:
        """Stop accepting, commit what was accepted, fsync and release the files.

        Chunks still waiting for room are rejected as temporary (their clients resend); so are pending
        ones when the disk is failing, since nothing can commit them.
        """
        if self._store is None or self._closing:
            return
        self.stop_accepting()
        self._closing = True
        self._closing_event.set()
        self._wake.set()
        for task in self._tasks[1:]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.checkpoints.wait_idle()  # its thread uses the ledgers' descriptors
        if self._retiring:
            await asyncio.wait(self._retiring)
        store = self._store
        assert self._executor is not None
        self._closed = True  # store.close writes the ledger itself, durably
        removing = [fut for st in [*self._adopted.stores, store] for fut in st.reader.removing]
        if removing:
            await asyncio.wait(removing)  # finished segments go before close returns, as they did inline
        for st in [*self._adopted.stores, store]:
            try:
                await self._in_thread(st.close)
            except OSError as exc:
                log.error("buffer.close_failed", buffer=self.name, directory=st.directory, error=str(exc))
        self._adopted.stores.clear()
        self._executor.shutdown(wait=True)

    def stop_accepting(self) -> None:
        self._accepting = False
        while self._waiters:
            _, fut, _ = self._waiters.popleft()
            reject(fut, "buffer closing")

    @property
    def pending_chunks(self) -> int:
        return len(self._pending) + self._committing

    @property
    def full(self) -> bool:
        """Whether chunks wait for room (or, with drop_oldest, old ones are dropped for new ones)."""
        return self._full

    # ------------------------------------------------------------------------------------- accept side

    @property
    def used_bytes(self) -> int:
        """Bytes counted against ``max_size``: committed undelivered records plus pending commits."""
        store = self._store
        return self._pending_bytes + (store.queued_bytes if store is not None else 0)

    def submit(self, chunk: Chunk) -> Awaitable[None]:
        """Queue ``chunk`` for the next group commit; the future resolves once it is committed."""
        if not self._accepting:
            raise ChunkRejected("buffer not accepting (stopped)", permanent=False)
        size = frame_size(chunk)
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()  # not get_running_loop(): a getpid() each
        if self._waiters or not self._fits(size):
            if self.when_full == "drop_oldest" and not self._waiters:
                self._drop_for(size)
            if (self._waiters or not self._fits(size)) and not self._small_room(chunk, size):
                self._set_full(True)
                self._waiters.append((chunk, fut, size))
                return fut
        elif self._full and not self._waiters:
            self._set_full(False)  # drop_oldest: the first chunk that fits without dropping ends the episode
        self._admit(chunk, fut, size)
        return fut

    def _fits(self, size: int) -> bool:
        used = self.used_bytes
        return used + size <= self.max_size or used == 0

    def _small_room(self, chunk: Chunk, size: int) -> bool:
        """Whether a small chunk goes past the big ones waiting (see "Limits and back-pressure")."""
        if size > SMALL_ROOM_CHUNK or self.when_full != "block":
            return False
        if self.used_bytes + size > self.max_size + min(SMALL_ROOM, self.max_size // 16):
            return False
        tag = chunk.tag  # small chunks keep their order among themselves, and each tag its own
        return not any(w[2] <= SMALL_ROOM_CHUNK or w[0].tag == tag for w in self._waiters)

    def _admit(self, chunk: Chunk, fut: asyncio.Future[None], size: int) -> None:
        self._pending.append((chunk, fut, size))
        self._pending_bytes += size
        self._wake.set()

    def _admit_waiters(self) -> None:
        waiters = self._waiters
        while waiters:
            chunk, fut, size = waiters[0]
            if fut.cancelled():
                waiters.popleft()
                continue
            if not self._fits(size):
                return
            waiters.popleft()
            self._admit(chunk, fut, size)
        self._set_full(False)

    def _drop_for(self, size: int) -> None:
        store = self._store
        assert store is not None
        while not self._fits(size):
            count = store.drop_next()
            if count is None:
                return
            self.checkpoints.kick()
            self.dropped_events += count
            self._dropped_while_full += count
            self._set_full(True)

    def _set_full(self, full: bool) -> None:
        if full == self._full:
            return
        self._full = full
        if full:
            log.warning(
                "buffer.full",
                buffer=self.name,
                when_full=self.when_full,
                used_bytes=self.used_bytes,
                max_size=self.max_size,
            )
        else:
            log.info(
                "buffer.space_freed",
                buffer=self.name,
                used_bytes=self.used_bytes,
                dropped_events=self._dropped_while_full,
            )
            self._dropped_while_full = 0

    # ----------------------------------------------------------------------------------- delivery side

    async def get(self) -> Taken:
        """The oldest committed chunk not yet taken; waits until there is one."""
        assert self._store is not None, "start() first"
        while True:
            t = self.take_nowait()
            if t is not None:
                return t
            self._readable.clear()
            await self._readable.wait()

    def when_readable(self, callback: Callable[[], None]) -> Callable[[], None]:
        return self._readable.when_set(callback)

    def take_nowait(self) -> Taken | None:
        store = self._store
        if store is None:
            return None
        if self._adopted.stores:  # the list, not the object: no Python-level __bool__ per take
            t = self._adopted.take()
            if t is not None:
                return t
        return store.take()

    def mark_delivered(self, taken: Taken) -> None:
        store = self._store
        assert store is not None
        adopted = self._adopted.owner(taken) if self._adopted.stores else None
        # The ledger is written once per loop iteration, not per chunk: a delivery round marks many
        # chunks, and each write is a syscall. A crash before it redelivers those chunks (invariant 2).
        if (adopted or store).mark_delivered(taken, ledger=False):
            self.checkpoints.moved()
        if adopted is not None and adopted.queued_chunks == 0:
            self._retire(adopted)
        if self._waiters:
            self._admit_waiters()

    def _ledger_stores(self) -> list[SegmentStore]:
        if self._store is None or self._closed:
            return []
        return [self._store, *self._adopted.stores] if self._adopted else [self._store]

    def _retire(self, store: SegmentStore) -> None:
        """An adopted queue is delivered: stop using it, then remove its files (after its ledger's sync)."""
        self._adopted.stores.remove(store)

        async def remove() -> None:
            await self.checkpoints.wait_idle()  # may be syncing this store's ledger
            if store.reader.removing:  # its last finished segments, still being deleted in a thread
                await asyncio.wait(list(store.reader.removing))
            try:
                await self._in_thread(lambda: self._adopted.remove(store))
            except OSError as exc:
                log.error(
                    "buffer.adopted_remove_failed",
                    buffer=self.name,
                    directory=store.directory,
                    error=str(exc),
                )

        task = asyncio.create_task(remove(), name=f"buffer-retire:{self.name}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    @property
    def queued_chunks(self) -> int:
        store = self._store
        if store is None:
            return 0
        return store.queued_chunks + self._adopted.queued_chunks if self._adopted else store.queued_chunks

    @property
    def queued_bytes(self) -> int:
        store = self._store
        if store is None:
            return 0
        return store.queued_bytes + self._adopted.queued_bytes if self._adopted else store.queued_bytes
