"""Per-connection limits of the protocol core, with the reasoning behind each default."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds that keep one peer from costing unbounded memory.

    ``max_frame_size``: the largest top-level msgpack value buffered. Fluentd's out_forward sends chunks of
    up to its ``chunk_limit_size`` (8 MiB in memory, larger for file buffers) and Fluent Bit about 2 MB, so
    64 MiB leaves ample room (Vector uses 100 MiB) while bounding a connection. A PackedForward frame larger
    than this is still read through (its payload is discarded as it streams by, never buffered) so that
    it can be acked and dropped instead of being resent forever.
    ``max_decompressed_size``: the decompression-bomb cap (Fluentd 256 MiB, Vector 100 MiB).
    ``chunk_size_warn``: a frame above this is accepted but logged (Fluentd ``chunk_size_warn_limit``).
    ``max_option_size``: what is buffered of the option map that follows a skipped oversized payload.
    """

    max_frame_size: int = 64 * MiB
    max_decompressed_size: int = 256 * MiB
    chunk_size_warn: int = 16 * MiB
    max_option_size: int = 64 * 1024
    max_tag_size: int = 64 * 1024
