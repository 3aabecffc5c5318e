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
import ctypes
import faulthandler
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from forwardd.buffer import Batching, BufferedSink, DiskQueue, MemorySink, RetryPolicy
from forwardd.buffer.journal import PieceJournal
from forwardd.config import schema as cfg
from forwardd.filters.base import Journal
from forwardd.lifecycle import (
    STOP_SIGNALS,
    Deadline,
    StopTimes,
    block_stop_signals,
    unblock_stop_signals,
)
from forwardd.outputs.base import Output
from forwardd.outputs.formats import NATIVE
from forwardd.protocol import ClientPolicy, Limits, Security, User
from forwardd.router import ROOT_LABEL, Route, Router, compile_pattern
from forwardd.server.listener import ForwardListener, ListenerSettings
from forwardd.server.session import SessionSettings
from forwardd.server.tls import TlsSettings
from forwardd.sink import Sink
from forwardd.storage import adopted_dirs, worker_dir

__all__ = ["Daemon", "build_filter", "build_output", "build_sink"]

log = structlog.get_logger("forwardd")


def _path(p: Path | str | None) -> str | None:
    return None if p is None else str(p)


def build_output(name: str, o: Any, worker: int = 0) -> Output:
    """An Output for one configured output (closed set of types: the config's ``type`` is the registry)."""
    if isinstance(o, cfg.FileOutput):
        from forwardd.outputs.file import FileOutput

        path = o.path if worker == 0 else _worker_path(o.path, worker)
        return FileOutput(
            name=name,
            path=path,
            format=o.format,
            compress=o.compress,
            rotate_interval=o.rotate.interval,
            rotate_max_size=o.rotate.max_size,
            symlink=o.symlink if worker == 0 else None,
        )
    if o.type == "stdout":
        from forwardd.outputs.debug import StdoutOutput

        return StdoutOutput(name=name)
    if o.type == "null":
        from forwardd.outputs.debug import NullOutput

        return NullOutput(name=name)
    if o.type == "kafka":
        from forwardd.outputs.kafka import KafkaOutput  # type: ignore[import-not-found,unused-ignore]

        return KafkaOutput.from_settings(name, o)  # type: ignore[no-any-return,unused-ignore]
    if o.type == "http":
        from forwardd.outputs.http import HttpOutput  # type: ignore[import-not-found,unused-ignore]

        return HttpOutput.from_settings(name, o)  # type: ignore[no-any-return,unused-ignore]
    if o.type == "forward":
        from forwardd.outputs.forward import ForwardOutput

        return ForwardOutput.from_settings(name, o)
    raise ValueError(f"output {name!r}: unknown type {o.type!r}")


def _worker_path(template: str, worker: int) -> str:
    """Worker processes must not append to the same file: each gets its own suffix."""
    p = Path(template)
    return str(p.with_name(f"{p.stem}.worker{worker}{p.suffix}"))


def build_sink(name: str, o: Any, storage: Path, worker: int = 0, workers: int = 1) -> Sink:
    """The buffer in front of an output: disk (durable, the default) or memory.

    Worker ``worker`` of ``workers`` keeps its queue in its own directory (:func:`worker_dir`) and also
    drains the queues that workers beyond ``workers`` left behind in an earlier run (:func:`adopted_dirs`).
    """
    output = build_output(name, o, worker)
    b = o.buffer
    r = b.retry
    retry = RetryPolicy(
        initial=r.initial, max=r.max, multiplier=r.multiplier, jitter=r.jitter,
        max_attempts=r.max_attempts, max_age=r.max_age,
    )  # fmt: skip
    dead_base = Path(b.dead_letter_path or storage / "dead-letter" / name)
    dead = worker_dir(dead_base, worker)
    for old in adopted_dirs(dead_base, worker, workers):  # parked for a human, never read: say where
        log.info(
            "dead_letter.left_by_old_worker", output=name, directory=str(old), files=len(os.listdir(old))
        )
    batching = _batching(o)
    if b.type == "memory":
        return MemorySink(
            name, output, retry, str(dead), max_size=b.max_size, when_full=b.when_full, batching=batching
        )
    base = Path(b.path or storage / "buffer" / name)
    queue = DiskQueue(
        str(worker_dir(base, worker)),
        name=name,
        max_size=b.max_size,
        max_segment_size=b.segment_size,
        fsync=b.fsync,
        fsync_interval=b.fsync_interval,
        when_full=b.when_full,
    )
    queue.adopt([str(d) for d in adopted_dirs(base, worker, workers)])
    return BufferedSink(name, output, queue, retry, str(dead), batching=batching)


def _batching(o: Any) -> Batching:
    """How long committed chunks may wait to be handed to the output together (see Batching)."""
    if isinstance(o, cfg.FileOutput):
        return Batching(max_wait=o.flush_interval, enough_bytes=64 * 1024)
    if o.type == "http":
        return Batching(max_wait=o.batch.max_wait, max_events=o.batch.max_events, max_bytes=o.batch.max_bytes)
    return Batching()  # Kafka: librdkafka groups messages itself (linger.ms)


_FILTERS = {
    "grep": "Grep",
    "record_modify": "RecordModify",
    "parser": "Parser",
    "tag_rewrite": "TagRewrite",
    "docker_partial": "DockerPartial",
    "docker_swarm": "DockerSwarm",
}


def build_filter(f: Any, index: int, journal: Journal | None = None) -> Any:
    """A filter object for one configured filter; the settings model maps itself to the constructor, and
    a filter configured with ``journal: true`` is handed ``journal`` when there is one."""
    from forwardd import filters

    cls = getattr(filters, _FILTERS[f.type])
    extra = {"journal": journal} if journal is not None else {}
    return cls(name=f"{f.type}[{index}]", **f.to_kwargs(), **extra)


def build_routes(routes: Any, journal_for: Callable[[int, int], Journal] | None = None) -> list[Route]:
    """Routes from their configuration; ``journal_for(route, filter)`` gives each filter configured with
    ``journal: true`` its journal (none when not given: tests and ``check-config``)."""
    built = []
    for ri, r in enumerate(routes):
        filters = []
        for fi, f in enumerate(r.filters):
            journal = None
            if journal_for is not None and getattr(f, "journal", False):
                journal = journal_for(ri, fi)
            filters.append(build_filter(f, fi, journal))
        built.append(
            Route(
                matcher=compile_pattern(r.match),
                filters=tuple(filters),
                outputs=tuple(r.outputs),
                relabel=r.relabel,
                continue_=r.continue_,
            )
        )
    return built


def listener_settings(src: Any, *, reuse_port: bool = False) -> ListenerSettings:
    lim = src.limits
    security = None
    if src.security is not None:
        s = src.security
        security = Security(
            self_hostname=s.self_hostname,
            shared_key=s.shared_key,
            user_auth=s.user_auth,
            allow_anonymous_source=s.allow_anonymous_source,
            users=tuple(User(u.username, u.password) for u in s.users),
            clients=tuple(
                ClientPolicy(host=c.host, network=c.network, shared_key=c.shared_key, users=tuple(c.users))
                for c in s.clients
            ),
            deny_keepalive=src.deny_keepalive,
        )
    session = SessionSettings(
        listener=src.name,
        limits=Limits(
            max_frame_size=lim.max_frame_size,
            max_decompressed_size=lim.max_decompressed_size,
            chunk_size_warn=lim.chunk_size_warn,
            max_handshake_frame_size=lim.max_handshake_frame_size,
        ),
        security=security,
        max_inflight=lim.max_inflight,
        handshake_timeout=lim.handshake_timeout,
        idle_timeout=lim.idle_timeout,
        deny_keepalive=src.deny_keepalive,
        json_mode=src.json_mode,
        tag=src.tag,
        add_tag_prefix=src.add_tag_prefix,
        source_address_key=src.source_address_key,
        source_hostname_key=src.source_hostname_key,
    )
    tls = None
    if src.tls is not None:
        t = src.tls
        tls = TlsSettings(
            cert_file=str(t.cert_file), key_file=str(t.key_file), ca_file=_path(t.ca_file),
            client_auth=t.client_auth, min_version=t.min_version, key_password=t.key_password,
        )  # fmt: skip
    return ListenerSettings(
        name=src.name,
        session=session,
        bind=src.bind,
        port=src.port,
        unix_path=_path(src.unix.path) if src.unix is not None else None,
        unix_mode=src.unix.mode if src.unix is not None else 0o660,
        udp_heartbeat=src.udp_heartbeat and src.unix is None,
        tls=tls,
        max_connections=lim.max_connections,
        max_buffered_bytes=lim.max_buffered_size,
        reuse_port=reuse_port,
    )


#: How often the daemon logs each source's and each output's counters (``source.stats``, ``output.stats``).
STATS_INTERVAL = 60.0
#: How often freed heap memory is handed back to the OS (see _malloc_trim).
TRIM_INTERVAL = 10.0


def _malloc_trim() -> Any:
    """glibc's malloc_trim, or None elsewhere.

    Connections come and go with read and frame buffers of hundreds of KiB; glibc keeps what they freed in
    its heap, fragmented, and RSS creeps up with every wave of connections (bench/soak.py showed ~10 MiB
    a minute). Trimming every few seconds gives it back; it costs a heap walk of a few ms.
    """
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


class Daemon:
    """One process's forwardd."""

    def __init__(
        self,
        config: cfg.Config,
        *,
        worker: int = 0,
        reuse_port: bool = False,
        stats_interval: float = STATS_INTERVAL,
    ) -> None:
        self.config = config
        self.worker = worker
        self.reuse_port = reuse_port
        storage = Path(config.storage.path)
        self.sinks: dict[str, Sink] = {
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
                if name not in error_outputs and isinstance(sink, BufferedSink):
                    sink.error_route = error_entry
        self.listeners = [
            ForwardListener(listener_settings(s, reuse_port=reuse_port), self.router.entry(s.label))
            for s in config.sources
        ]
        self._expiry: asyncio.Task[None] | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self.stats_interval = stats_interval
        self._started: list[Sink] = []

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
            stats = getattr(sink, "stats", None)
            if stats is not None:
                out = getattr(getattr(sink, "output", None), "stats", None)
                extra = {"output_stats": _plain(out)} if out is not None else {}
                log.info("output.stats", output=name, **stats.as_dict(), **extra)
        log.info("router.stats", **_plain(self.router.stats))
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

    async def stop(self, grace: float | None = None, *, deadline: Deadline | None = None) -> None:
        """Stop within ``deadline`` (or ``grace`` seconds from now; default ``shutdown_timeout``), every
        step sharing it (:mod:`forwardd.lifecycle`): listeners send the acks they owe, filters give back
        what they hold, outputs deliver what they can; the rest stays queued on disk."""
        if deadline is None:
            deadline = Deadline.after(self.config.shutdown_timeout if grace is None else grace)
        await asyncio.gather(*(listener.stop(deadline.soft_left()) for listener in self.listeners))
        for task in (self._expiry, self._stats_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        drained = self.router.drain()
        if drained is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(drained, deadline.soft_left())
        for f in self.router.stateful:  # after the drain was accepted: what they keep on disk is closed
            try:
                await f.stop()
            except Exception as exc:  # one filter failing to close must not keep the outputs open
                log.error("filter.stop_failed", filter=f.name, error=repr(exc))

        async def stop_sink(sink: Sink) -> None:
            try:
                await sink.stop(deadline)
            except Exception as exc:  # one output failing to close must not keep the others open
                log.error("output.stop_failed", output=sink.name, error=repr(exc))

        # Together, so that one output that is down does not use up the time of the others; but those
        # that may hand what they reject to the @ERROR label's outputs before these, which must still
        # take it (else it goes to the dead-letter folder instead).
        first = [sink for sink in self._started if getattr(sink, "error_route", None) is not None]
        for wave in (first, [sink for sink in self._started if sink not in first]):
            await asyncio.gather(*(stop_sink(sink) for sink in reversed(wave)))
        self.report()
        # Let the callbacks of what the sinks rejected while closing run (sessions consume those
        # outcomes) before the loop goes away.
        await asyncio.sleep(0)
        log.info("forwardd.stopped", worker=self.worker)

    async def run(
        self, ready: asyncio.Event | None = None, *, repeat_aborts: bool = True, watchdog: bool = False
    ) -> None:
        """Run until SIGTERM or SIGINT, then stop within ``shutdown_timeout`` (:mod:`forwardd.lifecycle`).

        A second signal aborts at once when ``repeat_aborts``; a worker passes False: the signal its
        parent forwards is the second copy of one the process group already got, not a second request.
        ``watchdog`` (the command line's processes, never a test's) ends the process if the stop overruns.
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
            await self.stop(deadline=deadline[0])
            # Blocked again before the handlers go: a signal now, as the process exits, must not kill it
            # by its default action (exit code -15 after a clean stop).
            block_stop_signals()
            for s in signals:
                loop.remove_signal_handler(s)


def _plain(obj: Any) -> Any:
    """An output's own stats object as plain data for a log line."""
    if hasattr(obj, "__slots__"):
        return {k: getattr(obj, k) for k in obj.__slots__}
    return getattr(obj, "__dict__", repr(obj))
