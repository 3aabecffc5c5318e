"""Framing: cutting the byte stream into whole top-level msgpack values, in bounded memory.

The bytes of frames not yet whole are kept in ``buf`` (stream offset ``base`` at ``buf[0]``). An Unpacker,
the skipper, only ``skip()``s through them to tell where each frame ends; it resumes where it stopped, so a
frame that arrives in many reads is framed in linear time, and it keeps only what it has not yet skipped
(a frame of many small values costs ``buf`` plus one read). It exists only while a frame is incomplete:
an idle connection holds no buffer at all.

A (Compressed)PackedForward declares its payload's length up front. Once an incomplete frame is
``limits.stream_from`` bytes long, its head is read: if it is ``[tag, str|bin payload, ...]`` the payload
streams into ``buf`` without any Unpacker seeing it (a frame near the limit costs its size, not 3-4 times
it), and only the option elements after it are read with an Unpacker. A payload that would take the frame
past the frame limit streams by without being kept at all (discard mode), so that the request can still be
acked and dropped instead of being resent forever. Anything else that outgrows the limit is fatal.

What comes out of :meth:`Framer.feed`, in stream order: the end offset of each whole frame (the frame is
``buf[start - base : end - base]``, ``start`` being the previous end), and a :class:`Streamed` for each
request read in stream or discard mode.
"""

from __future__ import annotations

import msgpack

from forwardd.protocol.entries import frame_ends
from forwardd.protocol.errors import FrameTooLarge, ProtocolError
from forwardd.protocol.events import ProtocolViolation
from forwardd.protocol.limits import Limits
from forwardd.protocol.wire import ARRAY, BIN, STR, header

__all__ = ["Framer", "Streamed"]

_FEED_SLICE = 1 << 20
_SKIPPER_BUFFER = 16 * 1024


class Streamed:
    """A (Compressed)PackedForward read in stream mode: its tag's raw bytes, its payload (None when it was
    discarded for being over the frame limit), the raw bytes of the ``elements_after`` elements that
    followed the payload, and the request's size on the wire."""

    __slots__ = ("elements_after", "options", "payload", "size", "tag")

    def __init__(
        self, tag: bytes, payload: bytes | bytearray | None, options: bytes, elements_after: int, size: int
    ) -> None:
        self.tag = tag
        self.payload = payload
        self.options = options
        self.elements_after = elements_after
        self.size = size


class _Stream:
    """A request being streamed: where its payload starts and ends (stream offsets), how many elements
    follow it, and whether the payload is kept."""

    __slots__ = (
        "begun", "discard", "elements_after", "options", "payload_end", "payload_start", "start", "tag",
    )  # fmt: skip

    def __init__(
        self, tag: bytes, start: int, payload_start: int, payload_end: int, after: int, discard: bool
    ) -> None:
        self.tag = tag
        self.start = start
        self.payload_start = payload_start
        self.payload_end = payload_end
        self.elements_after = after
        self.discard = discard
        self.options = bytearray()
        self.begun = False


class Framer:
    """Whole frames out of a byte stream; see the module docstring."""

    __slots__ = (
        "__weakref__", "_looked", "_skip_base", "_skipper", "_stream", "base", "buf", "fed", "frame_limit",
        "limits", "one_frame", "skipped_bytes", "start",
    )  # fmt: skip

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        #: The limit on one frame; the decoder lowers it until the handshake's PING has come.
        self.frame_limit = limits.max_frame_size
        #: Hand out one frame, then stop (the PING: what follows it is framed under the limit it lifts).
        self.one_frame = False
        self.buf = bytearray()
        self.base = 0  # stream offset of buf[0]
        self.fed = 0  # stream offset of the end of what was fed
        self.start = 0  # stream offset where the first frame not yet whole starts
        self._skipper: msgpack.Unpacker | None = None
        self._skip_base = 0  # stream offset of the skipper's tell() == 0
        self._stream: _Stream | None = None
        self._looked = False  # whether the head of the incomplete frame was read already
        #: Bytes that went through the skipper (the Message shortcut's test watches it stay 0).
        self.skipped_bytes = 0

    @property
    def buffered(self) -> int:
        """Bytes of the incomplete frame held now (bounded by the frame limit)."""
        if self._stream is not None:
            kept = 0 if self._stream.discard else self.fed - self.base
            return kept + len(self._stream.options)
        return self.fed - self.start

    def feed(
        self, data: bytes | memoryview
    ) -> tuple[list[int | Streamed], ProtocolViolation | None, memoryview]:
        """Add bytes; return what they complete, how the stream broke if it did (after those), and the
        bytes not taken yet. The caller handles the frames, calls :meth:`consumed`, then feeds the rest:
        the framer stops there when it switches to stream mode, which changes its buffer.

        The break is returned as plain data, never as the exception raised to find it: an exception kept in
        a variable holds its traceback, whose frames hold the variable (a cycle keeping this framer and its
        buffers alive until the cycle collector runs)."""
        items: list[int | Streamed] = []
        view = memoryview(data)
        try:
            while view:
                if self._stream is not None:
                    view = self._feed_stream(view, items)
                    if self.one_frame and items:
                        return items, None, view
                    continue
                # Never hand the skipper more of the current frame than the limit: a frame over it must
                # not complete (and be accepted) just because it arrived in one read; it is the same
                # frame whatever the split. Once the limit is reached unfinished, it is too large.
                limit = self.frame_limit
                take = min(_FEED_SLICE, self.start + limit - self.fed)
                piece, view = view[:take], view[take:]
                self.buf += piece
                self.fed += len(piece)
                self._frames(piece, items)
                if self.one_frame and items:
                    return items, None, self._give_back(items, view)
                partial = self.fed - self.start
                if partial:
                    if not self._looked and partial >= min(self.limits.stream_from, limit):
                        self._look()
                        if self._stream is not None:
                            return items, None, view
                    if partial >= limit:
                        raise FrameTooLarge("frame_too_large", f"frame over {limit} bytes")
        except ProtocolError as exc:
            return items, ProtocolViolation(exc.reason, exc.detail, exc.reply), memoryview(b"")
        if self.fed == self.start:
            self._skipper = None  # between frames it holds nothing worth keeping: let it go
        return items, None, view

    def _give_back(self, items: list[int | Streamed], view: memoryview) -> memoryview:
        """Keep the first frame of ``items`` only: the bytes after it are not taken (they come back)."""
        end = items[0]
        assert isinstance(end, int)
        del items[1:]
        rest = bytes(memoryview(self.buf)[end - self.base :]) + bytes(view)
        del self.buf[end - self.base :]
        self.fed = self.start = end
        self._skipper = None
        return memoryview(rest)

    def consumed(self) -> None:
        """The caller is done with the whole frames handed out: their bytes may go."""
        used = self.start - self.base
        if used > 0:
            if used == len(self.buf):
                self.buf = bytearray()  # an empty bytearray holds no allocation
            else:
                try:
                    del self.buf[:used]
                except BufferError:  # a view of it is still alive somewhere: leave that one be
                    self.buf = self.buf[used:]
            self.base = self.start

    def _frames(self, piece: memoryview, items: list[int | Streamed]) -> None:
        skipper = self._skipper
        if skipper is not None:  # a frame begun in an earlier read: the skipper resumes it
            skipper.feed(piece)
            self.skipped_bytes += len(piece)
            try:
                skipper.skip()
            except msgpack.OutOfData:
                return
            except (ValueError, msgpack.StackError) as exc:
                raise ProtocolError("bad_msgpack", str(exc) or type(exc).__name__) from None
            end = self._skip_base + skipper.tell()
            items.append(end)
            self.start = end
            self._looked = False
            self._skipper = None
        # From a frame boundary: every whole frame at once, then a skipper for the one not yet whole.
        ends, tail = frame_ends(self.buf, self.start - self.base, self.base)
        if ends:
            items += ends
            self.start = ends[-1]
            self._looked = False
        if tail == 1:
            cap = self.limits.max_frame_size + 2 * _FEED_SLICE
            skipper = self._skipper = msgpack.Unpacker(None, max_buffer_size=cap, read_size=_SKIPPER_BUFFER)
            partial = memoryview(self.buf)[self.start - self.base :]
            skipper.feed(partial)
            self.skipped_bytes += len(partial)
            self._skip_base = self.start
            try:
                skipper.skip()  # it cannot finish (the scan said so); it only takes in what it can
            except msgpack.OutOfData:
                pass
        elif tail:
            raise ProtocolError("bad_msgpack", "StackError" if tail == 3 else "FormatError")

    # --- stream mode ----------------------------------------------------------------------------------

    def _look(self) -> None:
        """Read the head of the incomplete frame; switch to stream mode if it is a PackedForward."""
        buf = self.buf
        p = self.start - self.base
        arr = header(buf, p)
        if arr is None:
            return  # not all there yet: look again after the next read
        if arr[0] != ARRAY or arr[1] < 2:
            self._looked = True
            return
        p += arr[2]
        tag = header(buf, p)
        if tag is None or (tag[0] == STR and p + tag[2] + tag[1] > len(buf)):
            return
        if tag[0] != STR:
            self._looked = True
            return
        raw_tag = bytes(buf[p + tag[2] : p + tag[2] + tag[1]])
        p += tag[2] + tag[1]
        payload = header(buf, p)
        if payload is None:
            return
        self._looked = True
        if payload[0] not in (STR, BIN):
            return
        payload_start = self.base + p + payload[2]
        payload_end = payload_start + payload[1]
        discard = payload_end - self.start > self.frame_limit
        if discard and self.one_frame:
            # A frame awaited whole (the handshake's PING) has nothing to ack: streaming it past would
            # only let an unauthenticated peer keep the connection busy for the size it announced.
            raise FrameTooLarge("frame_too_large", f"frame over {self.frame_limit} bytes")
        self._stream = _Stream(raw_tag, self.start, payload_start, payload_end, arr[1] - 2, discard)
        self._skipper = None  # it holds a copy of what it was fed: no more of that

    def _feed_stream(self, view: memoryview, items: list[int | Streamed]) -> memoryview:
        s = self._stream
        assert s is not None
        if not s.begun:
            # Earlier frames are consumed now (see feed): the buffer holds this request alone.
            s.begun = True
            buf = self.buf
            if self.fed > s.payload_end:  # the payload is all here: what follows it is option bytes
                s.options += buf[s.payload_end - self.base :]
                del buf[s.payload_end - self.base :]
            if s.discard:  # what is held of the payload goes now, the rest will stream past
                self.buf = bytearray()
                self.base = min(s.payload_end, self.fed)
        if self.fed < s.payload_end:
            take = min(len(view), s.payload_end - self.fed)
            if s.discard:
                self.base = self.fed + take
            else:
                self.buf += view[:take]
            self.fed += take
            view = view[take:]
            if self.fed < s.payload_end:
                return view
        # The payload is behind us: collect the elements after it (the option map). Their bytes are
        # bounded as they were before stream mode: by what is left of the frame limit, and at least by
        # max_option_size (what is read of the options of a request over the limit, to ack it).
        limit = self.frame_limit
        max_opt = self.limits.max_option_size
        prefix = s.payload_end - s.start
        cap = max_opt if s.discard else max(max_opt, limit - prefix)
        add = view[: max(cap - len(s.options), 0)]
        s.options += add
        view = view[len(add) :]
        probe = msgpack.Unpacker(None, max_buffer_size=max(cap, 1))
        probe.feed(s.options)
        try:
            for _ in range(s.elements_after):
                probe.skip()
        except msgpack.OutOfData:
            if len(s.options) >= cap:
                raise FrameTooLarge("frame_too_large", "option map after an oversized payload") from None
            self.fed = s.payload_end + len(s.options)
            return view
        except (ValueError, msgpack.StackError) as exc:
            raise ProtocolError("bad_msgpack", str(exc) or type(exc).__name__) from None
        used = probe.tell()
        size = prefix + used
        if size > limit and used > max_opt:
            raise FrameTooLarge("frame_too_large", "option map after an oversized payload")
        # What the options buffer holds beyond them is the next frames': hand it back to the framing.
        rest = bytes(s.options[used:]) + bytes(view)
        self.fed = s.payload_end + used
        payload = None
        if not s.discard and size <= limit:
            payload = _take_tail(self.buf, s.payload_start - self.base)
        items.append(Streamed(s.tag, payload, bytes(s.options[:used]), s.elements_after, size))
        self._stream = None
        self.buf = bytearray()
        self.base = self.start = self.fed
        self._looked = False
        return memoryview(rest)


def _take_tail(buf: bytearray, start: int) -> bytearray:
    """``buf`` from ``start`` on, taken over rather than copied: the framing lets go of it right after.

    A payload near the frame limit is ~64 MiB; copying it into ``bytes`` here cost ~60 ms of the event
    loop per frame (fresh pages included), paid even for a request then rejected for its options (a bogus
    codec), so peers pushing big frames stalled every other connection's acks. Dropping a bytearray's
    prefix only moves its start; what needs ``bytes`` copies the slices it keeps later, in the worker
    thread that finishes big requests.
    """
    try:
        del buf[:start]
    except BufferError:  # a view of it is still alive somewhere: copy, as before
        return bytearray(memoryview(buf)[start:])
    return buf
