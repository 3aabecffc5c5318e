"""The plain-entries fast path: a chunk of JSON-like records decoded by one msgspec call, as columns.

What docker, fluent-logger and Fluent Bit send is plain; for those chunks this is about five times faster
than the general decoder (:mod:`forwardd.model.entries`), and the JSON-lines encoders read its columns
without building an Event per event. It is apart because it is an optimisation with its own rules (the
schema below), held equal to the general path by tests.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Sequence
from typing import Any

import msgspec

from forwardd.constants import EVENT_TIME_EXT, NS
from forwardd.model.event import _II, Event, _time_ns

__all__ = ["PlainEntries", "decode_plain"]


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


def decode_plain(entries: bytes, count: int, received_ns: int) -> PlainEntries | None:
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
