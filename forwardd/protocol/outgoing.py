"""What forwardd's ``forward`` output puts on the wire, apart from the connection it goes over: a
PackedForward request, its payload compressed, and its entries with times every receiver takes.

Fluentd's ``out_forward`` is the reference, byte for byte where it can be (the golden tests replay its
captures): ``[tag, str32 entries, {"size", "compressed", "chunk"}]``, ``compressed: "text"`` when not
compressing. Fluentd's gzip payload is one gzip member per event; ours is one member for the whole message,
which every receiver accepts. These are pure functions of a chunk, apart from the connection's state
(:mod:`forwardd.protocol.client`) so that the output can build and compress a request in a worker thread.

Entries are the chunk's msgpack bytes as they came (:func:`wire_entries`); only time shapes a receiver may
not take are rewritten, and only when some entry has one.
"""

from __future__ import annotations

import gzip
import struct
from typing import Annotated, Any, Literal

import msgpack
import msgspec
import zstandard

from forwardd.constants import NS, U32
from forwardd.model import decode_entries, pack_event_time
from forwardd.pieces import entry_ends

__all__ = ["Compression", "TimeFormat", "compress_entries", "encode_request", "wire_entries"]

Compression = Literal["text", "gzip", "zstd"]
#: ``event_time``: integer seconds and EventTime go as they are, every other shape (float, nil or 0, the
#: v1.5 ``[time, {metadata}]`` wrapper, ext8) becomes EventTime, so Fluentd <= 1.19.2 and Vector take it.
#: ``integer``: every time becomes integer seconds (Fluentd's ``time_as_integer``, for v0.12 receivers).
#: ``as_received``: the bytes go untouched, wrapper included (forwardd and Fluent Bit receivers).
TimeFormat = Literal["event_time", "integer", "as_received"]

_pack = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape").pack
_ARRAY32 = struct.Struct(">BI")


def encode_request(
    tag: str, payload: bytes, count: int, *, compressed: Compression = "text", chunk_id: bytes | None = None
) -> list[bytes]:
    """``[tag, str32 payload, {"size": count, "compressed": ..., "chunk": id}]`` in three parts, the
    option keys in Fluentd's order. The payload is str32 (holding binary) as Fluentd sends it: every
    receiver accepts that, as the spec asks of them."""
    opts: dict[str, Any] = {"size": count, "compressed": compressed}
    if chunk_id is not None:
        opts["chunk"] = chunk_id.decode("ascii")
    head = b"\x93" + bytes(_pack(tag)) + b"\xdb" + len(payload).to_bytes(4, "big")
    return [head, payload, bytes(_pack(opts))]


def compress_entries(entries: bytes, compression: Compression) -> bytes:
    """The payload for ``compression`` (zlib and zstd release the GIL: callers may run this in a thread)."""
    if compression == "gzip":
        return gzip.compress(entries, compresslevel=6, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(entries)
    return entries


# --- the entries as they go out -------------------------------------------------------------------------

_PAIRS = msgspec.msgpack.Decoder(list[tuple[msgspec.Raw, msgspec.Raw]])
_POSITIVE_INT_TIMES = msgspec.msgpack.Decoder(
    list[tuple[Annotated[int, msgspec.Meta(gt=0, le=0xFFFFFFFFFFFF)], msgspec.Raw]]
)
_PAIR = msgspec.msgpack.Decoder(tuple[msgspec.Raw, msgspec.Raw])
_MAP_FIRST = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])
_EMPTY_MAP = b"\x80"


def _all_event_time(pairs: list[tuple[msgspec.Raw, msgspec.Raw]]) -> bool:
    """Every time is an EventTime in its fixext8 form (ten bytes ``d7 00 ...``), checked without a
    Python step per entry beyond the join."""
    n = len(pairs)
    times = b"".join([t for t, _ in pairs])  # Raw is a buffer
    return len(times) == 10 * n and times[0::10] == b"\xd7" * n and times[1::10] == b"\x00" * n


def wire_entries(
    entries: bytes, count: int, received_ns: int, time_format: TimeFormat = "event_time"
) -> tuple[bytes, int, int]:
    """The entries to send for a chunk's ``entries``: ``(payload, events, dropped)``.

    The chunk's bytes themselves whenever every time already has a shape ``time_format`` allows (what
    docker, fluent-logger, Fluentd and Fluent Bit < 5 send): checked in one msgspec call, records never
    decoded. Otherwise each entry's time is rewritten and its record bytes kept as they are. A time of
    ``0`` or ``nil`` becomes the chunk's receive time (what the receiver would otherwise stamp, later).
    Entries that are no event (not a 2-array, record not a map, no time at all) are dropped and counted,
    as every forwardd output skips them.
    """
    if time_format == "as_received" or not entries:
        return entries, count, 0
    framed = _ARRAY32.pack(0xDD, count) + entries if 0 <= count <= 0xFFFFFFFF else b""
    if time_format == "event_time":
        try:
            if _all_event_time(_PAIRS.decode(framed)):
                return entries, count, 0
        except msgspec.DecodeError:
            pass
    try:
        _POSITIVE_INT_TIMES.decode(framed)
    except msgspec.DecodeError:
        pass
    else:
        return entries, count, 0
    return _rewrite(entries, received_ns, time_format)


def _rewrite(entries: bytes, received_ns: int, time_format: TimeFormat) -> tuple[bytes, int, int]:
    out: list[bytes] = []
    dropped = 0
    start = 0
    for end in entry_ends(entries):
        raw = entries[start:end]
        start = end
        try:
            t_raw, rec_raw = _PAIR.decode(raw)
        except msgspec.DecodeError:
            dropped += 1
            continue
        rec = bytes(rec_raw)  # Raw is a buffer
        t = bytes(t_raw)
        if not rec or rec[0] not in _MAP_FIRST:
            dropped += 1
            continue
        new_t = _wire_time(t, received_ns, time_format)
        if new_t is None:
            dropped += 1
            continue
        out.append(b"\x92" + new_t + rec)
    return b"".join(out), len(out), dropped


def _wire_time(t: bytes, received_ns: int, time_format: TimeFormat) -> bytes | None:
    """The bytes of one entry's time as ``time_format`` wants it; None when it is no time at all."""
    b0 = t[0]
    if time_format == "event_time":
        if len(t) == 10 and b0 == 0xD7 and t[1] == 0:
            return t
        if (0x01 <= b0 <= 0x7F or b0 in (0xCC, 0xCD, 0xCE, 0xCF)) and msgpack.unpackb(t) > 0:
            return t
    # The model's own reading of a time (every shape a client may send), on an entry with an empty record.
    events, _ = decode_entries(b"\x92" + t + _EMPTY_MAP, received_ns)
    if not events:
        return None
    ns = events[0].time_ns
    if ns < 0:
        return None
    if time_format == "integer":
        return bytes(_pack(ns // NS))
    if ns // NS > U32:  # past 2106: EventTime holds 32-bit seconds
        return bytes(_pack(ns // NS))
    return pack_event_time(ns)
