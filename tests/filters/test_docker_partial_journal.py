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
from hypothesis import given, settings
from hypothesis import strategies as st

from forwardd.buffer.journal import PieceJournal
from forwardd.filters import DockerPartial, StatefulFilter
from forwardd.filters.docker_partial import DockerPartialStats
from forwardd.router import Route, Router
from forwardd.router.match import compile_pattern
from tests.router.fakes import FutureSink, RecordingSink

from .helpers import make_chunk, records
from .test_docker_partial import piece, plain

TIMEOUT = 5.0


class Rig:
    """A router with one docker_partial (journaled in ``folder``) in front of one sink."""

    def __init__(self, folder: Path, sink: RecordingSink) -> None:
        self.folder = folder
        self.sink = sink
        self.journal = PieceJournal(str(folder))
        self.filter = DockerPartial(flush_timeout=5.0, journal=self.journal)
        self.router = Router(
            {"@ROOT": [Route(compile_pattern("**"), (self.filter,), ("out",))]}, {"out": sink}
        )
        self.ingest = self.router.entry()

    async def start(self) -> None:
        await self.filter.start()

    @property
    def journaled(self) -> int:
        return self.journal.queue.queued_chunks

    async def close(self) -> None:
        await self.filter.stop()


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


async def test_a_stop_keeps_open_lines_in_the_journal_instead_of_flushing_fragments(rig: Rig) -> None:
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


async def test_a_drain_that_may_not_keep_flushes_open_lines_and_empties_the_journal(rig: Rig) -> None:
    """What a reload asks of a filter it removes or moves: nothing would open this journal again, so the
    open lines come out as fragments and leave the journal once accepted."""
    await accepted(rig.ingest(make_chunk("docker.web", [piece("p1", 1, False, "held-")])))
    await accepted(rig.ingest(make_chunk("docker.web", [piece("p1", 2, False, "too")])))
    await accepted(rig.router.drain_filters([rig.filter], keep=False))
    (frag,) = [x for c in rig.sink.chunks for x in records(c)]
    assert (frag["log"], frag["partial_incomplete"], frag["partial_id"]) == ("held-too", "true", "p1")
    await asyncio.wait_for(_until(lambda: rig.journaled == 0), TIMEOUT)  # released once accepted
    assert rig.filter.pending == 0


async def test_an_expired_line_is_released_after_its_fragment_is_accepted(rig: Rig) -> None:
    await accepted(rig.ingest(make_chunk("docker.web", [piece("p1", 1, False, "alone")])))
    await accepted(rig.router.expire(10**9))
    (frag,) = [x for c in rig.sink.chunks for x in records(c)]
    assert (frag["log"], frag["partial_incomplete"]) == ("alone", "true")
    await asyncio.sleep(0)
    assert rig.journaled == 0


async def test_its_stats_say_what_the_journal_keeps_for_a_restart(rig: Rig) -> None:
    assert isinstance(rig.filter, StatefulFilter)  # what the daemon starts, stops and reports it by
    await accepted(rig.ingest(make_chunk("docker.web", [piece("p1", 1, False, "kept")])))
    await accepted(rig.ingest(make_chunk("docker.web", [piece("p1", 1, False, "kept")])))  # resent
    stats = rig.filter.stats()
    assert stats == DockerPartialStats(
        open_lines=1, duplicates=1, incomplete=0, journal="journal", journaled_chunks=1
    )
    assert stats.as_dict() == {  # the filter.stats log line's fields
        "open_lines": 1,
        "duplicates": 1,
        "incomplete": 0,
        "journal": "journal",
        "journaled_chunks": 1,
    }


async def test_without_a_journal_nothing_changes(tmp_path: Path) -> None:
    f = DockerPartial()
    out = f(make_chunk("docker.web", [piece("p1", 1, False, "x")]))
    assert out is None  # held in memory, no Held wrapper
    assert [r["log"] for c in f.drain() for r in records(c)] == ["x"]  # type: ignore[union-attr]


async def _until(predicate) -> None:  # type: ignore[no-untyped-def]
    while not predicate():
        await asyncio.sleep(0)


@st.composite
def lines_and_crashes(draw):  # type: ignore[no-untyped-def]
    """Several containers' long lines, their pieces interleaved across containers but in order within
    each (docker's stop-and-wait per container), and the points after which forwardd is killed."""
    n_lines = draw(st.integers(1, 5))
    lines = [
        (f"{i:02x}" * 32, f"pid{i}", [f"L{i}p{k}-" for k in range(draw(st.integers(2, 5)))])
        for i in range(n_lines)
    ]
    order = draw(st.permutations([i for i, (_, _, ps) in enumerate(lines) for _ in ps]))
    crashes = draw(st.sets(st.integers(1, len(order) - 1), max_size=3))
    return lines, order, sorted(crashes)


@settings(max_examples=25, deadline=None)
@given(lines_and_crashes())
async def test_no_acked_piece_is_lost_whatever_the_kill_points(tmp_path_factory, case) -> None:  # type: ignore[no-untyped-def]
    """Every piece sent (and acked) before a kill -9 comes out in its joined line after the restarts."""
    lines, order, crashes = case
    base = tmp_path_factory.mktemp("journal")
    folder = base / "run0"
    rig = Rig(folder, RecordingSink("out"))
    await rig.start()
    emitted: list[str] = []
    sent = [0] * len(lines)
    try:
        for step, li in enumerate(order, 1):
            cid, pid, pieces = lines[li]
            k = sent[li]
            sent[li] += 1
            rec = piece(pid, k + 1, k + 1 == len(pieces), pieces[k], cid=cid)
            await accepted(rig.ingest(make_chunk("docker.web", [rec])))  # acked: docker sends the next
            if step in crashes:
                emitted += [r["log"] for c in rig.sink.chunks for r in records(c)]
                killed = base / f"run{step}"
                shutil.copytree(rig.folder, killed)  # the files a kill -9 leaves
                old, rig = rig, Rig(killed, RecordingSink("out"))
                await old.close()
                await rig.start()
                await accepted(rig.router.expire(0.0))  # lines the replay completed go out now
        emitted += [r["log"] for c in rig.sink.chunks for r in records(c)]
    finally:
        await rig.close()
    for _, _, pieces in lines:
        assert "".join(pieces) in emitted
    assert all(e == "".join(ps) for e in emitted for _, _, ps in lines if e.startswith(ps[0]))
