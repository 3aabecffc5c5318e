"""When a disk queue's delivery position reaches the page cache, and when it reaches the disk.

Its own module because the two clocks decide what a crash costs, and neither may slow delivery:
- once per delivery round (not per chunk: a round marks many chunks) the ledger is rewritten in place,
  so a ``kill -9`` redelivers only what was in flight;
- at most ``LEDGER_SYNC_SECONDS`` after that position moved, it is fdatasync'd on a thread of the loop's
  default executor (neither the event loop nor the writer thread waits for it), so a power loss
  redelivers about the last second of deliveries, not everything since the start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from forwardd.buffer.store import SegmentStore

__all__ = ["LEDGER_SYNC_SECONDS", "LedgerCheckpoints"]

#: The longest the delivery position on disk lags behind delivery, as a power loss would find it.
LEDGER_SYNC_SECONDS = 1.0


class LedgerCheckpoints:
    """Writes and syncs the ledgers of ``stores()``: a queue's own store and those it adopted, none once
    the queue is closing (its close writes them itself, durably)."""

    def __init__(self, stores: Callable[[], list[SegmentStore]]) -> None:
        self._stores = stores
        self.sync_seconds = LEDGER_SYNC_SECONDS
        self._due = False
        #: Set when a ledger moved; :meth:`run` makes it durable.
        self._moved = asyncio.Event()
        #: The sync in progress (a thread), if any: whoever closes a ledger waits for it first.
        self.job: asyncio.Future[None] | None = None

    def moved(self) -> None:
        """A delivery moved a cursor: rewrite the ledgers once the loop comes round (once per round)."""
        if not self._due:
            self._due = True
            asyncio.get_running_loop().call_soon(self.write)

    def write(self) -> None:
        self._due = False
        moved = False
        for store in self._stores():
            moved = store.write_ledger() or moved
        if moved:
            self._moved.set()

    def kick(self) -> None:
        """A ledger was written elsewhere (drop_oldest): sync it too."""
        self._moved.set()

    async def run(self) -> None:
        """Sync at most every ``sync_seconds`` while the position moves (a task; cancel it to stop)."""
        loop = asyncio.get_running_loop()
        while True:
            await self._moved.wait()
            self._moved.clear()
            if self._due:  # a round's write is still scheduled: write it now, so the sync covers it
                self.write()
                self._moved.clear()
            self.job = loop.run_in_executor(None, _sync, self._stores())
            # Shielded: when the task is cancelled the sync goes on, and wait_idle() waits for it.
            await asyncio.shield(self.job)
            await asyncio.sleep(self.sync_seconds)

    async def wait_idle(self) -> None:
        """Return once no sync is running (before a ledger's descriptor is closed)."""
        if self.job is not None:
            await asyncio.wait([self.job])


def _sync(stores: list[SegmentStore]) -> None:
    for store in stores:
        store.sync_ledger()
