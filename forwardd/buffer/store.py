"""The synchronous core of the disk queue: segment files, recovery, the ledger, reading and acking.

Thread split (see :mod:`forwardd.buffer.queue`): :meth:`SegmentStore.write` and :meth:`SegmentStore.sync`
touch only writer state (the current segment's position, new segment files) and run one at a time: on the
single writer thread, or on the event loop thread for small commits, never both at once (the queue counts
the jobs it gave the thread). Everything else runs on the event loop thread. Written records become
visible to the loop side only through :meth:`SegmentStore.publish` of the :class:`WriteResult` that
``write`` returned, so the two sides share no mutable state besides the (append-only) files and their
descriptors.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson
import structlog

from forwardd.buffer.base import FsyncPolicy, Taken
from forwardd.buffer.segment import (
    FRAME_OVERHEAD,
    Segment,
    atomic_write,
    decode_record,
    encode_prefix,
    fsync_dir,
    parse_segment_name,
    record_header,
    scan,
    segment_name,
)
from forwardd.model import Chunk

__all__ = ["DEFAULT_MAX_SEGMENT_SIZE", "DiskTaken", "SegmentStore", "WriteError", "WriteResult"]

log = structlog.get_logger("forwardd.buffer")

#: Big enough that rolling (an fsync of the directory) is rare, small enough that a delivered prefix
#: is given back to the filesystem soon.
DEFAULT_MAX_SEGMENT_SIZE = 16 * 1024 * 1024
#: Bytes read ahead per pread on the delivery side: many chunks per syscall, little memory.
READ_AHEAD = 1024 * 1024
#: Bytes of committed, undelivered records also kept in memory for the delivery loop (see ``_hot``).
HOT_MAX = 16 * 1024 * 1024
#: Zeros written ahead of small commits, per step (see ``SegmentStore._extend_runway``).
RUNWAY_STEP = 1024 * 1024
#: The runway is extended when less than this is left ahead of the write position.
RUNWAY_LOW = 64 * 1024
#: Only commits up to this size extend it: their cost is the fsync's latency, not its bandwidth.
RUNWAY_BATCH_MAX = 64 * 1024
#: Linux IOV_MAX: the most buffers one pwritev accepts.
IOV_MAX = 1024
LEDGER = "ledger.json"
#: Fixed width, so that an in-place overwrite always covers the previous content exactly.
_LEDGER_FMT = b'{"seq": %20d, "offset": %20d}\n'
QUARANTINE = "quarantine"
_SALVAGE = ".salvage"


class DiskTaken(Taken):
    """A record handed out by the store; ``seg``/``start``/``end`` locate it for the ack cursor."""

    __slots__ = ("count", "end", "seg", "start")

    def __init__(self, chunk: Chunk, seg: Segment, start: int, end: int, count: int) -> None:
        super().__init__(chunk)
        self.seg = seg
        self.start = start
        self.end = end
        self.count = count


@dataclass(slots=True)
class WriteResult:
    """What one :meth:`SegmentStore.write` committed, to be published on the loop thread.

    ``committed`` is how many of the chunks given (a prefix) are now safe per the fsync policy.
    """

    committed: int = 0
    runs: list[tuple[Segment, int, int]] = field(default_factory=list)  # segment, new end, records
    sealed: list[tuple[Segment, str]] = field(default_factory=list)  # segment, its new path
    created: list[Segment] = field(default_factory=list)
    #: Every record written, in order: segment, start, end and the chunk itself (see ``SegmentStore._hot``).
    records: list[tuple[Segment, int, int, Chunk]] = field(default_factory=list)


class WriteError(Exception):
    """A write failed; ``result`` holds what was committed before the failure (publish it anyway)."""

    def __init__(self, result: WriteResult, cause: OSError) -> None:
        super().__init__(str(cause))
        self.result = result
        self.cause = cause


@dataclass(slots=True)
class _Recovery:
    segments: int = 0
    chunks: int = 0
    bytes: int = 0
    truncated_bytes: int = 0
    quarantined: int = 0


class SegmentStore:
    """Segments on disk plus a delivery cursor; build with :meth:`open`, which recovers what is there."""

    #: Test seam for faults that cannot always be made for real (ENOSPC, EIO): the vectored write.
    _pwritev: Callable[[int, Sequence[bytes], int], int] = staticmethod(os.pwritev)

    def __init__(self, directory: str, max_segment_size: int, fsync: FsyncPolicy) -> None:
        self.directory = directory
        self.max_segment_size = max_segment_size
        self.fsync: FsyncPolicy = fsync
        # Loop side.
        self._segments: deque[Segment] = deque()
        self._ack_off = 0  # offset of the first undelivered record of self._segments[0]
        self._taken: deque[DiskTaken] = deque()
        #: The newest committed records not yet taken, as the chunks that were written (up to ``hot_max``
        #: bytes): delivery takes them from here instead of reading and decoding them back from the file.
        self._hot: deque[tuple[Segment, int, int, Chunk]] = deque()
        self._hot_bytes = 0
        self.hot_max = HOT_MAX
        self._rseg: Segment | None = None
        self._roff = 0
        self._buf = b""
        self._buf_start = 0
        self.queued_chunks = 0
        self.queued_bytes = 0
        # Writer side.
        self._current: Segment | None = None
        self._cur_path = ""
        self._cur_sealed = False
        self._wpos = 0
        self._file_end = 0  # size of the current segment's file: records, then zeros (the runway)
        self._runway_failed = False
        self._next_seq = 0
        self._need_roll = False
        self._unsynced = False
        self._committed_pos = 0
        self._ledger_failing = False
        self._ledger_fd: int | None = None

    # ----------------------------------------------------------------------------------------- recovery

    @classmethod
    def open(
        cls,
        directory: str,
        *,
        max_segment_size: int = DEFAULT_MAX_SEGMENT_SIZE,
        fsync: FsyncPolicy = "always",
    ) -> SegmentStore:
        """Recover ``directory``: verify every record, truncate torn tails, quarantine damaged segments."""
        t0 = time.monotonic()
        self = cls(directory, max_segment_size, fsync)
        os.makedirs(directory, exist_ok=True)
        stats = _Recovery()
        names = sorted(os.listdir(directory))
        found: dict[int, str] = {}
        for name in names:
            path = os.path.join(directory, name)
            parsed = parse_segment_name(name)
            if parsed is not None:
                found[parsed[0]] = parsed[1]
            elif name.endswith(".tmp"):
                os.unlink(path)  # a ledger or dead write that never got renamed
        for name in names:
            if name.endswith(_SALVAGE):
                self._finish_salvage(name, found)
        ledger_seq, ledger_off = self._read_ledger()
        recovered: list[tuple[Segment, int, int]] = []  # segment, ack offset, undelivered records
        for seq in sorted(found):
            path = os.path.join(directory, segment_name(seq, found[seq]))
            if seq < ledger_seq:
                os.unlink(path)  # fully delivered; the crash came between ledger update and unlink
                continue
            got = self._recover_segment(seq, found[seq], path, ledger_off if seq == ledger_seq else 0, stats)
            if got is not None:
                recovered.append(got)
        for k, (seg, ack_off, queued) in enumerate(recovered):
            last = k == len(recovered) - 1
            if seg.end == 0 and not last:
                seg.close()
                os.unlink(seg.path)
                continue
            if not seg.sealed and not last:
                new_path = os.path.join(directory, segment_name(seg.seq, "sealed"))
                os.rename(seg.path, new_path)
                seg.path, seg.sealed = new_path, True
            if not self._segments:
                self._ack_off = ack_off
            self._segments.append(seg)
            self.queued_chunks += queued
            self.queued_bytes += seg.end - ack_off
        self._next_seq = max(max(found, default=-1) + 1, ledger_seq)
        tail = self._segments[-1] if self._segments else None
        if tail is None or tail.sealed:
            tail = self._create_segment()
            self._segments.append(tail)
        self._current, self._cur_path, self._wpos, self._committed_pos = tail, tail.path, tail.end, tail.end
        self._file_end = tail.end  # recovery truncated the open segment to its last record
        self._rseg = self._segments[0]
        self._roff = self._ack_off
        self._write_ledger(durable=fsync != "never")
        log.info(
            "buffer.recovered",
            directory=directory,
            segments=len(self._segments),
            chunks=self.queued_chunks,
            bytes=self.queued_bytes,
            truncated_bytes=stats.truncated_bytes,
            quarantined=stats.quarantined,
            ms=round((time.monotonic() - t0) * 1000, 1),
        )
        return self

    def _read_ledger(self) -> tuple[int, int]:
        """(segment seq, offset) delivered so far; a missing or unreadable ledger means "nothing"."""
        try:
            with open(os.path.join(self.directory, LEDGER), "rb") as f:
                data = orjson.loads(f.read())
            return int(data["seq"]), int(data["offset"])
        except FileNotFoundError:
            return 0, 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("buffer.ledger_unreadable", directory=self.directory, error=str(exc))
            return 0, 0

    def _write_ledger(self, *, durable: bool = False) -> None:
        """Best effort: a ledger that cannot be written (disk full) only means redelivery after a crash.

        This runs after every delivery, on the event loop: a rename per delivery cost ~0.5 ms there. So
        the ledger has a fixed width and is overwritten in place with one small pwrite at offset 0, which
        a kill cannot tear (it lies within one page and one sector). Only ``durable`` writes (start and
        close) go through write-temp-fsync-rename.
        """
        head = self._segments[0]
        data = _LEDGER_FMT % (head.seq, self._ack_off)
        path = os.path.join(self.directory, LEDGER)
        try:
            if durable:
                if self._ledger_fd is not None:
                    os.close(self._ledger_fd)
                    self._ledger_fd = None
                atomic_write(path, data, durable=True)
            else:
                if self._ledger_fd is None:
                    self._ledger_fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
                os.pwrite(self._ledger_fd, data, 0)
        except OSError as exc:
            if not self._ledger_failing:
                self._ledger_failing = True
                log.warning("buffer.ledger_write_failed", directory=self.directory, error=str(exc))
            return
        if self._ledger_failing:
            self._ledger_failing = False
            log.info("buffer.ledger_write_recovered", directory=self.directory)

    def _finish_salvage(self, name: str, found: dict[int, str]) -> None:
        """Complete or undo a salvage that a crash interrupted (see :meth:`_salvage`)."""
        path = os.path.join(self.directory, name)
        seq = int(name[: -len(_SALVAGE)])
        if seq in found:
            os.unlink(path)  # the original is still there: salvage again from it
        else:
            os.rename(path, os.path.join(self.directory, segment_name(seq, "sealed")))
            found[seq] = "sealed"

    def _recover_segment(
        self, seq: int, state: str, path: str, ack_off: int, stats: _Recovery
    ) -> tuple[Segment, int, int] | None:
        """The verified segment, its ack offset and its undelivered record count; None if unusable."""
        fd = -1
        try:
            fd = os.open(path, os.O_RDWR)
            data = _read_all(fd)
            res = scan(data)
            # Only the open segment can have a torn tail: a sealed one was fsync'd whole before its rename.
            if res.bad_at is not None and res.torn and state == "open":
                os.ftruncate(fd, res.bad_at)
                if self.fsync != "never":
                    os.fsync(fd)
                # Zeros after the last record are the runway (or a write that never reached the disk):
                # nothing to report. Anything else is a torn write.
                torn = len(data.rstrip(b"\0")) - res.bad_at
                if torn > 0:
                    stats.truncated_bytes += torn
                    log.info("buffer.truncated", segment=path, at=res.bad_at, bytes=torn)
            elif res.bad_at is not None:
                os.close(fd)
                fd = -1
                keep = [(s, e) for s, e, _ in res.spans if s >= ack_off]
                path, fd = self._salvage(seq, path, data, keep, ack_off, res.lost_bytes, res.lost_records)
                stats.quarantined += 1
                res = scan(_read_all(fd))
                ack_off = 0
                state = "sealed"
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            self._quarantine(path, reason=str(exc), lost_bytes=None, lost_records=None, salvaged=0)
            stats.quarantined += 1
            return None
        bounds = [0, *(e for _, e, _ in res.spans)]
        if ack_off not in bounds:
            # Not a record boundary (cannot happen with a healthy ledger): redeliver from the one before.
            ack_off = max(b for b in bounds if b <= ack_off)
        end = bounds[-1]
        stats.segments += 1
        queued = sum(1 for s, _, _ in res.spans if s >= ack_off)
        seg = Segment(seq, path, fd, sealed=state == "sealed", end=end, records=len(res.spans))
        return seg, ack_off, queued

    def _salvage(
        self,
        seq: int,
        path: str,
        data: bytes,
        keep: list[tuple[int, int]],
        ack_off: int,
        lost_bytes: int,
        lost_records: int,
    ) -> tuple[str, int]:
        """Copy the undelivered good records of a damaged segment to a new file; quarantine the original.

        Order makes it crash-safe: the copy is durable before the original moves; a ``.salvage`` file found
        at startup is finished or redone by :meth:`_finish_salvage`; the ledger is reset to the copy's
        start before the copy takes the original's place (a crash in between redelivers, never skips).
        """
        tmp = os.path.join(self.directory, f"{seq:08d}{_SALVAGE}")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            with memoryview(data) as mv:
                os.write(fd, b"".join(mv[s:e] for s, e in keep))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        if ack_off:
            atomic_write(
                os.path.join(self.directory, LEDGER), orjson.dumps({"seq": seq, "offset": 0}), durable=True
            )
        self._quarantine(
            path,
            reason="corrupt record",
            lost_bytes=lost_bytes,
            lost_records=lost_records,
            salvaged=len(keep),
        )
        new_path = os.path.join(self.directory, segment_name(seq, "sealed"))
        os.rename(tmp, new_path)
        fsync_dir(self.directory)
        return new_path, fd

    def _quarantine(
        self, path: str, *, reason: str, lost_bytes: int | None, lost_records: int | None, salvaged: int
    ) -> None:
        qdir = os.path.join(self.directory, QUARANTINE)
        dest = os.path.join(qdir, os.path.basename(path))
        try:
            os.makedirs(qdir, exist_ok=True)
            if os.path.exists(dest):
                dest = f"{dest}.{time.time_ns()}"
            os.rename(path, dest)
            fsync_dir(qdir)
        except OSError as exc:
            dest = f"(left in place: {exc})"
        log.warning(
            "buffer.quarantined",
            segment=path,
            moved_to=dest,
            reason=reason,
            lost_bytes=lost_bytes,
            lost_records=lost_records,
            salvaged_records=salvaged,
        )

    # ------------------------------------------------------------------------------------ writer thread

    def _create_segment(self) -> Segment:
        seq = self._next_seq
        path = os.path.join(self.directory, segment_name(seq, "open"))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if self.fsync != "never":
                fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            raise
        self._next_seq = seq + 1
        return Segment(seq, path, fd, sealed=False)

    def _roll(self, res: WriteResult) -> None:
        """Seal the current segment and start the next; each step is redone if a failure interrupts it."""
        cur = self._current
        assert cur is not None
        if not self._cur_sealed:
            if self._file_end > self._wpos:
                os.ftruncate(cur.fd, self._wpos)  # a sealed segment ends with its last record
                self._file_end = self._wpos
            if self.fsync != "never":
                os.fdatasync(cur.fd)
            self._committed_pos = self._wpos
            sealed_path = os.path.join(self.directory, segment_name(cur.seq, "sealed"))
            os.rename(self._cur_path, sealed_path)
            self._cur_path = sealed_path
            self._cur_sealed = True
            res.sealed.append((cur, sealed_path))
        seg = self._create_segment()
        self._current, self._cur_path, self._cur_sealed = seg, seg.path, False
        self._wpos = self._committed_pos = self._file_end = 0
        self._runway_failed = False
        self._need_roll = False
        res.created.append(seg)

    def write(self, chunks: Sequence[Chunk]) -> WriteResult:
        """Append ``chunks`` and commit them per the fsync policy (writer side). Raises WriteError.

        Runs of records go to the current segment with one pwritev each; a record that would overflow a
        non-empty segment rolls to the next one. "always" ends with one fdatasync for the whole batch.
        """
        res = WriteResult()
        always = self.fsync == "always"
        limit = self.max_segment_size
        i, n = 0, len(chunks)
        start_pos = self._wpos
        try:
            while i < n:
                if self._need_roll:
                    self._roll(res)
                cur = self._current
                assert cur is not None
                pos = self._wpos
                iov: list[bytes] = []
                size = 0
                j = i
                records = res.records
                while j < n and len(iov) < IOV_MAX:
                    c = chunks[j]
                    prefix = encode_prefix(c)
                    fs = len(prefix) + len(c.entries)
                    if pos + size + fs > limit and pos + size > 0:
                        break
                    iov.append(prefix)
                    iov.append(c.entries)
                    records.append((cur, pos + size, pos + size + fs, c))
                    size += fs
                    j += 1
                if j == i:
                    self._need_roll = True
                    continue
                self._wpos = pos + size  # before the write: a short write must be truncated away too
                self._file_end = max(self._file_end, self._wpos)
                self._pwrite_all(cur.fd, iov, pos)
                res.runs.append((cur, self._wpos, j - i))
                if not always:
                    self._committed_pos = self._wpos
                    self._unsynced = True
                i = j
            if always and self._committed_pos < self._wpos:
                if self._file_end - self._wpos < RUNWAY_LOW and self._wpos - start_pos <= RUNWAY_BATCH_MAX:
                    self._extend_runway()
                os.fdatasync(self._current.fd)  # type: ignore[union-attr]
                self._committed_pos = self._wpos
        except OSError as exc:
            self._rollback(res)
            raise WriteError(res, exc) from exc
        res.committed = n
        return res

    def _extend_runway(self) -> None:
        """Write zeros ahead of the write position, to be flushed by the commit's fdatasync.

        An fdatasync after an append must also commit the file's new size to the filesystem journal; one
        after an overwrite of blocks already written need not. Measured here on ext4: 0.31-0.36 ms median
        and 1.2-2.3 ms p99 per commit when appending, 0.21 ms and 0.45 ms when overwriting zeros. So small
        commits, whose cost is that latency, write into zeros laid down a step at a time; one commit per
        step (a megabyte of records) pays for flushing the step. The zeros never outlive the segment's
        open state: sealing and closing truncate them, and recovery cuts them off silently.
        """
        cur = self._current
        assert cur is not None
        start = self._file_end
        end = min(start + RUNWAY_STEP, self.max_segment_size)
        if end <= start or self._runway_failed:
            return
        try:
            self._pwrite_all(cur.fd, [_ZEROS[: end - start]], start)
        except OSError:
            # A full disk: the records are written, only the zeros ahead are not. Leave them out (and
            # the file as it was) for the rest of this segment; the commit itself goes on.
            self._runway_failed = True
            try:
                os.ftruncate(cur.fd, start)
            except OSError:
                pass  # zeros past the records: recovery cuts them off
            return
        self._file_end = end

    def _pwrite_all(self, fd: int, iov: list[bytes], pos: int) -> None:
        """One pwritev for the whole run; loops only on a short write (rare: signals, nearly full disk)."""
        bufs: list[bytes | memoryview] = list(iov)
        while bufs:
            n = self._pwritev(fd, bufs, pos)  # type: ignore[arg-type]
            if n == 0:
                raise OSError(28, "No space left on device (short write)")
            pos += n
            while bufs and n >= len(bufs[0]):
                n -= len(bufs[0])
                bufs.pop(0)
            if n:
                bufs[0] = memoryview(bufs[0])[n:]

    def _rollback(self, res: WriteResult) -> None:
        """Forget what the failed commit wrote past the committed position; continue in a fresh segment.

        A fresh segment, because after a failed fsync the kernel may have dropped dirty pages and a later
        fsync can report success for data that is gone; nothing committed lives past ``_committed_pos``.
        """
        cur = self._current
        assert cur is not None
        keep = self._committed_pos
        while res.runs and res.runs[-1][0] is cur and res.runs[-1][1] > keep:
            res.runs.pop()
        res.committed = sum(k for _, _, k in res.runs)
        del res.records[res.committed :]
        if self._file_end > keep:
            try:
                os.ftruncate(cur.fd, keep)
            except OSError:
                pass  # recovery truncates or resyncs past the garbage
            self._wpos = self._file_end = keep
        if keep > 0 or self._cur_sealed:
            self._need_roll = True

    def sync(self) -> None:
        """fsync the current segment (writer thread; "interval" policy and close)."""
        if self._unsynced and self._current is not None:
            os.fdatasync(self._current.fd)
            self._unsynced = False

    # --------------------------------------------------------------------------------------- loop side

    def publish(self, res: WriteResult) -> None:
        """Make what a write committed visible to the reader (loop thread)."""
        for seg in res.created:
            self._segments.append(seg)
        for seg, end, k in res.runs:
            self.queued_bytes += end - seg.end
            self.queued_chunks += k
            seg.end = end
            seg.records += k
        for seg, path in res.sealed:
            seg.path = path
            seg.sealed = True
        hot, room = self._hot, self.hot_max - self._hot_bytes
        for rec in res.records:
            size = rec[2] - rec[1]
            if size > room:
                break  # the rest is read back from the file when its turn comes
            hot.append(rec)
            room -= size
        self._hot_bytes = self.hot_max - room

    def _next_segment(self, seg: Segment) -> Segment | None:
        found = False
        for s in self._segments:
            if found:
                return s
            found = s is seg
        return None

    def _read(self, n: int) -> bytes | None:
        """``n`` bytes at the read cursor from the read-ahead buffer, refilled with one pread."""
        seg = self._rseg
        assert seg is not None
        off = self._roff - self._buf_start
        if off < 0 or off + n > len(self._buf):
            avail = seg.end - self._roff
            if avail < n:
                return None
            want = min(max(READ_AHEAD, n), avail)
            self._buf = os.pread(seg.fd, want, self._roff)
            self._buf_start = self._roff
            off = 0
            if len(self._buf) < n:
                return None
        return self._buf[off : off + n] if (off or n != len(self._buf)) else self._buf

    def _advance_reader(self) -> Segment | None:
        """The segment holding the next committed record, moving the cursor across sealed segments."""
        seg = self._rseg
        while seg is not None and self._roff >= seg.end:
            if not seg.sealed:
                return None
            nxt = self._next_segment(seg)
            if nxt is None:
                return None
            self._rseg, self._roff, self._buf, self._buf_start = nxt, 0, b"", 0
            seg = nxt
        return seg

    def take(self) -> DiskTaken | None:
        """The next committed record not yet taken, or None (loop thread)."""
        seg = self._advance_reader()
        if seg is None:
            return None
        start = self._roff
        hot = self._hot
        while hot:
            hseg, hstart, hend, chunk = hot[0]
            if hseg is seg and hstart == start:  # still in memory: no read, no decode
                hot.popleft()
                self._hot_bytes -= hend - hstart
                return self._hand_out(chunk, seg, start, hend, chunk.count)
            if hseg.seq > seg.seq or (hseg is seg and hstart > start):
                break  # ahead of the reader: records before it come from the file
            hot.popleft()  # behind the reader (skipped by drop_oldest): forget it
            self._hot_bytes -= hend - hstart
        hdr = self._header_at_cursor()
        if hdr is None:
            return None
        length, count = hdr
        rec = self._read(length)
        assert rec is not None, "committed record shorter than its header says"
        chunk, _ = decode_record(rec)
        return self._hand_out(chunk, seg, start, start + length, count)

    def drop_next(self) -> int | None:
        """Skip the next committed record without reading its entries; its event count, or None."""
        seg = self._advance_reader()
        if seg is None:
            return None
        hdr = self._header_at_cursor()
        if hdr is None:
            return None
        length, count = hdr
        t = self._hand_out(_DROPPED, seg, self._roff, self._roff + length, count)
        self.mark_delivered(t)
        return count

    def _header_at_cursor(self) -> tuple[int, int] | None:
        """(length, event count) of the committed record at the read cursor, None if there is none."""
        head = self._read(FRAME_OVERHEAD)
        if head is None:
            return None
        hdr = record_header(head, 0)
        assert hdr is not None, "a committed record has a valid header"
        return hdr

    def _hand_out(self, chunk: Chunk, seg: Segment, start: int, end: int, count: int) -> DiskTaken:
        """Move the read cursor past the record at ``start`` and track it until it is marked delivered."""
        t = DiskTaken(chunk, seg, start, end, count)
        self._roff = end
        self._taken.append(t)
        return t

    def mark_delivered(self, t: Taken, *, ledger: bool = True) -> bool:
        """Record ``t`` as done; move the ack cursor over the done prefix, delete finished segments.

        Takes may finish out of order (a dropped record behind one in flight); the cursor, and so the
        ledger, only ever covers a prefix of done records. With ``ledger=False`` the ledger is left to a
        later :meth:`write_ledger` (the caller batches it); returns whether the cursor moved, i.e. whether
        the ledger is now behind.
        """
        assert isinstance(t, DiskTaken)
        if t.done:
            return False
        t.done = True
        self.queued_chunks -= 1
        self.queued_bytes -= t.end - t.start
        taken = self._taken
        if not taken or not taken[0].done:
            return False
        while taken and taken[0].done:
            head = taken.popleft()
            if head.seg is not self._segments[0]:
                self._drop_finished()
            self._ack_off = head.end
        self._drop_finished()
        if ledger:
            self._write_ledger()
        return True

    def write_ledger(self) -> None:
        """Bring the ledger up to the cursor (see ``mark_delivered(ledger=False)``)."""
        self._write_ledger()

    def _drop_finished(self) -> None:
        segs = self._segments
        while len(segs) > 1 and segs[0].sealed and self._ack_off >= segs[0].end:
            head = segs.popleft()
            self._ack_off = 0
            self._write_ledger()  # before unlink: recovery deletes segments older than the ledger's
            head.close()
            try:
                os.unlink(head.path)
            except OSError as exc:  # left for recovery, which deletes segments older than the ledger's
                log.warning("buffer.unlink_failed", segment=head.path, error=str(exc))
            if self._rseg is head:
                self._rseg, self._roff, self._buf, self._buf_start = segs[0], 0, b"", 0

    @property
    def segments(self) -> list[Segment]:
        return list(self._segments)

    def close(self) -> None:
        """Flush and release every file (after the writer thread is done)."""
        try:
            if self._current is not None and self._file_end > self._wpos and not self._cur_sealed:
                os.ftruncate(self._current.fd, self._wpos)  # a clean stop leaves no runway behind
                self._file_end = self._wpos
            if self.fsync != "never" and self._current is not None:
                os.fdatasync(self._current.fd)
            self._write_ledger(durable=self.fsync != "never")
        finally:
            if self._ledger_fd is not None:
                os.close(self._ledger_fd)
                self._ledger_fd = None
            for seg in self._segments:
                seg.close()
            if self._current is not None:
                self._current.close()


_DROPPED = Chunk("", b"", 0, 0)
#: The runway's zeros (calloc'd: untouched pages cost no memory).
_ZEROS = bytes(RUNWAY_STEP)


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    parts = []
    off = 0
    while off < size:
        b = os.pread(fd, size - off, off)
        if not b:
            break
        parts.append(b)
        off += len(b)
    return b"".join(parts)
