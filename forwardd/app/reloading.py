"""The daemon's hot reload: a new configuration in place of the running one, no client connection closed.

What may change and what changed is :mod:`forwardd.app.reload`'s; here it is done to a running
:class:`~forwardd.app.daemon.Daemon`, in the order that keeps every ack's promise: everything new is built
and bound aside first (an error refuses the reload and touches nothing), then the router holds the chunks
that come while stateful filters hand over, then the switch, then what was replaced drains and retires.
Its own module so that the daemon reads as build, start, report, stop; it is a mixin because a reload
replaces the daemon's own parts (its configuration, sinks, listeners), which the class below declares.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path

import structlog

from forwardd.app.build import build_labels, build_sink, wire_error_routes
from forwardd.app.config import Config
from forwardd.app.reload import ReloadPlan, fixed_changes, plan_reload
from forwardd.buffer import BufferedSink, DiskQueue
from forwardd.config import ConfigError
from forwardd.errors import ChunkRejected
from forwardd.filters.base import Filter
from forwardd.lifecycle import Deadline
from forwardd.model import Chunk
from forwardd.router import ROOT_LABEL, Route, Router, RouteTable, RoutingError
from forwardd.server.listener import ForwardListener
from forwardd.server.source import listener_settings
from forwardd.server.tls import server_context

__all__ = ["RELOAD_WAIT", "Reloading", "SignalledReloads"]

log = structlog.get_logger("forwardd")

#: The longest a reload waits for a write in progress of an output it rebuilds or removes, and for what a
#: stateful filter it removes gives back to be accepted.
RELOAD_WAIT = 5.0


def _not_yet(chunk: Chunk) -> None:
    """The ingest of a listener a reload has bound but not yet opened: never called (it accepts nothing
    until its label's routes are in place)."""
    raise ChunkRejected("source not ready", permanent=False)


class Reloading:
    """The reload of the daemon it is mixed into (:class:`~forwardd.app.daemon.Daemon`)."""

    # The daemon's parts a reload reads, and replaces (set by the daemon's __init__).
    config: Config
    worker: int
    reuse_port: bool
    sinks: dict[str, BufferedSink]
    router: Router
    listeners: list[ForwardListener]
    #: The sinks started, in start order: the stop closes them in reverse.
    _started: list[BufferedSink]

    def __init__(self) -> None:
        #: Listeners a reload replaced or removed, while their connections drain (a stop waits for them).
        self._retiring: dict[ForwardListener, asyncio.Task[None]] = {}
        self._reload_lock = asyncio.Lock()

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

    async def reread(self, load: Callable[[], Config], path: str) -> bool:
        """Re-read the configuration with ``load`` (in a thread: it reads a file) and :meth:`reload` it; one
        that does not load is refused as one that cannot run."""
        try:
            new = await asyncio.to_thread(load)
        except ConfigError as exc:
            return self._refuse(path, str(exc).splitlines())
        except Exception as exc:
            return self._refuse(path, [f"{type(exc).__name__}: {exc}"])
        return await self.reload(new, source=path)

    def _refuse(self, source: str, errors: list[str]) -> bool:
        """Say why ``source`` is not run; False, for the caller to return (the running one goes on)."""
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
        self.router.hold()
        try:
            await self._hand_over_filters(labels, table, journals)
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
        await self._retire_outputs(plan, fresh_sinks)
        self._started.extend(fresh_sinks[name] for name in plan.outputs_added)
        log.info("config.reloaded", path=source, worker=self.worker, **plan.as_dict())
        return True

    async def _hand_over_filters(
        self, labels: dict[str, list[Route]], table: RouteTable, journals: set[tuple[str, int, int]]
    ) -> None:
        """Stateful filters that go give back what they hold, and stop; the new ones start (see step 3)."""
        running = set(self.router.stateful)
        kept = {f for routes in labels.values() for r in routes for f in r.filters if f in running}
        leaving = [f for f in self.router.stateful if f not in kept]
        succeeded = {
            f
            for compiled, pos, f in self.router.table.stateful
            if (compiled.label, compiled.index, pos) in journals
        }
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

    async def _retire_outputs(self, plan: ReloadPlan, fresh_sinks: dict[str, BufferedSink]) -> None:
        """A rebuilt output's successor takes over its writes; a removed one closes its queue (step 5)."""
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


class SignalledReloads:
    """SIGHUPs turned into reloads, one at a time: one that comes during a reload asks for one more after it
    (the one in progress may have read the file before it changed); none once the daemon is stopping."""

    def __init__(
        self, daemon: Reloading, load: Callable[[], Config], path: str, stopping: asyncio.Event
    ) -> None:
        self._daemon = daemon
        self._load = load
        self._path = path
        self._stopping = stopping
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def request(self, sender: int) -> None:
        """A SIGHUP from pid ``sender`` (:class:`~forwardd.lifecycle.ReloadSignals` calls it on the loop)."""
        if self._stopping.is_set():
            return
        log.info("config.reloading", path=self._path, sender=sender, worker=self._daemon.worker)
        if self._task is not None and not self._task.done():
            self._again = True  # once more after the one in progress: it may have read the file before
            return
        self._task = asyncio.create_task(self._run(), name="reload")

    async def _run(self) -> None:
        while True:
            self._again = False
            await self._daemon.reread(self._load, self._path)
            if not self._again or self._stopping.is_set():
                return

    async def finish(self, deadline: Deadline) -> None:
        """Let the reload in progress end within ``deadline`` (a stop's): it is bounded."""
        task = self._task
        if task is not None and not task.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(task), deadline.soft_left())
