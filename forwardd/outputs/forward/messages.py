"""What one write of the forward output sends: its chunk cut into requests of bounded size, each with its
payload as it goes on the wire.

Apart from the write path because it is done once per write, before any endpoint is picked: the same
payloads are sent again, unchanged, to the next endpoint after a failover, and each request keeps which
entries of the chunk it holds so that a partial delivery can name exactly what was not acked. A chunk over
``max_message_size`` entry bytes is cut at entry boundaries (an entry bigger than that goes alone); times a
receiver could refuse are rewritten (:func:`~forwardd.protocol.outgoing.wire_entries`), and entries that are
no event are dropped there, counted and logged; big payloads are compressed in a worker thread.
"""

from __future__ import annotations

import asyncio

import structlog

from forwardd.model import Chunk
from forwardd.outputs.forward.stats import ForwardStats
from forwardd.pieces import entry_ends
from forwardd.protocol.outgoing import Compression, TimeFormat, compress_entries, wire_entries

__all__ = ["Message", "messages_of"]

log = structlog.get_logger("forwardd.forward")

#: Payloads at least this big are compressed in a worker thread (zlib and zstd release the GIL).
_COMPRESS_OFFLOAD = 256 * 1024


class Message:
    """One request of a write: entries ``start:end`` of the chunk (``count`` of them), and what goes on
    the wire for them (``payload``, ``events`` after dropping what is no event)."""

    __slots__ = ("count", "done", "end", "events", "payload", "sent", "start")

    def __init__(self, start: int, end: int, count: int, payload: bytes, events: int) -> None:
        self.start = start
        self.end = end
        self.count = count
        self.payload = payload
        self.events = events
        self.done = False
        self.sent = False


async def messages_of(
    chunk: Chunk,
    *,
    name: str,
    max_message_size: int,
    time_format: TimeFormat,
    compression: Compression,
    stats: ForwardStats,
) -> list[Message]:
    """The chunk cut into requests of at most ``max_message_size`` entry bytes (a bigger entry goes
    alone), each with its payload as it goes on the wire."""
    entries = chunk.entries
    if len(entries) <= max_message_size:
        spans = [(0, len(entries), chunk.count)]
    else:
        spans = []
        start = 0
        n = 0
        ends = entry_ends(entries)
        prev = 0
        for end in ends:
            if end - start > max_message_size and n:
                spans.append((start, prev, n))
                start, n = prev, 0
            n += 1
            prev = end
        spans.append((start, prev, n))
    out: list[Message] = []
    rewritten = False
    for start, end, count in spans:
        raw = entries if (start, end) == (0, len(entries)) else entries[start:end]
        payload, events, dropped = wire_entries(raw, count, chunk.received_ns, time_format)
        if dropped:
            stats.invalid_entries += dropped
            log.warning("forward.entries_dropped", output=name, tag=chunk.tag, count=dropped)
        rewritten = rewritten or payload is not raw
        if compression != "text" and events:
            if len(payload) >= _COMPRESS_OFFLOAD:
                payload = await asyncio.to_thread(compress_entries, payload, compression)
            else:
                payload = compress_entries(payload, compression)
        out.append(Message(start, end, count, payload, events))
    if rewritten:  # a chunk cut into requests counts once, however many of them were rewritten
        stats.rewritten_chunks += 1
    return out
