"""From a validated configuration to components: each built from its own settings, through the registry.

Nothing here names a filter or an output type: :mod:`forwardd.app.registry` maps each ``type:`` to its
settings model and factory. What is decided here is where things live on disk (per output and per worker)
and which buffer stands in front of each output.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from forwardd.app.config import FilterEntry, OutputEntry, RouteSettings
from forwardd.app.registry import FILTERS, OUTPUTS, JournalOpener
from forwardd.buffer import BufferedSink, DiskQueue, MemorySink
from forwardd.buffer.base import ChunkQueue
from forwardd.buffer.memory import MemoryQueue
from forwardd.filters.base import Filter, Journal
from forwardd.outputs.base import Output
from forwardd.router import Route, compile_pattern
from forwardd.storage import adopted_dirs, worker_dir

__all__ = ["build_filter", "build_output", "build_routes", "build_sink"]

log = structlog.get_logger("forwardd")


def build_output(name: str, entry: OutputEntry, worker: int = 0) -> Output:
    """The output of one configured entry, for worker ``worker``."""
    return OUTPUTS[entry.type].build(name, entry, worker)


def build_sink(
    name: str,
    entry: OutputEntry,
    storage: Path,
    worker: int = 0,
    workers: int = 1,
    *,
    queue: ChunkQueue | None = None,
) -> BufferedSink:
    """The buffer in front of an output: disk (durable, the default) or memory.

    Worker ``worker`` of ``workers`` keeps its queue in its own directory (:func:`worker_dir`) and also
    drains the queues that workers beyond ``workers`` left behind in an earlier run (:func:`adopted_dirs`).
    ``queue``: a reload rebuilding the output keeps the queue it had, open and accepting all along
    (:meth:`BufferedSink.take_over`), so that nothing queued is written twice or waits.
    """
    output = build_output(name, entry, worker)
    b = entry.buffer
    retry = b.retry.policy()
    dead_base = Path(b.dead_letter_path or storage / "dead-letter" / name)
    dead = worker_dir(dead_base, worker)
    # Parked for a human, never read: say where (once, at start).
    for old in [] if queue is not None else adopted_dirs(dead_base, worker, workers):
        log.info(
            "dead_letter.left_by_old_worker", output=name, directory=str(old), files=len(os.listdir(old))
        )
    batching = OUTPUTS[entry.type].batching(entry)
    if b.type == "memory":
        sink = MemorySink(
            name, output, retry, str(dead), max_size=b.max_size, when_full=b.when_full, batching=batching
        )
        if isinstance(queue, MemoryQueue):
            sink.queue = sink.memory_queue = queue
        return sink
    if queue is not None:
        return BufferedSink(name, output, queue, retry, str(dead), batching=batching)
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


def build_filter(entry: FilterEntry, index: int, journal: JournalOpener | None = None) -> Filter:
    """The filter of one configured entry; ``journal`` opens its journal if the filter keeps one."""
    return FILTERS[entry.type].build(f"{entry.type}[{index}]", entry, journal)


def build_routes(
    routes: Sequence[RouteSettings], journal_for: Callable[[int, int], Journal] | None = None
) -> list[Route]:
    """Routes from their configuration; ``journal_for(route, filter)`` opens the journal of a filter that
    keeps one (none when not given: tests and ``check-config``)."""
    built = []
    for ri, r in enumerate(routes):
        filters = []
        for fi, f in enumerate(r.filters):
            opener = None
            if journal_for is not None:
                opener = _opener(journal_for, ri, fi)
            filters.append(build_filter(f, fi, opener))
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


def _opener(journal_for: Callable[[int, int], Journal], route: int, index: int) -> JournalOpener:
    return lambda: journal_for(route, index)
