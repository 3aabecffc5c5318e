"""The daemon: builds the graph from a validated configuration and runs it.

Start order is outputs (their buffers recover from disk first), then the router, then the listeners, so
that nothing is accepted before there is somewhere safe to put it. Stop order is the reverse, as uvicorn
does it: listeners stop accepting and send the acks they owe, the router gives back what filters hold,
then each sink finishes its current write and closes its queue. A second signal aborts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
from collections.abc import Callable
from pathlib import Path

import structlog

from forwardd.app.build import build_routes, build_sink
from forwardd.app.config import Config
from forwardd.buffer import BufferedSink
from forwardd.buffer.journal import PieceJournal
from forwardd.filters.base import Journal
from forwardd.outputs.formats import NATIVE
from forwardd.router import ROOT_LABEL, Route, Router
from forwardd.server.listener import ForwardListener
from forwardd.server.source import listener_settings
from forwardd.storage import adopted_dirs, worker_dir

__all__ = ["STATS_INTERVAL", "Daemon"]

log = structlog.get_logger("forwardd")


#: How often the daemon logs each source's and each output's counters (``source.stats``, ``output.stats``).
STATS_INTERVAL = 60.0
#: How often freed heap memory is handed back to the OS (see _malloc_trim).
TRIM_INTERVAL = 10.0


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None elsewhere.

    Connections come and go with read and frame buffers of hundreds of KiB; glibc keeps what they freed in
    its heap, fragmented, and RSS creeps up with every wave of connections (bench/soak.py showed ~10 MiB
    a minute). Trimming every few seconds gives it back; it costs a heap walk of a few ms.
    """
    try:
        trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
        return trim
    except (OSError, AttributeError):
        return None


class Daemon:
    """One process's forwardd."""

    def __init__(
        self,
        config: Config,
        *,
        worker: int = 0,
        reuse_port: bool = False,
        stats_interval: float = STATS_INTERVAL,
    ) -> None:
        self.config = config
        self.worker = worker
        self.reuse_port = reuse_port
        storage = Path(config.storage.path)
        self.sinks: dict[str, BufferedSink] = {
            name: build_sink(name, o, storage, worker, config.workers) for name, o in config.outputs.items()
        }

        def journals_of(label: str) -> Callable[[int, int], Journal]:
            def journal_for(route: int, index: int) -> Journal:
                name = f"{label.lstrip('@').lower()}-route{route}-filter{index}"
                base = storage / "journal" / name
                journal = PieceJournal(str(worker_dir(base, worker)), name=name)
                # Pieces an old worker held are held again here; the rest of their lines comes here now.
                journal.queue.adopt([str(d) for d in adopted_dirs(base, worker, config.workers)])
                return journal

            return journal_for

        labels: dict[str, list[Route]] = {ROOT_LABEL: build_routes(config.routes, journals_of(ROOT_LABEL))}
        for label, routes in config.labels.items():
            labels[label] = build_routes(routes, journals_of(label))
        self.router = Router(
            labels, self.sinks, root_label=ROOT_LABEL, dead_letter_dir=str(storage / "dead-letter")
        )
        if self.router.error_label is not None:
            # What an output rejects for good goes to the @ERROR routes (their outputs excepted: a chunk
            # they reject goes to the dead-letter folder rather than round in a loop).
            error_entry = self.router.entry(self.router.error_label)
            error_outputs = {name for r in labels[self.router.error_label] for name in r.outputs}
            for name, sink in self.sinks.items():
                if name not in error_outputs:
                    sink.error_route = error_entry
        self.listeners = [
            ForwardListener(listener_settings(s, reuse_port=reuse_port), self.router.entry(s.label))
            for s in config.sources
        ]
        self._expiry: asyncio.Task[None] | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self.stats_interval = stats_interval
        self._started: list[BufferedSink] = []

    async def start(self) -> None:
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
            log.info("filter.stats", filter=f.name, **f.stats())

    async def _report_loop(self) -> None:
        trim = _malloc_trim()
        waited = 0.0
        while True:
            await asyncio.sleep(TRIM_INTERVAL)
            waited += TRIM_INTERVAL
            if trim is not None:
                trim(0)
            if waited >= self.stats_interval:
                waited = 0.0
                self.report()

    async def stop(self, grace: float = 10.0) -> None:
        for listener in self.listeners:
            await listener.stop(grace)
        for task in (self._expiry, self._stats_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        drained = self.router.drain()
        if drained is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(drained, grace)
        for f in self.router.stateful:  # after the drain was accepted: what they keep on disk is closed
            try:
                await f.stop()
            except Exception as exc:  # one filter failing to close must not keep the outputs open
                log.error("filter.stop_failed", filter=f.name, error=repr(exc))
        for sink in reversed(self._started):
            try:
                await sink.stop()
            except Exception as exc:  # one output failing to close must not keep the others open
                log.error("output.stop_failed", output=sink.name, error=repr(exc))
        self.report()
        # Let the callbacks of what the sinks rejected while closing run (sessions consume those
        # outcomes) before the loop goes away.
        await asyncio.sleep(0)
        log.info("forwardd.stopped", worker=self.worker)

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Run until SIGTERM or SIGINT, then stop gracefully; a second signal aborts at once."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        signals = (signal.SIGTERM, signal.SIGINT)

        def on_signal(signum: int) -> None:
            if stop.is_set():
                log.warning("forwardd.abort", signal=signal.Signals(signum).name)
                raise SystemExit(1)
            log.info("forwardd.stopping", signal=signal.Signals(signum).name)
            stop.set()

        for s in signals:
            loop.add_signal_handler(s, on_signal, s)
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
            for s in signals:
                loop.remove_signal_handler(s)
            await self.stop()
