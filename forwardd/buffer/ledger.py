"""The delivery position of a disk queue on disk (``ledger.json``): where delivery resumes after a restart.

Its own module because it is the one piece of the queue's state that is rewritten rather than appended,
so how it is written decides what a crash costs: see :meth:`Ledger.write`.
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

    def write(self, seq: int, offset: int, *, durable: bool = False) -> None:
        """Best effort: a ledger that cannot be written (disk full) only means redelivery after a crash.

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
            return
        if self._failing:
            self._failing = False
            log.info("buffer.ledger_write_recovered", directory=self.directory)

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
