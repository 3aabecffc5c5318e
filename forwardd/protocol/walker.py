"""Stepping through one whole frame value by value.

The decoder walks small frames with an msgpack Unpacker (fast per step). A big frame is read in a worker
thread, where an Unpacker would hold the GIL for as long as it skips (0.2 s for an array of 60M small
values, with every connection's loop stalled): :class:`BufferWalker` has the same few methods and skips
with the entry scan of :mod:`forwardd.protocol.entries`, which frees the GIL.
"""

from __future__ import annotations

import struct
from typing import Any, TypeAlias

import msgpack

from forwardd.protocol.entries import scan_entries
from forwardd.protocol.wire import ARRAY, header

__all__ = ["BufferWalker", "Walker"]


class BufferWalker:
    """The Unpacker methods the decoder walks frames with, over one whole frame in ``buf``."""

    __slots__ = ("_buf", "_pos")

    def __init__(self, buf: bytes | bytearray) -> None:
        self._buf = buf
        self._pos = 0

    def tell(self) -> int:
        return self._pos

    def skip(self) -> None:
        end = scan_entries(self._buf, self._pos, -1, 1)[1]
        if end == self._pos:
            raise ValueError("the value does not frame")  # not in a frame the framer cut whole
        self._pos = end

    def unpack(self) -> Any:
        start = self._pos
        self.skip()
        return msgpack.unpackb(self._buf[start : self._pos], raw=True, strict_map_key=False)

    def read_array_header(self) -> int:
        hdr = header(self._buf, self._pos)
        if hdr is None or hdr[0] != ARRAY:
            raise ValueError("not an array")
        self._pos += hdr[2]
        return hdr[1]

    def read_map_header(self) -> int:
        b = self._buf[self._pos]
        if 0x80 <= b <= 0x8F:
            self._pos += 1
            return b & 0x0F
        if b in (0xDE, 0xDF):
            fmt, size = (">H", 2) if b == 0xDE else (">I", 4)
            (n,) = struct.unpack_from(fmt, self._buf, self._pos + 1)
            self._pos += 1 + size
            return int(n)
        raise ValueError("not a map")


#: What frames are walked with.
Walker: TypeAlias = msgpack.Unpacker | BufferWalker
