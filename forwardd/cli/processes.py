"""The processes that run the daemon: one, in this process, or ``workers: N`` forked and supervised.

Apart from the commands because this is the part that forks, blocks and forwards signals, and sets the
exit code from how the processes ended; :mod:`forwardd.lifecycle` has the pieces they share with the daemon.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import socket
import sys

import structlog

from forwardd.app.config import Config
from forwardd.cli.usage import EXIT_FAILURE, EXIT_OK, load
from forwardd.lifecycle import (
    RELOAD_SIGNAL,
    STOP_SIGNALS,
    WORKER_RELOAD_SIGNAL,
    StopTimes,
    block_stop_signals,
    die_with_parent,
    unblock_stop_signals,
    watch_parent,
)

__all__ = ["run_worker", "run_workers"]


def _install_loop_policy() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio still works without it
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run_worker(
    config: Config,
    worker: int,
    reuse_port: bool,
    parent_watch: int | None = None,
    ops: socket.socket | None = None,
    path: str | None = None,
) -> int:
    """Run one daemon until it is stopped. ``parent_watch``: a forked worker's end of the pipe that tells
    it its parent is gone (:func:`forwardd.lifecycle.watch_parent`); ``ops``: its channel to the parent's
    operators' endpoint; ``path``: the configuration file SIGHUP re-reads (None: the built-in one)."""
    from forwardd.app import Daemon, heap

    _install_loop_policy()
    # The disk buffer's writer thread needs the GIL back the moment its fsync returns, or every ack
    # waits for the event loop to yield it: Python's default 5 ms switch interval would be added to
    # each group commit. 0.5 ms keeps the loop's throughput and the commit latency both.
    sys.setswitchinterval(0.0005)
    # Buffers of hundreds of KiB stay in the heap instead of being mapped and faulted in each time.
    heap.tune()

    async def serve(daemon: Daemon) -> None:
        if parent_watch is not None:
            watch_parent(asyncio.get_running_loop(), parent_watch, worker)
        # A forked worker gets each group signal twice (see forwardd.lifecycle): a repeat is not an abort.
        await daemon.run(
            repeat_aborts=parent_watch is None,
            watchdog=True,
            reload_from=lambda: load(path),
            reload_path=path or "<built-in>",
            # A forked worker reloads on the SIGHUP its parent forwards, once (see ReloadSignals).
            reload_only_from=os.getppid() if parent_watch is not None else None,
        )

    try:
        asyncio.run(serve(Daemon(config, worker=worker, reuse_port=reuse_port, ops_channel=ops)))
    except OSError as exc:
        structlog.get_logger("forwardd").error("forwardd.failed", error=str(exc), worker=worker)
        return EXIT_FAILURE
    finally:
        # The stop's watchdog (forwardd.lifecycle) guards the event loop's stop, which is over now (the
        # loop and its executors are closed). Left armed, it could fire while the interpreter finalizes
        # after a stop that used its whole budget, and walk thread states being freed: a stop that ended
        # well would exit by SIGSEGV (seen once, as -11, after a stop held to its deadline by a full buffer).
        faulthandler.cancel_dump_traceback_later()
    return EXIT_OK


def run_workers(config: Config, path: str | None) -> int:
    """Fork ``workers`` processes sharing each port through SO_REUSEPORT and supervise them: they die with
    this process, and stop (within ``shutdown_timeout``) when it is told to or when one of them dies. This
    process serves the operators' endpoint for all of them."""
    from forwardd.ops.workers import WorkerChannels

    try:
        channels = WorkerChannels.for_config(config)
    except OSError as exc:
        structlog.get_logger("forwardd").error("forwardd.failed", error=f"http_server: {exc}")
        return EXIT_FAILURE
    parent = os.getpid()
    # Each worker watches the read end; this process holds the only write end: its end of file means this
    # process is gone, however it went (forwardd.lifecycle).
    watch_r, watch_w = os.pipe()
    children: dict[int, int] = {}
    for i in range(config.workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - exercised through the e2e tests in a subprocess
            code = EXIT_FAILURE
            try:
                os.close(watch_w)
                die_with_parent(parent)
                ops = channels.child(i) if channels else None
                code = run_worker(config, i, reuse_port=True, parent_watch=watch_r, ops=ops, path=path)
            except BaseException:
                structlog.get_logger("forwardd").exception("forwardd.failed", worker=i)
            finally:
                os._exit(code)
        children[pid] = i
    os.close(watch_r)
    if channels:
        try:
            channels.serve()
        except Exception as exc:  # the workers run on; only the endpoint is missing, and says why
            structlog.get_logger("forwardd").error("http_server.failed", error=repr(exc))
    try:
        return _Supervisor(children, StopTimes(config.shutdown_timeout)).run()
    finally:
        if channels:
            channels.close()


class _Supervisor:
    """The parent of the workers: forwards the first stop signal, kills what is still running at the
    deadline, and stops every worker when one of them dies (the orchestrator then restarts the whole)."""

    def __init__(self, children: dict[int, int], times: StopTimes) -> None:
        self.children = children  # pid -> worker index
        self.times = times
        self.stopping = False
        self.signalled = False
        self.code = EXIT_OK
        self.log = structlog.get_logger("forwardd")

    def run(self) -> int:
        for s in STOP_SIGNALS:
            signal.signal(s, self._on_signal)
        signal.signal(signal.SIGALRM, self._on_deadline)
        signal.signal(RELOAD_SIGNAL, self._on_reload)
        unblock_stop_signals()  # a signal that came while the workers were forked is handled now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {RELOAD_SIGNAL})
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:  # pragma: no cover - every child is in self.children
                break
            worker = self.children.pop(pid, None)
            if worker is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                self.code = EXIT_FAILURE
            if not self.stopping:
                self.log.error("worker.exited", worker=worker, pid=pid, code=code)
                self.code = EXIT_FAILURE
                self._stop(signal.SIGTERM)
        signal.setitimer(signal.ITIMER_REAL, 0)
        block_stop_signals()  # a signal now, as this process exits, must not kill it by its default action
        return self.code

    def _stop(self, signum: int) -> None:
        self.stopping = True
        signal.setitimer(signal.ITIMER_REAL, self.times.parent_kill)
        self._send(signum)

    def _send(self, signum: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _on_signal(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if self.signalled:
            # Asked twice: abort. What the workers committed is on disk; their acks and drain are cut off.
            self.log.warning("workers.abort", signal=name, workers=len(self.children))
            self.code = EXIT_FAILURE
            self._send(signal.SIGKILL)
            return
        self.signalled = True
        self.log.info("workers.stopping", signal=name, workers=len(self.children), deadline=self.times.total)
        if not self.stopping:
            self._stop(signum)

    def _on_reload(self, _signum: int, _frame: object) -> None:
        """Pass SIGHUP on to each worker, once (as WORKER_RELOAD_SIGNAL): each reloads on its parent's copy
        and only logs a SIGHUP sent to it directly (one to the process group reaches it too), see
        ReloadSignals."""
        if self.stopping:
            return
        self.log.info("workers.reloading", workers=len(self.children))
        self._send(WORKER_RELOAD_SIGNAL)

    def _on_deadline(self, _signum: int, _frame: object) -> None:
        self.log.error(
            "workers.stop_deadline",
            workers=sorted(self.children.values()),
            after=round(self.times.parent_kill, 3),
            hint="killed: what they acked is on disk and is delivered at the next start",
        )
        self.code = EXIT_FAILURE
        self._send(signal.SIGKILL)
