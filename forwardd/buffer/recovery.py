"""Recovery of a disk queue's directory at start: verify every record, cut torn tails, salvage and
quarantine damaged segments, and find where delivery resumes.

Its own module because it runs once, before the writer and the reader exist, and is the only code that
repairs files; everything it decides is handed over as a :class:`Recovered`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import structlog

from forwardd.buffer.base import FsyncPolicy
from forwardd.buffer.ledger import Ledger
from forwardd.buffer.segment import (
    SCAN_WINDOW,
    Segment,
    SegmentScanner,
    fsync_dir,
    parse_segment_name,
    segment_name,
)

__all__ = ["QUARANTINE", "Recovered", "recover"]

log = structlog.get_logger("forwardd.buffer")

QUARANTINE = "quarantine"
_SALVAGE = ".salvage"


@dataclass(slots=True)
class Recovered:
    """What recovery found: the verified segments, oldest first (all sealed but possibly the last), the
    offset of the first undelivered record in the first one, what is queued, and the next free sequence
    number. ``segments`` may be empty or end with a sealed segment: the store then starts a new one."""

    segments: list[Segment] = field(default_factory=list)
    ack_off: int = 0
    queued_chunks: int = 0
    queued_bytes: int = 0
    next_seq: int = 0
    truncated_bytes: int = 0
    quarantined: int = 0


def recover(directory: str, ledger: Ledger, fsync: FsyncPolicy) -> Recovered:
    """Recover ``directory`` (see "Recovery" in :mod:`forwardd.buffer.queue`)."""
    return _Recovery(directory, ledger, fsync).run()


class _Recovery:
    def __init__(self, directory: str, ledger: Ledger, fsync: FsyncPolicy) -> None:
        self.directory = directory
        self.ledger = ledger
        self.fsync: FsyncPolicy = fsync
        self.out = Recovered()

    def run(self) -> Recovered:
        directory = self.directory
        out = self.out
        os.makedirs(directory, exist_ok=True)
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
        ledger_seq, ledger_off = self.ledger.read()
        recovered: list[tuple[Segment, int, int]] = []  # segment, ack offset, undelivered records
        for seq in sorted(found):
            path = os.path.join(directory, segment_name(seq, found[seq]))
            if seq < ledger_seq:
                os.unlink(path)  # fully delivered; the crash came between ledger update and unlink
                continue
            got = self._recover_segment(seq, found[seq], path, ledger_off if seq == ledger_seq else 0)
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
            if not out.segments:
                out.ack_off = ack_off
            out.segments.append(seg)
            out.queued_chunks += queued
            out.queued_bytes += seg.end - ack_off
        out.next_seq = max(max(found, default=-1) + 1, ledger_seq)
        return out

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
        self, seq: int, state: str, path: str, ack_off: int
    ) -> tuple[Segment, int, int] | None:
        """The verified segment, its ack offset and its undelivered record count; None if unusable.

        The segment is read a window at a time (:class:`SegmentScanner`), never whole: a restart over a
        backlog of any size holds one window per segment being recovered.
        """
        out = self.out
        fd = -1
        try:
            fd = os.open(path, os.O_RDWR)
            sc = _scanner(fd)
            records, end, resume, queued = _walk(sc, ack_off)
            # Only the open segment can have a torn tail: a sealed one was fsync'd whole before its rename.
            if sc.bad_at is not None and sc.torn and state == "open":
                # Zeros after the last record are the runway (or a write that never reached the disk):
                # nothing to report. Anything else is a torn write.
                torn = sc.content_end(sc.bad_at) - sc.bad_at
                os.ftruncate(fd, sc.bad_at)
                if self.fsync != "never":
                    os.fsync(fd)
                if torn > 0:
                    out.truncated_bytes += torn
                    log.info("buffer.truncated", segment=path, at=sc.bad_at, bytes=torn)
            elif sc.bad_at is not None:
                path = self._salvage(seq, path, fd, ack_off, sc)
                os.close(fd)
                fd = os.open(path, os.O_RDWR)
                out.quarantined += 1
                records, end, _, queued = _walk(_scanner(fd), 0)
                resume, state = 0, "sealed"
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            self._quarantine(path, reason=str(exc), lost_bytes=None, lost_records=None, salvaged=0)
            out.quarantined += 1
            return None
        seg = Segment(seq, path, fd, sealed=state == "sealed", end=end, records=records)
        return seg, resume, queued

    def _salvage(self, seq: int, path: str, fd: int, ack_off: int, damaged: SegmentScanner) -> str:
        """Copy the undelivered good records of a damaged segment to a new file; quarantine the original.

        Order makes it crash-safe: the copy is durable before the original moves; a ``.salvage`` file found
        at startup is finished or redone by :meth:`_finish_salvage`; the ledger is reset to the copy's
        start before the copy takes the original's place (a crash in between redelivers, never skips).
        Returns the copy's path: the segment's own name, sealed.
        """
        tmp = os.path.join(self.directory, f"{seq:08d}{_SALVAGE}")
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        kept = 0
        try:
            sc = _scanner(fd)
            pending: list[bytes] = []
            size = 0
            for start, end, _ in sc.records():
                if start < ack_off:
                    continue
                pending.append(sc.record_bytes(start, end))
                size += end - start
                kept += 1
                if size >= SCAN_WINDOW:
                    _write_all(out, pending)
                    pending, size = [], 0
            _write_all(out, pending)
            os.fsync(out)
        finally:
            os.close(out)
        if ack_off:
            self.ledger.reset(seq, 0)
        self._quarantine(
            path,
            reason="corrupt record",
            lost_bytes=damaged.lost_bytes,
            lost_records=damaged.lost_records,
            salvaged=kept,
        )
        new_path = os.path.join(self.directory, segment_name(seq, "sealed"))
        os.rename(tmp, new_path)
        fsync_dir(self.directory)
        return new_path

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


def _scanner(fd: int) -> SegmentScanner:
    return SegmentScanner(lambda off, n: os.pread(fd, n, off), os.fstat(fd).st_size)


def _walk(sc: SegmentScanner, ack_off: int) -> tuple[int, int, int, int]:
    """Scan a segment: (records, end of the last good one, ack offset, undelivered records).

    The ack offset is moved back to a record boundary if it is not one (cannot happen with a healthy
    ledger): the record it falls into is delivered again.
    """
    records = end = queued = 0
    boundary = 0
    for _, e, _ in sc.records():
        records += 1
        end = e
        if e <= ack_off:
            boundary = e
        else:
            queued += 1
    return records, end, boundary, queued


def _write_all(fd: int, parts: list[bytes]) -> None:
    data = b"".join(parts)
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
