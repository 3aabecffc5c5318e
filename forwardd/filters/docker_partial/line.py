"""One line docker cut into pieces, as the filter holds it, and what a record says about its piece.

Apart from the filter because it is the data both halves of it work on: reassembly adds pieces and joins
them (:mod:`~forwardd.filters.docker_partial.filter`), the journal bookkeeping counts which journal entries
hold pieces of which lines (:mod:`~forwardd.filters.docker_partial.journaling`).
"""

from __future__ import annotations

import time
from typing import Any

from forwardd.model import Chunk, Event

__all__ = ["PARTIAL_FIELDS", "Key", "Line", "chunks", "container_id", "nbytes", "piece_ordinal"]

PARTIAL_FIELDS = frozenset(("partial_message", "partial_id", "partial_ordinal", "partial_last"))

Key = tuple[str, str, str | None]  # (tag, container_id or "", partial_id or None for the old format)


class Line:
    """The held pieces of one line (or of its current segment)."""

    __slots__ = (
        "done",
        "entries",
        "first_seen",
        "head",
        "head_ord",
        "key",
        "last",
        "next_ord",
        "pid",
        "pieces",
        "segmented",
        "size",
        "tag",
    )

    def __init__(self, key: Key, first_seen: float) -> None:
        self.key = key
        self.tag = key[0]
        self.pid = key[2]
        self.first_seen = first_seen
        self.head: Event | None = None  # piece with the lowest ordinal seen, partial_* fields removed
        self.head_ord = 0
        self.pieces: dict[int, str] = {}
        self.done: set[int] = set()  # ordinals already emitted in an earlier segment
        self.size = 0
        self.last: int | None = None
        self.next_ord = 1  # old format: ordinals are given in arrival order
        self.segmented = False
        self.entries: list[int] = []  # journal entries holding pieces of this line

    def complete(self) -> bool:
        last = self.last
        if last is None or len(self.pieces) + len(self.done) < last:
            return False
        have = self.pieces.keys() | self.done
        return all(o in have for o in range(1, last + 1))


def nbytes(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogateescape"))


def container_id(rec: dict[Any, Any]) -> str:
    cid = rec.get("container_id")
    return cid if type(cid) is str else ""


def piece_ordinal(v: Any) -> int:
    if type(v) is str and v.isdigit() and len(v) < 10:
        return int(v)
    if type(v) is int:
        return v
    return 0


def chunks(emitted: list[tuple[str, Event]]) -> list[Chunk]:
    by_tag: dict[str, list[Event]] = {}
    for tag, ev in emitted:
        by_tag.setdefault(tag, []).append(ev)
    now_ns = time.time_ns()
    return [Chunk.from_events(tag, evs, now_ns) for tag, evs in by_tag.items()]
