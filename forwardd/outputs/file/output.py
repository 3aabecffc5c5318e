"""The file output: events appended as lines (or msgpack entries) to files named from a path template.

Durability. No fsync runs on the event loop (it never waits on the disk), and they cover every file
written to and the parent folder of every file or folder created. When, is ``fsync``:

``grouped`` (opt-in)
    :meth:`FileOutput.write` only appends (to the page cache) and :meth:`FileOutput.sync` fsyncs what all
    the writes since the last sync touched. The buffer keeps the chunks queued until a sync after their
    write returned (:mod:`forwardd.buffer.unsynced`: within ``fsync_interval``, default 0.5 s, or sooner
    under load), so a kill -9 or a power cut loses nothing acked: it delivers again what was written and
    not yet synced (at most ``fsync_interval`` or 8 MiB of it), as lines repeated in the files (a power
    cut first takes them from the files). One fsync for many writes instead of one per batch: small
    batches (ack-per-request traffic) no longer compete with the buffer's commits for the disk with an
    fsync each (``bench/README.md``, "Session 10").
``write`` (the default)
    ``write`` returns once an fsync that began after its append has ended: what it wrote is durable when
    the buffer forgets the chunk, so a kill -9 repeats only the writes in flight. The default because
    grouped syncs repeat up to ``fsync_interval`` of lines after every crash (an aggregator killed in a
    Swarm test repeated 53 lines where ``write`` repeated none) and delay the delivery metrics by the wait
    for the sync (p50 57 -> 295 ms), for ~1.1x the events/s into files in the Session 10 A/B. The fsyncs
    run in a thread of their own (:mod:`.syncer`) while the output's thread encodes and appends the next
    writes: up to :data:`PIPELINE_DEPTH` writes are in flight (:attr:`concurrent_writes`), appended in the
    order they were called, so a tag's lines keep their order; only a write that fails and is written
    again can land after later ones. Why: encoding, appending and fsyncing one write after the other left
    the disk idle half the time (PackedForward with acks into files: 400k events/s one way, 600k the other,
    bench/README.md "Session 17").

``fsync_on_write=False`` trades both away for throughput (a power cut can then lose acked events).

Whole lines only: a chunk's data for one file is encoded into one ``bytes`` and appended with one ``write``
call, or not at all (:mod:`.segments`). At-least-once: a retried chunk may repeat lines, never lose them.

Where the lines go: :mod:`.paths` (the path template and its root); how files are written, rotated and
compressed: :mod:`.segments`. A record no encoder can represent (or an event time no path can hold) raises
UnprocessableError before anything is written, so the delivery loop can isolate that event and dead-letter
it alone. One writer per file: two outputs must not share paths.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from forwardd.errors import DeliveryError, UnprocessableError
from forwardd.model import Chunk
from forwardd.outputs.base import Output, StatValue
from forwardd.outputs.file.opening import Segment
from forwardd.outputs.file.paths import PathTemplate
from forwardd.outputs.file.segments import EXTENSIONS, Disk
from forwardd.outputs.file.settings import FileSettings, FsyncMode, worker_path
from forwardd.outputs.file.syncer import Syncer, SyncJob
from forwardd.outputs.formats import make_encoder, make_plain_encoder, native_json_lines

__all__ = ["PIPELINE_DEPTH", "SMALL_WRITE", "FileOutput", "FileStats"]

_A = TypeVar("_A")
_R = TypeVar("_R")
#: What an append in the output's thread returns: events, bytes (before compression), and the fsync
#: thread's job for it (None: synced where it was appended, or no fsync).
_Written = tuple[int, int, SyncJob | None]

#: Writes in flight under ``fsync: write``: one appending, the ones before it waiting for or in their fsync
#: (:mod:`.syncer`). 3 against 2 in the Session 17 A/B: 602k against 517k events/s into files.
PIPELINE_DEPTH = 3
#: Batches (and chunks) under this many entry bytes are written one at a time and fsynced where they are
#: appended (Output.concurrent_min_bytes): for them a task per write and a second thread cost more CPU
#: than the overlap gains (16 docker clients with an ack each: 8.9k against 11.4k events/s).
SMALL_WRITE = 256 * 1024


@dataclass(frozen=True, slots=True)
class FileStats:
    """Events and bytes (before compression) written since start, in ``writes`` writes; grouped syncs done
    (``fsync: grouped``) and fsync rounds (``fsync: write``: each covers every write appended before it
    began, so fewer rounds than writes is the grouping at work): what the durability costs."""

    events: int = 0
    bytes: int = 0
    syncs: int = 0
    writes: int = 0
    fsync_rounds: int = 0

    def as_dict(self) -> dict[str, StatValue]:
        return {
            "events": self.events,
            "bytes": self.bytes,
            "syncs": self.syncs,
            "writes": self.writes,
            "fsync_rounds": self.fsync_rounds,
        }


class FileOutput(Output):
    """Appends chunks to files; see the module documentation for paths, rotation and guarantees."""

    @classmethod
    def from_settings(cls, name: str, s: FileSettings, worker: int = 0) -> FileOutput:
        """The output of one ``type: file`` entry, for worker ``worker`` (its own files; the first one
        keeps the symlink)."""
        return cls(
            name=name,
            path=worker_path(s.path, worker),
            format=s.format,
            compress=s.compress,
            rotate_interval=s.rotate.interval,
            rotate_max_size=s.rotate.max_size,
            symlink=s.symlink if worker == 0 else None,
            fsync=s.fsync,
            fsync_interval=s.fsync_interval,
        )

    def __init__(
        self,
        *,
        name: str,
        path: str,
        format: str = "json",
        compress: str = "none",
        compress_level: int | None = None,
        rotate_interval: float | None = None,
        rotate_max_size: int | None = None,
        symlink: str | None = None,
        time_key: str | None = "time",
        tag_key: str | None = "tag",
        utc: bool = True,
        fsync_on_write: bool = True,
        fsync: FsyncMode = "write",
        fsync_interval: float = 0.5,
        max_open_files: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if compress not in EXTENSIONS:
            raise ValueError(f"unknown compress {compress!r}; expected none, gzip or zstd")
        if rotate_max_size is not None and rotate_max_size <= 0:
            raise ValueError("rotate_max_size must be positive")
        if rotate_interval is not None and rotate_interval <= 0:
            raise ValueError("rotate_interval must be positive")
        if max_open_files < 1:
            raise ValueError("max_open_files must be at least 1")
        if fsync not in ("write", "grouped"):
            raise ValueError(f"unknown fsync {fsync!r}; expected write or grouped")
        if not fsync_interval > 0:
            raise ValueError("fsync_interval must be positive")
        #: Grouped syncs: write() appends, sync() makes it durable (see the module doc).
        self.defers_sync = fsync_on_write and fsync == "grouped"
        #: ``fsync: write``: each write's fsync runs in the fsync thread while the next write appends.
        self._pipelined = fsync_on_write and fsync == "write"
        if self._pipelined:
            self.concurrent_writes = PIPELINE_DEPTH
            self.concurrent_min_bytes = SMALL_WRITE
        self.sync_interval = fsync_interval
        self.name = name
        self.template = PathTemplate(path, utc=utc, extension=EXTENSIONS[compress])
        self._encode = make_encoder(format, time_key=time_key, tag_key=tag_key, utc=utc)
        self._encode_plain = make_plain_encoder(format, time_key=time_key, tag_key=tag_key)
        self._native = format == "json" and not self.template.has_record
        self._time_key, self._tag_key = time_key, tag_key
        self._disk = Disk(
            compress=compress,
            level=compress_level,
            max_size=rotate_max_size,
            interval=rotate_interval,
            symlink=symlink,
            fsync=fsync_on_write,
            max_open=max_open_files,
            clock=clock,
            defer=self.defers_sync or self._pipelined,
        )
        self._executor: ThreadPoolExecutor | None = None
        self._syncer: Syncer | None = None
        self._rounds_before = 0  # the rounds of fsync threads stopped before (a stop, then writes again)
        #: The epoch of the append under way (the appending thread's; see :mod:`.syncer`).
        self._epoch = 0
        self._lock = asyncio.Lock()
        #: Events and bytes (before compression) written so far; for metrics and tests.
        self.events_written = 0
        self.bytes_written = 0
        #: Grouped syncs done (sync() calls that had something to sync), failed or not.
        self.syncs = 0
        #: Writes that wrote something; fsync rounds of small writes done where they were appended (the
        #: fsync thread counts its own).
        self.writes = 0
        self._inline_rounds = 0

    @property
    def stats(self) -> FileStats:
        syncer = self._syncer
        rounds = self._inline_rounds + self._rounds_before + (syncer.rounds if syncer is not None else 0)
        return FileStats(self.events_written, self.bytes_written, self.syncs, self.writes, rounds)

    @property
    def root(self) -> str:
        """The fixed folder every file of this output lives under."""
        return self.template.root

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"file-{self.name}")
        return self._executor

    def encode(self, chunk: Chunk, *, native: bool = True) -> tuple[list[tuple[str, bytes]], int]:
        """The chunk as (resolved path, encoded bytes) groups, and how many events they hold; CPU only.

        Three ways, fastest first: the C transcoder straight from the entries (JSON lines of plain
        chunks; the template may split by time, not by record keys), msgspec's columns (plain chunks in
        the other cases), and the general path over decoded events.
        """
        tag = chunk.tag
        if native and self._native:
            by_native = self._native_groups(chunk)
            if by_native is not None:
                return by_native
        if self._encode_plain is not None:
            plain = chunk.plain_entries()
            if plain is not None:
                groups = self.template.group_plain(plain, tag)
                if groups is not None:
                    encoded = [(path, self._encode_plain(cols, tag)) for path, cols in groups]
                    return encoded, len(plain.records)
        events = chunk.events()
        grouped = self.template.group(events, tag)
        return [(path, self._encode(group, tag)) for path, group in grouped], len(events)

    async def write(self, chunk: Chunk) -> None:
        loop = asyncio.get_running_loop()
        synced: asyncio.Future[None] | None = None
        if self._pipelined and self._syncer is None:
            self._start_syncer(loop)
        async with self._lock:  # one append at a time, in the order of the calls: the files are the thread's
            # A small write with no fsync under way or queued is fsynced where it is appended: the fsync
            # thread would only add a hand-over (docker's one-event chunks, one write at a time).
            inline = not self._pipelined or (
                len(chunk.entries) < SMALL_WRITE and self._syncer is not None and not self._syncer.outstanding
            )
            done = None
            if self._native:
                # The C transcoder releases the GIL while it writes a big chunk: in the output's thread it
                # runs on the other core, beside the event loop (a quarter of the loop's time otherwise).
                done = await self._appended(self._write_native, chunk, inline)
            if done is None:
                with _encoding(chunk.tag):  # msgspec and Python hold the GIL: on the loop
                    groups, count = self.encode(chunk, native=False)  # the transcoder declined it
                if not groups:
                    return
                done = await self._appended(self._write_encoded, (groups, count), inline)
            if done[2] is not None:
                assert self._syncer is not None
                synced = self._syncer.submit(done[2])  # queued in the order of the appends
        if synced is not None:
            await synced  # the next write appends meanwhile
        self.events_written += done[0]
        self.bytes_written += done[1]
        self.writes += 1

    async def _appended(self, fn: Callable[[_A, bool], _R], arg: _A, inline: bool) -> _R:
        """``fn(arg, inline)`` in the output's thread. If the write is cancelled meanwhile (a stop), the
        thread goes on, and the fsync thread's job it returns is dropped, its descriptors closed, once it
        ends."""
        future = self._pool().submit(fn, arg, inline)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.add_done_callback(_drop_job)
            raise

    def _start_syncer(self, loop: asyncio.AbstractEventLoop) -> None:
        self._syncer = Syncer(self.name, loop, lambda: self._disk.fsync_file)

    def _begin(self) -> None:
        """In the output's thread, before an append: a failed fsync since the last one starts new files."""
        if self._syncer is None:
            return
        self._epoch, failed = self._syncer.begin()
        if failed:
            self._disk.break_all()

    def _handed_over(self) -> SyncJob:
        """In the output's thread, after an append: what the fsync thread must sync for it."""
        files, folders = self._disk.take_unsynced()
        return SyncJob(files, folders, self._epoch)

    def _close_sync(self, seg: Segment) -> None:
        """The disk's hook for a file it closes (``fsync: write``): the fsync thread syncs it, in order."""
        assert self._syncer is not None
        self._syncer.hand_over(SyncJob([(os.dup(seg.fd), seg.path)], [], self._epoch))

    def _write_encoded(self, encoded: tuple[list[tuple[str, bytes]], int], inline: bool) -> _Written:
        """In the output's thread: encoded groups (and their event count) appended; see _write_groups."""
        groups, count = encoded
        return count, _size(groups), self._write_groups(groups, inline)

    def _write_groups(self, groups: list[tuple[str, bytes]], inline: bool) -> SyncJob | None:
        """In the output's thread: encoded groups appended; the fsync thread's job for them, or None when
        they are synced already (``inline``: no job is queued there, so no fsync of it can race this one)."""
        self._begin()
        disk = self._disk
        if not self._pipelined:
            disk.write(groups)
            return None
        disk.close_sync = None if inline else self._close_sync
        disk.write(groups)
        if inline:
            self._inline_rounds += 1
            disk.sync()
            return None
        return self._handed_over()

    def _native_groups(
        self, chunk: Chunk, *, release_gil: bool = False
    ) -> tuple[list[tuple[str, bytes]], int] | None:
        """:meth:`encode`'s first way: the C transcoder's JSON lines by path; None when it declines."""
        lines = native_json_lines(
            chunk, time_key=self._time_key, tag_key=self._tag_key, release_gil=release_gil
        )
        return None if lines is None else (self.template.group_lines(lines, chunk.tag), lines.count)

    def _write_native(self, chunk: Chunk, inline: bool) -> _Written | None:
        """In the output's thread: the chunk as the C transcoder's JSON lines, written; (events, bytes, the
        fsync thread's job), or None (nothing written) when the chunk is not plain and must take
        :meth:`encode`'s other ways."""
        with _encoding(chunk.tag):
            encoded = self._native_groups(chunk, release_gil=True)
        if encoded is None:
            return None
        return self._write_encoded(encoded, inline)

    async def sync(self) -> None:
        """Fsync what every write since the last sync touched; RetryableError if any of it may be lost."""
        if not self.defers_sync or self._executor is None:
            return  # nothing written yet (the pool starts with the first write)
        async with self._lock:
            self.syncs += 1
            await asyncio.get_running_loop().run_in_executor(self._executor, self._disk.sync)

    async def stop(self) -> None:
        if self._executor is None:
            return
        async with self._lock:
            try:
                if self._syncer is not None:
                    await self._syncer.stop()  # what is queued is synced first
                    self._rounds_before += self._syncer.rounds
                    self._syncer = None
                self._disk.close_sync = None  # the last files are fsynced as they close, in the thread
                await asyncio.get_running_loop().run_in_executor(self._executor, self._disk.close_all)
            finally:
                self._executor.shutdown(wait=True)
                self._executor = None


@contextlib.contextmanager
def _encoding(tag: str) -> Iterator[None]:
    """A record no encoder or path can represent raises UnprocessableError (the data's verdict, not the
    destination's): the delivery loop isolates the event and dead-letters it alone."""
    try:
        yield
    except DeliveryError:
        raise
    except Exception as e:
        raise UnprocessableError(f"cannot encode chunk of {tag!r}: {e}") from e


def _drop_job(future: concurrent.futures.Future[Any]) -> None:
    """Close the descriptors of the job an append of a cancelled write returned."""
    if future.cancelled() or future.exception() is not None:
        return
    written: _Written | None = future.result()
    if written is not None and written[2] is not None:
        written[2].close()


def _size(groups: list[tuple[str, bytes]]) -> int:
    return sum(len(data) for _, data in groups)
