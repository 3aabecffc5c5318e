"""A msgpack writer for hostile input: it packs what msgpack-python refuses to.

msgpack-python will not pack a map whose key is a map (unhashable in Python), a ``str`` that is not valid
UTF-8, ext types with reserved (negative) codes through ``ExtType``, or nesting past its own recursion limit
(511). Clients written in other languages send all of these, so the tests need their bytes. Values are
described with the small classes below; anything else is packed by msgpack-python itself.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

__all__ = ["BadStr", "Deep", "Ext", "Map", "entry", "forward", "message", "pack", "packed_forward"]


@dataclass(frozen=True)
class BadStr:
    """A msgpack ``str`` holding these bytes as they are (not UTF-8, control characters, anything)."""

    raw: bytes


@dataclass(frozen=True)
class Map:
    """A map given as key/value pairs, so that keys may be maps, arrays, floats, None, or repeat."""

    pairs: tuple[tuple[Any, Any], ...]


@dataclass(frozen=True)
class Ext:
    """An ext value of any code, -128..127 (negative codes are reserved by msgpack; clients send them)."""

    code: int
    data: bytes


@dataclass(frozen=True)
class Deep:
    """``leaf`` wrapped in ``depth`` one-element arrays (``kind="array"``) or one-key maps (``kind="map"``),
    written without recursion so that any depth is cheap."""

    depth: int
    kind: str = "array"
    leaf: Any = None


def _len_header(n: int, fix: int | None, fix_max: int, codes: Sequence[tuple[int, int, str]]) -> bytes:
    if fix is not None and n <= fix_max:
        return bytes((fix | n,))
    for code, limit, fmt in codes:
        if n <= limit:
            return bytes((code,)) + struct.pack(fmt, n)
    raise ValueError(f"length {n} too large for msgpack")


def _str_header(n: int) -> bytes:
    return _len_header(n, 0xA0, 31, ((0xD9, 0xFF, ">B"), (0xDA, 0xFFFF, ">H"), (0xDB, 0xFFFFFFFF, ">I")))


def _array_header(n: int) -> bytes:
    return _len_header(n, 0x90, 15, ((0xDC, 0xFFFF, ">H"), (0xDD, 0xFFFFFFFF, ">I")))


def _map_header(n: int) -> bytes:
    return _len_header(n, 0x80, 15, ((0xDE, 0xFFFF, ">H"), (0xDF, 0xFFFFFFFF, ">I")))


def _ext(code: int, data: bytes) -> bytes:
    n = len(data)
    c = struct.pack(">b", code)
    fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
    if n in fixed:
        return bytes((fixed[n],)) + c + data
    if n <= 0xFF:
        return b"\xc7" + struct.pack(">B", n) + c + data
    if n <= 0xFFFF:
        return b"\xc8" + struct.pack(">H", n) + c + data
    return b"\xc9" + struct.pack(">I", n) + c + data


def pack(value: Any) -> bytes:
    """The msgpack bytes of ``value`` (see the module doc for the extra value kinds)."""
    out = bytearray()
    _pack_into(value, out)
    return bytes(out)


def _pack_into(value: Any, out: bytearray) -> None:
    # An explicit stack, not recursion: hostile values nest deeper than Python's recursion limit.
    stack: list[Any] = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is BadStr:
            out += _str_header(len(v.raw)) + v.raw
        elif t is str:
            raw = v.encode("utf-8", "surrogatepass")
            out += _str_header(len(raw)) + raw
        elif t is Ext:
            out += _ext(v.code, v.data)
        elif t is Deep:
            opener = b"\x91" if v.kind == "array" else b"\x81\xa1k"
            out += opener * v.depth
            stack.append(v.leaf)
        elif t is list or t is tuple:
            out += _array_header(len(v))
            stack.extend(reversed(v))
        elif t is Map or t is dict:
            pairs = v.pairs if t is Map else tuple(v.items())
            out += _map_header(len(pairs))
            for k, val in reversed(pairs):
                stack.append(val)
                stack.append(k)
        elif t is int and not -(2**63) <= v < 2**64:
            raise ValueError(f"{v} does not fit msgpack's 64 bits")
        else:
            out += msgpack.packb(v, use_bin_type=True)


def entry(time: Any, record: Any) -> bytes:
    """One PackedForward entry ``[time, record]``."""
    return b"\x92" + pack(time) + pack(record)


def _tag(tag: bytes | str) -> bytes:
    raw = tag if isinstance(tag, bytes) else tag.encode("utf-8", "surrogateescape")
    return _str_header(len(raw)) + raw


def _options(chunk: str | None, extra: tuple[tuple[Any, Any], ...] = ()) -> bytes:
    pairs = ((("chunk", chunk),) if chunk is not None else ()) + extra
    return pack(Map(pairs))


def message(tag: bytes | str, time: Any, record: Any, *, chunk: str | None = None) -> bytes:
    """A Message-mode request ``[tag, time, record, {chunk}]`` (record and time as raw values)."""
    return b"\x94" + _tag(tag) + pack(time) + pack(record) + _options(chunk)


def forward(tag: bytes | str, entries: Sequence[bytes], *, chunk: str | None = None) -> bytes:
    """A Forward-mode request whose entries are given as their bytes."""
    return b"\x93" + _tag(tag) + _array_header(len(entries)) + b"".join(entries) + _options(chunk)


def packed_forward(
    tag: bytes | str,
    payload: bytes,
    *,
    chunk: str | None = None,
    compressed: Any = None,
    as_str: bool = False,
) -> bytes:
    """A (Compressed)PackedForward request around an already built (and compressed) payload; ``compressed``
    is the option's value as it goes on the wire (any value, to reach the unknown-codec path)."""
    n = len(payload)
    if as_str:
        head = _str_header(n)
    elif n <= 0xFF:
        head = b"\xc4" + struct.pack(">B", n)
    elif n <= 0xFFFF:
        head = b"\xc5" + struct.pack(">H", n)
    else:
        head = b"\xc6" + struct.pack(">I", n)
    extra = (("compressed", compressed),) if compressed is not None else ()
    return b"\x93" + _tag(tag) + head + payload + _options(chunk, extra)
