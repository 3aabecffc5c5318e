"""The delivery position of a disk queue on disk (``ledger.json``): where delivery resumes after a restart.

Its own module because it is the one piece of the queue's state that is rewritten rather than appended,
so how it is written and synced decides what a crash costs: a ``kill -9`` redelivers what was in flight
(:meth:`Ledger.write`, after every delivery round), a power loss about a second more (:meth:`Ledger.sync`).
"""

from __future__ import annotations

import os

import orjson
import structlog

from forwardd.buffer.segment import atomic_write

__all__ = ["LEDGER", "Ledger"]

log = structlog.get_logger("forwardd.buffer")

LEDGER = "ledger.json"
#: Fixed width, so that an in-place overwrite always covers the previous content exactly.
_FMT = b'{"seq": %20d, "offset": %20d}\n'


class Ledger:
    """``ledger.json`` of one queue: everything before ``offset`` of segment ``seq`` is delivered."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, LEDGER)
        self._fd: int | None = None
        self._failing = False
        self._sync_failing = False
        #: Successful :meth:`sync` calls (for tests and stats).
        self.syncs = 0

    def read(self) -> tuple[int, int]:
        """(segment seq, offset) delivered so far; a missing or unreadable ledger means "nothing"."""
        try:
            with open(self.path, "rb") as f:
                data = orjson.loads(f.read())
            return int(data["seq"]), int(data["offset"])
        except FileNotFoundError:
            return 0, 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("buffer.ledger_unreadable", directory=self.directory, error=str(exc))
            return 0, 0

    def write(self, seq: int, offset: int, *, durable: bool = False) -> bool:
        """Best effort (False when it failed): a ledger that cannot be written (disk full) only means
        redelivery after a crash.

        This runs after every delivery round, on the event loop: a rename per delivery cost ~0.5 ms there.
        So the ledger has a fixed width and is overwritten in place with one small pwrite at offset 0,
        which a kill cannot tear (it lies within one page and one sector). Only ``durable`` writes (start
        and close) go through write-temp-fsync-rename.
        """
        data = _FMT % (seq, offset)
        try:
            if durable:
                self._close_fd()
                atomic_write(self.path, data, durable=True)
            else:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
                os.pwrite(self._fd, data, 0)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                log.warning("buffer.ledger_write_failed", directory=self.directory, error=str(exc))
            return False
        if self._failing:
            self._failing = False
            log.info("buffer.ledger_write_recovered", directory=self.directory)
        return True

    def sync(self) -> None:
        """Make the last :meth:`write` durable (any thread; the queue calls it about once a second).

        An fdatasync of the page that :meth:`write` overwrites: the file keeps its size and blocks, so it
        flushes one data block and commits nothing to the filesystem journal (0.1 ms here; replacing the
        file by a renamed copy took 0.5-2 ms and two journal commits). The content lies within the first
        sector, which a disk writes whole or not at all, the assumption PostgreSQL makes for pg_control.
        Best effort like :meth:`write`: a failure only widens what a power loss redelivers.
        """
        fd = self._fd
        if fd is None:
            return
        try:
            os.fdatasync(fd)
        except OSError as exc:
            if not self._sync_failing:
                self._sync_failing = True
                log.warning("buffer.ledger_sync_failed", directory=self.directory, error=str(exc))
            return
        self.syncs += 1
        if self._sync_failing:
            self._sync_failing = False
            log.info("buffer.ledger_sync_recovered", directory=self.directory)

    def reset(self, seq: int, offset: int) -> None:
        """Durably set the position, or raise: recovery relies on it before it moves segments."""
        self._close_fd()
        atomic_write(self.path, _FMT % (seq, offset), durable=True)

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self._close_fd()
