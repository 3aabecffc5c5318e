"""Fluentd's JSON convenience mode (spec item 7), without I/O: a connection whose first byte is ``[`` or
``{`` speaks JSON instead of msgpack, and its acks are JSON too (item 29).

fluent-logger-golang sends this with ``MarshalAsJSON``; Fluent Bit, Vector and docker never do, so it is
off unless a source sets ``json_mode: true``, and never with the handshake (whose first frame is msgpack).

The stream is cut into whole top-level values by a scanner that only looks at brackets, quotes and
backslashes, so a value split over reads waits for its end and nothing is parsed twice. Each value is
then parsed and handed to the msgpack decoder re-encoded, so every mode, limit and rule applies unchanged
(JSON can carry Message and Forward mode; its times are integer or float seconds).
"""

from __future__ import annotations

import json
import re

import msgpack

from forwardd.protocol.errors import FrameTooLarge, ProtocolError
from forwardd.protocol.events import EntriesReceived, Event, Rejected

__all__ = ["JsonFramer", "json_acks", "json_replies"]

_SIGNIFICANT = re.compile(rb'["\[\]{}]')
_IN_STRING = re.compile(rb'["\\]')
_NOT_SPACE = re.compile(rb"[^ \t\r\n]")


class JsonFramer:
    """Concatenated JSON values in, each whole top-level value's bytes out."""

    def __init__(self, max_frame_size: int) -> None:
        self.max_frame_size = max_frame_size
        self._buf = bytearray()
        self._pos = 0  # where scanning resumes
        self._start = -1  # where the value being scanned starts (-1: between values)
        self._depth = 0
        self._in_string = False

    @property
    def buffered(self) -> int:
        """Bytes held: the value in progress (bounded by the frame limit) and blanks after the last one."""
        return len(self._buf)

    def feed(self, data: bytes) -> tuple[list[bytes], ProtocolError | None]:
        """The values ``data`` completed, and the error that stopped the stream after them, if any (the
        values before it still count: what arrived intact is handed on before the connection closes)."""
        buf = self._buf
        buf += data
        values: list[bytes] = []
        pos = self._pos
        while True:
            if self._start < 0:  # between values: skip blanks, then only an array or an object may start
                m = _NOT_SPACE.search(buf, pos)
                if m is None:
                    pos = len(buf)
                    break
                first = buf[m.start()]
                if first not in b"[{":
                    return values, ProtocolError("bad_json", f"top-level value starts with {chr(first)!r}")
                self._start, self._depth, pos = m.start(), 1, m.end()
                continue
            if self._in_string:
                m = _IN_STRING.search(buf, pos)
                if m is None:
                    pos = len(buf)
                    break
                if buf[m.start()] == 0x5C:  # a backslash: the next byte is escaped, whatever it is
                    if m.end() >= len(buf):
                        pos = m.start()  # scan the backslash again once its escaped byte is here
                        break
                    pos = m.end() + 1
                    continue
                self._in_string, pos = False, m.end()
                continue
            m = _SIGNIFICANT.search(buf, pos)
            if m is None:
                pos = len(buf)
                break
            c, pos = buf[m.start()], m.end()
            if c == 0x22:
                self._in_string = True
            elif c in b"[{":
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    values.append(bytes(buf[self._start : pos]))
                    self._start = -1
        if self._start >= 0 and len(buf) - self._start > self.max_frame_size:
            return values, FrameTooLarge("frame_too_large", f"JSON value over {self.max_frame_size} bytes")
        keep = self._start if self._start >= 0 else pos
        if keep:
            del buf[:keep]
            pos -= keep
            if self._start >= 0:
                self._start = 0
        self._pos = pos
        return values, None

    @staticmethod
    def to_msgpack(value: bytes) -> bytes:
        """A value re-encoded as the msgpack request it stands for."""
        try:
            return bytes(msgpack.packb(json.loads(value), use_bin_type=True))
        except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError
            raise ProtocolError("bad_json", f"{type(exc).__name__}: {exc}") from None
        except OverflowError:
            raise ProtocolError("bad_json", "an integer beyond 64 bits") from None


def json_acks(acks: bytes) -> bytes:
    """``{"ack": id}`` replies (one or several, back to back, as the decoder builds them) in JSON, as
    Fluentd writes them."""
    up = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape", strict_map_key=False)
    up.feed(acks)
    return b"".join(json.dumps(reply).encode() for reply in up)


def json_replies(events: list[Event]) -> None:
    """The acks of a JSON connection's events, in JSON."""
    for ev in events:
        if isinstance(ev, EntriesReceived | Rejected) and ev.ack is not None:
            ev.ack = json_acks(ev.ack)
