"""The edge's look at a chunk's entries: how many there are, where the last whole one ends, which of them
decoding will drop (and why), and where to cut the chunk into slices of bounded size.

One pass over the bytes, no Python object per entry: :func:`scan_entries` is the C scan of ``_entries.c``
when it is built, else :func:`scan_entries_py`, the reference it is held equal to
(tests/protocol/test_entries.py). The reference frames with msgpack's Unpacker and judges each entry with
the very rules of :func:`forwardd.model.decode_entries`, so what the edge counts as invalid is exactly what
decoding drops later.

A scan returns ``(count, good_end, broken, invalid, bad_times, bad_start, bad_end, reason, slices)``:
``count`` whole entries end at ``good_end``; ``broken`` says bytes after them do not frame (corrupt or cut
short); ``invalid`` of them will be dropped, ``bad_times`` of those for their time; the first invalid one
spans ``[bad_start, bad_end)`` and its reason is ``INVALID_REASONS[reason]``; ``slices`` (when cutting was
asked for) lists ``(end, count)`` of consecutive slices, each at most ``slice_bytes`` long and
``slice_entries`` entries (a single entry bigger than ``slice_bytes`` is a slice of its own).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import msgpack

from forwardd.model import INVALID_REASONS, entry_problem

__all__ = ["INVALID_REASONS", "NATIVE", "Scan", "sample", "scan_entries", "scan_entries_py"]

Scan = tuple[int, int, bool, int, int, int, int, int, list[tuple[int, int]] | None]

_native: ModuleType | None
try:  # optional at build time, like forwardd/outputs/_jsonl.c
    from forwardd.protocol import _entries
except ImportError:  # pragma: no cover - the extension is built wherever the tests run
    _native = None
else:
    _native = _entries

#: Whether the C scan is in use.
NATIVE = _native is not None
_BAD_TIME = INVALID_REASONS.index("bad_time")


def scan_entries_py(
    data: bytes | bytearray | memoryview,
    start: int = 0,
    end: int = -1,
    max_entries: int = -1,
    slice_bytes: int = 0,
    slice_entries: int = 0,
) -> Scan:
    """The reference scan (see the module docstring); slow, exact."""
    view = memoryview(data)
    if end < 0 or end > len(view):
        end = len(view)
    framer = msgpack.Unpacker(None, max_buffer_size=max(end - start, 1))
    framer.feed(view[start:end])
    cut = slice_bytes > 0 or slice_entries > 0
    slices: list[tuple[int, int]] = []
    count = invalid = bad_times = 0
    bad_start = bad_end = -1
    reason = 0
    good_end = slice_start = start
    in_slice = 0
    broken = False
    while good_end < end and (max_entries < 0 or count < max_entries):
        a = good_end
        try:
            framer.skip()
        except (ValueError, msgpack.UnpackException):  # OutOfData, FormatError, StackError
            broken = True
            break
        b = start + framer.tell()
        too_big = slice_bytes and b - slice_start > slice_bytes
        if cut and in_slice and (too_big or (slice_entries and in_slice >= slice_entries)):
            slices.append((a, in_slice))
            slice_start, in_slice = a, 0
        why = entry_problem(view[a:b])
        if why:
            invalid += 1
            bad_times += why == _BAD_TIME
            if not reason:
                reason, bad_start, bad_end = why, a, b
        count += 1
        in_slice += 1
        good_end = b
    if cut and in_slice:
        slices.append((good_end, in_slice))
    return count, good_end, broken, invalid, bad_times, bad_start, bad_end, reason, slices if cut else None


#: scan_entries(data, start=0, end=-1, max_entries=-1, slice_bytes=0, slice_entries=0) -> Scan
scan_entries: Callable[..., Scan] = _native.scan_entries if _native is not None else scan_entries_py


def sample(data: bytes | bytearray | memoryview, start: int, end: int, limit: int = 48) -> str:
    """An invalid entry for a log line: its first ``limit`` bytes in hex, safe whatever they hold."""
    piece = bytes(memoryview(data)[start : min(end, start + limit)])
    return piece.hex(" ") + (" ..." if end - start > limit else "")
