"""Chunks as the server makes them: raw msgpack entries, not yet decoded."""

from __future__ import annotations

from typing import Any

import msgpack

from forwardd.model import Chunk

T0 = 1_700_000_000


def make_chunk(tag: str, records: list[dict[str, Any]], times: list[int] | None = None) -> Chunk:
    times = times if times is not None else [T0 + i for i in range(len(records))]
    entries = b"".join(msgpack.packb([t, r], use_bin_type=True) for t, r in zip(times, records, strict=True))
    return Chunk(tag, entries, len(records), 0)


def records(chunk: Chunk | None) -> list[dict[str, Any]]:
    """The records as a fresh decode of the chunk's bytes would give them (proves what goes on the wire)."""
    if chunk is None:
        return []
    return [e.record for e in Chunk(chunk.tag, chunk.entries, chunk.count, 0).events()]
