"""The file output: events appended as lines (or msgpack entries) to files named from a path template.

Durability. The buffer deletes a chunk as soon as :meth:`FileOutput.write` returns, so ``write`` fsyncs every
file it touched (once per call and file, and the parent folder of every file or folder it created) before
returning, in a worker thread so the event loop never waits on the disk. ``fsync_on_write=False`` trades
that away for throughput (a power cut can then lose acked events).

Whole lines only. A chunk's data for one file is encoded into one ``bytes`` and appended with one ``write``
call; if the write fails part-way (ENOSPC, EFBIG) the file is truncated back to where it was, and if even
that fails the file is abandoned and the next write starts a new segment. With ``gzip``/``zstd`` each write
appends one complete gzip member / zstd frame, so a file is always a valid multi-member/multi-frame stream
(``gzip -dc``, ``zstd -dc`` read it whole). At-least-once: a retried chunk may repeat lines, never lose them.

Path template. ``strftime`` codes (event time, UTC unless ``utc=False``), ``${tag}``, ``${tag[N]}`` (dot
parts, negative N counts from the end), ``${record.a.b}`` (nested record keys; missing or non-scalar → ``_``).
Record placeholders and time codes split a chunk into one group per resolved path. Substituted values are
untrusted: each is made a single harmless name component (see :func:`sanitise_component`), truncated with a
hash suffix to fit ``NAME_MAX``, and the joined path must stay under the template's fixed folder prefix (the
*root*) or the chunk is rejected with PermanentError. Placeholders are never read in substituted text (a tag
holding ``%Y`` or ``${tag}`` stays literal). With compression, ``.gz``/``.zst`` is appended to the path unless
the template already ends with it.

Segments and rotation. A resolved path P is the first segment; rotation continues in ``P.1``, ``P.2``, ...
(before the compression extension: ``app.log.1.gz``). Rotation happens before a write when the segment is
not empty and the write would take it past ``rotate_max_size`` bytes (on disk, so compressed size), or when
the segment was opened ``rotate_interval`` seconds ago or more. A single write larger than the limit still
goes whole into one fresh segment. Time-based names (``%Y%m%d%H``) rotate by themselves. On the first write to
a path in a process, the highest existing segment is continued if it is plain text ending in a newline;
a plain file whose last line is torn (a crash mid-write) is first cut back to its last whole line (that
write's chunk is redelivered by the buffer). A compressed one is never continued: a new segment is
started. If the current file is deleted or renamed behind our back, it is reopened.

Errors. ENOTDIR, EISDIR, ENAMETOOLONG, ELOOP, EINVAL (the path itself cannot work) → PermanentError; every
other OSError (ENOSPC, EIO, EACCES, EPERM, EROFS, EDQUOT, EMFILE, ...) → RetryableError. A record no encoder
can represent (or an event time no path can hold) → UnprocessableError, before anything is written, so the
delivery loop can isolate that event and dead-letter it alone. A failing symlink update is logged, never an
error (the data is written).

Open files. At most ``max_open_files`` stay open (least recently written closed first); ``clock`` (monotonic
seconds) is injectable for ``rotate_interval`` tests. One writer per file: two outputs must not share paths.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import re
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog
import zstandard

from forwardd.errors import DeliveryError, PermanentError, RetryableError, UnprocessableError
from forwardd.model import Chunk, Event, PlainEntries
from forwardd.outputs.base import Output
from forwardd.outputs.formats import JsonLines, make_encoder, make_plain_encoder, native_json_lines

__all__ = ["FileOutput", "PathTemplate", "sanitise_component"]

_log = structlog.get_logger("forwardd.outputs.file")

_NS = 1_000_000_000
#: Linux NAME_MAX: the longest name of one path component, in bytes.
NAME_MAX = 255
#: Room kept in each templated name for the rotation suffix and compression extension (".123456.zst").
_SUFFIX_RESERVE = 16
#: A substituted value never gets less room than this; a template that leaves less is a config error.
_MIN_BUDGET = 32
#: What a missing placeholder value (absent record key, ``${tag[9]}`` of a short tag) becomes.
MISSING = "_"
_HASH_LEN = 16
_EXTENSIONS = {"none": "", "gzip": ".gz", "zstd": ".zst"}
_PERMANENT_ERRNOS = frozenset({errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EINVAL})
#: Control characters, NUL, both slashes: never part of a substituted name.
_UNSAFE = str.maketrans({c: "_" for c in [*map(chr, range(32)), "\x7f", "/", "\\"]})
_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
_TAG_PART = re.compile(r"tag\[(-?\d+)\]")
_RECORD = re.compile(r"record((?:\.[^.]+)+)")


def sanitise_component(value: str, budget: int = NAME_MAX - _SUFFIX_RESERVE) -> str:
    """Make an untrusted value safe as (part of) one path component.

    Undecodable bytes become U+FFFD; ``/``, ``\\``, NUL and control characters become ``_``; an empty value
    becomes ``_``; a leading ``.`` gets a ``_`` before it (so no ``.``, ``..`` or hidden name can result);
    a value longer than ``budget`` UTF-8 bytes is cut and given a hash of the whole value, so long values
    stay distinct.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        try:
            value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:  # surrogates that are no escaped bytes
            value = value.encode("utf-8", "replace").decode("utf-8")
    value = value.translate(_UNSAFE)
    if not value:
        return MISSING
    if value[0] == ".":
        value = "_" + value
    raw = value.encode("utf-8")
    if len(raw) <= budget:
        return value
    digest = hashlib.sha256(raw).hexdigest()[:_HASH_LEN]
    return raw[: budget - _HASH_LEN - 1].decode("utf-8", "ignore") + "~" + digest


# --------------------------------------------------------------------------------------------- template

_Token = tuple[str, Any]  # ("lit", text) | ("tag", None) | ("part", index) | ("rec", keys)


class PathTemplate:
    """A parsed path template: resolves events to paths under a fixed root."""

    def __init__(self, template: str, *, utc: bool = True, extension: str = "") -> None:
        path = os.path.abspath(template)  # also collapses "//" and "/./" of the fixed text
        if extension and not path.endswith(extension):
            path += extension
        self.template = path
        self._gm = time.gmtime if utc else time.localtime
        self.tokens: list[_Token] = []
        pos = 0
        for m in _PLACEHOLDER.finditer(path):
            if m.start() > pos:
                self.tokens.append(("lit", path[pos : m.start()]))
            self.tokens.append(self._placeholder(m.group(1)))
            pos = m.end()
        if pos < len(path):
            self.tokens.append(("lit", path[pos:]))
        self.has_time = any(kind == "lit" and "%" in val for kind, val in self.tokens)
        self.has_record = any(kind == "rec" for kind, _ in self.tokens)
        # The root: the leading folders free of placeholders and time codes; the file name never counts.
        fixed: list[str] = []
        for seg in path.split("/")[:-1]:
            if "%" in seg or "${" in seg:
                break
            fixed.append(seg)
        self.root = "/".join(fixed) or "/"
        self._budgets = self._budget_per_placeholder()
        self._cache: dict[Any, str] = {}

    @staticmethod
    def _placeholder(name: str) -> _Token:
        if name == "tag":
            return ("tag", None)
        m = _TAG_PART.fullmatch(name)
        if m:
            return ("part", int(m.group(1)))
        m = _RECORD.fullmatch(name)
        if m:
            return ("rec", tuple(m.group(1)[1:].split(".")))
        raise ValueError(
            f"unknown placeholder ${{{name}}}; expected ${{tag}}, ${{tag[N]}} or ${{record.key}}"
        )

    def _budget_per_placeholder(self) -> list[int]:
        """Bytes each placeholder may fill so its whole name fits NAME_MAX with the rotation suffix."""
        sample = time.gmtime(2_000_000_000)  # a two-digit-everything date for the width of time codes
        budgets: list[int] = []
        seg_fixed = 0
        seg_tokens: list[int] = []

        def close() -> None:
            if seg_tokens:
                budget = (NAME_MAX - _SUFFIX_RESERVE - seg_fixed) // len(seg_tokens)
                if budget < _MIN_BUDGET:
                    raise ValueError(f"path template {self.template!r}: a name leaves too little room")
                for i in seg_tokens:
                    budgets[i] = budget

        for i, (kind, val) in enumerate(self.tokens):
            budgets.append(0)
            if kind != "lit":
                seg_tokens.append(i)
                continue
            pieces = val.split("/")
            seg_fixed += len(time.strftime(pieces[0], sample).encode())
            for piece in pieces[1:]:
                close()
                seg_fixed, seg_tokens = len(time.strftime(piece, sample).encode()), []
        close()
        return budgets

    def resolve(self, tag: str, time_ns: int = 0, record: dict[Any, Any] | None = None) -> str:
        """The path for one event; raises PermanentError if it would leave the root."""
        tm = self._gm(time_ns // _NS) if self.has_time else None
        parts: list[str] = []
        for (kind, val), budget in zip(self.tokens, self._budgets, strict=True):
            if kind == "lit":
                parts.append(time.strftime(val, tm) if tm is not None and "%" in val else val)
            elif kind == "tag":
                parts.append(sanitise_component(tag, budget))
            elif kind == "part":
                pieces = tag.split(".")
                ok = -len(pieces) <= val < len(pieces)
                parts.append(sanitise_component(pieces[val], budget) if ok else MISSING)
            else:
                parts.append(sanitise_component(_lookup(record, val), budget))
        path = "".join(parts)
        self._check(path)
        return path

    def _check(self, path: str) -> None:
        root = self.root.rstrip("/") + "/"
        if "\0" in path or os.path.normpath(path) != path or not path.startswith(root):
            raise PermanentError(f"resolved path {path!r} is not a plain path under {self.root!r}")
        if any(
            len(seg.encode("utf-8", "surrogateescape")) > NAME_MAX - _SUFFIX_RESERVE
            for seg in path.split("/")
        ):
            raise PermanentError(
                f"resolved path {path!r} has a name longer than {NAME_MAX - _SUFFIX_RESERVE}"
            )

    def group(self, events: Sequence[Event], tag: str) -> list[tuple[str, Sequence[Event]]]:
        """Events split by resolved path, each group in chunk order; one resolve per distinct key."""
        if not self.has_time and not self.has_record:
            return [(self._cached(tag, (tag,), 0, None), events)] if events else []
        groups: dict[str, list[Event]] = {}
        if not self.has_record:
            last_s = -1
            bucket: list[Event] = []
            for ev in events:
                s = ev.time_ns // _NS
                if s != last_s:
                    last_s = s
                    bucket = groups.setdefault(self._cached(tag, (tag, s), ev.time_ns, None), [])
                bucket.append(ev)
            return list(groups.items())
        keys = [val for kind, val in self.tokens if kind == "rec"]
        for ev in events:
            s = ev.time_ns // _NS if self.has_time else 0
            key = (tag, s, *(_lookup(ev.record, k) for k in keys))
            groups.setdefault(self._cached(tag, key, ev.time_ns, ev.record), []).append(ev)
        return list(groups.items())

    def group_plain(self, plain: PlainEntries, tag: str) -> list[tuple[str, PlainEntries]] | None:
        """:meth:`group` for a plain chunk's columns; None when the template reads record keys (then the
        events are grouped instead)."""
        if self.has_record:
            return None
        if not self.has_time:
            return [(self._cached(tag, (tag,), 0, None), plain)] if plain.records else []
        by_path: dict[str, list[int]] = {}
        last_s = -1
        bucket: list[int] = []
        for i, s in enumerate(plain.seconds):
            if s != last_s:
                last_s = s
                bucket = by_path.setdefault(self._cached(tag, (tag, s), s * _NS, None), [])
            bucket.append(i)
        if len(by_path) == 1:
            return [(path, plain) for path in by_path]
        return [(path, plain.select(idx)) for path, idx in by_path.items()]

    def group_lines(self, lines: JsonLines, tag: str) -> list[tuple[str, bytes]]:
        """The transcoder's text split by resolved path, by its runs of seconds; the template must not
        read record keys. The usual chunk resolves to one path and keeps its text uncopied."""
        if not self.has_time:
            return [(self._cached(tag, (tag,), 0, None), lines.data)]
        spans: dict[str, list[tuple[int, int]]] = {}
        start = 0
        for s, end, _ in lines.runs:
            spans.setdefault(self._cached(tag, (tag, s), s * _NS, None), []).append((start, end))
            start = end
        if len(spans) == 1:
            return [(path, lines.data) for path in spans]
        view = memoryview(lines.data)
        return [(path, b"".join([view[a:b] for a, b in parts])) for path, parts in spans.items()]

    def _cached(self, tag: str, key: tuple[Any, ...], time_ns: int, record: dict[Any, Any] | None) -> str:
        path = self._cache.get(key)
        if path is None:
            if len(self._cache) >= 4096:
                self._cache.clear()
            path = self._cache[key] = self.resolve(tag, time_ns, record)
        return path


def _lookup(record: dict[Any, Any] | None, keys: tuple[str, ...]) -> str:
    value: Any = record
    for k in keys:
        if type(value) is not dict:
            return MISSING
        value = value.get(k)
    if value is None or type(value) in (dict, list):
        return MISSING
    if type(value) is bytes:
        return value.decode("utf-8", "replace")
    return str(value)


# ------------------------------------------------------------------------------------------------ disk


@dataclass(slots=True, eq=False)
class _Segment:
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


def _classify(e: OSError, what: str) -> DeliveryError:
    cls = PermanentError if e.errno in _PERMANENT_ERRNOS else RetryableError
    err = cls(f"{what}: {e.strerror or e} [{errno.errorcode.get(e.errno or 0, e.errno)}]")
    err.__cause__ = e
    return err


class _Disk:
    """Everything that touches the file system; used from one worker thread only."""

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
    ) -> None:
        self.ext = _EXTENSIONS[compress]
        self.compress = compress
        self.level = level
        self.max_size = max_size
        self.interval = interval
        self.symlink = os.path.abspath(symlink) if symlink else None
        self.fsync = fsync
        self.max_open = max_open
        self.clock = clock
        self.segments: OrderedDict[str, _Segment] = OrderedDict()
        self.link_target: str | None = None
        self._zstd: zstandard.ZstdCompressor | None = None
        self._known_dirs: set[str] = set()

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
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _create(self, seg: _Segment, index: int) -> None:
        """Open a new segment file at the first free index >= ``index``."""
        self._makedirs(os.path.dirname(seg.base))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        while True:
            path = self.seg_path(seg.base, index)
            try:
                fd = os.open(path, flags, 0o644)
                break
            except FileExistsError:
                index += 1
        self._fsync_dir(os.path.dirname(path))
        seg.index, seg.path, seg.fd, seg.size = index, path, fd, 0
        seg.ino = os.fstat(fd).st_ino
        seg.opened_at = self.clock()
        seg.broken = False

    def _reopen(self, seg: _Segment) -> None:
        """Open the segment's file again to append (after an error or an idle close)."""
        try:
            fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except FileNotFoundError:
            self._create(seg, seg.index)
            return
        st = os.fstat(fd)
        seg.fd, seg.size, seg.ino = fd, st.st_size, st.st_ino

    def _first_open(self, base: str) -> _Segment:
        seg = _Segment(base, 0, base)
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

    def _segment(self, base: str) -> _Segment:
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
    def _same_file(seg: _Segment) -> bool:
        """False when the file was renamed or deleted behind our back (external rotation)."""
        try:
            return os.stat(seg.path).st_ino == seg.ino
        except FileNotFoundError:
            return False

    def _close(self, seg: _Segment) -> None:
        if seg.fd < 0:
            return
        try:
            if seg.dirty and self.fsync:
                os.fsync(seg.fd)
            seg.dirty = False
        finally:
            fd, seg.fd = seg.fd, -1
            os.close(fd)

    # -- writing

    def _encode(self, data: bytes) -> bytes:
        if self.compress == "gzip":
            return zlib.compress(data, 6 if self.level is None else self.level, wbits=31)
        if self.compress == "zstd":
            if self._zstd is None:
                self._zstd = zstandard.ZstdCompressor(level=3 if self.level is None else self.level)
            return self._zstd.compress(data)
        return data

    def _append(self, seg: _Segment, data: bytes) -> None:
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
            fd, seg.fd = seg.fd, -1
            seg.dirty = False
            os.close(fd)
            raise
        seg.size = old + len(data)
        seg.dirty = True

    def write(self, groups: list[tuple[str, bytes]]) -> None:
        """Append each group's data to its path's current segment, rotating first if due; then fsync."""
        touched: list[_Segment] = []
        last: _Segment | None = None
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
                    raise _classify(e, f"cannot write {what}") from e
                if seg not in touched:
                    touched.append(seg)
                last = seg
            for seg in touched:
                if seg.dirty and seg.fd >= 0 and self.fsync:
                    try:
                        os.fsync(seg.fd)
                    except OSError as e:
                        seg.broken = True  # after a failed fsync the page cache state is unknown
                        raise _classify(e, f"cannot fsync {seg.path}") from e
                seg.dirty = False
        finally:
            self._trim_open(exclude=touched)
        if last is not None and self.symlink:
            self._point_symlink(last.path)

    def _due(self, seg: _Segment, nbytes: int) -> bool:
        if self.max_size is not None and seg.size + nbytes > self.max_size:
            return True
        return self.interval is not None and self.clock() - seg.opened_at >= self.interval

    def _trim_open(self, exclude: list[_Segment]) -> None:
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
        if err is not None:
            raise _classify(err, "cannot close")


# ---------------------------------------------------------------------------------------------- output


class FileOutput(Output):
    """Appends chunks to files; see the module documentation for paths, rotation and guarantees."""

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
        max_open_files: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if compress not in _EXTENSIONS:
            raise ValueError(f"unknown compress {compress!r}; expected none, gzip or zstd")
        if rotate_max_size is not None and rotate_max_size <= 0:
            raise ValueError("rotate_max_size must be positive")
        if rotate_interval is not None and rotate_interval <= 0:
            raise ValueError("rotate_interval must be positive")
        if max_open_files < 1:
            raise ValueError("max_open_files must be at least 1")
        self.name = name
        self.template = PathTemplate(path, utc=utc, extension=_EXTENSIONS[compress])
        self._encode = make_encoder(format, time_key=time_key, tag_key=tag_key, utc=utc)
        self._encode_plain = make_plain_encoder(format, time_key=time_key, tag_key=tag_key)
        self._native = format == "json" and not self.template.has_record
        self._time_key, self._tag_key = time_key, tag_key
        self._disk = _Disk(
            compress=compress,
            level=compress_level,
            max_size=rotate_max_size,
            interval=rotate_interval,
            symlink=symlink,
            fsync=fsync_on_write,
            max_open=max_open_files,
            clock=clock,
        )
        self._executor: ThreadPoolExecutor | None = None
        self._lock = asyncio.Lock()
        #: Events and bytes (before compression) written so far; for metrics and tests.
        self.events_written = 0
        self.bytes_written = 0

    @property
    def root(self) -> str:
        """The fixed folder every file of this output lives under."""
        return self.template.root

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"file-{self.name}")
        return self._executor

    def encode(self, chunk: Chunk) -> tuple[list[tuple[str, bytes]], int]:
        """The chunk as (resolved path, encoded bytes) groups, and how many events they hold; CPU only.

        Three ways, fastest first: the C transcoder straight from the entries (JSON lines of plain
        chunks; the template may split by time, not by record keys), msgspec's columns (plain chunks in
        the other cases), and the general path over decoded events.
        """
        tag = chunk.tag
        if self._native:
            lines = native_json_lines(chunk, time_key=self._time_key, tag_key=self._tag_key)
            if lines is not None:
                return self.template.group_lines(lines, tag), lines.count
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
        try:
            groups, count = self.encode(chunk)  # on the loop: the GIL would serialise it anyway
        except DeliveryError:
            raise
        except Exception as e:  # a record no encoder or path can represent: the loop isolates it
            raise UnprocessableError(f"cannot encode chunk of {chunk.tag!r}: {e}") from e
        if not groups:
            return
        async with self._lock:
            await asyncio.get_running_loop().run_in_executor(self._pool(), self._disk.write, groups)
        self.events_written += count
        self.bytes_written += sum(len(data) for _, data in groups)

    async def stop(self) -> None:
        if self._executor is None:
            return
        async with self._lock:
            try:
                await asyncio.get_running_loop().run_in_executor(self._executor, self._disk.close_all)
            finally:
                self._executor.shutdown(wait=True)
                self._executor = None
