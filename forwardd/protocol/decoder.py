"""Framing and decoding of forward-protocol requests, without I/O.

Two msgpack Unpackers read the same stream: ``_framer`` only ``skip()``s, which tells where each
top-level value ends without building it; ``_walker`` then steps through the complete frame element by
element (array header, tag, the element that picks the mode, options), and its ``tell()`` gives offsets
into ``_buf``, our own copy of the stream. Entries are sliced out of that copy as bytes, so PackedForward and
Forward payloads are never decoded here, only framed and counted; Message-mode entries are a 1-byte
array header glued to the time and record bytes as they came.

A frame that grows past ``max_frame_size`` switches the decoder into discard mode when it is a
(Compressed)PackedForward, whose payload length is declared up front: the payload streams by without being
kept, then the option map is read so the chunk can be acked and dropped. Anything else that big closes the
connection.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import msgspec

from forwardd.model import INVALID_REASONS, Chunk
from forwardd.protocol.compression import DecompressionError, decompress
from forwardd.protocol.entries import sample, scan_entries
from forwardd.protocol.errors import FrameTooLarge, ProtocolError
from forwardd.protocol.events import EntriesReceived, Event, Heartbeat, InvalidEntries, RawFrame, Rejected
from forwardd.protocol.limits import Limits

__all__ = ["Decoder", "ack_reply"]

_ACK_PREFIX = b"\x81\xa3ack"  # fixmap(1){"ack": <the chunk value's bytes, echoed as they came>}

# Type of the first byte of a msgpack value, as far as mode detection needs it.
_ARRAY, _MAP, _STR, _BIN, _INT, _FLOAT, _EXT, _NIL, _OTHER = range(9)
_KIND = [_OTHER] * 256
for _b in range(0x00, 0x80):
    _KIND[_b] = _INT
for _b in range(0xE0, 0x100):
    _KIND[_b] = _INT
for _b in (0xCC, 0xCD, 0xCE, 0xCF, 0xD0, 0xD1, 0xD2, 0xD3):
    _KIND[_b] = _INT
for _b in range(0x80, 0x90):
    _KIND[_b] = _MAP
for _b in range(0x90, 0xA0):
    _KIND[_b] = _ARRAY
for _b in range(0xA0, 0xC0):
    _KIND[_b] = _STR
_KIND[0xC0] = _NIL
_KIND[0xC4] = _KIND[0xC5] = _KIND[0xC6] = _BIN
_KIND[0xC7] = _KIND[0xC8] = _KIND[0xC9] = _EXT
_KIND[0xCA] = _KIND[0xCB] = _FLOAT
for _b in range(0xD4, 0xD9):
    _KIND[_b] = _EXT
_KIND[0xD9] = _KIND[0xDA] = _KIND[0xDB] = _STR
_KIND[0xDC] = _KIND[0xDD] = _ARRAY
_KIND[0xDE] = _KIND[0xDF] = _MAP
_KIND_T = bytes(_KIND)

_LEN_HEADERS = {
    0xD9: (1, "B"), 0xDA: (2, ">H"), 0xDB: (4, ">I"),
    0xC4: (1, "B"), 0xC5: (2, ">H"), 0xC6: (4, ">I"),
    0xDC: (2, ">H"), 0xDD: (4, ">I"),
}  # fmt: skip

_UNREADABLE = "<unreadable>"  # an option value that could not be built
_FEED_SLICE = 1 << 20
_INITIAL_BUFFER = 64 * 1024
_COMPACT_AT = 1 << 16
_TAG_CACHE_MAX = 256
#: One whole Message-mode request, its elements left as the bytes they came in (see Decoder.feed).
_DECODE_MESSAGE = msgspec.msgpack.Decoder(tuple[str, msgspec.Raw, msgspec.Raw, msgspec.Raw]).decode


def ack_reply(chunk_value: bytes) -> bytes:
    """The ``{"ack": chunk}`` reply for the raw msgpack bytes of a chunk option value."""
    return _ACK_PREFIX + chunk_value


def _header(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int, int] | None:
    """(kind, length, header size) of the str/bin/array header at ``pos``, None if not all there yet."""
    if pos >= len(buf):
        return None
    b = buf[pos]
    kind = _KIND_T[b]
    if 0xA0 <= b <= 0xBF:
        return kind, b & 0x1F, 1
    if 0x90 <= b <= 0x9F:
        return kind, b & 0x0F, 1
    spec = _LEN_HEADERS.get(b)
    if spec is None:
        return kind, -1, 1
    size, fmt = spec
    if pos + 1 + size > len(buf):
        return None
    (n,) = struct.unpack_from(fmt, buf, pos + 1)
    return kind, n, 1 + size


class _Discard:
    """State of an oversized PackedForward being read through: where its payload ends in the stream,
    how many array elements follow it, and what is known of it for the log line."""

    __slots__ = ("elements_after", "end", "start", "tag")

    def __init__(self, tag: str, start: int, end: int, elements_after: int) -> None:
        self.tag = tag
        self.start = start
        self.end = end
        self.elements_after = elements_after


class Decoder:
    """Turns a byte stream into :mod:`forwardd.protocol.events`; raises ProtocolError on broken input."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]
        self._fed = 0  # stream offset of the end of _buf
        self._start = 0  # stream offset where the next frame starts
        self._framer_base = 0
        self._walker_base = 0
        self._new_unpackers(0)
        self._discard: _Discard | None = None
        self._tags: dict[bytes, str] = {}
        self.received_ns = 0
        #: Set by the connection while a handshake waits for its PING: the next frame comes back raw.
        self.expect_raw_frame = False
        #: Whether consecutive Message-mode requests of one tag in one read become one chunk.
        self.merge_messages = True
        #: Whether a read holding exactly one plain Message-mode request may take the shortcut in feed().
        self.single_message_shortcut = True
        self._group: EntriesReceived | None = None
        self._tag_strs: dict[str, str] = {}

    def _new_unpackers(self, offset: int) -> None:
        cap = self.limits.max_frame_size + 2 * _FEED_SLICE
        # read_size is the Unpacker's first buffer: its default, min(max_buffer_size, 1 MiB), would cost
        # every connection 2 MiB up front; the buffers grow as a frame needs it.
        self._framer = msgpack.Unpacker(None, max_buffer_size=cap, read_size=_INITIAL_BUFFER)
        self._walker = msgpack.Unpacker(
            None, raw=True, max_buffer_size=cap, strict_map_key=False, read_size=_INITIAL_BUFFER
        )
        self._framer_base = self._walker_base = offset

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held right now (bounded by the frame limit)."""
        return self._fed - self._start

    def feed(self, data: bytes, received_ns: int) -> list[Event]:
        """Add bytes from the peer; return every event they complete."""
        self.received_ns = received_ns
        events: list[Event] = []
        if not data:
            return events
        if (
            data[0] == 0x94  # [tag, time, record, options]
            and self._fed == self._start  # no frame begun
            and self.single_message_shortcut
            and self._discard is None
            and not self.expect_raw_frame
            and len(data) <= self.limits.max_frame_size
        ):
            ev = self._single_message(data)
            if ev is not None:
                events.append(ev)
                return events
        try:
            self._feed(memoryview(data), events)
        except ProtocolError as exc:
            exc.events = events
            raise
        self._compact()
        return events

    def _single_message(self, data: bytes) -> EntriesReceived | None:
        """The event of a read that is exactly one plain Message-mode request, or None to go the general way.

        docker's driver with ``fluentd-request-ack`` sends one request and waits for its ack, so most of
        its reads are one whole request. One msgspec call frames it and checks its shape, in a tenth of the
        time the two Unpackers take for a read. Anything it does not take exactly as the general path
        would (other option keys, float times, bad UTF-8 in the tag, deep nesting, trailing bytes) is
        left to that path, which gives the same result as before (a property test holds the two equal).
        """
        try:
            raw_tag, t, record, options = _DECODE_MESSAGE(data)
        except Exception:  # whatever msgspec refuses, the general path judges
            return None
        n = len(data)
        e = n - len(options)
        s = e - len(record) - len(t)
        kinds = _KIND_T
        kind = kinds[data[s]]
        if (kind != _EXT and kind != _INT) or kinds[data[e - len(record)]] != _MAP:
            return None
        ob = data[e]
        if ob == 0x80 or ob == 0xC0:  # hot path: no tuple
            ack: bytes | None = None
        elif ob == 0x81 and data.startswith(b"\xa5chunk", e + 1):
            ack = _ACK_PREFIX + data[e + 7 :]
        else:
            return None
        tag = self._tag_strs.get(raw_tag)
        if tag is None:
            raw = raw_tag.encode()
            tag = self._tags.get(raw) or self._tag(raw)  # a tag over the limit: the general path's error
            if len(self._tag_strs) >= _TAG_CACHE_MAX:
                self._tag_strs.clear()
            self._tag_strs[raw_tag] = tag
        # The frame is consumed without the Unpackers: move their offsets past it (the buffer is empty).
        self._fed += n
        self._start = self._base = self._fed
        self._framer_base += n
        self._walker_base += n
        entry = b"\x92" + data[s:e]
        chunk = Chunk(tag, entry, 1, self.received_ns)
        return _checked(EntriesReceived(chunk, ack, "message", n, 1, 0 if ack is None else 1), entry)

    def _feed(self, view: memoryview, events: list[Event]) -> None:
        while True:
            if self._discard is not None:
                view = self._skip_discarded(view, events)
                if self._discard is not None or not view:
                    break
                continue
            if not view:
                break
            # Never hand the framer more of the current frame than the limit: a frame over it must not
            # complete (and be accepted) just because it arrived in one read; it is the same frame
            # whatever the split. Once the limit is reached unfinished, the frame is too large.
            take = min(_FEED_SLICE, self._start + self.limits.max_frame_size - self._fed)
            piece, view = view[:take], view[take:]
            self._buf += piece
            self._fed += len(piece)
            try:
                self._framer.feed(piece)
                self._walker.feed(piece)
            except msgpack.BufferFull:
                self._enter_discard()
                continue
            self._frames(events)
            if self.buffered >= self.limits.max_frame_size:
                self._enter_discard()

    def _compact(self) -> None:
        used = self._start - self._base
        if used and (used >= _COMPACT_AT or used == len(self._buf)):
            del self._buf[:used]
            self._base = self._start

    def _frames(self, events: list[Event]) -> None:
        """Cut and decode every complete frame. Message mode (docker: one event per frame, hundreds of
        thousands per second) is handled inline with locals only; other modes go to :meth:`_mode`.

        Consecutive Message-mode requests of one tag in one read become ONE EntriesReceived: their
        entries are concatenated into one chunk and their acks into one reply, sent once that chunk is
        accepted. That keeps acks in request order and spares the router, the buffer and the output one
        hop per event. Any other event ends the group, so the order of replies is kept.
        """
        parts: list[bytes] = []
        acks: list[bytes] = []
        self._group = None
        try:
            self._frames_loop(events, parts, acks)
        finally:
            # Also when a ProtocolError ends the read: the requests before it are handed on.
            if self._group is not None:
                self._close_group(self._group, parts, acks)
                self._group = None

    def _close_group(self, ev: EntriesReceived, parts: list[bytes], acks: list[bytes]) -> None:
        n = len(parts)
        entries = parts[0] if n == 1 else b"".join(parts)
        ev.chunk = Chunk(ev.chunk.tag, entries, n, self.received_ns)
        ev.requests = n
        ev.acks = len(acks)
        if acks:
            ev.ack = acks[0] if len(acks) == 1 else b"".join(acks)
        _checked(ev, entries)

    def _frames_loop(self, events: list[Event], parts: list[bytes], acks: list[bytes]) -> None:
        framer = self._framer
        fskip = framer.skip
        ftell = framer.tell
        fbase = self._framer_base
        walker = self._walker
        wskip = walker.skip
        wtell = walker.tell
        wbase = self._walker_base
        buf = self._buf
        base = self._base
        kinds = _KIND_T
        tags = self._tags
        append = events.append
        merge = self.merge_messages
        group: EntriesReceived | None = None
        group_tag: str | None = None
        while True:
            try:
                fskip()
            except msgpack.OutOfData:
                return
            except (ValueError, msgpack.StackError) as exc:
                raise ProtocolError("bad_msgpack", str(exc) or type(exc).__name__) from None
            end = fbase + ftell()
            start = self._start
            self._start = end
            first = buf[start - base]
            if first == 0xC0:
                wskip()
                if group is not None:
                    self._close_group(group, parts, acks)
                    group = self._group = None
                append(Heartbeat())
                continue
            if kinds[first] != _ARRAY:
                raise ProtocolError("not_an_array", f"top-level value starts with 0x{first:02x}")
            if self.expect_raw_frame:
                # The handshake's PING: handed over whole, once; the connection decides what it means.
                self.expect_raw_frame = False
                wskip()
                append(RawFrame(bytes(buf[start - base : end - base])))
                continue
            n = walker.read_array_header()
            if n < 2:
                raise ProtocolError("bad_request", f"array of {n} elements")
            if kinds[buf[wbase + wtell() - base]] != _STR:
                raise ProtocolError("bad_tag", "tag is not a string")
            raw_tag = walker.unpack()
            tag = tags.get(raw_tag)
            if tag is None:
                tag = self._tag(raw_tag)
            pos = wbase + wtell()
            kind = kinds[buf[pos - base]]
            if n == 4 and (kind == _EXT or kind == _INT):  # noqa: SIM109 - hot path, no tuple
                wskip()
                r = wbase + wtell()
                if kinds[buf[r - base]] == _MAP:
                    wskip()
                    e = wbase + wtell()
                    ob = buf[e - base]
                    ack: bytes | None = None
                    if ob == 0x80 or ob == 0xC0:
                        wskip()
                    elif ob == 0x81 and buf.startswith(b"\xa5chunk", e - base + 1):
                        # {"chunk": id} is the frame's last element: the id runs to the frame's end.
                        wskip()
                        ack = _ACK_PREFIX + buf[e - base + 7 : end - base]
                    else:
                        if group is not None:
                            self._close_group(group, parts, acks)
                            group = self._group = None
                        options, chunk_raw = _read_options(walker, buf, wbase - base, 1)
                        append(self._message(tag, n, pos, kind, r, e, options, chunk_raw, end - start))
                        continue
                    entry = b"\x92" + buf[pos - base : e - base]
                    if group is not None and tag is group_tag:
                        parts.append(entry)
                        if ack is not None:
                            acks.append(ack)
                        group.size += end - start
                        continue
                    if group is not None:
                        self._close_group(group, parts, acks)
                    parts.clear()
                    acks.clear()
                    parts.append(entry)
                    if ack is not None:
                        acks.append(ack)
                    group = EntriesReceived(Chunk(tag, b"", 0, 0), None, "message", end - start)
                    group_tag = tag
                    append(group)
                    if not merge:
                        self._close_group(group, parts, acks)
                        group = None
                    self._group = group
                    continue
                if group is not None:
                    self._close_group(group, parts, acks)
                    group = self._group = None
                append(self._message(tag, n, pos, kind, r, None, None, None, end - start))
                continue
            if group is not None:
                self._close_group(group, parts, acks)
                group = self._group = None
            append(self._mode(tag, n, pos, kind, end - start))

    def _tag(self, raw: Any) -> str:
        if type(raw) is not bytes:
            raise ProtocolError("bad_tag", f"tag is {type(raw).__name__}, not a string")
        if len(raw) > self.limits.max_tag_size:
            raise ProtocolError("bad_tag", f"tag of {len(raw)} bytes")
        tag = raw.decode("utf-8", "surrogateescape")
        if len(self._tags) >= _TAG_CACHE_MAX:
            self._tags.clear()
        self._tags[raw] = tag
        return tag

    def _mode(self, tag: str, n: int, pos: int, kind: int, size: int) -> Event:
        """Decode the rest of a frame whose walker stands at element [1] (offset ``pos``)."""
        buf = self._buf
        base = self._base
        walker = self._walker
        wbase = self._walker_base
        if kind in (_STR, _BIN):
            payload = walker.unpack()
            options, chunk_raw = self._options(n - 2)
            return self._packed(tag, payload, options, chunk_raw, size)
        if kind == _ARRAY and not self._wrapped_time(pos):
            m = walker.read_array_header()
            s = wbase + walker.tell()
            for _ in range(m):
                walker.skip()
            e = wbase + walker.tell()
            options, chunk_raw = self._options(n - 2)
            ack = _ACK_PREFIX + chunk_raw if chunk_raw is not None else None
            signal = self._signal(options, tag, ack, size)
            if signal is not None:
                return signal
            entries = bytes(buf[s - base : e - base])
            chunk = Chunk(tag, entries, m, self.received_ns)
            return _checked(EntriesReceived(chunk, ack, "forward", size), entries)
        # Message mode: [tag, time, record, option?]
        if n < 3:
            walker.skip()
            return Rejected("bad_message", "message mode needs a record", tag, None, size)
        walker.skip()
        r = wbase + walker.tell()
        return self._message(tag, n, pos, kind, r, None, None, None, size)

    def _message(
        self,
        tag: str,
        n: int,
        pos: int,
        kind: int,
        r: int,
        e: int | None,
        options: dict[bytes, Any] | None,
        chunk_raw: bytes | None,
        size: int,
    ) -> Event:
        """Message mode, general case; the walker stands after the time (``e`` None) or after the
        options (``e`` set: the record ended at ``e`` and the options were read)."""
        buf = self._buf
        base = self._base
        walker = self._walker
        record_is_map = _KIND_T[buf[r - base]] == _MAP
        if e is None:
            walker.skip()
            e = self._walker_base + walker.tell()
            options, chunk_raw = self._options(n - 3)
        ack = _ACK_PREFIX + chunk_raw if chunk_raw is not None else None
        if kind not in (_INT, _EXT, _FLOAT, _NIL, _ARRAY):
            return Rejected("bad_time", f"time of msgpack type 0x{buf[pos - base]:02x}", tag, ack, size)
        if not record_is_map:
            return Rejected("bad_message", "record is not a map", tag, ack, size)
        signal = self._signal(options, tag, ack, size)
        if signal is not None:
            return signal
        meta = options.get(b"metadata") if options else None
        if isinstance(meta, dict):
            # v1.5 metadata sent as an option (Fluent Bit, Message mode): keep it next to the record,
            # as the wrapped time [time, {meta}] that every other mode uses for it.
            time_raw = bytes(buf[pos - base : r - base])
            meta_raw = msgpack.packb(meta, use_bin_type=False)
            entry = b"\x92\x92" + time_raw + meta_raw + bytes(buf[r - base : e - base])
        else:
            entry = b"\x92" + buf[pos - base : e - base]
        return _checked(EntriesReceived(Chunk(tag, entry, 1, self.received_ns), ack, "message", size), entry)

    def _wrapped_time(self, pos: int) -> bool:
        """Whether the array at ``pos`` is a v1.5 wrapped time ``[time, {meta}]`` (Message mode) rather
        than Forward mode's array of entries: its first element is a time, not an entry array."""
        hdr = _header(self._buf, pos - self._base)
        if hdr is None or hdr[1] < 1:
            return False
        inner = pos - self._base + hdr[2]
        if inner >= len(self._buf):
            return False
        return _KIND_T[self._buf[inner]] in (_INT, _EXT, _FLOAT, _NIL)

    def _options(self, remaining: int) -> tuple[dict[bytes, Any] | None, bytes | None]:
        """Read the option element of the current frame (and skip any extra elements)."""
        return _read_options(self._walker, self._buf, self._walker_base - self._base, remaining)

    def _signal(
        self, options: dict[bytes, Any] | None, tag: str, ack: bytes | None, size: int
    ) -> Rejected | None:
        if options:
            signal = options.get(b"fluent_signal", 0)
            if signal not in (0, None):
                return Rejected("unsupported_signal", f"fluent_signal={signal!r}", tag, ack, size)
        return None

    def _packed(
        self,
        tag: str,
        payload: bytes,
        options: dict[bytes, Any] | None,
        chunk_raw: bytes | None,
        size: int,
    ) -> Event:
        ack = _ACK_PREFIX + chunk_raw if chunk_raw is not None else None
        mode = "packed_forward"
        if options:
            signal = self._signal(options, tag, ack, size)
            if signal is not None:
                return signal
            codec = options.get(b"compressed")
            if codec is not None and codec != b"text":
                mode = "compressed_packed_forward"
                name = codec.decode("utf-8", "replace") if isinstance(codec, bytes) else repr(codec)
                try:
                    payload = decompress(name, payload, self.limits.max_decompressed_size)
                except DecompressionError as exc:
                    return Rejected(exc.reason, exc.detail, tag, ack, size)
        count, good_end, broken, invalid, bad_times, bad_start, bad_end, reason, _ = scan_entries(payload)
        if broken and count == 0:
            return Rejected("bad_entries", "payload holds no complete msgpack entry", tag, ack, size)
        entries = payload if good_end == len(payload) else payload[:good_end]
        chunk = Chunk(tag, entries, count, self.received_ns)
        chunk.invalid = 1 if broken else 0
        ev = EntriesReceived(chunk, ack, mode, size)
        if invalid or broken:
            if not invalid:
                reason_name, shown = "broken_tail", sample(payload, good_end, len(payload))
            else:
                reason_name, shown = INVALID_REASONS[reason], sample(payload, bad_start, bad_end)
            ev.invalid = InvalidEntries(invalid + broken, bad_times, reason_name, shown)
        return ev

    # --- oversized frames -------------------------------------------------------------------------

    def _enter_discard(self) -> None:
        """The frame at ``_start`` is too big to buffer: read it through if it is a PackedForward."""
        limit = self.limits.max_frame_size
        buf = self._buf
        p = self._start - self._base
        hdr = _header(buf, p)
        if hdr is None or hdr[0] != _ARRAY or hdr[1] < 2:
            raise FrameTooLarge("frame_too_large", f"frame over {limit} bytes")
        n = hdr[1]
        p += hdr[2]
        thdr = _header(buf, p)
        if thdr is None or thdr[0] != _STR or p + thdr[2] + thdr[1] > len(buf):
            raise FrameTooLarge("frame_too_large", f"frame over {limit} bytes")
        tag = bytes(buf[p + thdr[2] : p + thdr[2] + thdr[1]]).decode("utf-8", "replace")
        p += thdr[2] + thdr[1]
        phdr = _header(buf, p)
        if phdr is None or phdr[0] not in (_STR, _BIN):
            raise FrameTooLarge("frame_too_large", f"frame over {limit} bytes (tag {tag!r})")
        end = self._base + p + phdr[2] + phdr[1]
        self._discard = _Discard(tag, self._start, end, n - 2)
        # Everything buffered up to the payload's end is dropped now; the rest streams past.
        keep_from = min(end, self._fed)
        del self._buf[: keep_from - self._base]
        self._base = keep_from
        self._start = keep_from

    def _skip_discarded(self, view: memoryview, events: list[Event]) -> memoryview:
        d = self._discard
        assert d is not None
        if self._fed < d.end:
            take = min(len(view), d.end - self._fed)
            self._fed += take
            self._base = self._start = self._fed
            view = view[take:]
            if self._fed < d.end:
                return view
        # The payload is behind us: collect the remaining elements (the option map) in _buf.
        self._buf += view
        self._fed += len(view)
        cap = self.limits.max_option_size
        probe = msgpack.Unpacker(None, max_buffer_size=cap)
        probe.feed(bytes(self._buf[:cap]))
        try:
            for _ in range(d.elements_after):
                probe.skip()
        except msgpack.OutOfData:
            if len(self._buf) >= cap:
                raise FrameTooLarge("frame_too_large", "option map after an oversized payload") from None
            return memoryview(b"")
        except (ValueError, msgpack.StackError) as exc:
            raise ProtocolError("bad_msgpack", str(exc) or type(exc).__name__) from None
        used = probe.tell()
        walker = msgpack.Unpacker(None, raw=True, max_buffer_size=cap, strict_map_key=False)
        walker.feed(bytes(self._buf[:used]))
        _, chunk_raw = _read_options(walker, self._buf, 0, d.elements_after)
        ack = _ACK_PREFIX + chunk_raw if chunk_raw is not None else None
        limit = self.limits.max_frame_size
        events.append(Rejected("frame_too_large", f"frame over {limit} bytes", d.tag, ack, d.end - d.start))
        self._discard = None
        rest = bytes(self._buf[used:])
        self._buf = bytearray()
        self._base = self._start = self._fed = self._fed - len(rest)
        self._new_unpackers(self._base)
        return memoryview(rest)


def _read_options(
    walker: msgpack.Unpacker, buf: bytearray, delta: int, remaining: int
) -> tuple[dict[bytes, Any] | None, bytes | None]:
    """Read an option element with ``walker`` (whose offset 0 is ``buf[delta]``), skipping ``remaining-1``
    extra elements after it. Returns the options it cares about and the chunk value's raw bytes, which
    are echoed byte for byte in the ack (str or bin, trailing newline and all)."""
    if remaining <= 0:
        return None, None
    options: dict[bytes, Any] | None = None
    chunk_raw: bytes | None = None
    if _KIND_T[buf[delta + walker.tell()]] == _MAP:
        options = {}
        for _ in range(walker.read_map_header()):
            # Keys and values are built only when they are what we look for, and never by the walker:
            # building any value can raise (an ext type < 0, a map used as a map key) and leave the
            # walker mid-value. A value that cannot be built is _UNREADABLE, which no check accepts.
            if _KIND_T[buf[delta + walker.tell()]] != _STR:
                walker.skip()
                walker.skip()
                continue
            key = walker.unpack()
            s = delta + walker.tell()
            walker.skip()
            if key == b"chunk":
                chunk_raw = bytes(buf[s : delta + walker.tell()])
            elif key in (b"compressed", b"fluent_signal", b"metadata"):
                value = buf[s : delta + walker.tell()]
                try:
                    options[key] = msgpack.unpackb(value, raw=True, strict_map_key=False)
                except (ValueError, TypeError):
                    options[key] = _UNREADABLE
            # size and unknown keys: advisory only, never trusted
    else:
        walker.skip()  # nil, or a non-map option: no options
    for _ in range(remaining - 1):
        walker.skip()
    return options, chunk_raw


def _checked(ev: EntriesReceived, entries: bytes) -> EntriesReceived:
    """``ev`` with what the edge's scan finds wrong in its (whole, framed) entries."""
    _, _, _, invalid, bad_times, bad_start, bad_end, reason, _ = scan_entries(entries)
    if invalid:
        shown = sample(entries, bad_start, bad_end)
        ev.invalid = InvalidEntries(invalid, bad_times, INVALID_REASONS[reason], shown)
    return ev
