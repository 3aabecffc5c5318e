"""A filter that raises costs the events that make it raise, not the chunk: the router re-runs it on halves,
the good events go on through the route, the offending ones go to @ERROR or the filter's dead-letter
folder (written before the ack), counted and logged.

The faults are real where they can be: Grep on a record nested 1000 deep raises RecursionError (its
value_str cannot make text of it), and a dead-letter folder under a regular file cannot be created.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgpack
import pytest
from structlog.testing import capture_logs

from forwardd.buffer import read_dead_letter
from forwardd.errors import ChunkRejected
from forwardd.filters import Grep
from forwardd.model import Chunk
from forwardd.pieces import entry_ends
from forwardd.router import FILTER_ISOLATION_BUDGET, Route, Router
from forwardd.router.match import compile_pattern

from .fakes import Mark, RecordingSink, records

T0 = 1_700_000_000
DEEP = b"\x91" * 1000 + b"\xa1x"  # a list nested 1000 deep: msgpack decodes it, repr() cannot


def entries(n: int, bad: tuple[int, ...] = (), tag: str = "app") -> Chunk:
    """n numbered events; those at ``bad`` hold the deep list under ``log`` (packed by hand: too deep for
    msgpack's packer)."""
    parts = []
    for i in range(n):
        head = b"\x92" + msgpack.packb(T0 + i)
        if i in bad:
            parts.append(head + b"\x82\xa3seq" + msgpack.packb(i) + b"\xa3log" + DEEP)
        else:
            parts.append(head + msgpack.packb({"seq": i, "log": "x"}))
    return Chunk(tag, b"".join(parts), n, T0 * 10**9)


class Counting:
    """A real filter counting its calls (the cost of isolating)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls = 0

    def __call__(self, chunk: Chunk) -> Any:
        self.calls += 1
        return self.inner(chunk)


def grep() -> Counting:
    return Counting(Grep(name="grep[0]", regexp=[("log", "x")]))


def route(*outputs: str, filters: tuple[Any, ...] = ()) -> Route:
    return Route(compile_pattern("**"), filters, outputs)


def seqs(sink: RecordingSink) -> list[int]:
    return [r["seq"] for r in records(sink)]


def test_good_events_go_on_and_the_offending_ones_go_to_the_error_label() -> None:
    out, errors = RecordingSink("out"), RecordingSink("errors")
    g = grep()
    router = Router(
        {"@ROOT": [route("out", filters=(Mark("before"), g))], "@ERROR": [route("errors")]},
        {"out": out, "errors": errors},
    )
    with capture_logs() as logs:
        assert router.entry()(entries(100, bad=(3, 4, 71))) is None
    assert seqs(out) == [i for i in range(100) if i not in (3, 4, 71)]  # in order
    assert [r["seq"] for r in records(errors)] == [3, 4, 71]
    assert all(r["before"] for r in records(errors))  # what the failing filter was given
    assert g.calls <= 1 + 3 * 2 * 7  # O(k log n), not n
    st = router.stats
    assert (st.filter_errors, st.filter_failed_events, st.to_error_label) == (1, 3, 1)
    [line] = [e for e in logs if e["event"] == "filter.failed"]
    assert (line["events"], line["passed"], line["to_label"]) == (3, 97, "@ERROR")
    assert line["error"].startswith("RecursionError")


async def test_without_an_error_label_they_are_dead_lettered_before_the_ack(tmp_path: Path) -> None:
    out = RecordingSink("out")
    router = Router({"@ROOT": [route("out", filters=(grep(),))]}, {"out": out}, dead_letter_dir=str(tmp_path))
    tag = b"\xff\xfe".decode("utf-8", "surrogateescape")
    with capture_logs() as logs:
        accepted = router.entry()(entries(10, bad=(6,), tag=tag))
        assert accepted is not None  # the ack waits for the dead letter's fsync
        folder = tmp_path / "filter-root-route0-grep_0_"
        assert not list(folder.glob("*.chunk"))
        await asyncio.wait_for(accepted, 5)
    assert seqs(out) == [0, 1, 2, 3, 4, 5, 7, 8, 9]
    [chunk_file] = list(folder.glob("*.chunk"))
    dead = read_dead_letter(str(chunk_file))
    assert dead.tag == tag
    original = entries(10, bad=(6,), tag=tag).entries
    ends = entry_ends(original)
    assert dead.entries == original[ends[5] : ends[6]]  # the bytes as they came, not re-encoded
    assert [e.record["seq"] for e in dead.events()] == [6]
    sidecar = json.loads(chunk_file.with_suffix(".json").read_text())
    assert (sidecar["reason"], sidecar["filter"], sidecar["label"], sidecar["route"]) == (
        "filter_failed", "grep[0]", "@ROOT", 0,
    )  # fmt: skip
    assert sidecar["error"].startswith("RecursionError")
    assert router.stats.filter_dead_lettered == 1
    assert [e["event"] for e in logs if e["event"].startswith("filter.")] == [
        "filter.failed",
        "filter.dead_letter",
    ]


async def test_a_dead_letter_that_cannot_be_written_refuses_the_chunk_for_now(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    out = RecordingSink("out")
    router = Router({"@ROOT": [route("out", filters=(grep(),))]}, {"out": out}, dead_letter_dir=str(blocker))
    with capture_logs() as logs:
        accepted = router.entry()(entries(4, bad=(1,)))
        assert accepted is not None
        with pytest.raises(ChunkRejected) as info:
            await asyncio.wait_for(accepted, 5)
    assert not info.value.permanent  # no ack: the client sends it again, nothing is lost
    assert "filter.dead_letter_failed" in [e["event"] for e in logs]


def test_without_a_label_or_a_folder_they_are_dropped_and_counted() -> None:
    out = RecordingSink("out")
    router = Router({"@ROOT": [route("out", filters=(grep(),))]}, {"out": out})
    assert router.entry()(entries(8, bad=(0, 7))) is None
    assert seqs(out) == [1, 2, 3, 4, 5, 6]
    assert (router.stats.filter_dropped, router.stats.filter_failed_events) == (2, 2)


def test_isolating_costs_at_most_the_budget_of_failing_calls() -> None:
    out, errors = RecordingSink("out"), RecordingSink("errors")
    g = grep()
    router = Router(
        {"@ROOT": [route("out", filters=(g,))], "@ERROR": [route("errors")]}, {"out": out, "errors": errors}
    )
    every = tuple(range(1000))
    assert router.entry()(entries(1000, bad=every)) is None
    assert g.calls <= 2 * FILTER_ISOLATION_BUDGET + 1
    assert out.chunks == []
    assert sum(c.count for c in errors.chunks) == 1000  # nothing lost: the rest went to @ERROR whole
