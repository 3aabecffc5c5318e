"""Reading forward-protocol requests, without I/O: whole frames in (from :mod:`forwardd.protocol.framing`),
events out.

A frame is walked element by element (array header, tag, the element that picks the mode, options) by an
Unpacker, the walker, fed the frames of one read at once; its ``tell()`` gives offsets into the framer's
buffer. Entries are sliced out of that buffer as bytes, so PackedForward and Forward payloads are never
decoded here, only framed, checked and counted (:mod:`forwardd.protocol.payload`); Message-mode entries are
a 1-byte array header glued to the time and record bytes as they came.

A request bigger than ``limits.inline_request_size`` is not read here: it comes out as a
:class:`~forwardd.protocol.events.PayloadReceived`, to be finished in a worker thread.
"""

from __future__ import annotations

import sys
from typing import Any

import msgpack
import msgspec

from forwardd.model import INVALID_REASONS, Chunk
from forwardd.protocol.entries import invalid_entries, sample, scan_entries
from forwardd.protocol.errors import ProtocolError
from forwardd.protocol.events import (
    EntriesReceived,
    Event,
    Heartbeat,
    InvalidEntries,
    PayloadReceived,
    ProtocolViolation,
    RawFrame,
    Rejected,
)
from forwardd.protocol.framing import Framer, Streamed
from forwardd.protocol.limits import Limits
from forwardd.protocol.options import read_options, read_options_from, signal_rejection
from forwardd.protocol.payload import FinishElsewhere, entries_events, packed_events
from forwardd.protocol.walker import BufferWalker, Walker
from forwardd.protocol.wire import (
    ACK_PREFIX,
    ARRAY,
    BIN,
    EXT,
    FLOAT,
    INT,
    KIND,
    MAP,
    NIL,
    STR,
    ack_reply,
    header,
)

__all__ = ["Decoder", "ack_reply"]

_TAG_CACHE_MAX = 256
_WALKER_BUFFER = 16 * 1024
_BIG_RECORD = 64 * 1024
#: One whole Message-mode request, its elements left as the bytes they came in (see Decoder.feed).
_DECODE_MESSAGE = msgspec.msgpack.Decoder(tuple[str, msgspec.Raw, msgspec.Raw, msgspec.Raw]).decode


class Decoder:
    """Turns a byte stream into :mod:`forwardd.protocol.events`. A stream that breaks the protocol ends
    with a :class:`ProtocolViolation`, after the events that came whole before it; then nothing more."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.framer = Framer(self.limits)
        self._tags: dict[bytes, str] = {}
        self._tag_strs: dict[str, str] = {}
        self.received_ns = 0
        #: Set by the connection while a handshake waits for its PING: the next frame comes back raw.
        self.expect_raw_frame = False
        #: Whether consecutive Message-mode requests of one tag in one read become one chunk.
        self.merge_messages = True
        #: Whether a read holding exactly one plain Message-mode request may take the shortcut in feed().
        self.single_message_shortcut = True
        #: Whether acks are written in JSON (the connection speaks Fluentd's JSON mode).
        self.json = False
        self._broken = False
        self._group: EntriesReceived | None = None

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held right now (bounded by the frame limit)."""
        return self.framer.buffered

    def feed(self, data: bytes, received_ns: int) -> list[Event]:
        """Add bytes from the peer; return every event they complete."""
        self.received_ns = received_ns
        events: list[Event] = []
        if not data or self._broken:
            return events
        framer = self.framer
        try:
            if (
                data[0] == 0x94  # [tag, time, record, options]
                and framer.fed == framer.start  # no frame begun
                and self.single_message_shortcut
                and not self.expect_raw_frame
                and len(data) <= framer.frame_limit
            ):
                ev = self._single_message(data)
                if ev is not None:
                    events.append(ev)
                    return events
            rest: bytes | memoryview = data
            while True:
                framer.one_frame = self.expect_raw_frame
                items, violation, rest = framer.feed(rest)
                if items:
                    try:
                        self._read(items, events)
                    except ProtocolError as exc:  # earlier in the stream than a framing error in this read
                        violation = ProtocolViolation(exc.reason, exc.detail, exc.reply)
                framer.consumed()
                if violation is not None:
                    return self._broke(events, violation)
                if not rest:
                    return events
        except ProtocolError as exc:  # from the Message shortcut: a tag over the limit
            return self._broke(events, ProtocolViolation(exc.reason, exc.detail, exc.reply))

    def _broke(self, events: list[Event], violation: ProtocolViolation) -> list[Event]:
        """The stream is broken: ``violation`` is the last event; nothing more is read."""
        self._broken = True
        self.framer = Framer(self.limits)  # what it held is worthless now: let it go
        events.append(violation)
        return events

    # --- Message mode, one request per read ---------------------------------------------------------------

    def _single_message(self, data: bytes) -> EntriesReceived | None:
        """The event of a read that is exactly one plain Message-mode request, or None to go the general way.

        docker's driver with ``fluentd-request-ack`` sends one request and waits for its ack, so most of
        its reads are one whole request. One msgspec call frames it and checks its shape, in a tenth of the
        time the Unpackers take for a read. Anything it does not take exactly as the general path
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
        kinds = KIND
        kind = kinds[data[s]]
        if (kind != EXT and kind != INT) or kinds[data[e - len(record)]] != MAP:
            return None
        ob = data[e]
        if ob == 0x80 or ob == 0xC0:  # hot path: no tuple
            ack: bytes | None = None
        elif ob == 0x81 and data.startswith(b"\xa5chunk", e + 1):
            ack = ACK_PREFIX + data[e + 7 :]
        else:
            return None
        tag = self._tag_strs.get(raw_tag)
        if tag is None:
            raw = raw_tag.encode()
            tag = self._tags.get(raw) or self._tag(raw)  # a tag over the limit: the general path's error
            if len(self._tag_strs) >= _TAG_CACHE_MAX:
                self._tag_strs.clear()
            self._tag_strs[raw_tag] = tag
        framer = self.framer  # consumed without the framer, at a frame boundary: move its offsets past it
        framer.fed += n
        framer.start = framer.base = framer.fed
        entry = b"\x92" + data[s:e]
        chunk = Chunk(tag, entry, 1, self.received_ns)
        ev = EntriesReceived(chunk, ack, "message", n, 1, 0 if ack is None else 1)
        return _checked(ev, entry) if invalid_entries(entry) else ev

    # --- whole frames -------------------------------------------------------------------------------------

    def _read(self, items: list[int | Streamed], events: list[Event]) -> None:
        """Read the frames of one feed, in order: runs of small frames at once (:meth:`_read_small`),
        then any big frame or streamed request on its own."""
        framer = self.framer
        start = framer.base  # where the first frame of this feed starts (the framer compacted to it)
        inline_max = self.limits.inline_request_size
        last = items[-1]
        if type(items[0]) is int and type(last) is int and last - start <= inline_max:
            self._read_small(items, start, events)  # type: ignore[arg-type]  # nearly always: all small
            return
        run: list[int] = []
        run_start = start
        for item in items:
            if type(item) is int and item - start <= inline_max:
                if not run:
                    run_start = start
                run.append(item)
                start = item
                continue
            if run:
                self._read_small(run, run_start, events)
                run = []
            if type(item) is int:
                self._big_frame(start, item, events)
                start = item
            else:
                assert isinstance(item, Streamed)
                events.extend(self._streamed(item))  # always the first item: start is past it already
        if run:
            self._read_small(run, run_start, events)

    def _big_frame(self, start: int, end: int, events: list[Event]) -> None:
        """A frame over the inline size: its head is checked here, the rest read in a worker thread."""
        framer = self.framer
        buf, base = framer.buf, framer.base
        first = buf[start - base]
        if KIND[first] != ARRAY:
            raise ProtocolError("not_an_array", f"top-level value starts with 0x{first:02x}")
        self._check_head(buf, start - base)
        frame = bytes(memoryview(buf)[start - base : end - base])  # one copy, not two
        events.append(PayloadReceived(frame, end - start, self.received_ns, self.limits, json=self.json))

    def _read_small(self, ends: list[int], start: int, events: list[Event]) -> None:
        """Read whole frames of at most the inline size, back to back from ``start``. Message mode (docker:
        one event per frame, hundreds of thousands per second) is handled inline with locals only; other
        modes go to :meth:`_mode`.

        Consecutive Message-mode requests of one tag become ONE EntriesReceived (up to
        ``limits.max_chunk_entries``): their entries are concatenated into one chunk and their acks into
        one reply, sent once that chunk is accepted. That keeps acks in request order and spares the
        router, the buffer and the output one hop per event. Any other event ends the group, so the order
        of replies is kept.
        """
        parts: list[bytes] = []
        acks: list[bytes] = []
        self._group = None
        try:
            self._read_small_frames(ends, start, events, parts, acks)
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
        if invalid_entries(entries):
            _checked(ev, entries)

    def _read_small_frames(
        self, ends: list[int], start: int, events: list[Event], parts: list[bytes], acks: list[bytes]
    ) -> None:
        framer = self.framer
        buf = framer.buf
        base = framer.base
        kinds = KIND
        tags = self._tags
        append = events.append
        merge = self.merge_messages
        group_max = self.limits.max_chunk_entries
        room = 0  # how many more requests the group may take
        raw_next = self.expect_raw_frame
        group: EntriesReceived | None = None
        group_tag: str | None = None
        walker = msgpack.Unpacker(
            None, raw=True, max_buffer_size=0, strict_map_key=False, read_size=_WALKER_BUFFER
        )
        walker.feed(memoryview(buf)[start - base : ends[-1] - base])
        wskip = walker.skip
        wtell = walker.tell
        wbase = start  # stream offset of the walker's tell() == 0
        for end in ends:
            first = buf[start - base]
            size = end - start
            frame_start = start
            start = end
            if first == 0xC0:
                wskip()
                if group is not None:
                    self._close_group(group, parts, acks)
                    group = self._group = None
                append(Heartbeat())
                continue
            if kinds[first] != ARRAY:
                raise ProtocolError("not_an_array", f"top-level value starts with 0x{first:02x}")
            if raw_next:
                # The handshake's PING: handed over whole, once; the connection decides what it means.
                # What follows it is framed under the full limit (if the PING is refused, it is dropped).
                self.expect_raw_frame = raw_next = False
                framer.frame_limit = self.limits.max_frame_size
                wskip()
                append(RawFrame(bytes(buf[frame_start - base : end - base])))
                continue
            n = walker.read_array_header()
            if n < 2:
                raise ProtocolError("bad_request", f"array of {n} elements")
            if kinds[buf[wbase + wtell() - base]] != STR:
                raise ProtocolError("bad_tag", "tag is not a string")
            raw_tag = walker.unpack()
            tag = tags.get(raw_tag)
            if tag is None:
                tag = self._tag(raw_tag)
            pos = wbase + wtell()
            kind = kinds[buf[pos - base]]
            if n == 4 and (kind == EXT or kind == INT):  # noqa: SIM109 - hot path, no tuple
                wskip()
                r = wbase + wtell()
                if kinds[buf[r - base]] == MAP:
                    wskip()
                    e = wbase + wtell()
                    ob = buf[e - base]
                    ack: bytes | None = None
                    if ob == 0x80 or ob == 0xC0:
                        wskip()
                    elif ob == 0x81 and buf.startswith(b"\xa5chunk", e - base + 1):
                        # {"chunk": id} is the frame's last element: the id runs to the frame's end.
                        wskip()
                        ack = ACK_PREFIX + buf[e - base + 7 : end - base]
                    else:
                        if group is not None:
                            self._close_group(group, parts, acks)
                            group = self._group = None
                        options, chunk_raw = read_options(walker, buf, wbase - base, 1)
                        events.extend(
                            self._message(buf, base, tag, n, pos, kind, r, e, options, chunk_raw, size)
                        )
                        continue
                    entry = b"\x92" + buf[pos - base : e - base]
                    if tag is group_tag and room and group is not None:
                        room -= 1
                        parts.append(entry)
                        if ack is not None:
                            acks.append(ack)
                        group.size += size
                        continue
                    if group is not None:
                        self._close_group(group, parts, acks)
                    parts.clear()
                    acks.clear()
                    parts.append(entry)
                    if ack is not None:
                        acks.append(ack)
                    group = EntriesReceived(Chunk(tag, b"", 0, 0), None, "message", size)
                    group_tag = tag
                    room = group_max - 1
                    append(group)
                    if not merge:
                        self._close_group(group, parts, acks)
                        group = None
                    self._group = group
                    continue
                if group is not None:
                    self._close_group(group, parts, acks)
                    group = self._group = None
                events.extend(
                    self._message(buf, base, tag, n, pos, kind, r, None, None, None, size, walker, wbase)
                )
                continue
            if group is not None:
                self._close_group(group, parts, acks)
                group = self._group = None
            events.extend(self._mode(walker, wbase, buf, base, tag, n, pos, kind, size))

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

    def _check_head(self, buf: bytearray, p: int) -> None:
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
        ev = EntriesReceived(Chunk(tag, entry, 1, self.received_ns), ack, "message", size)
        return [_checked(ev, entry) if invalid_entries(entry) else ev]

    def _packed(
        self,
        tag: str,
        payload: bytes,
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


def _checked(ev: EntriesReceived, entries: bytes) -> EntriesReceived:
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
