"""The one data model: events travel as chunks of one tag, kept as msgpack bytes until someone needs a field.

A :class:`Chunk` is what the forward protocol calls PackedForward entries: a concatenation of msgpack
``[time, record]`` arrays, all for one tag. Every carrier mode (Message, Forward, PackedForward,
CompressedPackedForward) is normalised into that form at the edge, so the router, the disk buffer and the
outputs see exactly one shape. The entries stay the bytes the client sent until a filter or an output asks
for :meth:`Chunk.events`; only then are records decoded, once, and the result cached.

Times in entries may have any shape a real client sends (integer seconds, EventTime as fixext8 or ext8,
float seconds, the v1.5 ``[time, {metadata}]`` wrapper, ``0`` or ``nil``); decoding turns each into
nanoseconds since the epoch. Entries that cannot be an event (not a 2-array, record not a map, time of no
known shape) are skipped and counted in :attr:`Chunk.invalid`, never fatal to the rest of the chunk.

The times forwardd accepts from a client run from the epoch to 9999-12-31T23:59:59.999999999Z
(:data:`MAX_TIME_NS`), whatever their shape: every output can write those (four-digit years in RFC 3339
text, Python's datetime, file paths), where a time past them was acked and then dead-lettered by the
output that could not format it. A time before 1970 (a negative integer or float) is refused as
before: no client means one, and EventTime, the protocol's own time, cannot hold it. A msgpack Timestamp
(ext -1) is no event time (Fluentd does not take it either). The edge (:func:`entry_problem`, and the C
scan held equal to it) leaves such entries out and counts them where the peer is known. Decoding itself
(:func:`decode_entries`) still reads integer seconds past the range: they can only come from a queue
written before the edge refused them, and an acked event must not vanish in an upgrade.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import msgspec

from forwardd.constants import EVENT_TIME_EXT, MAX_SECONDS, NS, UINT32_PAIR

__all__ = [
    "EVENT_TIME_EXT",
    "INVALID_REASONS",
    "MAX_TIME_NS",
    "Chunk",
    "Event",
    "EventTime",
    "PlainEntries",
    "decode_entries",
    "entry_problem",
    "msgpack_default",
    "pack_entries",
    "pack_event_time",
]

_II = UINT32_PAIR

#: The last event time (ns since the epoch) the edge accepts: 9999-12-31T23:59:59.999999999Z.
MAX_TIME_NS = (MAX_SECONDS + 1) * NS - 1
#: Float seconds below this are within the range (exactly representable, and no float below it rounds to
#: a whole second past it: at 2.5e11 floats are 2**-15 s apart).
_FLOAT_TIME_END = float(MAX_SECONDS + 1)


class EventTime:
    """An EventTime ext value met inside a record; kept as a value so re-encoding is lossless."""

    __slots__ = ("nanoseconds", "seconds")

    def __init__(self, seconds: int, nanoseconds: int) -> None:
        self.seconds = seconds
        self.nanoseconds = nanoseconds

    @classmethod
    def from_ns(cls, ns: int) -> EventTime:
        s, n = divmod(ns, NS)
        return cls(s, n)

    def to_ns(self) -> int:
        return self.seconds * NS + self.nanoseconds

    def to_ext(self) -> msgpack.ExtType:
        return msgpack.ExtType(EVENT_TIME_EXT, _II.pack(self.seconds, self.nanoseconds))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, EventTime)
            and other.seconds == self.seconds
            and other.nanoseconds == self.nanoseconds
        )

    def __hash__(self) -> int:
        return hash((self.seconds, self.nanoseconds))

    def __repr__(self) -> str:
        return f"EventTime({self.seconds}, {self.nanoseconds})"


def pack_event_time(ns: int) -> bytes:
    """The fixext8 bytes of an EventTime, as fluent-logger and Fluentd write it."""
    s, n = divmod(ns, NS)
    return b"\xd7\x00" + _II.pack(s & 0xFFFFFFFF, n)


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EVENT_TIME_EXT and len(data) == 8:
        s, n = _II.unpack(data)
        return EventTime(s, n)
    if code < 0:
        # Types reserved by msgpack: ExtType() refuses them (ValueError, which lost the rest of the
        # chunk); built this way the value is kept and packs back to the same bytes.
        return tuple.__new__(msgpack.ExtType, (code, data))
    return msgpack.ExtType(code, data)


def msgpack_default(obj: Any) -> Any:
    """The msgpack packer's hook: a nested EventTime goes out as the forward protocol's ext type."""
    if type(obj) is EventTime:
        return obj.to_ext()
    raise TypeError(f"cannot encode {type(obj).__name__} as msgpack")


@dataclass(slots=True)
class Event:
    """One decoded event. ``meta`` holds v1.5 per-event metadata (the wrapped-time map), kept apart from
    the record so that it can be sent on without polluting the record."""

    time_ns: int
    record: dict[Any, Any]
    meta: dict[Any, Any] | None = None


def _time_ns(t: Any, received_ns: int) -> int | None:
    """Nanoseconds for any time shape a client sends, or None when it is no time at all."""
    tt = type(t)
    if tt is EventTime:
        return t.to_ns()  # type: ignore[no-any-return]
    if tt is int:
        if t > 0:
            return t * NS  # type: ignore[no-any-return]
        if t == 0:
            return received_ns
        return None
    if tt is float:
        if t != t or t < 0 or t >= _FLOAT_TIME_END:  # NaN, before 1970, or past year 9999 (inf too)
            return None
        if t == 0.0:
            return received_ns
        # Whole seconds apart: t * 1e9 rounds at 2**-52 of 1.4e18 (128 ns), the fraction alone does not.
        s: int = int(t)
        frac: int = round((t - s) * NS)
        return s * NS + frac
    if t is None:
        return received_ns
    return None


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


# The plain-entries fast path. msgspec decodes a whole chunk in one call, about five times faster than
# msgpack's Unpacker with a Python ext_hook, but it cannot reproduce every rule of the general decoder
# (surrogateescape for invalid UTF-8, bin values, non-string keys, ext values inside records, the v1.5 time
# wrapper, invalid entries skipped one by one). So its schema accepts only entries for which both decoders
# give the same result: ``[time, record]`` with a time of a plain shape and a record of JSON values nested at
# most six deep. Anything else fails validation and the chunk takes the general path, unchanged.
_Scalar = str | int | float | bool | None
_Value: Any = _Scalar
for _ in range(6):
    _Value = str | int | float | bool | None | list[_Value] | dict[str, _Value]
_PlainTime = msgspec.msgpack.Ext | int | float | None
_PLAIN = msgspec.msgpack.Decoder(list[tuple[_PlainTime, dict[str, _Value]]])
_ARRAY32 = struct.Struct(">BI")
_Ext = msgspec.msgpack.Ext
_U32 = next(code for code in "IL" if array(code).itemsize == 4)  # an array of 32-bit unsigned words
_unpack_ii = _II.unpack


class PlainEntries:
    """The entries of a chunk decoded on the fast path, as columns: ``seconds[i]`` and ``nanos[i]``
    (``nanos`` < 1e9) are event i's time, ``records[i]`` its record. Encoders that take this form (JSON
    lines) skip building an :class:`Event` per event, which costs as much as decoding the record."""

    __slots__ = ("nanos", "records", "seconds")

    def __init__(self, seconds: Sequence[int], nanos: Sequence[int], records: list[dict[str, Any]]) -> None:
        self.seconds = seconds
        self.nanos = nanos
        self.records = records

    def select(self, indices: Sequence[int]) -> PlainEntries:
        """The events at ``indices``, in that order."""
        sec, nan, rec = self.seconds, self.nanos, self.records
        return PlainEntries([sec[i] for i in indices], [nan[i] for i in indices], [rec[i] for i in indices])

    def events(self) -> list[Event]:
        ns = NS
        return [
            Event(s * ns + n, r, None)
            for s, n, r in zip(self.seconds, self.nanos, self.records, strict=False)
        ]


def _decode_plain(entries: bytes, count: int, received_ns: int) -> PlainEntries | None:
    """The entries as columns when they are all plain (see above), or None when any is not."""
    if not 0 < count <= 0xFFFFFFFF:
        return None
    try:
        pairs = _PLAIN.decode(_ARRAY32.pack(0xDD, count) + entries)
    except (msgspec.DecodeError, UnicodeDecodeError):  # ValidationError is a DecodeError
        return None
    times: list[Any] = [t for t, _ in pairs]
    records: list[dict[str, Any]] = [r for _, r in pairs]
    kinds = set(map(type, times))
    seconds: Sequence[int]
    nanos: Sequence[int]
    if kinds == {_Ext}:  # EventTime everywhere (fluent-logger, Fluent Bit, docker with sub-second precision)
        data = [t.data for t in times if t.code == EVENT_TIME_EXT and len(t.data) == 8]
        if len(data) != count:
            return None
        words = array(_U32)
        words.frombytes(b"".join(data))
        if sys.byteorder == "little":
            words.byteswap()
        seconds, nanos = words[0::2], words[1::2]
        if max(nanos) >= NS:  # not a valid fraction: the general path's arithmetic carries it
            return None
    elif kinds == {int} and min(times) > 0:  # integer seconds (docker's default)
        seconds, nanos = times, array(_U32, bytes(4 * count))
    else:
        seconds_l: list[int] = []
        nanos_l: list[int] = []
        for t in times:
            if type(t) is _Ext:
                if t.code != EVENT_TIME_EXT or len(t.data) != 8:  # type: ignore[arg-type]
                    return None
                s, n = _unpack_ii(t.data)
                ns = s * NS + n
            else:
                t_ns = _time_ns(t, received_ns)
                if t_ns is None:
                    return None
                ns = t_ns
            s, n = divmod(ns, NS)
            seconds_l.append(s)
            nanos_l.append(n)
        seconds, nanos = seconds_l, nanos_l
    return PlainEntries(seconds, nanos, records)


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


class Chunk:
    """Events of one tag, as msgpack entries; decoded on first use of :meth:`events`.

    ``received_ns`` is when forwardd received the chunk; it stands in for a missing or zero event time.
    ``count`` is the number of entries, known without decoding records.
    """

    __slots__ = ("_events", "_not_plain", "_plain", "count", "entries", "invalid", "received_ns", "tag")

    def __init__(self, tag: str, entries: bytes, count: int, received_ns: int) -> None:
        self.tag = tag
        self.entries = entries
        self.count = count
        self.received_ns = received_ns
        self.invalid = 0
        self._events: list[Event] | None = None
        self._plain: PlainEntries | None = None
        self._not_plain = False

    @classmethod
    def from_events(cls, tag: str, events: list[Event], received_ns: int) -> Chunk:
        entries, n = pack_entries(events)
        chunk = cls(tag, entries, n, received_ns)
        chunk._events = events
        return chunk

    @property
    def decoded(self) -> bool:
        return self._events is not None

    def events(self) -> list[Event]:
        """The decoded events (cached); invalid entries are dropped and counted in :attr:`invalid`."""
        if self._events is None:
            plain = self.plain_entries()
            if plain is not None:
                self._events = plain.events()
                return self._events
            # Added, not assigned: the decoder may already have counted a broken tail it cut off.
            self._events, invalid = decode_entries(self.entries, self.received_ns)
            self.invalid += invalid
        return self._events

    def plain_entries(self) -> PlainEntries | None:
        """The entries as columns if every one is plain (decoded on the fast path, cached), else None;
        then :meth:`events` is the way to read them."""
        if self._plain is None and not self._not_plain and self._events is None:
            self._plain = _decode_plain(self.entries, self.count, self.received_ns)
            self._not_plain = self._plain is None
        return self._plain

    @property
    def plain(self) -> bool:
        """True once the entries decoded on the fast path: every record holds only JSON values under
        string keys, which lets encoders skip their checks for anything else."""
        return self._plain is not None

    def with_tag(self, tag: str) -> Chunk:
        """The same entries under another tag, sharing bytes and any decoded events."""
        chunk = Chunk(tag, self.entries, self.count, self.received_ns)
        chunk._events = self._events
        chunk.invalid = self.invalid
        chunk._plain, chunk._not_plain = self._plain, self._not_plain
        return chunk

    def replace_events(self, events: list[Event], tag: str | None = None) -> Chunk:
        """A new chunk holding ``events`` (re-encoded); used by filters that change records."""
        return Chunk.from_events(self.tag if tag is None else tag, events, self.received_ns)

    def map_records(self, fn: Callable[[dict[Any, Any]], dict[Any, Any]]) -> Chunk:
        return self.replace_events([Event(e.time_ns, fn(e.record), e.meta) for e in self.events()])

    @property
    def nbytes(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"Chunk(tag={self.tag!r}, count={self.count}, nbytes={len(self.entries)})"
