"""The decoder: a byte stream in, the events of the forward protocol out, without I/O.

It glues the parts: :mod:`forwardd.protocol.framing` cuts whole frames out of the stream (streaming big
PackedForward payloads), :mod:`forwardd.protocol.messages` reads runs of small frames (Message mode on its
fast paths), :mod:`forwardd.protocol.reading` the other modes. A request bigger than
``limits.inline_request_size`` is not read here: it comes out as a
:class:`~forwardd.protocol.events.PayloadReceived`, to be finished in a worker thread.
"""

from __future__ import annotations

from forwardd.protocol.errors import ProtocolError
from forwardd.protocol.events import Event, PayloadReceived, ProtocolViolation
from forwardd.protocol.framing import Framer, Streamed
from forwardd.protocol.limits import Limits
from forwardd.protocol.messages import MessageReader
from forwardd.protocol.wire import ARRAY, KIND, ack_reply

__all__ = ["Decoder", "ack_reply"]


class Decoder(MessageReader):
    """Turns a byte stream into :mod:`forwardd.protocol.events`. A stream that breaks the protocol ends
    with a :class:`ProtocolViolation`, after the events that came whole before it; then nothing more."""

    __slots__ = ("_broken",)

    def __init__(self, limits: Limits | None = None) -> None:
        super().__init__(limits)
        self._broken = False

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
                0x93 <= data[0] <= 0x94  # [tag, time, record] or [tag, time, record, options]
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
