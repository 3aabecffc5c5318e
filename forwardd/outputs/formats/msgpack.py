"""The msgpack formats: forward entries for files, and maps with the injected keys for HTTP and Kafka.

``msgpack`` (the file output's format)
    ``[EventTime, record]`` per event: the PackedForward entry shape, so a file of them is exactly the
    ``entries`` of a forward message and can be replayed. The tag is not stored (put ``${tag}`` in the path);
    v1.5 per-event metadata is not written.
msgpack maps (the HTTP output's ``msgpack`` bodies, the Kafka output's ``msgpack`` values)
    one map per event: the time as the JSON format's RFC 3339 text under ``time_key`` and the tag under
    ``tag_key``, first, then the record's own keys (an injected key wins over the record's), so a consumer
    sees the same fields in either format; binary values stay binary, which is what msgpack is for.

An integer beyond 64 bits, nesting past msgpack's packer limit or a string holding surrogates that did not
come from undecodable bytes cannot be packed (only records built in code, not records decoded from
msgpack, hold them): UnprocessableError, as every encoder promises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from forwardd.constants import EVENT_TIME_EXT, NS, U32, UINT32_PAIR
from forwardd.model import Chunk, Event, msgpack_default
from forwardd.outputs.formats.common import rfc3339_ns, unprocessable

__all__ = [
    "array_header",
    "encode_msgpack",
    "encode_msgpack_entries",
    "encode_msgpack_maps",
    "msgpack_entries",
    "msgpack_map_values",
]

_II = UINT32_PAIR
_U32 = U32


def _packer() -> msgpack.Packer:
    return msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape", default=msgpack_default)


# ------------------------------------------------------------------------------------------- entries

#: A 2-array header followed by the fixext8 EventTime type bytes.
_ENTRY_HEAD = b"\x92\xd7" + bytes((EVENT_TIME_EXT,))


@unprocessable
def msgpack_entries(events: Sequence[Event]) -> bytes:
    """``[EventTime, record]`` per event, concatenated: PackedForward entries."""
    pack = _packer().pack
    buf = bytearray()
    ii = _II.pack
    for ev in events:
        s, n = divmod(ev.time_ns, NS)
        if s <= _U32:
            buf += _ENTRY_HEAD
            buf += ii(s, n)
        else:  # past 2106: EventTime cannot hold it; whole seconds as an integer still can
            buf += b"\x92"
            buf += pack(s)
        buf += pack(ev.record)
    return bytes(buf)


@unprocessable
def encode_msgpack(event: Event, tag: str = "") -> bytes:
    """One event as ``[EventTime, record]``; ``tag`` is accepted for symmetry and not stored."""
    return msgpack_entries((event,))


@unprocessable
def encode_msgpack_entries(chunk: Chunk) -> bytes:
    return msgpack_entries(chunk.events())


# ---------------------------------------------------------------------------------------------- maps


def _container_header(n: int, fix: int, b16: bytes, b32: bytes) -> bytes:
    if n < 16:
        return bytes((fix | n,))
    if n < 0x10000:
        return b16 + n.to_bytes(2, "big")
    return b32 + n.to_bytes(4, "big")


def array_header(n: int) -> bytes:
    """The header of a msgpack array of ``n`` items (an HTTP body wraps its maps in one)."""
    return _container_header(n, 0x90, b"\xdc", b"\xdd")


_MAP_HEADERS = tuple(_container_header(n, 0x80, b"\xde", b"\xdf") for n in range(256))


def _map_header(n: int) -> bytes:
    return _MAP_HEADERS[n] if n < 256 else _container_header(n, 0x80, b"\xde", b"\xdf")


def _map_header_len(first: int) -> int:
    return 1 if 0x80 <= first <= 0x8F else 3 if first == 0xDE else 5


def _str_header(n: int) -> bytes:
    return bytes((0xA0 | n,)) if n < 32 else b"\xd9" + bytes((n,))


@unprocessable
def encode_msgpack_maps(
    events: Sequence[Event], tag: str, *, time_key: str | None = "time", tag_key: str | None = "tag"
) -> tuple[bytes, list[int]]:
    """Each event as a msgpack map (injected time text and tag first, then the record), concatenated;
    returns the bytes and each map's end offset.

    Each record is packed once and its map header rewritten to count the injected keys, so no per-event
    dict is built (as :func:`~forwardd.outputs.formats.json_lines` splices JSON).
    """
    pack = _packer().pack
    tag_part = pack(tag_key) + pack(tag) if tag_key is not None else b""
    time_k = pack(time_key) if time_key is not None else b""
    extra = (time_key is not None) + (tag_key is not None)
    k1: Any = object() if time_key is None else time_key
    k2: Any = object() if tag_key is None else tag_key
    buf = bytearray()
    ends: list[int] = []
    end = ends.append
    last_s = -1
    head = b""
    for ev in events:
        rec = ev.record
        if k1 in rec or k2 in rec:
            rec = {k: v for k, v in rec.items() if k != k1 and k != k2}
        body = pack(rec)
        if extra:
            hl = _map_header_len(body[0])
            count = len(rec) + extra
            buf += _map_header(count)
            if time_key is not None:
                s, ns = divmod(ev.time_ns, NS)
                if s != last_s:
                    last_s = s
                    text = rfc3339_ns(s * NS)[:-10].encode()  # "YYYY-MM-DDTHH:MM:SS."
                    head = time_k + _str_header(len(text) + 10) + text
                buf += head
                buf += b"%09dZ" % ns
            buf += tag_part
            buf += memoryview(body)[hl:]
        else:
            buf += body
        end(len(buf))
    return bytes(buf), ends


@unprocessable
def msgpack_map_values(
    events: Sequence[Event], tag: str, *, time_key: str | None = "time", tag_key: str | None = "tag"
) -> list[bytes]:
    """Each event as its own msgpack map (a Kafka message value each), with the fields of
    :func:`encode_msgpack_maps`. Built as a dict per event, so that a ``time_key`` equal to ``tag_key``
    makes one key (the tag), never a map with a key twice."""
    packb = _packer().pack
    tk, gk = time_key, tag_key
    out = []
    for ev in events:
        d: dict[Any, Any] = {}
        if tk is not None:
            d[tk] = rfc3339_ns(ev.time_ns)
        if gk is not None:
            d[gk] = tag
        d.update(ev.record)
        if tk is not None:  # the injected values win, in first place (as the JSON format)
            d[tk] = rfc3339_ns(ev.time_ns)
        if gk is not None:
            d[gk] = tag
        out.append(packb(d))
    return out
