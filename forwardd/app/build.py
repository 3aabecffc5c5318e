"""From a validated configuration to components: each built from its own settings, through the registry.

Nothing here names a filter or an output type: :mod:`forwardd.app.registry` maps each ``type:`` to its
settings model and factory. What is decided here is where things live on disk (per output, per filter's
journal and per worker), which buffer stands in front of each output, and where what an output rejects goes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import structlog

from forwardd.app.config import Config, FilterEntry, OutputEntry, RouteSettings
from forwardd.app.registry import FILTERS, OUTPUTS, JournalOpener
from forwardd.buffer import BufferedSink, DiskQueue, MemorySink
from forwardd.buffer.base import ChunkQueue
from forwardd.buffer.journal import PieceJournal
from forwardd.buffer.memory import MemoryQueue
from forwardd.filters.base import Filter, Journal
from forwardd.outputs.base import Output
from forwardd.router import ROOT_LABEL, Route, Router, compile_pattern
from forwardd.storage import adopted_dirs, worker_dir

__all__ = [
    "build_filter",
    "build_labels",
    "build_output",
    "build_routes",
    "build_sink",
    "wire_error_routes",
]

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
        compression=b.compression,
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


def _journals_of(
    config: Config, label: str, worker: int = 0, opened: set[tuple[str, int, int]] | None = None
) -> Callable[[int, int], Journal]:
    """What opens the journal of the filter at (``label``, route, position): a folder per place, so that
    the filter at the same place after a restart or a reload holds again what it held. ``opened``
    collects the places given one."""
    storage = Path(config.storage.path)

    def journal_for(route: int, index: int) -> Journal:
        if opened is not None:
            opened.add((label, route, index))
        name = f"{label.lstrip('@').lower()}-route{route}-filter{index}"
        base = storage / "journal" / name
        journal = PieceJournal(str(worker_dir(base, worker)), name=name)
        # Pieces an old worker held are held again here; the rest of their lines comes here now.
        journal.queue.adopt([str(d) for d in adopted_dirs(base, worker, config.workers)])
        return journal

    return journal_for


def build_labels(
    config: Config, worker: int = 0, journals: set[tuple[str, int, int]] | None = None
) -> dict[str, list[Route]]:
    """Every label's routes, their filters' journals kept by worker ``worker``. ``journals`` collects the
    places whose filter keeps a journal (a reload's successors, see :mod:`forwardd.app.reloading`)."""
    labels: dict[str, list[Route]] = {
        ROOT_LABEL: build_routes(config.routes, _journals_of(config, ROOT_LABEL, worker, journals))
    }
    for label, routes in config.labels.items():
        labels[label] = build_routes(routes, _journals_of(config, label, worker, journals))
    return labels


def wire_error_routes(sinks: Mapping[str, BufferedSink], router: Router, config: Config) -> None:
    """What an output rejects for good goes to the @ERROR routes (their outputs excepted: a chunk
    they reject goes to the dead-letter folder rather than round in a loop)."""
    error_label = router.error_label
    error_entry = router.entry(error_label) if error_label is not None else None
    error_outputs = (
        {name for r in config.label_routes(error_label) for name in r.outputs}
        if error_label is not None
        else set()
    )
    for name, sink in sinks.items():
        sink.error_route = error_entry if name not in error_outputs else None
