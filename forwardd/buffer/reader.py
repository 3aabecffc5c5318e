"""The delivery side of a disk queue: hand out committed records in order, track them until they are
marked delivered, move the delivery position (the ledger) and delete finished segments.

Its own module because it runs only on the event loop thread and owns everything delivery touches: the
segments as published, the read cursor, the records in flight and the ack cursor behind them.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque

import structlog

from forwardd.buffer.base import Taken
from forwardd.buffer.ledger import Ledger
from forwardd.buffer.segment import FRAME_OVERHEAD, Segment, decode_record, record_header
from forwardd.buffer.writer import WriteResult
from forwardd.model import Chunk

__all__ = ["HOT_MAX", "READ_AHEAD", "DiskTaken", "SegmentReader"]

log = structlog.get_logger("forwardd.buffer")

#: Bytes read ahead per pread on the delivery side: many chunks per syscall, little memory.
READ_AHEAD = 1024 * 1024
#: Bytes of committed, undelivered records also kept in memory for the delivery loop (see ``_hot``).
HOT_MAX = 16 * 1024 * 1024


def _in_memory(chunk: Chunk) -> int:
    """What a chunk kept in the reader's memory counts against ``hot_max``."""
    return FRAME_OVERHEAD + len(chunk.tag) + len(chunk.entries)


class DiskTaken(Taken):
    """A record handed out by a reader (``owner``); ``seg``/``start``/``end`` locate it for the ack cursor."""

    __slots__ = ("count", "end", "owner", "seg", "start")

    def __init__(
        self, chunk: Chunk, seg: Segment, start: int, end: int, count: int, owner: SegmentReader
    ) -> None:
        super().__init__(chunk)
        self.seg = seg
        self.start = start
        self.end = end
        self.count = count
        self.owner = owner


class SegmentReader:
    """Reads committed records back (from memory when it can) and keeps the delivery position.

    ``segments`` and ``ack_off`` come from recovery; the first segment is where delivery resumes.
    """

    def __init__(
        self, segments: list[Segment], ack_off: int, ledger: Ledger, queued_chunks: int, queued_bytes: int
    ) -> None:
        self.ledger = ledger
        self._segments: deque[Segment] = deque(segments)
        self._ack_off = ack_off  # offset of the first undelivered record of self._segments[0]
        self._taken: deque[DiskTaken] = deque()
        #: Finished segments being deleted in a thread (:meth:`_remove`); a queue's close waits for them.
        self.removing: set[asyncio.Future[None]] = set()
        #: The newest committed records not yet taken, as the chunks that were written (up to ``hot_max``
        #: bytes): delivery takes them from here instead of reading and decoding them back from the file.
        self._hot: deque[tuple[Segment, int, int, Chunk]] = deque()
        self._hot_bytes = 0
        self.hot_max = HOT_MAX
        self._rseg: Segment | None = self._segments[0]
        self._roff = ack_off
        self._buf = b""
        self._buf_start = 0
        self.queued_chunks = queued_chunks
        self.queued_bytes = queued_bytes
        self._written: tuple[int, int] | None = None  # the position the ledger holds
        #: Committed bytes not yet taken (what the reader still has to go through).
        self._untaken_bytes = queued_bytes

    def publish(self, res: WriteResult) -> None:
        """Make what a write committed visible to the reader (loop thread)."""
        for seg in res.created:
            self._segments.append(seg)
        ahead = self._untaken_bytes  # committed bytes the reader has not reached, before these
        for seg, end, k in res.runs:
            self._untaken_bytes += end - seg.end
            self.queued_bytes += end - seg.end
            self.queued_chunks += k
            seg.end = end
            seg.records += k
        for seg, path in res.sealed:
            seg.path = path
            seg.sealed = True
        # Only records the reader will reach within hot_max bytes are kept: behind a backlog (a restart,
        # a slow output) they would sit in memory for as long as the backlog takes to drain.
        # hot_max bounds the memory they take: their entries as they came, not their (compressed) records.
        hot, room = self._hot, self.hot_max - self._hot_bytes
        for rec in res.records:
            size = _in_memory(rec[3])
            ahead += rec[2] - rec[1]
            if size > room or ahead > self.hot_max:
                break  # the rest is read back from the file when its turn comes
            hot.append(rec)
            room -= size
        self._hot_bytes = self.hot_max - room

    def _next_segment(self, seg: Segment) -> Segment | None:
        found = False
        for s in self._segments:
            if found:
                return s
            found = s is seg
        return None

    def _fill(self, n: int) -> int | None:
        """Where ``n`` bytes at the read cursor start in the read-ahead buffer (refilled with one pread
        when they are not all in it), or None if fewer are committed. Records are decoded straight from
        the buffer: one copy of their entries, and at most ``READ_AHEAD`` (or one record) held."""
        seg = self._rseg
        assert seg is not None
        off = self._roff - self._buf_start
        if off < 0 or off + n > len(self._buf):
            avail = seg.end - self._roff
            if avail < n:
                return None
            want = min(max(READ_AHEAD, n), avail)
            self._buf = b""  # let the old buffer go before the new one is read
            self._buf = os.pread(seg.fd, want, self._roff)
            self._buf_start = self._roff
            off = 0
            if len(self._buf) < n:
                return None
        return off

    def _advance_reader(self) -> Segment | None:
        """The segment holding the next committed record, moving the cursor across sealed segments."""
        seg = self._rseg
        while seg is not None and self._roff >= seg.end:
            if not seg.sealed:
                return None
            nxt = self._next_segment(seg)
            if nxt is None:
                return None
            self._rseg, self._roff, self._buf, self._buf_start = nxt, 0, b"", 0
            seg = nxt
        return seg

    def take(self) -> DiskTaken | None:
        """The next committed record not yet taken, or None (loop thread)."""
        seg = self._advance_reader()
        if seg is None:
            return None
        start = self._roff
        hot = self._hot
        while hot:
            hseg, hstart, hend, chunk = hot[0]
            if hseg is seg and hstart == start:  # still in memory: no read, no decode
                hot.popleft()
                self._hot_bytes -= _in_memory(chunk)
                return self._hand_out(chunk, seg, start, hend, chunk.count)
            if hseg.seq > seg.seq or (hseg is seg and hstart > start):
                break  # ahead of the reader: records before it come from the file
            hot.popleft()  # behind the reader (skipped by drop_oldest): forget it
            self._hot_bytes -= _in_memory(chunk)
        hdr = self._header_at_cursor()
        if hdr is None:
            return None
        length, count = hdr
        off = self._fill(length)
        assert off is not None, "committed record shorter than its header says"
        chunk, _ = decode_record(self._buf, off)
        return self._hand_out(chunk, seg, start, start + length, count)

    def drop_next(self) -> int | None:
        """Skip the next committed record without reading its entries; its event count, or None."""
        seg = self._advance_reader()
        if seg is None:
            return None
        hdr = self._header_at_cursor()
        if hdr is None:
            return None
        length, count = hdr
        t = self._hand_out(_DROPPED, seg, self._roff, self._roff + length, count)
        self.mark_delivered(t)
        return count

    def _header_at_cursor(self) -> tuple[int, int] | None:
        """(length, event count) of the committed record at the read cursor, None if there is none."""
        off = self._fill(FRAME_OVERHEAD)
        if off is None:
            return None
        hdr = record_header(self._buf, off)
        assert hdr is not None, "a committed record has a valid header"
        return hdr

    def _hand_out(self, chunk: Chunk, seg: Segment, start: int, end: int, count: int) -> DiskTaken:
        """Move the read cursor past the record at ``start`` and track it until it is marked delivered."""
        t = DiskTaken(chunk, seg, start, end, count, self)
        self._roff = end
        self._untaken_bytes -= end - start
        self._taken.append(t)
        return t

    def mark_delivered(self, t: Taken, *, ledger: bool = True) -> bool:
        """Record ``t`` as done; move the ack cursor over the done prefix, delete finished segments.

        Takes may finish out of order (a dropped record behind one in flight); the cursor, and so the
        ledger, only ever covers a prefix of done records. With ``ledger=False`` the ledger is left to a
        later :meth:`write_ledger` (the caller batches it); returns whether the cursor moved, i.e. whether
        the ledger is now behind.
        """
        assert isinstance(t, DiskTaken)
        if t.done:
            return False
        t.done = True
        self.queued_chunks -= 1
        self.queued_bytes -= t.end - t.start
        taken = self._taken
        if not taken or not taken[0].done:
            return False
        while taken and taken[0].done:
            head = taken.popleft()
            if head.seg is not self._segments[0]:
                self._drop_finished()
            self._ack_off = head.end
        self._drop_finished()
        if ledger:
            self.write_ledger()
        return True

    def write_ledger(self, *, durable: bool = False) -> bool:
        """Bring the ledger up to the ack cursor; whether that changed what it holds."""
        pos = (self._segments[0].seq, self._ack_off)
        if pos == self._written and not durable:
            return False
        if not self.ledger.write(*pos, durable=durable):
            return False
        self._written = pos
        return True

    def _drop_finished(self) -> None:
        segs = self._segments
        while len(segs) > 1 and segs[0].sealed and self._ack_off >= segs[0].end:
            head = segs.popleft()
            self._ack_off = 0
            self.write_ledger()  # before unlink: recovery deletes segments older than the ledger's
            head.close()
            self._remove(head.path)
            if self._rseg is head:
                self._rseg, self._roff, self._buf, self._buf_start = segs[0], 0, b"", 0

    def _remove(self, path: str) -> None:
        """Delete a finished segment's file: in a thread of the loop's default executor when a loop runs,
        inline otherwise (recovery, the store used alone). Freeing 16 MiB of extents took ext4 11-15 ms
        on this machine's disk; on the loop that stalled every connection and output once a segment
        (a 14 ms pause between two HTTP requests every ~270 ms of delivery). Whenever the file goes,
        the ledger already points past it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            _unlink(path)
            return
        fut = loop.run_in_executor(None, _unlink, path)
        self.removing.add(fut)
        fut.add_done_callback(self.removing.discard)

    @property
    def segments(self) -> list[Segment]:
        return list(self._segments)

    def close(self) -> None:
        for seg in self._segments:
            seg.close()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as exc:  # left for recovery, which deletes segments older than the ledger's
        log.warning("buffer.unlink_failed", segment=path, error=str(exc))


_DROPPED = Chunk("", b"", 0, 0)
