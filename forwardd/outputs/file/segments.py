"""The file output's disk side: segment files, rotation, compression, torn tails and the symlink.

Segments and rotation. A resolved path P is the first segment; rotation continues in ``P.1``, ``P.2``, ...
(before the compression extension: ``app.log.1.gz``). Rotation happens before a write when the segment is
not empty and the write would take it past ``rotate_max_size`` bytes (on disk, so compressed size), or when
the segment was opened ``rotate_interval`` seconds ago or more. A single write larger than the limit still
goes whole into one fresh segment. Time-based names (``%Y%m%d%H``) rotate by themselves. On the first write to
a path in a process, the highest existing segment is continued if it is plain text ending in a newline;
a plain file whose last line is torn (a crash mid-write) is first cut back to its last whole line (that
write's chunk is redelivered by the buffer). A compressed one is never continued: a new segment is
started. If the current file is deleted or renamed behind our back, it is reopened.

Whole lines only. A group's data is appended with one ``write`` call; if the write fails part-way (ENOSPC,
EFBIG) the file is truncated back to where it was, and if even that fails the file is abandoned and the
next write starts a new segment. With ``gzip``/``zstd`` each write appends one complete gzip member / zstd
frame, so a file is always a valid multi-member/multi-frame stream (``gzip -dc``, ``zstd -dc`` read it
whole).

Errors. ENOTDIR, EISDIR, ENAMETOOLONG, ELOOP, EINVAL (the path itself cannot work) → PermanentError; every
other OSError (ENOSPC, EIO, EACCES, EPERM, EROFS, EDQUOT, EMFILE, ...) → RetryableError. A failing symlink
update is logged, never an error (the data is written).

Grouped syncs (``defer``). Without it, :meth:`Disk.write` fsyncs every file it appended to (and every
folder that got a new entry) before it returns. With it, write() only appends; :meth:`Disk.sync` fsyncs
what was written since the last sync, for many writes at once (the delivery loop keeps their chunks
queued until then, :mod:`forwardd.buffer.unsynced`). A file closed in between (rotation, the open-file
limit, a failed write) is fsynced as it is closed; if that fsync fails the data written to it since the
last sync may be lost, so the next sync() raises, and the delivery loop writes all of it again. A failed
fsync marks that file broken (the page cache's state is unknown: a later fsync can succeed without the
lost pages): later writes go to a new segment.

The fsync thread (``fsync: write``, :mod:`forwardd.outputs.file.syncer`). The output's thread appends with
``defer`` on, then hands the files it wrote to over (:meth:`Disk.take_unsynced`: duplicated descriptors,
so this side may close or rotate them meanwhile) or syncs them where it is (:meth:`Disk.sync`, a small
write with nothing queued there); a file closed with lines not handed over yet goes to ``close_sync``. After
a failed fsync there, :meth:`Disk.break_all` starts a new file for every path.

Open files. At most ``max_open`` stay open (least recently written closed first); ``clock`` (monotonic
seconds) is injectable for ``rotate_interval`` tests. Everything here runs in one worker thread per output.
"""

from __future__ import annotations

import contextlib
import errno
import os
import zlib
from collections import OrderedDict
from collections.abc import Callable

import structlog
import zstandard

from forwardd.errors import DeliveryError, PermanentError, RetryableError
from forwardd.outputs.file.opening import Opening, Segment, fsync_folder

__all__ = ["EXTENSIONS", "Disk", "classify", "retryable"]

_log = structlog.get_logger("forwardd.outputs.file")

#: The file name extension of each compression.
EXTENSIONS = {"none": "", "gzip": ".gz", "zstd": ".zst"}
_PERMANENT_ERRNOS = frozenset({errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EINVAL})


def classify(e: OSError, what: str) -> DeliveryError:
    cls = PermanentError if e.errno in _PERMANENT_ERRNOS else RetryableError
    err = cls(f"{what}: {e.strerror or e} [{errno.errorcode.get(e.errno or 0, e.errno)}]")
    err.__cause__ = e
    return err


def retryable(error: DeliveryError) -> RetryableError:
    """What a failed fsync raises: whatever the errno, it only means "write it again", never a verdict
    on the data."""
    if isinstance(error, RetryableError):
        return error
    err = RetryableError(str(error))
    err.__cause__ = error
    return err


class Disk(Opening):
    """Everything that touches the file system; used from one worker thread only. Its opening side (names,
    folders, creating and reopening files, torn tails): :class:`~forwardd.outputs.file.opening.Opening`."""

    def __init__(
        self,
        *,
        compress: str,
        level: int | None,
        max_size: int | None,
        interval: float | None,
        symlink: str | None,
        fsync: bool,
        max_open: int,
        clock: Callable[[], float],
        defer: bool = False,
    ) -> None:
        self.ext = EXTENSIONS[compress]
        self.compress = compress
        self.level = level
        self.max_size = max_size
        self.interval = interval
        self.symlink = os.path.abspath(symlink) if symlink else None
        self.fsync = fsync
        #: Grouped syncs: write() does not fsync, sync() does (see the module doc).
        self.defer = defer and fsync
        #: Folders that got a new entry since the last sync (grouped syncs).
        self._dirs: set[str] = set()
        #: Why data written since the last sync may be lost already (an fsync failed as a file was closed):
        #: the next sync() raises it.
        self._lost: DeliveryError | None = None
        #: What a file is fsynced with: a seam for the tests of a failing fsync, a fault no real filesystem
        #: here can be made to produce on demand.
        self.fsync_file: Callable[[int], None] = os.fsync
        #: Under ``fsync: write`` (the output's fsync thread): takes a file being closed instead of fsyncing
        #: it here (:mod:`forwardd.outputs.file.syncer`); None: the file is fsynced before it closes.
        self.close_sync: Callable[[Segment], None] | None = None
        self.max_open = max_open
        self.clock = clock
        self.segments: OrderedDict[str, Segment] = OrderedDict()
        self.link_target: str | None = None
        self._zstd: zstandard.ZstdCompressor | None = None
        self._known_dirs: set[str] = set()

    # -- closing

    def _shut(self, seg: Segment, *, fsync: bool) -> OSError | None:
        """The one way a segment's file is closed. With ``fsync``, what was written to it and no fsync
        covered yet is fsynced first; if that fails the segment is broken and, with grouped syncs, the next
        sync() fails (:meth:`_lose`), and the error is returned: what it means is the caller's to say. An
        error closing the descriptor itself is raised."""
        if seg.fd < 0:
            return None
        error: OSError | None = None
        try:
            if fsync and seg.dirty:
                try:
                    if self.close_sync is not None:
                        self.close_sync(seg)
                    else:
                        self.fsync_file(seg.fd)
                except OSError as e:
                    self._lose(seg, e)
                    error = e
        finally:
            seg.dirty = False
            fd, seg.fd = seg.fd, -1
            os.close(fd)
        return error

    def _close(self, seg: Segment) -> None:
        """Close the segment's file (rotation, the open-file limit, a renamed file, the end), fsyncing what
        was written to it and not yet synced; a failed fsync is raised."""
        error = self._shut(seg, fsync=self.fsync)
        if error is not None:
            raise error

    def _lose(self, seg: Segment, e: OSError) -> None:
        """An fsync of ``seg`` failed outside sync(): with grouped syncs, the next sync() must fail too."""
        seg.broken = True  # after a failed fsync the page cache state is unknown
        if self.defer and self._lost is None:
            self._lost = classify(e, f"cannot fsync {seg.path}")

    def _break(self, seg: Segment) -> None:
        """After a failed fsync: never append to this file again (a new segment is started), and close it,
        without another fsync and whatever the close says (the fsync's error is the one reported)."""
        seg.broken = True
        seg.dirty = False
        with contextlib.suppress(OSError):
            self._shut(seg, fsync=False)

    # -- writing

    def _encode(self, data: bytes) -> bytes:
        if self.compress == "gzip":
            return zlib.compress(data, 6 if self.level is None else self.level, wbits=31)
        if self.compress == "zstd":
            if self._zstd is None:
                self._zstd = zstandard.ZstdCompressor(level=3 if self.level is None else self.level)
            return self._zstd.compress(data)
        return data

    def _append(self, seg: Segment, data: bytes) -> None:
        """Write all of ``data`` at the end, or leave the file as it was (or mark it broken)."""
        old = seg.size
        view = memoryview(data)
        try:
            while view:
                n = os.write(seg.fd, view)
                view = view[n:]
        except OSError:
            if len(view) < len(data):  # part of it went in: cut it off again
                try:
                    os.ftruncate(seg.fd, old)
                except OSError:
                    seg.broken = True
            # What earlier writes put in the file and no sync covered yet (grouped syncs) is fsynced as
            # it is closed; if that fails the next sync() fails. This write's own error is the one raised.
            self._shut(seg, fsync=self.defer)
            raise
        seg.size = old + len(data)
        seg.dirty = True

    def write(self, groups: list[tuple[str, bytes]]) -> None:
        """Append each group's data to its path's current segment, rotating first if due; then fsync
        (unless syncs are grouped: then :meth:`sync` does)."""
        touched: list[Segment] = []
        last: Segment | None = None
        try:
            for base, raw in groups:
                data = self._encode(raw)
                what = base
                try:
                    seg = self._segment(base)
                    what = seg.path
                    if seg.size and self._due(seg, len(data)):
                        self._close(seg)
                        self._create(seg, seg.index + 1)
                        what = seg.path
                    self._append(seg, data)
                except OSError as e:
                    raise classify(e, f"cannot write {what}") from e
                if seg not in touched:
                    touched.append(seg)
                last = seg
            if not self.defer:  # grouped syncs: sync() fsyncs them, for many writes at once
                for seg in touched:
                    if seg.dirty and seg.fd >= 0 and self.fsync:
                        try:
                            self.fsync_file(seg.fd)
                        except OSError as e:
                            self._break(seg)  # after a failed fsync the page cache state is unknown
                            raise classify(e, f"cannot fsync {seg.path}") from e
                    seg.dirty = False
        finally:
            self._trim_open(exclude=touched)
        if last is not None and self.symlink:
            self._point_symlink(last.path)

    def sync(self) -> None:
        """Make every write since the last sync durable (grouped syncs): fsync each file written to, then
        each folder that got a new entry. Raises RetryableError if any of it may be lost: the caller then
        writes all of it again (the files that failed are broken: the new writes go to new segments)."""
        error, self._lost = self._lost, None
        for seg in self.segments.values():
            if not seg.dirty:
                continue
            if seg.fd < 0:  # cannot happen: a file is fsynced as it is closed; never assume it synced
                seg.dirty = False
                error = error or RetryableError(f"{seg.path} was closed before its sync")
                continue
            try:
                self.fsync_file(seg.fd)
                seg.dirty = False
            except OSError as e:
                self._break(seg)
                error = error or classify(e, f"cannot fsync {seg.path}")
        failed = self._sync_folders()
        if failed and error is None:
            folder, folder_error = failed[0]
            error = classify(folder_error, f"cannot fsync folder {folder}")
        if error is not None:
            raise retryable(error)

    def take_unsynced(self) -> tuple[list[tuple[int, str]], list[str]]:
        """For the fsync thread (``fsync: write``): a duplicate descriptor and the path of every file
        written to since the last call, and the folders that got a new entry; the caller closes the
        descriptors. Raises RetryableError when a file closed meanwhile could not be handed over."""
        error, self._lost = self._lost, None
        if error is not None:
            raise error
        files: list[tuple[int, str]] = []
        if not self.fsync:
            return files, []
        try:
            for seg in self.segments.values():
                if seg.dirty and seg.fd >= 0:
                    files.append((os.dup(seg.fd), seg.path))
        except OSError as e:
            for fd, _ in files:
                os.close(fd)
            raise classify(e, "cannot hand the written files to the fsync thread") from e
        for seg in self.segments.values():
            seg.dirty = False
        dirs, self._dirs = self._dirs, set()
        return files, sorted(dirs)

    def break_all(self) -> None:
        """After a failed fsync in the fsync thread (which cannot say which pages are gone): every path
        continues in a new file."""
        for seg in self.segments.values():
            if seg.fd >= 0:
                self._break(seg)
            else:
                seg.broken = True

    def _sync_folders(self) -> list[tuple[str, OSError]]:
        """fsync every folder that got a new entry since the last sync (grouped syncs), each one even when
        another fails; the folders that failed, with their errors."""
        failed: list[tuple[str, OSError]] = []
        dirs, self._dirs = self._dirs, set()
        for folder in sorted(dirs):
            try:
                fsync_folder(folder)
            except OSError as e:
                failed.append((folder, e))
        return failed

    def _due(self, seg: Segment, nbytes: int) -> bool:
        if self.max_size is not None and seg.size + nbytes > self.max_size:
            return True
        return self.interval is not None and self.clock() - seg.opened_at >= self.interval

    def _trim_open(self, exclude: list[Segment]) -> None:
        """Close the least recently used files beyond ``max_open`` (their state is kept)."""
        open_segs = [s for s in self.segments.values() if s.fd >= 0]
        for seg in open_segs[: max(0, len(open_segs) - self.max_open)]:
            if seg not in exclude:
                try:
                    self._close(seg)
                except OSError:
                    seg.broken = True
        while len(self.segments) > self.max_open * 64:  # forget long-idle paths (hourly names pile up)
            _, seg = self.segments.popitem(last=False)
            if seg.fd >= 0:
                self._close(seg)

    def _point_symlink(self, target: str) -> None:
        """Make the symlink name the current file; a failure is logged, never a delivery error."""
        if target == self.link_target or self.symlink is None:
            return
        tmp = f"{self.symlink}.tmp{os.getpid()}"
        try:
            self._makedirs(os.path.dirname(self.symlink))
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            os.symlink(target, tmp)
            os.replace(tmp, self.symlink)
            self.link_target = target
        except OSError as e:
            _log.warning("file.symlink_failed", symlink=self.symlink, target=target, error=str(e))

    def close_all(self) -> None:
        err: OSError | None = None
        for seg in self.segments.values():
            try:
                self._close(seg)
            except OSError as e:
                err = e
        failed = self._sync_folders()
        if failed:
            err = failed[-1][1]
        if err is not None:
            raise classify(err, "cannot close")
