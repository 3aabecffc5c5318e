"""How a forwardd process stops: one deadline shared by every step, each stop signal acted on once, and
workers that never outlive their parent.

Docker and Swarm send SIGTERM, wait ``stop_grace_period`` (10 s by default) and then SIGKILL. A stop that
runs past it ends in a kill: safe for what was acked (it is on disk), but the acks still owed and the
delivery in progress are cut off at an arbitrary point. Before this module each step of the stop had its
own fixed wait (a listener's grace, a drain, a write in progress, Kafka's flush: 5-10 s each, one after the
other), so an output that was down made a stop take 23 s. Now the whole stop has one budget,
``shutdown_timeout`` (8 s by default), measured from the signal; each step takes what it needs of what
is left (:class:`Deadline`), and what is not delivered by then stays in the durable queue.

Where the budget goes (:class:`StopTimes`, all from the signal): the daemon's own stop ends ``margin``
before the end; a watchdog (``faulthandler``: a C thread, it needs no GIL and no event loop) ends the
process half-way through the margin if the stop hangs anyway (it prints every thread's stack, exit code
1); with ``workers: N`` the parent kills a worker still running a quarter of the margin before the end.
A kill loses nothing acked.

Signals. With ``workers: N`` a SIGTERM sent to the process group (a terminal's Ctrl-C, ``kill -TERM
-pgid``, an init that signals the group) reaches the parent and every worker; the parent forwards the one
it got, so each worker gets two. A worker acts on the first and only logs the others: a repeat must not
abort a drain. A second signal aborts only a single process (a human pressing Ctrl-C twice) or the parent
(then it kills the workers). A signal that comes between ``fork`` and the moment a worker's event loop
handles signals would kill the worker by its default action: :func:`block_stop_signals` blocks them
before the fork (the child inherits the mask) and the daemon unblocks them once its handlers are in place,
so such a signal waits and is then handled like any other.

Parent death. A worker asks the kernel for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``, Linux).
That signal fires when the *thread* that forked exits, and is lost if the parent died before the worker
asked for it; so the worker also checks its parent's pid right after asking, and watches a pipe whose only
write end the parent holds (:func:`watch_parent`): its end of file means the parent is gone, however it
went. Each of these sends the worker a SIGTERM, which it handles like the operator's: a clean stop within
the deadline, and the port is free.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

__all__ = [
    "RELOAD_SIGNAL",
    "STOP_SIGNALS",
    "Deadline",
    "ReloadSignals",
    "StopTimes",
    "block_reload_signal",
    "block_stop_signals",
    "die_with_parent",
    "unblock_stop_signals",
    "watch_parent",
]

log = structlog.get_logger("forwardd")

#: The signals that stop forwardd.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: The signal that reloads the configuration (see ReloadSignals).
RELOAD_SIGNAL = signal.SIGHUP
#: How the parent of ``workers: N`` passes a SIGHUP on to each worker: a real-time signal, because those
#: queue, where a second SIGHUP that comes while one is pending merges into it (and its sender is lost).
WORKER_RELOAD_SIGNAL: int = signal.SIGRTMIN + 1
#: The largest share of the budget kept back, at the end, for the process to exit after the daemon stopped.
MAX_MARGIN = 0.5
#: The largest share of a stop kept for closing queues and outputs once delivery was cut off.
MAX_CLOSE_RESERVE = 1.0

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class StopTimes:
    """Where a stop of ``total`` seconds (``shutdown_timeout``) puts its limits, in seconds from the
    signal (see the module doc)."""

    total: float

    @property
    def margin(self) -> float:
        return min(MAX_MARGIN, self.total / 10)

    @property
    def daemon(self) -> float:
        """The daemon's own stop (listeners, drain, queues, outputs) ends by then."""
        return self.total - self.margin

    @property
    def watchdog(self) -> float:
        """A process still stopping then is ended by its watchdog."""
        return self.total - self.margin / 2

    @property
    def parent_kill(self) -> float:
        """The parent kills the workers still running then."""
        return self.total - self.margin / 4


class Deadline:
    """The moment (``time.monotonic``) a stop must be over, shared by each of its steps.

    ``soft`` comes ``reserve`` seconds earlier: until then listeners send acks and outputs deliver; what
    follows it (closing queues and outputs, which do not wait on anyone) has the reserve.
    """

    __slots__ = ("at", "soft", "total")

    def __init__(self, at: float, soft: float, total: float) -> None:
        self.at = at
        self.soft = soft
        self.total = total

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        now = time.monotonic()
        reserve = min(MAX_CLOSE_RESERVE, seconds / 4)
        return cls(now + seconds, now + seconds - reserve, seconds)

    def left(self) -> float:
        """Seconds until the end (0 once past it)."""
        return max(0.0, self.at - time.monotonic())

    def soft_left(self) -> float:
        """Seconds until the end of delivering and acking (0 once past it)."""
        return max(0.0, self.soft - time.monotonic())


def block_stop_signals() -> None:
    """Hold SIGTERM and SIGINT pending from now on (the mask is inherited by ``fork``): see the module doc.
    The process that handles them calls :func:`unblock_stop_signals` once its handlers are installed."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def unblock_stop_signals() -> None:
    """Let SIGTERM and SIGINT in; one that came while they were blocked is delivered now."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def die_with_parent(parent: int) -> None:
    """In a worker right after ``fork``: get a SIGTERM when the parent (pid ``parent``) dies.

    A parent that died before the request took effect is seen by the pid check that follows it (the worker
    has been handed to another process by then): the SIGTERM is sent at once. The signal is blocked until
    the worker's loop handles it (:func:`block_stop_signals`), so it is never lost nor fatal.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        except (OSError, AttributeError) as exc:  # the pipe watch still covers it
            log.warning("worker.pdeathsig_unavailable", error=str(exc))
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def watch_parent(loop: asyncio.AbstractEventLoop, fd: int, worker: int) -> None:
    """Send this process a SIGTERM when the read end ``fd`` of the parent's pipe reaches its end: the
    parent, which holds the only write end, is gone."""

    def gone() -> None:
        try:
            data = os.read(fd, 1)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            return  # the parent never writes; nothing to act on
        loop.remove_reader(fd)
        os.close(fd)
        log.warning("worker.parent_gone", worker=worker)
        os.kill(os.getpid(), signal.SIGTERM)

    os.set_blocking(fd, False)
    loop.add_reader(fd, gone)


def block_reload_signal() -> None:
    """Hold SIGHUP pending in this thread and every thread and process started from it, for
    :class:`ReloadSignals` to take: called first thing by the command line, before any thread exists (a
    thread that does not block it would be killed by its default action)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {RELOAD_SIGNAL, WORKER_RELOAD_SIGNAL})


class ReloadSignals:
    """SIGHUP, taken by a thread that waits for it (``sigtimedwait``), which tells who sent it.

    Why not the loop's signal handler: with ``workers: N`` a SIGHUP sent to the process group reaches the
    parent and every worker, and the parent forwards the one it got; each worker must reload once. A
    worker (``only_from``: its parent's pid) acts only on :data:`WORKER_RELOAD_SIGNAL` from its parent,
    and logs a SIGHUP sent to it directly. Two SIGHUPs would not do: one that comes while another is
    pending merges into it, so the parent's copy could be lost behind the group's. The signals must be
    blocked in every thread (:func:`block_reload_signal`), so that only this one takes them.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_reload: Callable[[int], None],
        *,
        only_from: int | None = None,
        worker: int = 0,
    ) -> None:
        self.loop = loop
        self.on_reload = on_reload
        self.only_from = only_from
        self.worker = worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="forwardd-sighup", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            info = signal.sigtimedwait({RELOAD_SIGNAL, WORKER_RELOAD_SIGNAL}, 0.2)
            if info is None:
                continue
            sender = info.si_pid
            if self.only_from is None:
                acts = info.si_signo == RELOAD_SIGNAL
            else:
                acts = info.si_signo == WORKER_RELOAD_SIGNAL and sender == self.only_from
            if acts:
                self.loop.call_soon_threadsafe(self.on_reload, sender)
            elif info.si_signo == RELOAD_SIGNAL:
                self.loop.call_soon_threadsafe(self._ignored, sender)

    def _ignored(self, sender: int) -> None:
        log.info(
            "worker.reload_signal_ignored",
            worker=self.worker,
            sender=sender,
            hint="a worker reloads when its parent forwards SIGHUP: signal the parent (the pid in the "
            "storage lock), as `forwardd reload` does",
        )
