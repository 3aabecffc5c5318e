"""The daemon: builds the graph from a validated configuration and runs it.

Start order is outputs (their buffers recover from disk first), then the router, then the listeners, so
that nothing is accepted before there is somewhere safe to put it. Stop order is the reverse, as uvicorn
does it: listeners stop accepting and send the acks they owe, the router gives back what filters hold,
then each sink finishes its current write and closes its queue, all within one deadline
(``shutdown_timeout``, :mod:`forwardd.lifecycle`). A second signal aborts a single process; a worker
only logs it (see :meth:`Daemon.run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import faulthandler
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import structlog

from forwardd.app import heap
from forwardd.app.build import build_labels, build_sink, wire_error_routes
from forwardd.app.config import Config
from forwardd.app.reload import fixed_changes, plan_reload
from forwardd.buffer import BufferedSink, DiskQueue
from forwardd.config import ConfigError
from forwardd.errors import ChunkRejected
from forwardd.filters.base import Filter
from forwardd.lifecycle import (
    STOP_SIGNALS,
    Deadline,
    ReloadSignals,
    StopTimes,
    block_stop_signals,
    unblock_stop_signals,
)
from forwardd.model import Chunk
from forwardd.ops.attach import attach as attach_ops
from forwardd.outputs.formats import NATIVE
from forwardd.router import ROOT_LABEL, Route, Router, RouteTable, RoutingError
from forwardd.server.listener import ForwardListener
from forwardd.server.source import listener_settings
from forwardd.server.tls import server_context

__all__ = ["RELOAD_WAIT", "STATS_INTERVAL", "Daemon"]

log = structlog.get_logger("forwardd")


#: How often the daemon logs each source's and each output's counters (``source.stats``, ``output.stats``).
STATS_INTERVAL = 60.0
#: The longest a reload waits for a write in progress of an output it rebuilds or removes, and for what a
#: stateful filter it removes gives back to be accepted.
RELOAD_WAIT = 5.0


def _not_yet(chunk: Chunk) -> None:
    """The ingest of a listener a reload has bound but not yet opened: never called (it accepts nothing
    until its label's routes are in place)."""
    raise ChunkRejected("source not ready", permanent=False)


class Daemon:
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
        self.config = config
        self.worker = worker
        self.reuse_port = reuse_port
        storage = Path(config.storage.path)
        self.sinks: dict[str, BufferedSink] = {
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
        #: Listeners a reload replaced or removed, while their connections drain.
        self._retiring: dict[ForwardListener, asyncio.Task[None]] = {}
        self._reload_lock = asyncio.Lock()
        self._expiry: asyncio.Task[None] | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self.stats_interval = stats_interval
        self._started: list[BufferedSink] = []
        self.ops = attach_ops(self, ops_channel)

    def _keep_running_filters(self, labels: dict[str, list[Route]], old: Config, new: Config) -> None:
        """In ``labels`` (built for ``new``), a stateful filter with the same settings at the same place
        (label, route, position) as in ``old`` is the running one, with what it holds."""
        running = {id(f) for f in self.router.stateful}
        for label, built in labels.items():
            if label not in self.router.table.routes:
                continue
            before = old.label_routes(label)
            compiled = self.router.table.routes[label]
            after = new.label_routes(label)
            for ri, route in enumerate(built):
                if ri >= len(before) or ri >= len(compiled):
                    break
                filters: list[Filter] = list(route.filters)
                for fi, f_old in enumerate(compiled[ri].filters):
                    if (
                        id(f_old) in running
                        and fi < len(filters)
                        and before[ri].filters[fi] == after[ri].filters[fi]
                    ):
                        filters[fi] = f_old
                built[ri] = dataclasses.replace(route, filters=tuple(filters))

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

    # --- reload ---------------------------------------------------------------------------------------

    async def reload(self, new: Config, *, source: str = "<config>") -> bool:
        """Run ``new`` in place of the running configuration without closing a client connection
        (:mod:`forwardd.app.reload` says what may change). False, with ``config.reload_failed`` logged,
        when it cannot: the running configuration then goes on untouched. One reload at a time."""
        async with self._reload_lock:
            try:
                return await self._reload(new, source)
            except Exception as exc:  # a bug here must not take the running configuration down
                log.error(
                    "config.reload_failed",
                    path=source,
                    worker=self.worker,
                    error=f"{type(exc).__name__}: {exc}",
                    exc_info=exc,
                )
                return False

    def _refuse(self, source: str, errors: list[str]) -> bool:
        log.error(
            "config.reload_failed",
            path=source,
            worker=self.worker,
            errors=errors,
            hint="the running configuration goes on unchanged",
        )
        return False

    async def _reload(self, new: Config, source: str) -> bool:
        old = self.config
        fixed = fixed_changes(old, new)
        if fixed:
            return self._refuse(source, [f"cannot change on reload (restart instead): {p}" for p in fixed])
        plan = plan_reload(old, new)
        storage = Path(new.storage.path)
        # 1. Build everything, touching nothing that runs: any error here refuses the reload.
        fresh_sinks: dict[str, BufferedSink] = {}
        for name in plan.outputs_added:
            fresh_sinks[name] = build_sink(name, new.outputs[name], storage, self.worker, new.workers)
        for name in plan.outputs_rebuilt:
            fresh_sinks[name] = build_sink(
                name, new.outputs[name], storage, self.worker, new.workers, queue=self.sinks[name].queue
            )
        sinks = {name: fresh_sinks.get(name) or self.sinks[name] for name in new.outputs}
        journals: set[tuple[str, int, int]] = set()
        labels = build_labels(new, self.worker, journals)
        self._keep_running_filters(labels, old, new)
        try:
            table = RouteTable(labels, sinks, root_label=ROOT_LABEL)
        except RoutingError as exc:
            return self._refuse(source, [str(exc)])
        by_name = {ls.settings.name: ls for ls in self.listeners}
        sources = {src.name: src for src in new.sources}
        fresh: dict[str, ForwardListener] = {}
        for name in [*plan.sources_added, *plan.sources_taken_over, *plan.sources_moved]:
            settings = listener_settings(sources[name], reuse_port=self.reuse_port)
            if settings.tls is not None:
                try:
                    server_context(settings.tls)
                except (OSError, ValueError) as exc:
                    return self._refuse(source, [f"sources.{name}.tls: {exc}"])
            was = by_name.get(name)
            fresh[name] = ForwardListener(
                settings, _not_yet, stats=was.stats if was is not None else None, gate=self.router.gate
            )
        # 2. Bind the new addresses, not accepting yet; then recover the added outputs' queues.
        bound: list[ForwardListener] = []
        started: list[BufferedSink] = []
        try:
            for name, listener in fresh.items():
                if name not in plan.take_over:
                    await listener.start(serve=False)
                    bound.append(listener)
            for name in plan.outputs_added:
                await fresh_sinks[name].start()
                started.append(fresh_sinks[name])
        except Exception as exc:
            for listener in bound:
                await listener.stop(0.0)
            for sink in started:
                await sink.stop(Deadline.after(1.0))
            return self._refuse(source, [f"{type(exc).__name__}: {exc}"])
        # 3. From here it is the new configuration. Stateful filters that go or change give back what
        # they hold (through their old routes) and close their journal before their successor opens it,
        # and their successors recover it before the first chunk reaches them: one not started yet would
        # hold a piece in memory only, acked without its journal. What a journal keeps stays in it only
        # for a successor at the same place (a changed setting: the line completes whole there); a filter
        # that is removed or moved gives back all it holds, since nothing would open its journal again.
        # Meanwhile the router keeps the chunks that come (their acks wait, no connection is closed).
        running = set(self.router.stateful)
        kept = {f for routes in labels.values() for r in routes for f in r.filters if f in running}
        leaving = [f for f in self.router.stateful if f not in kept]
        succeeded = {
            f
            for compiled, pos, f in self.router.table.stateful
            if (compiled.label, compiled.index, pos) in journals
        }
        self.router.hold()
        try:
            if leaving:
                released = [self.router.drain_filters([f], keep=f in succeeded) for f in leaving]
                drained = [r for r in released if r is not None]
                if drained:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(asyncio.gather(*drained), RELOAD_WAIT)
                for f in leaving:
                    try:
                        await f.stop()
                    except Exception as exc:
                        log.error("filter.stop_failed", filter=f.name, error=repr(exc))
            for _, _, f in table.stateful:
                if f not in kept:
                    await f.start()
        finally:
            self.config = new
            self.sinks = sinks
            self.router.replace(labels, sinks)
        wire_error_routes(self.sinks, self.router, new)
        # 4. Sources: new addresses accept; a changed source on its old address takes over the socket;
        # what is replaced or removed stops accepting and drains its connections as on a stop.
        listeners: list[ForwardListener] = []
        for src in new.sources:
            listener = fresh.get(src.name) or by_name[src.name]
            if src.name in fresh:
                listener.ingest = self.router.entry(src.label)
                gone = plan.take_over.get(src.name)
                if gone is not None:
                    await listener.start(take_from=by_name[gone])
                else:
                    await listener.serve()
            listeners.append(listener)
        for name in [*plan.sources_removed, *plan.sources_taken_over, *plan.sources_moved]:
            self._retire_listener(by_name[name])
        self.listeners = listeners
        # 5. Outputs: a changed one is a new output over the same queue, open all along; a removed one
        # closes its queue, which stays on disk for when an output of that name comes back.
        for name in plan.outputs_rebuilt:
            old_sink = self._replace_started(name, fresh_sinks[name])
            gathered, works = await old_sink.retire(RELOAD_WAIT)
            await fresh_sinks[name].take_over(gathered, works)
        for name in plan.outputs_removed:
            old_sink = self._replace_started(name, None)
            await old_sink.retire(RELOAD_WAIT)
            queue = old_sink.queue
            left_chunks, left_bytes = queue.queued_chunks, queue.queued_bytes
            await queue.close()
            log.warning(
                "output.removed",
                output=name,
                worker=self.worker,
                left_chunks=left_chunks,
                left_bytes=left_bytes,
                queue=getattr(queue, "directory", None),
                hint=(
                    "its queue stays on disk and is delivered when an output of this name is configured again"
                    if isinstance(queue, DiskQueue)
                    else "a memory buffer: what it held is lost"
                ),
            )
        self._started.extend(fresh_sinks[name] for name in plan.outputs_added)
        log.info("config.reloaded", path=source, worker=self.worker, **plan.as_dict())
        return True

    def _replace_started(self, name: str, sink: BufferedSink | None) -> BufferedSink:
        """Take the running sink ``name`` out of the started list (its successor ``sink`` in its place)."""
        index = next(i for i, s in enumerate(self._started) if s.name == name)
        old = self._started[index]
        if sink is None:
            del self._started[index]
        else:
            self._started[index] = sink
        return old

    def _retire_listener(self, listener: ForwardListener) -> None:
        """Stop accepting now; let its connections send the acks they owe and close, as on a stop."""
        task = asyncio.create_task(listener.stop(self.config.shutdown_timeout), name="listener-retire")
        self._retiring[listener] = task
        task.add_done_callback(lambda _t: self._retiring.pop(listener, None))

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
        :meth:`reload` s; SIGHUP must be blocked in every thread (:class:`ReloadSignals`); a worker passes
        its parent's pid as ``reload_only_from``.
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

        reloads: list[asyncio.Task[None]] = []
        again = [False]

        async def reload_loop() -> None:
            assert reload_from is not None
            while True:
                again[0] = False
                try:
                    new = await asyncio.to_thread(reload_from)
                except ConfigError as exc:
                    self._refuse(reload_path, str(exc).splitlines())
                except Exception as exc:
                    self._refuse(reload_path, [f"{type(exc).__name__}: {exc}"])
                else:
                    await self.reload(new, source=reload_path)
                if not again[0] or stop.is_set():
                    return

        def on_reload(sender: int) -> None:
            if stop.is_set():
                return
            log.info("config.reloading", path=reload_path, sender=sender, worker=self.worker)
            if reloads and not reloads[-1].done():
                again[0] = True  # once more after the one in progress: it may have read the file before
                return
            reloads.append(asyncio.create_task(reload_loop(), name="reload"))

        for s in signals:
            loop.add_signal_handler(s, on_signal, s)
        hup = None
        if reload_from is not None:
            hup = ReloadSignals(loop, on_reload, only_from=reload_only_from, worker=self.worker)
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
            if reloads and not reloads[-1].done():  # finish the reload in progress: it is bounded
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(reloads[-1]), deadline[0].soft_left())
            await self.stop(deadline=deadline[0])
            # Blocked again before the handlers go: a signal now, as the process exits, must not kill it
            # by its default action (exit code -15 after a clean stop).
            block_stop_signals()
            for s in signals:
                loop.remove_signal_handler(s)
