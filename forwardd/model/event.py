"""One event and its time: every time shape a client sends, read as nanoseconds since the epoch.

Apart from the entries and chunks that carry events because everything else builds on it: the edge's checks,
both decoders, the encoders, and the outputs that write times (EventTime, :func:`pack_event_time`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from forwardd.constants import EVENT_TIME_EXT, MAX_SECONDS, NS, UINT32_PAIR

__all__ = ["MAX_TIME_NS", "Event", "EventTime", "msgpack_default", "pack_event_time"]

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
