"""docker_partial with its journal: acked pieces survive a crash and a restart, and leave the journal only
once the line they belong to is accepted downstream.

A real journal (the disk queue) in a temporary folder, the real router, and a sink that accepts when the
test says so. A kill -9 is stood for by copying the journal's files while the first process still runs:
that is exactly what a killed process leaves (the page cache keeps every write).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from forwardd.filters import DockerPartial
from forwardd.filters.journal import PieceJournal
from forwardd.router.match import compile_pattern
from forwardd.router.router import Route, Router
from tests.router.fakes import FutureSink, RecordingSink

from .helpers import make_chunk, records
from .test_docker_partial import piece, plain

TIMEOUT = 5.0


class Rig:
    """A router with one docker_partial (journaled in ``folder``) in front of one sink."""

    def __init__(self, folder: Path, sink: RecordingSink) -> None:
        self.folder = folder
        self.sink = sink
        self.filter = DockerPartial(flush_timeout=5.0)
        self.filter.journal = PieceJournal(str(folder))
        self.router = Router(
            {"@ROOT": [Route(compile_pattern("**"), (self.filter,), ("out",))]}, {"out": sink}
        )
        self.ingest = self.router.entry()

    async def start(self) -> None:
        await self.filter.start_journal()

    @property
    def journaled(self) -> int:
        assert self.filter.journal is not None
        return self.filter.journal.queue.queued_chunks

    async def close(self) -> None:
        assert self.filter.journal is not None
        await self.filter.journal.close()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path / "journal", RecordingSink("out"))
    await r.start()
    yield r
    await r.close()


async def accepted(result: object) -> None:
    if result is not None:
        await asyncio.wait_for(result, TIMEOUT)  # type: ignore[arg-type]


async def test_the_ack_of_a_held_piece_waits_for_the_journal(rig: Rig) -> None:
    result = rig.ingest(make_chunk("docker.web", [piece("p1", 1, False, "a" * 10)]))
    assert result is not None  # the journal's fsync, not a memory-only hold
    await accepted(result)
    assert rig.journaled == 1
    assert rig.sink.chunks == []  # held, nothing emitted


async def test_a_line_cut_by_a_kill_completes_after_the_restart(rig: Rig, tmp_path: Path) -> None:
    await accepted(rig.ingest(make_chunk("docker.web", [piece("p1", 1, False, "first-")])))
    await accepted(rig.ingest(make_chunk("docker.web", [piece("p1", 2, False, "second-")])))
    crashed = tmp_path / "after-kill"
    shutil.copytree(rig.folder, crashed)  # what kill -9 would leave now

    again = Rig(crashed, RecordingSink("out"))
    await again.start()
    try:
        assert again.filter.pending == 1  # the open line is held again
        await accepted(again.ingest(make_chunk("docker.web", [piece("p1", 3, True, "third")])))
        (line,) = [r for c in again.sink.chunks for r in records(c)]
        assert line["log"] == "first-second-third"
        assert "partial_message" not in line
        await asyncio.sleep(0)  # the ledger follows the release within a loop iteration
        assert again.journaled == 0
    finally:
        await again.close()


async def test_entries_leave_the_journal_only_once_the_sink_accepted_the_line(tmp_path: Path) -> None:
    sink = FutureSink("out")
    r = Rig(tmp_path / "journal", sink)
    await r.start()
    try:
        await accepted(r.ingest(make_chunk("docker.web", [piece("p1", 1, False, "a")])))
        last = r.ingest(make_chunk("docker.web", [piece("p1", 2, True, "b"), plain("next")]))
        assert last is not None
        task = asyncio.ensure_future(last)
        await asyncio.wait_for(_until(lambda: len(sink.futures) == 1 and r.journaled == 2), TIMEOUT)
        await asyncio.sleep(0)
        assert r.journaled == 2  # both pieces committed; the line is emitted but not yet safe downstream
        assert not task.done()
        crashed = tmp_path / "before-accept"
        shutil.copytree(r.folder, crashed)
        sink.futures[0].set_result(None)
        await asyncio.wait_for(task, TIMEOUT)
        await asyncio.sleep(0)
        assert r.journaled == 0
        assert [x["log"] for c in sink.chunks for x in records(c)] == ["ab", "next"]

        # Killed before the sink had it: the restart holds the whole line again and emits it once more
        # (at least once), rather than leaving docker's resent last piece alone.
        replay = Rig(crashed, RecordingSink("out"))
        await replay.start()
        try:
            await accepted(replay.router.expire(0.0))
            assert [x["log"] for c in replay.sink.chunks for x in records(c)] == ["ab"]
        finally:
            await replay.close()
    finally:
        await r.close()


async def test_a_stop_keeps_open_lines_in_the_journal_instead_of_flushing_fragments(
    rig: Rig, tmp_path: Path
) -> None:
    await accepted(rig.ingest(make_chunk("docker.web", [piece("p1", 1, False, "kept")])))
    await accepted(rig.router.drain())
    assert rig.sink.chunks == []
    await rig.close()
    again = Rig(rig.folder, RecordingSink("out"))
    await again.start()
    try:
        await accepted(again.ingest(make_chunk("docker.web", [piece("p1", 2, True, "+rest")])))
        assert [x["log"] for c in again.sink.chunks for x in records(c)] == ["kept+rest"]
    finally:
        await again.close()
    rig.filter.journal = PieceJournal(str(tmp_path / "unused"))  # the fixture closes what it owns


async def test_an_expired_line_is_released_after_its_fragment_is_accepted(rig: Rig) -> None:
    await accepted(rig.ingest(make_chunk("docker.web", [piece("p1", 1, False, "alone")])))
    await accepted(rig.router.expire(10**9))
    (frag,) = [x for c in rig.sink.chunks for x in records(c)]
    assert (frag["log"], frag["partial_incomplete"]) == ("alone", "true")
    await asyncio.sleep(0)
    assert rig.journaled == 0


async def test_without_a_journal_nothing_changes(tmp_path: Path) -> None:
    f = DockerPartial()
    out = f(make_chunk("docker.web", [piece("p1", 1, False, "x")]))
    assert out is None  # held in memory, no Held wrapper
    assert [r["log"] for c in f.drain() for r in records(c)] == ["x"]  # type: ignore[union-attr]


async def _until(predicate) -> None:  # type: ignore[no-untyped-def]
    while not predicate():
        await asyncio.sleep(0)
