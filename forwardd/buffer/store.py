"""The synchronous core of the disk queue: one directory's segments, put together from its parts.

:mod:`~forwardd.buffer.recovery` repairs the directory at start, :mod:`~forwardd.buffer.writer` appends and
commits, :mod:`~forwardd.buffer.reader` hands records out and moves the delivery position, which
:mod:`~forwardd.buffer.ledger` keeps on disk. This module opens and closes them together; the queue
(:mod:`forwardd.buffer.queue`) talks only to :class:`SegmentStore`.

Thread split: :meth:`SegmentStore.write` and :meth:`SegmentStore.sync` touch only the writer and run one at
a time: on the single writer thread, or on the event loop thread for small commits, never both at once
(the queue counts the jobs it gave the thread). Everything else runs on the event loop thread. Written
records become visible to the loop side only through :meth:`SegmentStore.publish` of the
:class:`WriteResult` that ``write`` returned, so the two sides share no mutable state besides the
(append-only) files and their descriptors.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import structlog

from forwardd.buffer.base import FsyncPolicy, Taken
from forwardd.buffer.ledger import Ledger
from forwardd.buffer.reader import DiskTaken, SegmentReader
from forwardd.buffer.recovery import recover
from forwardd.buffer.segment import Compression, Segment
from forwardd.buffer.writer import DEFAULT_MAX_SEGMENT_SIZE, SegmentWriter, WriteError, WriteResult
from forwardd.model import Chunk

__all__ = ["DEFAULT_MAX_SEGMENT_SIZE", "DiskTaken", "SegmentStore", "WriteError", "WriteResult"]

log = structlog.get_logger("forwardd.buffer")


class SegmentStore:
    """Segments on disk plus a delivery cursor; build with :meth:`open`, which recovers what is there."""

    def __init__(
        self, directory: str, fsync: FsyncPolicy, ledger: Ledger, writer: SegmentWriter, reader: SegmentReader
    ) -> None:
        self.directory = directory
        self.fsync: FsyncPolicy = fsync
        self.ledger = ledger
        self.writer = writer
        self.reader = reader

    @classmethod
    def open(
        cls,
        directory: str,
        *,
        max_segment_size: int = DEFAULT_MAX_SEGMENT_SIZE,
        fsync: FsyncPolicy = "always",
        compression: Compression = "none",
    ) -> SegmentStore:
        """Recover ``directory``: verify every record, truncate torn tails, quarantine damaged segments."""
        t0 = time.monotonic()
        ledger = Ledger(directory)
        rec = recover(directory, ledger, fsync)
        writer = SegmentWriter(directory, max_segment_size, fsync, rec.next_seq, compression)
        segments = rec.segments
        if not segments or segments[-1].sealed:
            segments.append(writer.create_segment())
        writer.start(segments[-1])
        reader = SegmentReader(segments, rec.ack_off, ledger, rec.queued_chunks, rec.queued_bytes)
        reader.write_ledger(durable=fsync != "never")
        log.info(
            "buffer.recovered",
            directory=directory,
            segments=len(segments),
            chunks=rec.queued_chunks,
            bytes=rec.queued_bytes,
            truncated_bytes=rec.truncated_bytes,
            quarantined=rec.quarantined,
            ms=round((time.monotonic() - t0) * 1000, 1),
        )
        return cls(directory, fsync, ledger, writer, reader)

    # Writer side (writer thread, or inline on the loop thread; never both at once).

    def write(self, chunks: Sequence[Chunk]) -> WriteResult:
        """Append ``chunks`` and commit them per the fsync policy. Raises WriteError."""
        return self.writer.write(chunks)

    def sync(self) -> None:
        """fsync the current segment ("interval" policy)."""
        self.writer.sync()

    # Loop side.

    def publish(self, res: WriteResult) -> None:
        """Make what a write committed visible to the reader."""
        self.reader.publish(res)

    def take(self) -> DiskTaken | None:
        """The next committed record not yet taken, or None."""
        return self.reader.take()

    def drop_next(self) -> int | None:
        """Skip the next committed record without reading its entries; its event count, or None."""
        return self.reader.drop_next()

    def mark_delivered(self, t: Taken, *, ledger: bool = True) -> bool:
        """Record ``t`` as done (see :meth:`SegmentReader.mark_delivered`); whether the cursor moved."""
        return self.reader.mark_delivered(t, ledger=ledger)

    def write_ledger(self) -> bool:
        """Bring the ledger up to the cursor (see ``mark_delivered(ledger=False)``); whether it moved."""
        return self.reader.write_ledger()

    def sync_ledger(self) -> None:
        """Make the ledger's last write durable (any thread, never beside :meth:`close`)."""
        self.ledger.sync()

    @property
    def queued_chunks(self) -> int:
        return self.reader.queued_chunks

    @property
    def queued_bytes(self) -> int:
        return self.reader.queued_bytes

    @property
    def hot_max(self) -> int:
        """Bytes of the newest committed records the reader keeps in memory."""
        return self.reader.hot_max

    @hot_max.setter
    def hot_max(self, value: int) -> None:
        self.reader.hot_max = value

    @property
    def segments(self) -> list[Segment]:
        return self.reader.segments

    def close(self) -> None:
        """Flush and release every file (after the writer thread is done)."""
        try:
            self.writer.finish()
            self.reader.write_ledger(durable=self.fsync != "never")
        finally:
            self.ledger.close()
            self.reader.close()
            self.writer.close()
