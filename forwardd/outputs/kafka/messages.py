"""What each event becomes as a Kafka message: its value, and the key and header bytes taken from its record.

Record format. ``json`` (default): the JSON object of :func:`forwardd.outputs.formats.encode_json`: ``time``
(RFC 3339, nanoseconds) and ``tag`` injected first, then the record. ``msgpack``: a msgpack map of the same
fields (time as the same RFC 3339 string). That is fluent-plugin-kafka's ``<format> @type msgpack`` (the
record alone, msgpack-encoded) with its ``<inject>`` of time and tag turned on, so consumers see the same
fields in either format; it is *not* the ``[time, record]`` forward entry.

Values are encoded for the whole chunk at once and split at newlines (JSON text never holds a raw newline,
so each line is one event): when no record field is needed (no ``topic_key``, ``message_key`` or
``headers_from_record``), :meth:`Values.of_chunk` takes the fastest way the chunk allows, the C transcoder
straight from a plain chunk's msgpack bytes with no Python object per event before the split
(:func:`~forwardd.outputs.formats.encode_json_lines`); :meth:`Values.encode` also hands back each event's
record for the fields, from one bulk decode of a plain chunk's columns or from decoded events.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from forwardd.model import Chunk, Event
from forwardd.outputs.formats import (
    encode_json_lines,
    json_lines,
    native_json_values,
    plain_json_lines,
    unprocessable,
)
from forwardd.outputs.formats.msgpack import msgpack_map_values

__all__ = ["Values", "key_bytes"]


class Values:
    """Message values of one format, with the output's injected keys."""

    __slots__ = ("format", "tag_key", "time_key")

    def __init__(self, format: str, time_key: str | None, tag_key: str | None) -> None:
        if format not in ("json", "msgpack"):
            raise ValueError(f"unknown format {format!r}; expected json or msgpack")
        self.format = format
        self.time_key = time_key
        self.tag_key = tag_key

    def slices(self, chunk: Chunk, size: int) -> Iterator[list[bytes]]:
        """Every event's value, in chunk order, ``size`` at a time, when no record field is needed.

        A plain chunk is transcoded a slice at a time (:func:`native_json_values`). From the first entry
        the transcoder declines, the values come from :meth:`of_chunk` (its lines are the same text for
        the entries before), which encodes the whole chunk before any more is handed out; it raises
        UnprocessableError for a record no format can write, after the slices already handed out.
        """
        done = 0
        if self.format == "json":
            pos, end = 0, len(chunk.entries)
            while pos < end:
                got = native_json_values(chunk, pos, size, time_key=self.time_key, tag_key=self.tag_key)
                if got is None:
                    break
                values, pos = got
                done += len(values)
                yield values
            else:
                return
        rest = self.of_chunk(chunk)
        for i in range(done, len(rest), size):
            yield rest[i : i + size]

    @unprocessable
    def of_chunk(self, chunk: Chunk) -> list[bytes]:
        """Every event's value, in chunk order, when no record field is needed."""
        if self.format == "json":
            values = encode_json_lines(chunk, self.time_key, self.tag_key).split(b"\n")
            values.pop()  # after the last newline
            return values
        return self.of_events(chunk.events(), chunk.tag)

    @unprocessable
    def encode(self, chunk: Chunk) -> tuple[list[dict[Any, Any]], list[bytes]]:
        """Each event's record and message value; a plain chunk's JSON values come from one bulk encode."""
        plain = chunk.plain_entries() if self.format == "json" else None
        if plain is not None:
            values = plain_json_lines(plain, chunk.tag, time_key=self.time_key, tag_key=self.tag_key)
            lines = values.split(b"\n")
            lines.pop()  # after the last newline
            return plain.records, lines
        events = chunk.events()
        return [ev.record for ev in events], self.of_events(events, chunk.tag)

    def of_events(self, events: list[Event], tag: str) -> list[bytes]:
        """The values of decoded events."""
        if self.format == "json":
            values = json_lines(events, tag, time_key=self.time_key, tag_key=self.tag_key).split(b"\n")
            values.pop()  # after the last newline
            return values
        return msgpack_map_values(events, tag, time_key=self.time_key, tag_key=self.tag_key)


def key_bytes(v: Any) -> bytes | None:
    """A record value as message key / header bytes; None (no key) for an absent or null value.

    Strings as UTF-8, integers as text, bytes as they are; floats, booleans, lists and maps as JSON (keys
    sorted), so that equal values make equal keys (and land on the same partition).
    """
    t = type(v)
    if t is str:
        return v.encode("utf-8", "surrogateescape")  # type: ignore[no-any-return]
    if t is bytes:
        return v  # type: ignore[no-any-return]
    if v is None:
        return None
    if t is int:
        return b"%d" % v
    try:  # floats, booleans (as JSON spells them), lists and maps
        return orjson.dumps(v, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=repr)
    except TypeError:  # surrogates or huge integers: a key need not be pretty, only stable
        pass
    try:
        return repr(v).encode("utf-8", "backslashreplace")
    except Exception:  # nested past repr's recursion limit: any stable key will do
        return t.__name__.encode()
