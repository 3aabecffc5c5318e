"""Reading one whole request, without I/O: the modes of the forward protocol.

A frame is walked element by element (array header, tag, the element that picks the mode, options) by a
walker, an Unpacker (or, for a big frame in a worker thread, a
:class:`~forwardd.protocol.walker.BufferWalker`) whose ``tell()`` gives offsets into the buffer that holds
the frame. Entries are sliced out of that buffer
as bytes, so PackedForward and Forward payloads are never decoded here, only framed, checked and counted
(:mod:`forwardd.protocol.payload`); Message-mode entries are a 1-byte array header glued to the time and
record bytes as they came. The fast path for Message mode is :mod:`forwardd.protocol.messages`.
"""

from __future__ import annotations

import sys
from typing import Any

import msgpack

from forwardd.model import INVALID_REASONS, Chunk
from forwardd.protocol.entries import invalid_entries, sample, scan_entries
from forwardd.protocol.errors import ProtocolError
from forwardd.protocol.events import EntriesReceived, Event, InvalidEntries, PayloadReceived, Rejected
from forwardd.protocol.framing import Framer, Streamed
from forwardd.protocol.limits import Limits
from forwardd.protocol.options import read_options, read_options_from, signal_rejection
from forwardd.protocol.payload import FinishElsewhere, entries_events, packed_events
from forwardd.protocol.walker import BufferWalker, Walker
from forwardd.protocol.wire import ACK_PREFIX, ARRAY, BIN, EXT, FLOAT, INT, KIND, MAP, NIL, STR, header

__all__ = ["TAG_CACHE_MAX", "RequestReader", "checked"]

TAG_CACHE_MAX = 256
_BIG_RECORD = 64 * 1024


class RequestReader:
    """The modes: Forward, (Compressed)PackedForward, Message in the general case, options and signals."""

    # One per connection, thousands idle on an aggregator: slots keep them small.
    __slots__ = ("__weakref__", "_tags", "framer", "json", "limits", "received_ns")

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.framer = Framer(self.limits)
        self._tags: dict[bytes, str] = {}
        self.received_ns = 0
        #: Whether acks are written in JSON (the connection speaks Fluentd's JSON mode).
        self.json = False

    def _tag(self, raw: Any) -> str:
        if type(raw) is not bytes:
            raise ProtocolError("bad_tag", f"tag is {type(raw).__name__}, not a string")
        if len(raw) > self.limits.max_tag_size:
            raise ProtocolError("bad_tag", f"tag of {len(raw)} bytes")
        tag = raw.decode("utf-8", "surrogateescape")
        if len(self._tags) >= TAG_CACHE_MAX:
            self._tags.clear()
        self._tags[raw] = tag
        return tag

    def _check_head(self, buf: bytes | bytearray, p: int) -> None:
        """Raise what reading the frame at ``p`` would raise for its head (a big frame is read elsewhere,
        and must break the connection here just as a small one would)."""
        arr = header(buf, p)
        assert arr is not None
        assert arr[0] == ARRAY
        if arr[1] < 2:
            raise ProtocolError("bad_request", f"array of {arr[1]} elements")
        tag = header(buf, p + arr[2])
        if tag is None or tag[0] != STR:
            raise ProtocolError("bad_tag", "tag is not a string")
        if tag[1] > self.limits.max_tag_size:
            raise ProtocolError("bad_tag", f"tag of {tag[1]} bytes")

    def read_frame(self, frame: bytes) -> list[Event]:
        """The events of one whole frame, read without an Unpacker (a big frame, in a worker thread: the
        values are skipped by the entry scan, which frees the GIL). Its head was checked already."""
        self._check_head(frame, 0)
        walker = BufferWalker(frame)
        n = walker.read_array_header()
        tag = self._tag(walker.unpack())
        pos = walker.tell()
        return self._mode(walker, 0, frame, 0, tag, n, pos, KIND[frame[pos]], len(frame))

    def _mode(
        self,
        walker: Walker,
        wbase: int,
        buf: bytes | bytearray,
        base: int,
        tag: str,
        n: int,
        pos: int,
        kind: int,
        size: int,
    ) -> list[Event]:
        """Decode the rest of a frame in ``buf`` (stream offset ``base``) whose walker stands at element
        [1] (offset ``pos``)."""
        if kind in (STR, BIN):
            payload = walker.unpack()
            options, chunk_raw = read_options(walker, buf, wbase - base, n - 2)
            return self._packed(tag, payload, options, chunk_raw, size)
        if kind == ARRAY and not _wrapped_time(buf, pos - base):
            hdr = header(buf, pos - base)
            assert hdr is not None
            s = pos + hdr[2]
            walker.skip()  # the whole array of entries, in one call
            e = wbase + walker.tell()
            options, chunk_raw = read_options(walker, buf, wbase - base, n - 2)
            ack = ACK_PREFIX + chunk_raw if chunk_raw is not None else None
            signal = signal_rejection(options, tag, ack, size)
            if signal is not None:
                return [signal]
            entries = memoryview(buf)[s - base : e - base]  # copied once, into its chunks
            return entries_events(tag, entries, ack, "forward", size, self.received_ns, self.limits)
        # Message mode: [tag, time, record, option?]
        if n < 3:
            walker.skip()
            return [Rejected("bad_message", "message mode needs a record", tag, None, size)]
        walker.skip()
        r = wbase + walker.tell()
        return self._message(buf, base, tag, n, pos, kind, r, None, None, None, size, walker, wbase)

    def _message(
        self,
        buf: bytes | bytearray,
        base: int,
        tag: str,
        n: int,
        pos: int,
        kind: int,
        r: int,
        e: int | None,
        options: dict[bytes, Any] | None,
        chunk_raw: bytes | None,
        size: int,
        walker: Walker | None = None,
        wbase: int = 0,
    ) -> list[Event]:
        """Message mode, general case; the walker stands after the time (``e`` None) or after the
        options (``e`` set: the record ended at ``e`` and the options were read)."""
        record_is_map = KIND[buf[r - base]] == MAP
        if e is None:
            assert walker is not None
            walker.skip()
            e = wbase + walker.tell()
            options, chunk_raw = read_options(walker, buf, wbase - base, n - 3)
        ack = ACK_PREFIX + chunk_raw if chunk_raw is not None else None
        if kind not in (INT, EXT, FLOAT, NIL, ARRAY):
            return [Rejected("bad_time", f"time of msgpack type 0x{buf[pos - base]:02x}", tag, ack, size)]
        if not record_is_map:
            return [Rejected("bad_message", "record is not a map", tag, ack, size)]
        signal = signal_rejection(options, tag, ack, size)
        if signal is not None:
            return [signal]
        meta = options.get(b"metadata") if options else None
        if isinstance(meta, dict):
            # v1.5 metadata sent as an option (Fluent Bit, Message mode): keep it next to the record,
            # as the wrapped time [time, {meta}] that every other mode uses for it.
            view = memoryview(buf)
            meta_raw = msgpack.packb(meta, use_bin_type=False)
            entry = b"".join((b"\x92\x92", view[pos - base : r - base], meta_raw, view[r - base : e - base]))
        elif e - pos > _BIG_RECORD:
            entry = b"".join((b"\x92", memoryview(buf)[pos - base : e - base]))  # one copy, not two
        else:
            entry = b"\x92" + buf[pos - base : e - base]
        chunk = Chunk(tag, entry, 1, self.received_ns)
        ev = EntriesReceived(chunk, ack, "message", size, 1, 0 if ack is None else 1)
        return [checked(ev, entry) if invalid_entries(entry) else ev]

    def _packed(
        self,
        tag: str,
        payload: bytes | bytearray,
        options: dict[bytes, Any] | None,
        chunk_raw: bytes | None,
        size: int,
    ) -> list[Event]:
        try:
            return packed_events(
                tag, payload, options, chunk_raw, size, self.received_ns, self.limits, inline=True
            )
        except FinishElsewhere:  # it decompresses past the inline size: a worker thread finishes it
            job = PayloadReceived(
                payload, size, self.received_ns, self.limits, tag, options, chunk_raw, self.json
            )
            return [job]

    def _streamed(self, item: Streamed) -> list[Event]:
        """A PackedForward read in stream mode (see forwardd.protocol.framing)."""
        options, chunk_raw = read_options_from(item.options, item.elements_after)
        if item.payload is None:
            ack = ACK_PREFIX + chunk_raw if chunk_raw is not None else None
            tag = item.tag.decode("utf-8", "replace")
            limit = self.framer.frame_limit
            return [Rejected("frame_too_large", f"frame over {limit} bytes", tag, ack, item.size)]
        tag = self._tags.get(item.tag) or self._tag(item.tag)
        if item.size > self.limits.inline_request_size:
            job = PayloadReceived(
                item.payload, item.size, self.received_ns, self.limits, tag, options, chunk_raw, self.json
            )
            return [job]
        return self._packed(tag, item.payload, options, chunk_raw, item.size)


def _wrapped_time(buf: bytes | bytearray, p: int) -> bool:
    """Whether the array at ``p`` is a v1.5 wrapped time ``[time, {meta}]`` (Message mode) rather
    than Forward mode's array of entries: its first element is a time, not an entry array."""
    hdr = header(buf, p)
    if hdr is None or hdr[1] < 1:
        return False
    inner = p + hdr[2]
    if inner >= len(buf):
        return False
    return KIND[buf[inner]] in (INT, EXT, FLOAT, NIL)


def checked(ev: EntriesReceived, entries: bytes) -> EntriesReceived:
    """``ev`` without the entries decoding would drop, which are reported instead (see payload.py)."""
    _, _, _, invalid, bad_times, bad_start, bad_end, reason, _ = scan_entries(entries)
    if invalid:
        shown = sample(entries, bad_start, bad_end)
        ev.invalid = InvalidEntries(invalid, bad_times, INVALID_REASONS[reason], shown)
        slices = scan_entries(entries, 0, -1, -1, 0, sys.maxsize)[8]
        assert slices is not None
        view = memoryview(entries)
        kept = b"".join(view[piece[k] : piece[k + 1]] for piece in slices for k in range(1, len(piece), 2))
        old = ev.chunk
        ev.chunk = Chunk(old.tag, kept, old.count - invalid, old.received_ns)
        ev.chunk.invalid = invalid
    return ev
