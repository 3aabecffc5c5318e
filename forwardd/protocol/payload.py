"""Entries into chunks: the end of every request that carries events, pure and thread-safe.

A request's entries (PackedForward's payload once decompressed, Forward's array, merged Message requests)
are scanned once (:mod:`forwardd.protocol.entries`): counted, their broken tail cut off, the entries that
decoding will drop reported, and cut into chunks of at most ``limits.max_chunk_entries`` entries and
``limits.max_chunk_bytes`` bytes. The chunks of one request come out in order, the last one carrying the
ack, so the ack follows the acceptance of all of them.

The same functions run inline for small requests and in a worker thread for big ones
(:func:`forwardd.protocol.finish_payload`), so that both give the same events.
"""

from __future__ import annotations

from typing import Any

from forwardd.model import INVALID_REASONS, Chunk
from forwardd.protocol.compression import DecompressionError, decompress
from forwardd.protocol.entries import sample, scan_entries
from forwardd.protocol.events import EntriesReceived, Event, InvalidEntries, Rejected
from forwardd.protocol.limits import Limits
from forwardd.protocol.options import signal_rejection
from forwardd.protocol.wire import ACK_PREFIX

__all__ = ["FinishElsewhere", "entries_events", "packed_events"]


class FinishElsewhere(Exception):
    """Raised by :func:`packed_events` inline when the payload decompresses past the inline size."""


def packed_events(
    tag: str,
    payload: bytes | bytearray,
    options: dict[bytes, Any] | None,
    chunk_raw: bytes | None,
    size: int,
    received_ns: int,
    limits: Limits,
    *,
    inline: bool,
) -> list[Event]:
    """The events of a (Compressed)PackedForward whose options were read."""
    ack = ACK_PREFIX + chunk_raw if chunk_raw is not None else None
    mode = "packed_forward"
    if options:
        signal = signal_rejection(options, tag, ack, size)
        if signal is not None:
            return [signal]
        codec = options.get(b"compressed")
        if codec is not None and codec != b"text":
            mode = "compressed_packed_forward"
            name = codec.decode("utf-8", "replace") if isinstance(codec, bytes) else repr(codec)
            cap = limits.max_decompressed_size
            if inline:
                cap = min(cap, limits.inline_request_size)
            try:
                payload = decompress(name, payload, cap)
            except DecompressionError as exc:
                if inline and exc.reason == "decompressed_too_large" and cap < limits.max_decompressed_size:
                    raise FinishElsewhere from None
                return [Rejected(exc.reason, exc.detail, tag, ack, size)]
    return entries_events(tag, payload, ack, mode, size, received_ns, limits, reject_empty=True)


def entries_events(
    tag: str,
    entries: bytes | bytearray | memoryview,
    ack: bytes | None,
    mode: str,
    size: int,
    received_ns: int,
    limits: Limits,
    *,
    reject_empty: bool = False,
) -> list[Event]:
    """The chunks of one request's entries (see the module docstring); ``reject_empty``: a payload
    holding no whole entry is rejected (PackedForward) rather than handed on empty.

    Entries that decoding would drop are left out here, where they are counted and reported
    (:attr:`EntriesReceived.invalid`); ``chunk.invalid`` says how many were (and a broken tail), as
    decoding would have said.
    """
    scan = scan_entries(entries, 0, -1, -1, limits.max_chunk_bytes, limits.max_chunk_entries)
    count, good_end, broken, invalid, bad_times, bad_start, bad_end, reason, slices = scan
    if broken and count == 0 and reject_empty:
        return [Rejected("bad_entries", "payload holds no complete msgpack entry", tag, ack, size)]
    report = None
    if invalid or broken:
        if invalid:
            why, shown = INVALID_REASONS[reason], sample(entries, bad_start, bad_end)
        else:
            why, shown = "broken_tail", sample(entries, good_end, len(entries))
        report = InvalidEntries(invalid + broken, bad_times, why, shown)
    assert slices is not None
    view = memoryview(entries)
    events: list[Event] = []
    for piece in slices[:-1]:
        chunk = Chunk(tag, _glued(view, piece), piece[0], received_ns)
        events.append(EntriesReceived(chunk, None, mode, 0, 0, 0))
    if slices:
        last = slices[-1]
        if isinstance(entries, bytes) and len(last) == 3 and last[1] == 0 and last[2] == len(entries):
            body = entries  # the whole payload, as it came: no copy
        else:
            body = _glued(view, last)
        chunk = Chunk(tag, body, last[0], received_ns)
    else:
        chunk = Chunk(tag, b"", 0, received_ns)  # nothing valid: the request is still acked
    chunk.invalid = invalid + broken
    events.append(EntriesReceived(chunk, ack, mode, size, 1, 0 if ack is None else 1, report))
    return events


def _glued(view: memoryview, piece: tuple[int, ...]) -> bytes:
    """The bytes of one slice: its runs of valid entries, in one copy."""
    if len(piece) == 3:
        return bytes(view[piece[1] : piece[2]])
    return b"".join(view[piece[k] : piece[k + 1]] for k in range(1, len(piece), 2))
