"""Where a :class:`~forwardd.outputs.file.segments.Disk` writes: segment names, the folders and files it
creates or opens again, and a torn tail cut back on the first open (the rules are in
:mod:`forwardd.outputs.file.segments`'s module doc). A mixin of Disk, so a write pays no indirection.
"""

from __future__ import annotations

import errno
import os
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

__all__ = ["Opening", "Segment", "fsync_folder"]

_log = structlog.get_logger("forwardd.outputs.file")


def fsync_folder(folder: str) -> None:
    """Make the entries created in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(slots=True, eq=False)
class Segment:
    """The current file of one resolved path."""

    base: str
    index: int
    path: str
    fd: int = -1
    size: int = 0
    ino: int = 0
    opened_at: float = 0.0
    dirty: bool = False
    broken: bool = False  # a failed write could not be undone: never append to this file again


class Opening:
    """The opening side of :class:`~forwardd.outputs.file.segments.Disk` (a mixin of it, which sets every
    attribute below in its ``__init__``); used from one worker thread only."""

    ext: str
    fsync: bool
    defer: bool
    clock: Callable[[], float]
    segments: OrderedDict[str, Segment]
    _dirs: set[str]
    _known_dirs: set[str]

    if TYPE_CHECKING:  # Disk's other side; only declared, so that no stub shadows it at run time

        def _close(self, seg: Segment) -> None: ...

    # -- naming

    def seg_path(self, base: str, index: int) -> str:
        if index == 0:
            return base
        stem = base[: len(base) - len(self.ext)] if self.ext else base
        return f"{stem}.{index}{self.ext}"

    def _existing_indices(self, base: str) -> list[int]:
        folder, name = os.path.split(base)
        stem = name[: len(name) - len(self.ext)] if self.ext else name
        pattern = re.compile(re.escape(stem) + r"\.([1-9][0-9]*)" + re.escape(self.ext))
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        found = [int(m.group(1)) for n in names if (m := pattern.fullmatch(n))]
        if name in names:
            found.append(0)
        return found

    # -- opening

    def _makedirs(self, folder: str) -> None:
        """Create missing folders, fsyncing each parent so the new entries survive a power cut."""
        if folder in self._known_dirs:
            return
        missing: list[str] = []
        d = folder
        while not os.path.isdir(d):
            missing.append(d)
            d = os.path.dirname(d)
        for d in reversed(missing):
            try:
                os.mkdir(d, 0o755)
            except FileExistsError:
                if not os.path.isdir(d):  # a regular file where a folder must be
                    raise NotADirectoryError(errno.ENOTDIR, "not a folder", d) from None
                continue
            self._fsync_dir(os.path.dirname(d))
        if len(self._known_dirs) > 10_000:
            self._known_dirs.clear()
        self._known_dirs.add(folder)

    def _fsync_dir(self, folder: str) -> None:
        if not self.fsync:
            return
        if self.defer:
            self._dirs.add(folder)
            return
        fsync_folder(folder)

    def _create(self, seg: Segment, index: int) -> None:
        """Open a new segment file at the first free index >= ``index``."""
        folder = os.path.dirname(seg.base)
        self._makedirs(folder)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        remade = False
        while True:
            path = self.seg_path(seg.base, index)
            try:
                fd = os.open(path, flags, 0o644)
                break
            except FileExistsError:
                index += 1
            except FileNotFoundError:
                # The folder was removed behind our back (a clean-up job, an operator): the cache of
                # folders known to exist is wrong, and trusting it would fail every write from now on.
                if remade:
                    raise
                remade = True
                self._known_dirs.clear()
                self._makedirs(folder)
        self._fsync_dir(os.path.dirname(path))
        seg.index, seg.path, seg.fd, seg.size = index, path, fd, 0
        seg.ino = os.fstat(fd).st_ino
        seg.opened_at = self.clock()
        seg.broken = False

    def _reopen(self, seg: Segment) -> None:
        """Open the segment's file again to append (after an error or an idle close)."""
        try:
            fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except FileNotFoundError:
            self._create(seg, seg.index)
            return
        st = os.fstat(fd)
        seg.fd, seg.size, seg.ino = fd, st.st_size, st.st_ino

    def _first_open(self, base: str) -> Segment:
        seg = Segment(base, 0, base)
        indices = self._existing_indices(base)
        if not indices:
            self._create(seg, 0)
            return seg
        last = max(indices)
        seg.index, seg.path = last, self.seg_path(base, last)
        if not self.ext and self._trim_torn_tail(seg.path):
            self._reopen(seg)
            seg.opened_at = self.clock()
        else:
            self._create(seg, last + 1)
        return seg

    @staticmethod
    def _trim_torn_tail(path: str) -> bool:
        """Make a plain file end with a whole line; False if it cannot be read or cut (start a new one).

        A kill during a large write() can leave part of it on disk (the kernel stops between pages). That
        write's chunk was never marked delivered, so the buffer writes it again; the torn bytes are cut
        off here so that no reader ever sees a partial line.
        """
        try:
            with open(path, "r+b") as f:
                size = f.seek(0, os.SEEK_END)
                end = size
                while end > 0:
                    start = max(0, end - 65536)
                    f.seek(start)
                    nl = f.read(end - start).rfind(b"\n")
                    if nl >= 0:
                        end = start + nl + 1
                        break
                    end = start
                if end < size:
                    f.truncate(end)
                    os.fsync(f.fileno())
                    _log.warning("file.torn_tail_removed", path=path, bytes=size - end)
                return True
        except OSError:
            return False

    def _segment(self, base: str) -> Segment:
        seg = self.segments.get(base)
        if seg is None:
            seg = self._first_open(base)
            self.segments[base] = seg
        else:
            self.segments.move_to_end(base)
            if seg.broken:
                self._create(seg, seg.index + 1)
            elif seg.fd < 0:
                self._reopen(seg)
            elif not self._same_file(seg):
                self._close(seg)
                self._reopen(seg)
        return seg

    @staticmethod
    def _same_file(seg: Segment) -> bool:
        """False when the file was renamed or deleted behind our back (external rotation)."""
        try:
            return os.stat(seg.path).st_ino == seg.ino
        except FileNotFoundError:
            return False
