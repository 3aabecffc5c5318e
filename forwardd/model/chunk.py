"""The chunk: events of one tag as msgpack entries, decoded on first use (plain fast path first)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from forwardd.model.entries import decode_entries, pack_entries
from forwardd.model.event import Event
from forwardd.model.plain import PlainEntries, decode_plain

__all__ = ["Chunk"]


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
            self._plain = decode_plain(self.entries, self.count, self.received_ns)
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
