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
spans ``[bad_start, bad_end)`` and its reason is ``INVALID_REASONS[reason]``. ``slices`` (when cutting was
asked for) groups the valid entries only, in order, into slices of at most ``slice_bytes`` bytes (a single
bigger entry is a slice of its own) and ``slice_entries`` entries: each is ``(count, a1, b1, a2, b2, ...)``,
its entries being ``data[a1:b1] + data[a2:b2] + ...`` (one run unless invalid entries were left out).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import msgpack

from forwardd.model import INVALID_REASONS, entry_problem

__all__ = [
    "INVALID_REASONS",
    "NATIVE",
    "Scan",
    "frame_ends",
    "frame_ends_py",
    "invalid_entries",
    "invalid_entries_py",
    "message_run",
    "sample",
    "scan_entries",
    "scan_entries_py",
]

Scan = tuple[int, int, bool, int, int, int, int, int, list[tuple[int, ...]] | None]

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
    slices: list[tuple[int, ...]] = []
    runs: list[int] = []  # of the slice being built
    count = invalid = bad_times = 0
    bad_start = bad_end = -1
    reason = 0
    good_end = start
    in_slice = used = 0
    broken = False
    while good_end < end and (max_entries < 0 or count < max_entries):
        a = good_end
        try:
            framer.skip()
        except (ValueError, msgpack.UnpackException):  # OutOfData, FormatError, StackError
            broken = True
            break
        b = start + framer.tell()
        count += 1
        good_end = b
        why = entry_problem(view[a:b])
        if why:
            invalid += 1
            bad_times += why == _BAD_TIME
            if not reason:
                reason, bad_start, bad_end = why, a, b
            continue
        if not cut:
            continue
        if in_slice and (
            (slice_bytes and used + b - a > slice_bytes) or (slice_entries and in_slice >= slice_entries)
        ):
            slices.append((in_slice, *runs))
            runs, in_slice, used = [], 0, 0
        if runs and runs[-1] == a:
            runs[-1] = b  # the run goes on
        else:
            runs += [a, b]
        in_slice += 1
        used += b - a
    if cut and in_slice:
        slices.append((in_slice, *runs))
    return count, good_end, broken, invalid, bad_times, bad_start, bad_end, reason, slices if cut else None


def invalid_entries_py(data: bytes | bytearray | memoryview) -> int:
    """How many of the entries in ``data`` decoding will drop (the reference)."""
    return scan_entries_py(data)[3]


def frame_ends_py(data: bytes | bytearray | memoryview, start: int, shift: int) -> tuple[list[int], int]:
    """The ends (plus ``shift``) of the whole values in ``data`` from ``start``, and how the bytes after
    them end: 0 none, 1 cut short, 2 malformed (FormatError), 3 nested too deep (StackError)."""
    view = memoryview(data)[start:]
    framer = msgpack.Unpacker(None, max_buffer_size=max(len(view), 1))
    framer.feed(view)
    ends: list[int] = []
    base = shift + start
    whole = 0  # where the last whole value ends (tell() moves into a value cut short)
    while True:
        try:
            framer.skip()
        except msgpack.OutOfData:
            return ends, 0 if whole == len(view) else 1
        except msgpack.StackError:
            return ends, 3
        except ValueError:
            return ends, 2
        whole = framer.tell()
        ends.append(base + whole)


#: scan_entries(data, start=0, end=-1, max_entries=-1, slice_bytes=0, slice_entries=0) -> Scan
scan_entries: Callable[..., Scan] = _native.scan_entries if _native is not None else scan_entries_py
#: frame_ends(data, start, shift) -> (ends, tail): see frame_ends_py
frame_ends: Callable[[bytes | bytearray | memoryview, int, int], tuple[list[int], int]] = (
    _native.frame_ends if _native is not None else frame_ends_py
)
#: invalid_entries(data) -> int: the hot path's check (see _entries.c), as scan_entries(data)[3]
invalid_entries: Callable[[bytes | bytearray | memoryview], int] = (
    _native.invalid_entries if _native is not None else invalid_entries_py
)
#: A group of Message-mode requests: (tag bytes, entries, requests, acks, acked, size); see _entries.c.
MessageGroup = tuple[bytes, bytes, int, bytes, int, int]
#: message_run(data, start, ends, first, shift, cont_tag, cont_room, group_max) -> (groups, next, continued):
#: the Message-mode hot loop in C (see _entries.c); None without the extension (messages.py reads in Python).
message_run: Callable[..., tuple[list[MessageGroup], int, int]] | None = (
    _native.message_run if _native is not None else None
)


def sample(data: bytes | bytearray | memoryview, start: int, end: int, limit: int = 48) -> str:
    """An invalid entry for a log line: its first ``limit`` bytes in hex, safe whatever they hold."""
    piece = bytes(memoryview(data)[start : min(end, start + limit)])
    return piece.hex(" ") + (" ..." if end - start > limit else "")
