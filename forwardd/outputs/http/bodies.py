"""The HTTP output's request bodies: a chunk's events as items (one per event) and items as one body, per
format.

``ndjson`` (default): one JSON object per line, exactly the JSON lines of
:func:`forwardd.outputs.formats.json_lines` (time as RFC 3339 text under ``time``, tag under ``tag``, then
the record). ``json_array``: the same objects as one JSON array. ``msgpack``: one msgpack array of the maps
of :func:`forwardd.outputs.formats.encode_msgpack_maps` (the same keys and the same time text, so a consumer
sees one schema whatever the format; binary values stay binary).

Items are encoded once for the whole chunk, into one ``bytes``; a body is a slice of them with the format's
framing around it (brackets, an array header), so cutting a chunk into requests never encodes again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from forwardd.model import Chunk, Event
from forwardd.outputs.formats import encode_msgpack_maps, json_lines, native_json_lines, plain_json_lines
from forwardd.outputs.formats.msgpack import array_header

__all__ = ["CONTENT_TYPES", "Bodies", "Format", "line_ends"]

Format = Literal["ndjson", "json_array", "msgpack"]

CONTENT_TYPES = {
    "ndjson": "application/x-ndjson",
    "json_array": "application/json",
    "msgpack": "application/msgpack",
}


class Bodies:
    """Items and bodies of one format, with the output's injected keys."""

    __slots__ = ("format", "tag_key", "time_key")

    def __init__(self, format: Format, time_key: str | None, tag_key: str | None) -> None:
        if format not in CONTENT_TYPES:
            raise ValueError(f"unknown format {format!r}; expected one of {', '.join(CONTENT_TYPES)}")
        self.format = format
        self.time_key = time_key
        self.tag_key = tag_key

    def items(self, chunk: Chunk) -> tuple[int, bytes, list[int] | None]:
        """``(events, items, item end offsets)`` of ``chunk``; the offsets are None when the items are
        JSON lines (found again by :func:`line_ends` only if the chunk needs more than one request).

        JSON takes the fastest way the chunk allows: the C transcoder straight from the entries, the bulk
        encoder of plain chunks, or decoded events.
        """
        if self.format != "msgpack":
            native = native_json_lines(chunk, time_key=self.time_key, tag_key=self.tag_key)
            if native is not None:
                return native.count, native.data, None
            plain = chunk.plain_entries()
            if plain is not None:
                text = plain_json_lines(plain, chunk.tag, time_key=self.time_key, tag_key=self.tag_key)
                return len(plain.records), text, None
        events = chunk.events()
        items, ends = self.encode(events, chunk.tag)
        return len(events), items, ends

    def encode(self, events: Sequence[Event], tag: str) -> tuple[bytes, list[int] | None]:
        """Decoded events as items (the general path)."""
        if self.format == "msgpack":
            return encode_msgpack_maps(events, tag, time_key=self.time_key, tag_key=self.tag_key)
        return json_lines(events, tag, time_key=self.time_key, tag_key=self.tag_key), None

    def overhead(self, n: int) -> int:
        """Bytes a body of ``n`` items adds to them."""
        if self.format == "ndjson":
            return 0
        if self.format == "json_array":
            return 1  # "[" + items with the last newline dropped + "]"
        return len(array_header(n))

    def body(self, items: bytes | memoryview, n: int) -> bytes:
        """The body of ``n`` consecutive items."""
        if self.format == "ndjson":
            return bytes(items)
        if self.format == "json_array":
            return b"[" + bytes(items[:-1]).replace(b"\n", b",") + b"]"
        return array_header(n) + items


def line_ends(lines: bytes) -> list[int]:
    """End offsets of the lines of JSON lines (JSON text never holds a raw newline)."""
    ends: list[int] = []
    append = ends.append
    find = lines.find
    pos = find(b"\n")
    while pos >= 0:
        append(pos + 1)
        pos = find(b"\n", pos + 1)
    return ends
