"""Pieces of a chunk, by entry: its msgpack bytes framed and sliced, never decoded or re-encoded.

Used wherever part of a chunk must go one way and the rest another: the delivery loop isolating the events
that make an output or an encoder fail, the router doing the same for a filter that raises, and outputs
saying which of their events a destination refused (one HTTP request of several, one Kafka message). A
piece holds exactly the bytes the client sent (v1.5 metadata and odd time shapes included), so what goes
to the dead-letter folder can be replayed as it came. All of this runs only when something failed: the
path where everything succeeds never frames anything.

It sits beside :mod:`forwardd.model`, not in one of the packages that use it: it knows only chunks and
msgpack framing, and its users are the buffer, the router and the outputs, which must not import each
other's packages for it (the buffer already imports the outputs' contract, so a ``buffer.pieces`` used by
the outputs would make the two packages depend on each other).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack

from forwardd.model import Chunk

__all__ = ["entry_ends", "halves", "ranges_of", "select_events", "slice_entries"]


def entry_ends(entries: bytes) -> list[int]:
    """The end offset of every entry of ``entries``, framed without building a value.

    Bytes that do not frame (a corrupt tail, nesting past msgpack's limit) end the list as one last unit,
    from the last good end to the end of the bytes: they cannot be split further, only kept whole.
    """
    ends: list[int] = []
    if not entries:
        return ends
    u = msgpack.Unpacker(None, max_buffer_size=len(entries))
    u.feed(entries)
    append = ends.append
    try:
        while True:
            u.skip()
            append(u.tell())
    except msgpack.OutOfData:
        pass
    except (ValueError, msgpack.UnpackException):  # StackError and FormatError are among these
        pass
    if not ends or ends[-1] != len(entries):
        append(len(entries))
    return ends


def slice_entries(chunk: Chunk, ends: Sequence[int], i: int, j: int) -> Chunk:
    """Entries ``i`` to ``j`` (exclusive) of ``chunk`` as a chunk of their own (``ends`` from
    :func:`entry_ends`); the whole chunk itself when that is all of it."""
    if i == 0 and j == len(ends):
        return chunk
    start = ends[i - 1] if i else 0
    return Chunk(chunk.tag, chunk.entries[start : ends[j - 1]], j - i, chunk.received_ns)


def halves(
    chunk: Chunk, ends: Sequence[int]
) -> tuple[tuple[Chunk, list[int]], tuple[Chunk, list[int]]] | None:
    """``chunk`` cut in two by entry count, each half with its own entry ends; None for a single entry."""
    n = len(ends)
    if n < 2:
        return None
    mid = n // 2
    base = ends[mid - 1]
    left = slice_entries(chunk, ends, 0, mid)
    right = slice_entries(chunk, ends, mid, n)
    return (left, list(ends[:mid])), (right, [e - base for e in ends[mid:]])


def select_events(chunk: Chunk, ranges: Sequence[tuple[int, int]], n_events: int) -> Chunk:
    """The events in ``ranges`` (``(start, stop)`` event indices, in order) as one chunk.

    ``n_events`` is how many events the caller saw in ``chunk``. When every entry is an event (the usual
    case, and always on the plain and native paths) the entries are sliced; when some entries were invalid
    (skipped by decoding, so event indices are not entry indices) the selected events are re-encoded.
    """
    ends = entry_ends(chunk.entries) if not chunk.invalid else []
    if len(ends) == n_events and ends:
        if len(ranges) == 1:
            i, j = ranges[0]
            return slice_entries(chunk, ends, i, j)
        entries = chunk.entries
        parts = [entries[(ends[i - 1] if i else 0) : ends[j - 1]] for i, j in ranges if j > i]
        count = sum(j - i for i, j in ranges)
        return Chunk(chunk.tag, b"".join(parts), count, chunk.received_ns)
    events = chunk.events()
    picked = [ev for i, j in ranges for ev in events[i:j]]
    return Chunk.from_events(chunk.tag, picked, chunk.received_ns)


def ranges_of(indices: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted indices as runs ``(start, stop)``."""
    runs: list[tuple[int, int]] = []
    for k in indices:
        if runs and runs[-1][1] == k:
            runs[-1] = (runs[-1][0], k + 1)
        else:
            runs.append((k, k + 1))
    return runs
