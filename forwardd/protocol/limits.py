"""Per-connection limits of the protocol core, with the reasoning behind each default."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds that keep one peer from costing unbounded memory or time.

    ``max_frame_size``: the largest top-level msgpack value buffered. Fluentd's out_forward sends chunks of
    up to its ``chunk_limit_size`` (8 MiB in memory, larger for file buffers) and Fluent Bit about 2 MB, so
    64 MiB leaves ample room (Vector uses 100 MiB) while bounding a connection. A PackedForward frame larger
    than this is still read through (its payload is discarded as it streams by, never buffered) so that
    it can be acked and dropped instead of being resent forever.
    ``max_decompressed_size``: the decompression-bomb cap (Fluentd 256 MiB, Vector 100 MiB).
    ``chunk_size_warn``: a frame above this is accepted but logged (Fluentd ``chunk_size_warn_limit``).
    ``max_option_size``: what is buffered of the option map that follows a skipped oversized payload.
    ``stream_from``: an incomplete frame this long is looked at; a PackedForward's payload then streams
    into one buffer instead of through an Unpacker (memory: the frame's size, not 3-4 times it).
    ``inline_request_size``: a request bigger than this, on the wire or once decompressed, is finished
    (decompressed, framed, checked, cut) in a worker thread, not on the event loop that serves every
    connection; smaller ones stay inline, where a thread hop would cost more than the work.
    ``max_handshake_frame_size``: the frame limit before the handshake is done (with security on). A PING
    is a few hundred bytes; an unauthenticated peer gets no more than this, not the full frame limit.
    ``max_chunk_entries`` and ``max_chunk_bytes``: a request with more entries than this is cut into chunks
    of at most that many entries and bytes, so that the router, the filters, the buffers and the outputs
    do a bounded amount of work per chunk (a chunk costs them about 1-2 us per event on the loop).
    """

    max_frame_size: int = 64 * MiB
    max_decompressed_size: int = 256 * MiB
    chunk_size_warn: int = 16 * MiB
    max_option_size: int = 64 * 1024
    max_tag_size: int = 64 * 1024
    stream_from: int = 64 * 1024
    inline_request_size: int = 1 * MiB
    max_chunk_entries: int = 8192
    max_chunk_bytes: int = 4 * MiB
    max_handshake_frame_size: int = 64 * 1024
