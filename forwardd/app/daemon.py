"""The daemon: builds the graph from a validated configuration and runs it.

Start order is outputs (their buffers recover from disk first), then the router, then the listeners, so
that nothing is accepted before there is somewhere safe to put it. Stop order is the reverse, as uvicorn
does it: listeners stop accepting and send the acks they owe, the router gives back what filters hold,
then each sink finishes its current write and closes its queue, all within one deadline
(``shutdown_timeout``, :mod:`forwardd.lifecycle`). A second signal aborts a single process; a worker
only logs it (see :meth:`Daemon.run`). A reload, on SIGHUP, is :mod:`forwardd.app.reloading`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import structlog

from forwardd.app import heap
from forwardd.app.build import build_labels, build_sink, wire_error_routes
from forwardd.app.config import Config
from forwardd.app.reloading import Reloading, SignalledReloads
from forwardd.buffer import BufferedSink
from forwardd.lifecycle import (
    STOP_SIGNALS,
    Deadline,
    ReloadSignals,
    StopTimes,
    block_stop_signals,
    unblock_stop_signals,
)
from forwardd.ops.attach import attach as attach_ops
from forwardd.outputs.formats import NATIVE
from forwardd.router import ROOT_LABEL, Router
from forwardd.server.listener import ForwardListener
from forwardd.server.source import listener_settings

__all__ = ["STATS_INTERVAL", "Daemon"]

log = structlog.get_logger("forwardd")


#: How often the daemon logs each source's and each output's counters (``source.stats``, ``output.stats``).
STATS_INTERVAL = 60.0


class Daemon(Reloading):
    """One process's forwardd."""

    def __init__(
        self,
        config: Config,
        *,
        worker: int = 0,
        reuse_port: bool = False,
        stats_interval: float = STATS_INTERVAL,
        ops_channel: socket.socket | None = None,
    ) -> None:
        """``ops_channel``: with ``workers: N``, this worker's pipe to the parent, which serves the
        operators' endpoint (:mod:`forwardd.ops`)."""
        super().__init__()
        self.config = config
        self.worker = worker
        self.reuse_port = reuse_port
        storage = Path(config.storage.path)
        self.sinks = {
            name: build_sink(name, o, storage, worker, config.workers) for name, o in config.outputs.items()
        }

        self.router = Router(
            build_labels(config, worker),
            self.sinks,
            root_label=ROOT_LABEL,
            dead_letter_dir=str(storage / "dead-letter"),
        )
        wire_error_routes(self.sinks, self.router, config)
        self.listeners = [
            ForwardListener(
                listener_settings(s, reuse_port=reuse_port), self.router.entry(s.label), gate=self.router.gate
            )
            for s in config.sources
        ]
        self._expiry: asyncio.Task[None] | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self.stats_interval = stats_interval
        self._started = []
        self.ops = attach_ops(self, ops_channel)

    async def start(self) -> None:
        await self.ops.start()  # first: /health answers while buffers recover, /ready says 503 until ready
        for name, sink in self.sinks.items():
            await sink.start()
            self._started.append(sink)
            log.debug("output.started", output=name)
        for f in self.router.stateful:  # what they held before a stop or a crash is held again
            await f.start()
        self._expiry = asyncio.create_task(self.router.run_expiry(1.0), name="router-expiry")
        self._stats_task = asyncio.create_task(self._report_loop(), name="stats")
        for listener in self.listeners:
            await listener.start()

    def report(self) -> None:
        """Log every source's and every output's counters: events and bytes in and out, acks, errors,
        retries, dead letters, queue size and delivery latency; the router's (unmatched tags, filter
        failures and where their events went); and each stateful filter's (docker_partial's open lines)."""
        for listener in self.listeners:
            log.info("source.stats", listener=listener.settings.name, **listener.stats.as_dict())
        for name, sink in self.sinks.items():
            out = sink.output.stats
            extra = {"output_stats": dict(out.as_dict())} if out is not None else {}
            log.info("output.stats", output=name, **sink.stats.as_dict(), **extra)
        log.info("router.stats", **self.router.stats.as_dict())
        for f in self.router.stateful:
            log.info("filter.stats", filter=f.name, **f.stats().as_dict())

    async def _report_loop(self) -> None:
        trim = heap.trimmer()
        waited = 0.0
        while True:
            await asyncio.sleep(heap.TRIM_INTERVAL)
            waited += heap.TRIM_INTERVAL
            if trim is not None:
                trim(0)
            if waited >= self.stats_interval:
                waited = 0.0
                self.report()

    async def stop(self, grace: float | None = None, *, deadline: Deadline | None = None) -> None:
        """Stop within ``deadline`` (or ``grace`` seconds from now; default ``shutdown_timeout``), every
        step sharing it (:mod:`forwardd.lifecycle`): listeners send the acks they owe, filters give back
        what they hold, outputs deliver what they can; the rest stays queued on disk."""
        if deadline is None:
            deadline = Deadline.after(self.config.shutdown_timeout if grace is None else grace)
        retiring = list(self._retiring.items())
        await asyncio.gather(*(listener.stop(deadline.soft_left()) for listener in self.listeners))
        if retiring:  # replaced by a reload and still draining: they share the deadline
            _done, late = await asyncio.wait([t for _, t in retiring], timeout=deadline.soft_left())
            for listener, task in retiring:
                if task in late:
                    for session in list(listener.sessions):
                        session.abort()
            if late:
                await asyncio.wait(late, timeout=1.0)
        for task_ in (self._expiry, self._stats_task):
            if task_ is not None:
                task_.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task_
        drained = self.router.drain()
        if drained is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(drained, deadline.soft_left())
        for f in self.router.stateful:  # after the drain was accepted: what they keep on disk is closed
            try:
                await f.stop()
            except Exception as exc:  # one filter failing to close must not keep the outputs open
                log.error("filter.stop_failed", filter=f.name, error=repr(exc))

        async def stop_sink(sink: BufferedSink) -> None:
            try:
                await sink.stop(deadline)
            except Exception as exc:  # one output failing to close must not keep the others open
                log.error("output.stop_failed", output=sink.name, error=repr(exc))

        # Together, so that one output that is down does not use up the time of the others; but those
        # that may hand what they reject to the @ERROR label's outputs before these, which must still
        # take it (else it goes to the dead-letter folder instead).
        first = [sink for sink in self._started if sink.error_route is not None]
        for wave in (first, [sink for sink in self._started if sink not in first]):
            await asyncio.gather(*(stop_sink(sink) for sink in reversed(wave)))
        self.report()
        await self.ops.stop()
        # Let the callbacks of what the sinks rejected while closing run (sessions consume those
        # outcomes) before the loop goes away.
        await asyncio.sleep(0)
        log.info("forwardd.stopped", worker=self.worker)

    async def run(
        self,
        ready: asyncio.Event | None = None,
        *,
        repeat_aborts: bool = True,
        watchdog: bool = False,
        reload_from: Callable[[], Config] | None = None,
        reload_path: str = "<config>",
        reload_only_from: int | None = None,
    ) -> None:
        """Run until SIGTERM or SIGINT, then stop within ``shutdown_timeout`` (:mod:`forwardd.lifecycle`).

        A second signal aborts at once when ``repeat_aborts``; a worker passes False: the signal its
        parent forwards is the second copy of one the process group already got, not a second request.
        ``watchdog`` (the command line's processes, never a test's) ends the process if the stop overruns.
        ``reload_from``: SIGHUP re-reads the configuration with it (``reload_path`` names it in logs) and
        reloads (:class:`SignalledReloads`); SIGHUP must be blocked in every thread (:class:`ReloadSignals`);
        a worker passes its parent's pid as ``reload_only_from``.
        """
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        signals = STOP_SIGNALS
        times = StopTimes(self.config.shutdown_timeout)
        deadline: list[Deadline] = []

        def on_signal(signum: int) -> None:
            name = signal.Signals(signum).name
            if stop.is_set():
                if repeat_aborts:
                    log.warning("forwardd.abort", signal=name)
                    raise SystemExit(1)
                log.info("forwardd.stop_signal_repeated", signal=name, worker=self.worker)
                return
            deadline.append(Deadline.after(times.daemon))
            if watchdog:
                # Ends the process if the stop hangs anyway: a C thread, it needs neither GIL nor loop.
                faulthandler.dump_traceback_later(times.watchdog, exit=True)
            log.info("forwardd.stopping", signal=name, worker=self.worker, deadline=round(times.daemon, 3))
            stop.set()

        for s in signals:
            loop.add_signal_handler(s, on_signal, s)
        hup: ReloadSignals | None = None
        reloads: SignalledReloads | None = None
        if reload_from is not None:
            reloads = SignalledReloads(self, reload_from, reload_path, stop)
            hup = ReloadSignals(loop, reloads.request, only_from=reload_only_from, worker=self.worker)
            hup.start()
        unblock_stop_signals()  # one that came before (see block_stop_signals) is handled now
        try:
            await self.start()
            log.info(
                "forwardd.ready",
                worker=self.worker,
                listeners=[
                    ls.address if ls.port is None else f"{ls.address}:{ls.port}" for ls in self.listeners
                ],
                outputs=sorted(self.sinks),
                native_json_lines=NATIVE,
            )
            if not NATIVE:
                log.warning(
                    "forwardd.native_missing",
                    hint="forwardd.outputs._jsonl was not built (no C compiler at install?): JSON lines "
                    "outputs use the slower Python path",
                )
            if ready is not None:
                ready.set()
            await stop.wait()
        finally:
            if not deadline:  # ended by something else than a signal (a start that failed)
                deadline.append(Deadline.after(times.daemon))
            if hup is not None:
                hup.close()
            if reloads is not None:
                await reloads.finish(deadline[0])
            await self.stop(deadline=deadline[0])
            # Blocked again before the handlers go: a signal now, as the process exits, must not kill it
            # by its default action (exit code -15 after a clean stop).
            block_stop_signals()
            for s in signals:
                loop.remove_signal_handler(s)
