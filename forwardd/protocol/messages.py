"""Message mode at the speed docker sends it: hundreds of thousands of one-event requests per second.

Two fast paths, each held byte for byte equal to the general one by property tests
(tests/protocol/test_properties.py, test_message_merge.py): a read that is exactly one request is framed and
checked by one msgspec call; whole frames of one read are walked in one pass, and consecutive requests of one
tag become one chunk, their acks one reply. That pass is a C loop (``message_run`` in _entries.c) over runs of
plain requests, where the Python loop spent two thirds of the event loop's time with docker's traffic
(1.7x the events per second without acks); the frames it leaves (heartbeats, other modes, other options,
violations) and every frame when the extension is not built go through the Python loop below, which the C
loop is held equal to.
"""

from __future__ import annotations

import msgpack
import msgspec

from forwardd.model import Chunk
from forwardd.protocol.entries import invalid_entries, message_run
from forwardd.protocol.errors import ProtocolError
from forwardd.protocol.events import EntriesReceived, Event, Heartbeat, RawFrame
from forwardd.protocol.limits import Limits
from forwardd.protocol.options import read_options
from forwardd.protocol.reading import TAG_CACHE_MAX, RequestReader, checked
from forwardd.protocol.wire import ACK_PREFIX, ARRAY, EXT, FLOAT, INT, KIND, MAP, NIL, STR

__all__ = ["MessageReader"]

_WALKER_BUFFER = 16 * 1024
#: One whole Message-mode request, its elements left as the bytes they came in (see _single_message): with
#: an option element, and without (what fluent-logger for Python sends).
_DECODE_MESSAGE = msgspec.msgpack.Decoder(tuple[str, msgspec.Raw, msgspec.Raw, msgspec.Raw]).decode
_DECODE_MESSAGE3 = msgspec.msgpack.Decoder(tuple[str, msgspec.Raw, msgspec.Raw]).decode
#: An option map whose keys are all text (anything else is left to the general path).
_DECODE_OPTIONS = msgspec.msgpack.Decoder(dict[str, msgspec.Raw]).decode
#: Option keys that change what a Message request means: the general path judges those.
_MEANINGFUL = frozenset({"fluent_signal", "metadata", "compressed"})
#: Whether a value of this kind (see wire.KIND) is a time on the fast paths (a v1.5 wrapped time is not).
_TIME = tuple(k in (INT, EXT, FLOAT, NIL) for k in range(9))


class _General(Exception):  # a signal to take the general path, not an error
    """The options of a request need the general path."""


def _option_ack(options: bytes | msgspec.Raw) -> bytes | None:
    """The ack an option map asks for, or None; raises _General for anything the general path must judge
    (a key that changes the request's meaning, a key that is not text, an option that is not a map)."""
    try:
        opts = _DECODE_OPTIONS(options)
    except Exception:
        raise _General from None
    if not _MEANINGFUL.isdisjoint(opts):
        raise _General
    chunk = opts.get("chunk")
    return None if chunk is None else ACK_PREFIX + bytes(chunk)


class MessageReader(RequestReader):
    """The Message-mode fast paths, on top of the general reading of requests."""

    __slots__ = (
        "_group",
        "_tag_strs",
        "expect_raw_frame",
        "merge_messages",
        "native_messages",
        "single_message_shortcut",
    )

    def __init__(self, limits: Limits | None = None) -> None:
        super().__init__(limits)
        self._tag_strs: dict[str, str] = {}
        #: Set by the connection while a handshake waits for its PING: the next frame comes back raw.
        self.expect_raw_frame = False
        #: Whether consecutive Message-mode requests of one tag in one read become one chunk.
        self.merge_messages = True
        #: Whether a read holding exactly one plain Message-mode request may take the shortcut in feed().
        self.single_message_shortcut = True
        #: Whether runs of plain requests are read by the C loop (message_run), when it is built.
        self.native_messages = message_run is not None
        self._group: EntriesReceived | None = None

    def _single_message(self, data: bytes) -> EntriesReceived | None:
        """The event of a read that is exactly one plain Message-mode request, or None to go the general way.

        docker's driver with ``fluentd-request-ack`` sends one request and waits for its ack, so most of
        its reads are one whole request. One msgspec call frames it and checks its shape, in a tenth of the
        time the Unpackers take for a read. Anything it does not take exactly as the general path
        would (other option keys, float times, bad UTF-8 in the tag, deep nesting, trailing bytes) is
        left to that path, which gives the same result as before (a property test holds the two equal).
        """
        n = len(data)
        try:
            if data[0] == 0x94:
                raw_tag, t, record, options = _DECODE_MESSAGE(data)
                e = n - len(options)
            else:  # [tag, time, record]
                raw_tag, t, record = _DECODE_MESSAGE3(data)
                e = n
        except Exception:  # whatever msgspec refuses, the general path judges
            return None
        s = e - len(record) - len(t)
        kinds = KIND
        if not _TIME[kinds[data[s]]] or kinds[data[e - len(record)]] != MAP:
            return None
        ack: bytes | None = None
        if e < n:
            ob = data[e]
            if ob == 0x80 or ob == 0xC0:  # hot path: no option, no decoding
                pass
            elif ob == 0x81 and data.startswith(b"\xa5chunk", e + 1):
                ack = ACK_PREFIX + data[e + 7 :]
            else:
                try:
                    ack = _option_ack(options)
                except _General:
                    return None
        tag = self._tag_strs.get(raw_tag)
        if tag is None:
            raw = raw_tag.encode()
            tag = self._tags.get(raw) or self._tag(raw)  # a tag over the limit: the general path's error
            if len(self._tag_strs) >= TAG_CACHE_MAX:
                self._tag_strs.clear()
            self._tag_strs[raw_tag] = tag
        framer = self.framer  # consumed without the framer, at a frame boundary: move its offsets past it
        framer.fed += n
        framer.start = framer.base = framer.fed
        entry = b"\x92" + data[s:e]
        chunk = Chunk(tag, entry, 1, self.received_ns)
        ev = EntriesReceived(chunk, ack, "message", n, 1, 0 if ack is None else 1)
        return checked(ev, entry) if invalid_entries(entry) else ev

    # --- whole frames -------------------------------------------------------------------------------------

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
        """Give the group its chunk and its acks; ``ev.requests`` and ``ev.acks`` were counted as requests
        joined it (a part is one request, or a run of them from the C loop)."""
        entries = parts[0] if len(parts) == 1 else b"".join(parts)
        ev.chunk = Chunk(ev.chunk.tag, entries, ev.requests, self.received_ns)
        if acks:
            ev.ack = acks[0] if len(acks) == 1 else b"".join(acks)
        if invalid_entries(entries):
            checked(ev, entries)

    def _read_small_frames(
        self, ends: list[int], start: int, events: list[Event], parts: list[bytes], acks: list[bytes]
    ) -> None:
        framer = self.framer
        buf = framer.buf
        base = framer.base
        kinds = KIND
        is_time = _TIME
        tags = self._tags
        append = events.append
        merge = self.merge_messages
        group_max = self.limits.max_chunk_entries
        room = 0  # how many more requests the group may take
        raw_next = self.expect_raw_frame
        group: EntriesReceived | None = None
        group_tag: str | None = None
        group_raw: bytes | None = None  # the group's tag as it came (the C loop compares those)
        native = message_run if self.native_messages else None
        # The walker reads the frames the C loop leaves (or all of them without it). It is made when the
        # first such frame comes, and skipped forward over the frames the C loop took since.
        walker: msgpack.Unpacker | None = None
        wskip = wtell = None
        wbase = wat = 0  # stream offset of the walker's tell() == 0; index of the frame it is at
        nends = len(ends)
        i = 0
        while i < nends:
            if native is not None and not raw_next:
                runs, j, continued = native(
                    buf, start - base, ends, i, base, group_raw if group is not None else None, room,
                    group_max if merge else 1,
                )  # fmt: skip
                if j > i:
                    for raw_tag, entries, count, ackb, acked, gsize in runs:
                        if continued:
                            continued = False
                            assert group is not None
                            parts.append(entries)
                            if acked:
                                acks.append(ackb)
                            group.requests += count
                            group.acks += acked
                            group.size += gsize
                            room -= count
                            continue
                        if group is not None:
                            self._close_group(group, parts, acks)
                            group = self._group = None
                        tag = tags.get(raw_tag)
                        if tag is None:
                            tag = self._tag(raw_tag)
                        parts.clear()
                        acks.clear()
                        parts.append(entries)
                        if acked:
                            acks.append(ackb)
                        group = EntriesReceived(Chunk(tag, b"", 0, 0), None, "message", gsize, count, acked)
                        group_tag, group_raw = tag, raw_tag
                        room = group_max - count
                        append(group)
                        self._group = group
                    if not merge and group is not None:
                        self._close_group(group, parts, acks)
                        group = self._group = None
                    start = ends[j - 1]
                    i = j
                    if i == nends:
                        break
            end = ends[i]
            if walker is None:
                walker = msgpack.Unpacker(
                    None, raw=True, max_buffer_size=0, strict_map_key=False, read_size=_WALKER_BUFFER
                )
                walker.feed(memoryview(buf)[start - base : ends[-1] - base])
                wskip = walker.skip
                wtell = walker.tell
                wbase, wat = start, i
            assert wskip is not None
            assert wtell is not None
            while wat < i:
                wskip()
                wat += 1
            wat = i + 1  # the code below reads frame i whole, whatever the way
            i += 1
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
            if (n == 4 or n == 3) and is_time[kind]:  # the hot path: no tuple built
                wskip()
                r = wbase + wtell()
                if kinds[buf[r - base]] == MAP:
                    wskip()
                    e = wbase + wtell()
                    ack: bytes | None = None
                    if n == 4:
                        ob = buf[e - base]
                        if ob == 0x80 or ob == 0xC0:
                            wskip()
                        elif ob == 0x81 and buf.startswith(b"\xa5chunk", e - base + 1):
                            # {"chunk": id} is the frame's last element: the id runs to the frame's end.
                            wskip()
                            ack = ACK_PREFIX + buf[e - base + 7 : end - base]
                        else:
                            options, chunk_raw = read_options(walker, buf, wbase - base, 1)
                            if options:  # a signal, metadata: what the request means changes
                                if group is not None:
                                    self._close_group(group, parts, acks)
                                    group = self._group = None
                                events.extend(
                                    self._message(
                                        buf, base, tag, n, pos, kind, r, e, options, chunk_raw, size
                                    )
                                )
                                continue
                            if chunk_raw is not None:  # {"chunk", "size"} in any order, say
                                ack = ACK_PREFIX + chunk_raw
                    entry = b"\x92" + buf[pos - base : e - base]
                    if tag is group_tag and room and group is not None:
                        room -= 1
                        parts.append(entry)
                        group.requests += 1
                        if ack is not None:
                            acks.append(ack)
                            group.acks += 1
                        group.size += size
                        continue
                    if group is not None:
                        self._close_group(group, parts, acks)
                    parts.clear()
                    acks.clear()
                    parts.append(entry)
                    if ack is not None:
                        acks.append(ack)
                    group = EntriesReceived(
                        Chunk(tag, b"", 0, 0), None, "message", size, 1, 0 if ack is None else 1
                    )
                    group_tag, group_raw = tag, raw_tag
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
