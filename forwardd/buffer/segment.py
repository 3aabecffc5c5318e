"""Record framing and segment files of the disk queue (see :mod:`forwardd.buffer.queue` for the design).

A record on disk::

    magic "FwR1" (4) | body length u32 (4) | crc32(body) u32 (4) | body
    body := tag length u16 (2) | count u32 (4) | received_ns u64 (8) | tag (utf-8) | entries

All integers are big-endian. The magic is not needed to read a healthy file; it lets recovery find the next
record after a corrupt one (``bytes.find``), so one flipped bit costs one record, not the rest of the segment.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass, field

from forwardd.model import Chunk

__all__ = [
    "FRAME_OVERHEAD",
    "MAGIC",
    "ScanResult",
    "Segment",
    "atomic_write",
    "decode_record",
    "encode_prefix",
    "frame_size",
    "fsync_dir",
    "parse_segment_name",
    "record_header",
    "scan",
    "segment_name",
]

MAGIC = b"FwR1"
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


def encode_prefix(chunk: Chunk) -> bytes:
    """Everything of a record before its entries; written with the entries as a second iovec (no copy)."""
    tag = chunk.tag.encode("utf-8", "surrogateescape")
    entries = chunk.entries
    head = _BODY.pack(len(tag), chunk.count, chunk.received_ns) + tag
    crc = zlib.crc32(entries, zlib.crc32(head))
    return _FRAME.pack(MAGIC, len(head) + len(entries), crc) + head


def decode_record(buf: bytes | memoryview, offset: int = 0) -> tuple[Chunk, int]:
    """The chunk of the well-formed record at ``offset`` and the offset just past it (no CRC check)."""
    _, blen, _ = _FRAME.unpack_from(buf, offset)
    tag_len, count, received_ns = _BODY.unpack_from(buf, offset + _FRAME.size)
    start = offset + FRAME_OVERHEAD
    end = offset + _FRAME.size + blen
    tag = bytes(buf[start : start + tag_len]).decode("utf-8", "surrogateescape")
    return Chunk(tag, bytes(buf[start + tag_len : end]), count, received_ns), end


def record_header(buf: bytes | memoryview, offset: int) -> tuple[int, int] | None:
    """(record length, event count) of the record at ``offset``, or None if ``buf`` cuts it short."""
    if len(buf) - offset < FRAME_OVERHEAD:
        return None
    _, blen, _ = _FRAME.unpack_from(buf, offset)
    _, count, _ = _BODY.unpack_from(buf, offset + _FRAME.size)
    return _FRAME.size + blen, count


def _valid_at(buf: bytes, offset: int) -> int:
    """Length of a valid record at ``offset``, or 0."""
    size = len(buf)
    if size - offset < FRAME_OVERHEAD:
        return 0
    magic, blen, crc = _FRAME.unpack_from(buf, offset)
    end: int = offset + _FRAME.size + blen
    if magic != MAGIC or blen < _BODY.size or end > size:
        return 0
    tag_len = _BODY.unpack_from(buf, offset + _FRAME.size)[0]
    if _BODY.size + tag_len > blen:
        return 0
    with memoryview(buf) as mv:
        if zlib.crc32(mv[offset + _FRAME.size : end]) != crc:
            return 0
    return end - offset


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
    """Verify every record of a segment's bytes, resynchronising on the magic after damage."""
    res = ScanResult(size=len(buf))
    spans = res.spans
    off = 0
    size = len(buf)
    while off < size:
        n = _valid_at(buf, off)
        if n:
            count = _BODY.unpack_from(buf, off + _FRAME.size)[1]
            spans.append((off, off + n, count))
            off += n
            continue
        # Damage: look for the next offset where a whole valid record starts.
        if res.bad_at is None:
            res.bad_at = off
        nxt = buf.find(MAGIC, off + 1)
        while nxt != -1 and not _valid_at(buf, nxt):
            nxt = buf.find(MAGIC, nxt + 1)
        if nxt == -1:
            res.lost_bytes += size - off
            break
        res.torn = False
        res.lost_bytes += nxt - off
        # Each record starts with the magic; the damaged one may have lost its own.
        res.lost_records += max(1, buf.count(MAGIC, off, nxt))
        off = nxt
    return res


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
