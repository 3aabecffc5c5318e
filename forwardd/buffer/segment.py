"""Record framing and segment files of the disk queue (see :mod:`forwardd.buffer.queue` for the design).

A record on disk::

    magic "FwR1" (4) | body length u32 (4) | crc32(body) u32 (4) | body
    body := tag length u16 (2) | count u32 (4) | received_ns u64 (8) | tag (utf-8) | entries

or, with its entries compressed (:func:`encode_record` under ``compression: lz4``)::

    magic "FwZ1" (4) | body length u32 (4) | crc32(magic + body) u32 (4) | body
    body := tag length u16 (2) | count u32 (4) | received_ns u64 (8) | tag (utf-8)
            | entries length u32 (4) | LZ4 block of the entries

The two magics differ by one bit, so this record's CRC covers its magic: a flipped bit there must not make
one kind of record pass for the other.

All integers are big-endian. The magic is not needed to read a healthy file; it lets recovery find the next
record after a corrupt one (``bytes.find``), so one flipped bit costs one record, not the rest of the segment.

Why compress: PackedForward traffic is bound by the synced write bandwidth of the disk (the buffer's
commit and the file output's own writes share it: 280 MB/s with two workers here). Docker-shaped entries
shrink 5-9x in LZ4 at about 2 GB/s in a thread without the GIL, and the delivery of live traffic never
decompresses them (the reader keeps the chunks it was given in memory); only a backlog read back from the
file, after a restart or behind a slow output, does (at several GB/s).
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from lz4 import block as lz4_block

from forwardd.model import Chunk

__all__ = [
    "COMPRESS_MIN",
    "FRAME_OVERHEAD",
    "MAGIC",
    "MAGIC_LZ4",
    "SCAN_WINDOW",
    "Compression",
    "ScanResult",
    "Segment",
    "SegmentScanner",
    "atomic_write",
    "decode_record",
    "encode_prefix",
    "encode_record",
    "frame_size",
    "fsync_dir",
    "parse_segment_name",
    "record_header",
    "scan",
    "segment_name",
]

MAGIC = b"FwR1"
#: A record whose entries are one LZ4 block (see the module doc).
MAGIC_LZ4 = b"FwZ1"
_MAGICS = (MAGIC, MAGIC_LZ4)
#: Where the CRC of an LZ4 record starts: its magic's (see the module doc).
_LZ4_CRC_SEED = zlib.crc32(MAGIC_LZ4)
_RAW_LEN = struct.Struct(">I")  # the entries' length before compression
#: How a disk queue writes its records' entries (the ``buffer.compression`` setting).
Compression = Literal["lz4", "none"]
#: Entries shorter than this are written as they are: a docker line's chunk gains nothing worth the call.
COMPRESS_MIN = 4096
_FRAME = struct.Struct(">4sII")  # magic, body length, crc32(body)
_BODY = struct.Struct(">HIQ")  # tag length, count, received_ns
#: Bytes a record takes beyond its tag and entries.
FRAME_OVERHEAD = _FRAME.size + _BODY.size
#: A body longer than this is a corrupt length field, not a record (u32 framing caps it anyway).
_MAX_BODY = 0xFFFFFFFF

_NAME = re.compile(r"^(\d+)\.(open|sealed)$")


def segment_name(seq: int, state: str) -> str:
    return f"{seq:08d}.{state}"


def parse_segment_name(name: str) -> tuple[int, str] | None:
    m = _NAME.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


def frame_size(chunk: Chunk) -> int:
    """Bytes ``chunk`` takes on disk; the unit of every size limit. Counts the tag as UTF-8 bytes."""
    tag = chunk.tag
    n = len(tag) if tag.isascii() else len(tag.encode("utf-8", "surrogateescape"))
    return FRAME_OVERHEAD + n + len(chunk.entries)


def _head(chunk: Chunk) -> bytes:
    """The start of a record's body: tag length, count, received_ns and the tag."""
    tag = chunk.tag.encode("utf-8", "surrogateescape")
    return _BODY.pack(len(tag), chunk.count, chunk.received_ns) + tag


def encode_prefix(chunk: Chunk) -> bytes:
    """Everything of a record before its entries; written with the entries as a second iovec (no copy)."""
    entries = chunk.entries
    head = _head(chunk)
    crc = zlib.crc32(entries, zlib.crc32(head))
    return _FRAME.pack(MAGIC, len(head) + len(entries), crc) + head


def encode_record(chunk: Chunk, compression: Compression) -> tuple[bytes, bytes]:
    """The record of ``chunk`` as its prefix and its payload, written as two iovecs: the entries as they
    are, or (``compression`` "lz4", entries of :data:`COMPRESS_MIN` bytes or more that shrink by an eighth
    at least) their LZ4 block behind a "FwZ1" prefix."""
    entries = chunk.entries
    if compression == "lz4" and len(entries) >= COMPRESS_MIN:
        packed = lz4_block.compress(entries, store_size=False)
        if len(packed) + _RAW_LEN.size <= len(entries) - len(entries) // 8:
            head = _head(chunk) + _RAW_LEN.pack(len(entries))
            crc = zlib.crc32(packed, zlib.crc32(head, _LZ4_CRC_SEED))
            return _FRAME.pack(MAGIC_LZ4, len(head) + len(packed), crc) + head, packed
    return encode_prefix(chunk), entries


def decode_record(buf: bytes | memoryview, offset: int = 0) -> tuple[Chunk, int]:
    """The chunk of the well-formed record at ``offset`` and the offset just past it (no CRC check)."""
    magic, blen, _ = _FRAME.unpack_from(buf, offset)
    tag_len, count, received_ns = _BODY.unpack_from(buf, offset + _FRAME.size)
    start = offset + FRAME_OVERHEAD
    end = offset + _FRAME.size + blen
    tag = bytes(buf[start : start + tag_len]).decode("utf-8", "surrogateescape")
    if magic == MAGIC_LZ4:
        at = start + tag_len
        (raw,) = _RAW_LEN.unpack_from(buf, at)
        with memoryview(buf) as mv:
            entries = lz4_block.decompress(mv[at + _RAW_LEN.size : end], uncompressed_size=raw)
        return Chunk(tag, entries, count, received_ns), end
    return Chunk(tag, bytes(buf[start + tag_len : end]), count, received_ns), end


def record_header(buf: bytes | memoryview, offset: int) -> tuple[int, int] | None:
    """(record length, event count) of the record at ``offset``, or None if ``buf`` cuts it short."""
    if len(buf) - offset < FRAME_OVERHEAD:
        return None
    _, blen, _ = _FRAME.unpack_from(buf, offset)
    _, count, _ = _BODY.unpack_from(buf, offset + _FRAME.size)
    return _FRAME.size + blen, count


#: Bytes a scan reads at a time (more only for a record that is bigger): recovery's memory, whatever the
#: size of the segment or of the backlog.
SCAN_WINDOW = 1024 * 1024


class SegmentScanner:
    """Verifies the records of a segment, reading it a window at a time, resynchronising on the magic.

    ``read(offset, n)`` returns up to ``n`` bytes of the segment at ``offset`` (a ``pread``); at most one
    window (or one record, if bigger) is held at once. :meth:`records` yields the valid records; once it is
    exhausted, ``bad_at`` is the offset of the first invalid byte (None: the whole file is valid) and
    ``torn`` says that no valid record follows it (a write cut short by a crash, safe to truncate); otherwise
    ``lost_bytes`` / ``lost_records`` estimate what the damage cost.
    """

    def __init__(self, read: Callable[[int, int], bytes], size: int, window: int = SCAN_WINDOW) -> None:
        self._read = read
        self.size = size
        self.window = window
        self._buf = b""
        self._base = 0
        self.bad_at: int | None = None
        self.torn = True
        self.lost_bytes = 0
        self.lost_records = 0

    def _load(self, offset: int, n: int) -> bool:
        """Make the window cover ``[offset, offset + n)``; False if the file is shorter."""
        base = self._base
        if base <= offset and offset + n <= base + len(self._buf):
            return True
        want = min(max(n, self.window), self.size - offset)
        if want < n:
            return False
        self._buf = self._read(offset, want)
        self._base = offset
        return len(self._buf) >= n

    def _valid_at(self, offset: int) -> int:
        """Length of a valid record at ``offset``, or 0."""
        if not self._load(offset, FRAME_OVERHEAD):
            return 0
        buf, rel = self._buf, offset - self._base
        magic, blen, crc = _FRAME.unpack_from(buf, rel)
        end: int = offset + _FRAME.size + blen
        if magic not in _MAGICS or blen < _BODY.size or end > self.size:
            return 0
        tag_len = _BODY.unpack_from(buf, rel + _FRAME.size)[0]
        if _BODY.size + tag_len + (_RAW_LEN.size if magic == MAGIC_LZ4 else 0) > blen:
            return 0
        body = offset + _FRAME.size
        seed = _LZ4_CRC_SEED if magic == MAGIC_LZ4 else 0
        if end - offset > self.window:
            # Bigger than a window (or a corrupt length that claims so): checked piece by piece, so that
            # a damaged length field cannot make the scan load the rest of the segment at once.
            value = seed
            for at in range(body, end, self.window):
                piece = self._read(at, min(self.window, end - at))
                if not piece:
                    return 0
                value = zlib.crc32(piece, value)
            return end - offset if value == crc else 0
        if not self._load(offset, end - offset):
            return 0
        rel = body - self._base
        with memoryview(self._buf) as mv:
            if zlib.crc32(mv[rel : rel + blen], seed) != crc:
                return 0
        return end - offset

    def _find(self, offset: int) -> int:
        """Offset of the next magic (of either kind of record) at or after ``offset``, or -1."""
        overlap = len(MAGIC) - 1
        while offset < self.size:
            self._load(offset, min(len(MAGIC), self.size - offset))
            found = [r for m in _MAGICS if (r := self._buf.find(m, offset - self._base)) != -1]
            if found:
                return self._base + min(found)
            end = self._base + len(self._buf)
            if end >= self.size:
                return -1
            offset = max(end - overlap, offset + 1)
        return -1

    def _count(self, start: int, end: int) -> int:
        """Magics in ``[start, end)``: about how many records a damaged stretch held."""
        n = 0
        off = start
        while (off := self._find(off)) != -1 and off < end:
            n += 1
            off += 1
        return n

    def records(self) -> Iterator[tuple[int, int, int]]:
        """(start, end, event count) of every valid record, in order."""
        off = 0
        size = self.size
        while off < size:
            n = self._valid_at(off)
            if n:
                count = _BODY.unpack_from(self._buf, off - self._base + _FRAME.size)[1]
                yield off, off + n, count
                off += n
                continue
            # Damage: look for the next offset where a whole valid record starts.
            if self.bad_at is None:
                self.bad_at = off
            nxt = self._find(off + 1)
            while nxt != -1 and not self._valid_at(nxt):
                nxt = self._find(nxt + 1)
            if nxt == -1:
                self.lost_bytes += size - off
                return
            self.torn = False
            self.lost_bytes += nxt - off
            # Each record starts with the magic; the damaged one may have lost its own.
            self.lost_records += max(1, self._count(off, nxt))
            off = nxt

    def record_bytes(self, start: int, end: int) -> bytes:
        """The bytes of a record :meth:`records` yielded."""
        rel = start - self._base
        if rel >= 0 and end - self._base <= len(self._buf):
            return self._buf[rel : rel + end - start]
        return self._read(start, end - start)

    def content_end(self, start: int) -> int:
        """Offset just past the last byte that is not zero, at or after ``start`` (``start`` if none)."""
        end = self.size
        while end > start:
            off = max(start, end - self.window)
            data = self._read(off, end - off).rstrip(b"\0")
            if data:
                return off + len(data)
            end = off
        return start


@dataclass(slots=True)
class ScanResult:
    """What a segment holds: the good records (as [start, end) spans) and where it went bad, if it did.

    ``bad_at`` is the offset of the first invalid byte (None: the whole file is valid). ``torn`` means no
    valid record follows it: a write cut short by a crash, safe to truncate. Otherwise the records after the
    damage are in ``spans`` too and ``lost_bytes`` / ``lost_records`` estimate what the damage cost.
    """

    size: int
    spans: list[tuple[int, int, int]] = field(default_factory=list)  # (start, end, count)
    bad_at: int | None = None
    torn: bool = True
    lost_bytes: int = 0
    lost_records: int = 0


def scan(buf: bytes) -> ScanResult:
    """Verify every record of a segment's bytes (all in memory: for tests and small files)."""
    sc = SegmentScanner(lambda off, n: buf[off : off + n], len(buf))
    spans = list(sc.records())
    return ScanResult(len(buf), spans, sc.bad_at, sc.torn, sc.lost_bytes, sc.lost_records)


@dataclass(slots=True, eq=False)
class Segment:
    """One segment file. ``fd`` is opened once and shared: the writer appends, the reader ``pread``\\ s.

    ``end`` is the committed end as the reader sees it; the writer keeps its own position while a write is
    in flight and publishes it through the store on the event loop thread.
    """

    seq: int
    path: str
    fd: int
    sealed: bool
    end: int = 0
    records: int = 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def fsync_dir(path: str) -> None:
    """Make a create, rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, *, durable: bool) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old or the new content, never a mix."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(os.path.dirname(path) or ".")
