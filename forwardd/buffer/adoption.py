"""Queues left behind by workers that no longer exist, drained by a queue of a worker that does.

With ``workers: N`` each worker has a queue directory of its own per output and per journal (see
:mod:`forwardd.storage`). When N shrinks between runs, nothing would ever deliver what the queues of the
workers that are gone still hold. A remaining worker's :class:`~forwardd.buffer.queue.DiskQueue` adopts
them: it opens each one as a store of its own (recovered like any other), hands its records out before
its own (they are older) and marks them delivered there, with the same ledger and sync rules. Nothing new
is written to an adopted queue; once all it held is delivered, its files are removed so that the next
start does not adopt it again (a crash before that finds an empty queue, or redelivers from its ledger).
"""

from __future__ import annotations

import contextlib
import os

import structlog

from forwardd.buffer.base import FsyncPolicy, Taken
from forwardd.buffer.ledger import LEDGER
from forwardd.buffer.reader import DiskTaken
from forwardd.buffer.segment import parse_segment_name
from forwardd.buffer.store import SegmentStore

__all__ = ["AdoptedQueues"]

log = structlog.get_logger("forwardd.buffer")


class AdoptedQueues:
    """The adopted stores of one queue, oldest worker first. :meth:`open`, :meth:`sync` and
    :meth:`remove` do file I/O (a thread); the rest runs on the event loop."""

    def __init__(self, name: str, directories: list[str], max_segment_size: int, fsync: FsyncPolicy) -> None:
        self.name = name
        self.directories = directories
        self.max_segment_size = max_segment_size
        self.fsync: FsyncPolicy = fsync
        self.stores: list[SegmentStore] = []

    def __bool__(self) -> bool:
        return bool(self.stores)

    def open(self) -> None:
        """Recover every adopted directory; keep those that hold something, remove the others."""
        for directory in self.directories:
            store = SegmentStore.open(directory, max_segment_size=self.max_segment_size, fsync=self.fsync)
            if store.queued_chunks:
                log.info(
                    "buffer.adopted",
                    buffer=self.name,
                    directory=directory,
                    chunks=store.queued_chunks,
                    bytes=store.queued_bytes,
                )
                self.stores.append(store)
            else:
                self.remove(store)

    def take(self) -> DiskTaken | None:
        for store in self.stores:
            t = store.take()
            if t is not None:
                return t
        return None

    def owner(self, taken: Taken) -> SegmentStore | None:
        """The adopted store ``taken`` came from, or None (it is the queue's own)."""
        if isinstance(taken, DiskTaken):
            for store in self.stores:
                if taken.owner is store.reader:
                    return store
        return None

    def write_ledgers(self) -> bool:
        moved = False
        for store in self.stores:
            moved = store.write_ledger() or moved
        return moved

    @property
    def queued_chunks(self) -> int:
        return sum(s.queued_chunks for s in self.stores)

    @property
    def queued_bytes(self) -> int:
        return sum(s.queued_bytes for s in self.stores)

    def remove(self, store: SegmentStore) -> None:
        """Close a store whose every record is delivered and delete its files (thread).

        Segments go first and the ledger last: a crash in between leaves a ledger alone, an empty queue.
        A ``quarantine/`` folder stays for a human, and so does the directory that holds it.
        """
        directory = store.directory
        store.close()
        names = os.listdir(directory)
        for name in names:
            if parse_segment_name(name) is not None:
                with contextlib.suppress(FileNotFoundError):  # a finished segment, deleted meanwhile
                    os.unlink(os.path.join(directory, name))
        try:
            os.unlink(os.path.join(directory, LEDGER))
        except FileNotFoundError:
            pass
        try:
            os.rmdir(directory)
        except OSError as exc:  # not empty: a quarantine folder, or files that are not ours
            log.info("buffer.adopted_left", buffer=self.name, directory=directory, reason=str(exc))
        log.info("buffer.adopted_drained", buffer=self.name, directory=directory)
