"""The storage directory: one forwardd at a time, and where each worker keeps its queues.

Two instances on one storage directory corrupt each other's queues (issue 17: a second instance renamed
segments under the first, which then failed every write). :class:`StorageLock` makes the second one stop at
once instead: an exclusive ``flock`` on ``<storage>/forwardd.lock``, taken by the first process before it
forks its workers, so that the workers inherit it and the lock lives as long as any of them does.

With ``workers: N`` each worker has its own queue per output and per journal: worker 0 the directory itself,
worker ``k`` its ``worker-<k>`` sub-directory. When N shrinks between runs, the queues of the workers that
are gone would be left undelivered; :func:`adopted_dirs` gives each remaining worker the ones it drains
(worker ``k`` goes to worker ``k % N``).
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

__all__ = ["LOCK_FILE", "StorageLock", "StorageLocked", "adopted_dirs", "holder", "worker_dir"]

LOCK_FILE = "forwardd.lock"
_WORKER = re.compile(r"^worker-(\d+)$")


class StorageLocked(Exception):
    """Another process holds the storage directory; ``pid`` is the one it recorded (None if unknown)."""

    def __init__(self, path: str, pid: int | None) -> None:
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(f"{path} is locked by {holder}: another forwardd uses this storage directory")
        self.path = path
        self.pid = pid


class StorageLock:
    """An exclusive lock on a storage directory, held until :meth:`release` or the end of every process
    that shares the descriptor (forked workers do)."""

    def __init__(self, directory: str | Path) -> None:
        self.path = os.path.join(directory, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock now or raise :class:`StorageLocked`; never waits."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise StorageLocked(self.path, pid) from None
        except BaseException:
            os.close(fd)
            raise
        # The holder's pid, for the error the next one will print; the lock itself is the flock.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StorageLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(directory: str | Path) -> int | None:
    """The pid of the forwardd that holds ``directory`` (``forwardd reload`` signals it), or None when
    none does. Tells by taking a shared lock for an instant: it fails only while the holder lives."""
    path = os.path.join(directory, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def worker_dir(base: Path, worker: int) -> Path:
    """Where worker ``worker`` keeps the queue whose directory is ``base``."""
    return base / f"worker-{worker}" if worker else base


def adopted_dirs(base: Path, worker: int, workers: int) -> list[Path]:
    """The queues under ``base`` of workers that no longer exist (index >= ``workers``) that ``worker``
    drains: worker ``k``'s goes to worker ``k % workers``. Oldest worker index first."""
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        m = _WORKER.match(name)
        if m is None or not (base / name).is_dir():
            continue
        k = int(m.group(1))
        if k >= workers and k % workers == worker:
            found.append((k, base / name))
    return [path for _, path in sorted(found)]
