"""One budget of buffered bytes for all the connections of a listener.

Each connection holds what its peer sent that is not yet handed on: an incomplete frame (up to the frame
limit), a big request being finished in a worker thread, its chunks waiting for their turn on the loop. One
peer is bounded by the frame limit; a hundred peers sending near-limit frames together are bounded only by
this: when the connections hold more than ``limit`` bytes, those that hold some stop reading until the total
falls back under it. The connection that has held bytes the longest always goes on, so that something
completes and frees memory: there is no deadlock, and what is held stays within ``limit`` plus one read per
connection. Episodes are logged once (``buffer_budget.exhausted`` / ``buffer_budget.recovered``) and
counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from forwardd.server.stats import SourceStats

__all__ = ["BufferBudget", "Holder"]

#: Reading resumes when the total falls under this share of the limit (not at once: no flapping).
_RESUME_AT = 0.9


class Holder(Protocol):
    """A connection, as the budget sees it."""

    def budget_resumed(self) -> None:
        """The budget has room again: the connection may read."""
        ...


class BufferBudget:
    """See the module docstring. ``limit`` 0 means no budget."""

    def __init__(self, limit: int, listener: str, stats: SourceStats, log: Callable[..., Any]) -> None:
        self.limit = limit
        self.listener = listener
        self.stats = stats
        self._log = log
        self.total = 0
        self._held: dict[Holder, int] = {}  # in the order they began to hold bytes
        self._waiting: dict[Holder, None] = {}  # paused, in the order they were
        self._since = 0.0  # when the current episode began (0: none)
        self._paused_in_episode = 0

    def update(self, holder: Holder, held: int) -> bool:
        """Record what ``holder`` holds now; False when it must stop reading until it is resumed."""
        old = self._held.get(holder, 0)
        if held:
            self._held[holder] = held  # an update keeps its place in the order
        elif old:
            del self._held[holder]
        self.total += held - old
        if self.limit <= 0:
            return True
        if self.total <= self.limit or not held or next(iter(self._held)) is holder:
            self._waiting.pop(holder, None)
            if held < old:
                self._wake()
            return True
        if holder not in self._waiting:
            self._waiting[holder] = None
            self.stats.budget_pauses += 1
            self._paused_in_episode += 1
            if not self._since:
                self._since = time.monotonic()
                self._log(
                    "warning",
                    "buffer_budget.exhausted",
                    listener=self.listener,
                    limit=self.limit,
                    buffered=self.total,
                    connections=len(self._held),
                )
        return False

    def release(self, holder: Holder) -> None:
        """The connection is gone, with what it held."""
        self._waiting.pop(holder, None)
        self.update(holder, 0)
        self._wake()

    def _wake(self) -> None:
        if not self._waiting:
            return
        if self.total > self.limit * _RESUME_AT:
            # Still short of room: only the connection that has held bytes longest goes on.
            oldest = next(iter(self._held), None)
            if oldest is not None and oldest in self._waiting:
                del self._waiting[oldest]
                oldest.budget_resumed()
            return
        waiting, self._waiting = self._waiting, {}
        for holder in waiting:
            holder.budget_resumed()
        if self._since:
            self._log(
                "info",
                "buffer_budget.recovered",
                listener=self.listener,
                limit=self.limit,
                buffered=self.total,
                paused_connections=self._paused_in_episode,
                paused_for=round(time.monotonic() - self._since, 3),
            )
            self._since = 0.0
            self._paused_in_episode = 0
