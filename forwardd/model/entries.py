"""Entries as msgpack bytes, and events: the general decoder (every rule, whatever the bytes), its judgement
of one entry (the reference the edge's native scan is held to), and the encoder.

:meth:`forwardd.model.Chunk.events` tries the plain fast path (:mod:`forwardd.model.plain`) first; this is
what it falls back to, and what the fast path is held equal to.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgpack

from forwardd.constants import EVENT_TIME_EXT, NS
from forwardd.model.event import _II, MAX_TIME_NS, Event, _ext_hook, _time_ns, msgpack_default

__all__ = ["INVALID_REASONS", "decode_entries", "entry_problem", "pack_entries"]


#: Options of every Unpacker that builds entries: the rules decode_entries (and the edge's checks, see
#: forwardd.protocol.entries) hold entries to.
_BUILD: dict[str, Any] = {
    "raw": False,
    "unicode_errors": "surrogateescape",
    "strict_map_key": False,
    "ext_hook": _ext_hook,
}

#: Why an entry is invalid, as the edge's scan and the log lines name it (index = the scan's reason code).
INVALID_REASONS = ("", "not_a_pair", "record_not_a_map", "bad_time", "unhashable_key", "bad_ext")
_NOT_PAIR, _RECORD_NOT_MAP, _BAD_TIME, _UNHASHABLE_KEY, _BAD_EXT = range(1, 6)


def _judge(entry: Any, received_ns: int) -> Event | int:
    """The event of a built entry, or the code of the reason it is not one (see INVALID_REASONS)."""
    if type(entry) is not list or len(entry) != 2:
        return _NOT_PAIR
    t, record = entry
    if type(record) is not dict:
        return _RECORD_NOT_MAP
    meta = None
    if type(t) is list:
        # v1.5 wrapped time: [time, {metadata}]; the grammar allows more maps, we keep the first.
        if not t or (len(t) > 1 and type(t[1]) is not dict):
            return _BAD_TIME
        meta = t[1] if len(t) > 1 else {}
        t = t[0]
        if type(t) is list:
            return _BAD_TIME
    ns = _time_ns(t, received_ns)
    if ns is None:
        return _BAD_TIME
    return Event(ns, record, meta)


def entry_problem(raw: bytes | memoryview) -> int:
    """Why the edge leaves out the one whole entry ``raw`` (a code of INVALID_REASONS), 0 if it does not:
    what decode_entries drops, and a time past :data:`MAX_TIME_NS` (``bad_time`` too), which decoding
    still reads from an older queue (see the module docstring). The reference the edge's native scan is
    held to."""
    try:
        entry = msgpack.unpackb(raw, **_BUILD)
    except TypeError:
        return _UNHASHABLE_KEY
    except ValueError:  # an ext msgpack cannot build (a Timestamp of a bad length, say)
        return _BAD_EXT
    judged = _judge(entry, 1)
    if isinstance(judged, int):
        return judged
    return _BAD_TIME if judged.time_ns > MAX_TIME_NS else 0


def decode_entries(entries: bytes, received_ns: int) -> tuple[list[Event], int]:
    """Decode PackedForward entries into events; returns the events and how many entries were invalid.
    (The general path: :meth:`Chunk.events` first tries the plain fast path, with the same result.)

    An entry whose value cannot be built (a map key that is a map or an array: TypeError; a msgpack
    Timestamp of a bad length: ValueError) is skipped and decoding resumes at the next entry, so one such
    entry does not take the rest of the chunk with it. Only bytes that do not frame end the decoding.

    Linear in the size of ``entries`` whatever they hold: the entries are streamed through one Unpacker
    until one cannot be built; from there they are framed once and built one by one (copying the rest of
    the chunk per failed entry made a chunk of 200k bad entries cost 17 s).
    """
    events: list[Event] = []
    append = events.append
    invalid = 0
    unpacker = msgpack.Unpacker(None, max_buffer_size=len(entries), **_BUILD)
    unpacker.feed(entries)
    try:
        for entry in unpacker:
            ev = _judge(entry, received_ns)
            if type(ev) is Event:
                append(ev)
            else:
                invalid += 1
        return events, invalid
    except (ValueError, TypeError, msgpack.UnpackException):
        pass
    return _decode_one_by_one(entries, received_ns, events, invalid)


def _decode_one_by_one(
    entries: bytes, received_ns: int, events: list[Event], invalid: int
) -> tuple[list[Event], int]:
    """The rest of decode_entries once the entry after ``events`` and ``invalid`` could not be built."""
    append = events.append
    view = memoryview(entries)
    framer = msgpack.Unpacker(None, max_buffer_size=len(entries))
    framer.feed(view)
    for _ in range(len(events) + invalid):
        framer.skip()  # they framed and built before: they frame again
    invalid += 1  # the entry that failed
    try:
        framer.skip()
    except (ValueError, msgpack.UnpackException):
        return events, invalid  # it does not even frame: the rest is a corrupt tail
    unpackb = msgpack.unpackb
    while True:
        start = framer.tell()
        try:
            framer.skip()
        except msgpack.OutOfData:
            break
        except (ValueError, msgpack.UnpackException):
            return events, invalid + 1  # a corrupt tail ends the decoding, counted once
        try:
            entry = unpackb(view[start : framer.tell()], **_BUILD)
        except (ValueError, TypeError, msgpack.UnpackException):
            invalid += 1
            continue
        ev = _judge(entry, received_ns)
        if type(ev) is Event:
            append(ev)
        else:
            invalid += 1
    # A tail cut short is not an entry, unless what there is of it already cannot be built (as the
    # streaming Unpacker would have found).
    if start < len(entries):
        tail = msgpack.Unpacker(None, max_buffer_size=len(entries), **_BUILD)
        tail.feed(view[start:])
        try:
            tail.unpack()
        except msgpack.OutOfData:
            pass
        except (ValueError, TypeError, msgpack.UnpackException):
            invalid += 1
    return events, invalid


def pack_entries(events: Iterable[Event]) -> tuple[bytes, int]:
    """Encode events as PackedForward entries (EventTime times); returns the bytes and the count.

    EventTime holds 32-bit seconds: a time past 2106 (which clients may send as integer seconds) is written
    as integer seconds, as it came, instead of failing the filter that re-encodes it."""
    packer = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape", default=msgpack_default)
    pack = packer.pack
    parts: list[bytes] = []
    n = 0
    for ev in events:
        sec, nsec = divmod(ev.time_ns, NS)
        t: Any = msgpack.ExtType(EVENT_TIME_EXT, _II.pack(sec, nsec)) if 0 <= sec <= 0xFFFFFFFF else sec
        parts.append(pack([t if ev.meta is None else [t, ev.meta], ev.record]))
        n += 1
    return b"".join(parts), n
