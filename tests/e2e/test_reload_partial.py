"""A reload while docker_partial holds the first pieces of a long docker line, against the real daemon.

docker_partial acks each piece and commits it to a journal whose folder is named after the filter's place
(label, route, position). What a reload does with the pieces held depends on that place:

* same place, same settings (the route around it changed): the running filter is kept, with its pieces;
* same place, other settings: the new filter opens the same journal and holds the pieces again;

in both cases the rest of the line completes it, and the line arrives whole, once;

* removed, or moved to another place (whose journal is another folder): it gives back what it holds
  through its old route, as a fragment (``partial_incomplete``), and what comes after goes the new way.

Every piece arrives exactly once in each case, and no journal keeps a piece that was delivered (a filter
that came back to that place would deliver it again).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from forwardd.buffer.journal import PieceJournal
from forwardd.testing import ForwardClient
from tests.e2e.helpers import Proc

CID = "c" * 64
#: The pieces of one line, as docker cuts a line longer than 16 KiB.
LOGS = ["A" * 16384, "B" * 16384, "C\n"]
WHOLE = "".join(LOGS)
TIMEOUT = 30.0


def piece(ordinal: int) -> dict[str, str]:
    return {
        "container_id": CID, "container_name": "/web", "source": "stdout", "log": LOGS[ordinal - 1],
        "partial_message": "true", "partial_id": "line-1",
        "partial_ordinal": str(ordinal), "partial_last": "true" if ordinal == len(LOGS) else "false",
    }  # fmt: skip


def config(tmp_path: Path, filters: list[dict[str, Any]], output: str = "a") -> dict[str, Any]:
    return {
        "storage": {"path": str(tmp_path / "data")},
        "sources": [{"name": "in", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False}],
        "routes": [{"match": "**", "filters": filters, "outputs": [output]}],
        "outputs": {
            name: {"type": "file", "path": str(tmp_path / "out" / name / "${tag}.log")} for name in ("a", "b")
        },
    }


def partial(**settings: Any) -> dict[str, Any]:
    """docker_partial with a flush_timeout no test waits for unless it sets a short one."""
    return {"type": "docker_partial", "flush_timeout": "120s", **settings}


def read(tmp_path: Path, output: str) -> list[dict[str, Any]]:
    root = tmp_path / "out" / output
    return [json.loads(line) for f in sorted(root.glob("*.log*")) for line in f.read_text().splitlines()]


def until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)  # polling files with a deadline, not standing in for an event


def reload(proc: Proc, tmp_path: Path, new: dict[str, Any]) -> dict[str, Any]:
    """Write ``new`` over the running file, SIGHUP, and wait for the ``config.reloaded`` line."""
    (tmp_path / "forwardd.yaml").write_text(yaml.safe_dump(new))
    proc.proc.send_signal(signal.SIGHUP)
    return proc.wait_event("config.reloaded", timeout=TIMEOUT)


def journal_left(tmp_path: Path, place: str) -> int:
    """Entries the journal of ``place`` (e.g. root-route0-filter0) still holds, read after the stop."""
    folder = tmp_path / "data" / "journal" / place
    if not folder.exists():
        return 0

    async def count() -> int:
        journal = PieceJournal(str(folder))
        left = await journal.start()
        await journal.close()
        return len(left)

    return asyncio.run(count())


def run(tmp_path: Path, old: dict[str, Any], new: dict[str, Any], wait_for: Callable[[], bool]) -> None:
    """Pieces 1 and 2 under ``old`` (each acked), a reload to ``new``, then piece 3; the daemon stops once
    ``wait_for`` holds (what the new configuration emits may wait for its flush_timeout)."""
    proc = Proc(old, tmp_path)
    try:
        with ForwardClient("127.0.0.1", proc.port(), timeout=10) as client:
            client.message("docker.web", piece(1), ack=True)
            client.message("docker.web", piece(2), ack=True)
            reloaded = reload(proc, tmp_path, new)
            assert reloaded.get("routes_changed") is True, reloaded
            client.message("docker.web", piece(3), ack=True)
        until(wait_for, "the line's output")
    finally:
        assert proc.terminate() == 0


def test_changed_settings_at_the_same_place_complete_the_line_whole_once(tmp_path: Path) -> None:
    """The new filter takes over the old one's journal: the line completes whole when its last piece
    comes, although the pieces before it came to the filter the reload replaced."""
    run(
        tmp_path,
        config(tmp_path, [partial()]),
        config(tmp_path, [partial(max_pending=5000)]),
        lambda: len(read(tmp_path, "a")) >= 1,
    )
    lines = read(tmp_path, "a")
    assert [x["log"] for x in lines] == [WHOLE]
    assert "partial_incomplete" not in lines[0]
    assert "partial_message" not in lines[0]
    assert journal_left(tmp_path, "root-route0-filter0") == 0


@pytest.mark.parametrize("journal", [True, False])
def test_a_route_changed_around_a_kept_filter_sends_the_whole_line_the_new_way(
    tmp_path: Path, journal: bool
) -> None:
    """The route's output changes and the filter stays as it was: it is kept, with what it holds (without
    a journal, nothing else could give the pieces to a new filter), and the line it completes goes where
    the new route says, once."""
    run(
        tmp_path,
        config(tmp_path, [partial(journal=journal)], output="a"),
        config(tmp_path, [partial(journal=journal)], output="b"),
        lambda: len(read(tmp_path, "b")) >= 1,
    )
    assert read(tmp_path, "a") == []
    lines = read(tmp_path, "b")
    assert [x["log"] for x in lines] == [WHOLE]
    assert "partial_incomplete" not in lines[0]
    assert journal_left(tmp_path, "root-route0-filter0") == 0


def test_a_moved_filter_gives_back_its_pieces_through_its_old_route(tmp_path: Path) -> None:
    """A filter put in front of docker_partial moves it to another place, another journal: the old one
    flushes pieces 1 and 2 as a fragment through its old route (unmarked by the new filter), and piece 3
    is held by the new one until its flush_timeout, then flushed with the new filter's mark. Before the
    fix, pieces 1 and 2 stayed in a journal no filter opened again: acked, and never delivered."""
    mark = {"type": "record_modify", "set": {"v": "2"}}
    run(
        tmp_path,
        config(tmp_path, [partial()]),
        config(tmp_path, [mark, partial(flush_timeout="1s")]),
        lambda: len(read(tmp_path, "a")) >= 2,
    )
    first, second = read(tmp_path, "a")
    assert first["log"] == LOGS[0] + LOGS[1]
    assert first["partial_incomplete"] == "true"
    assert first["partial_id"] == "line-1"
    assert "v" not in first
    assert second["log"] == LOGS[2]
    assert second["partial_incomplete"] == "true"
    assert second["v"] == "2"
    assert journal_left(tmp_path, "root-route0-filter0") == 0
    assert journal_left(tmp_path, "root-route0-filter1") == 0


def test_a_removed_filter_gives_back_its_pieces_and_the_rest_passes_as_it_is(tmp_path: Path) -> None:
    """docker_partial removed: pieces 1 and 2 come out as a fragment before the switch, and piece 3, with
    no filter to join it, is delivered as docker sent it; every piece once."""
    run(
        tmp_path,
        config(tmp_path, [partial()]),
        config(tmp_path, []),
        lambda: len(read(tmp_path, "a")) >= 2,
    )
    first, second = read(tmp_path, "a")
    assert first["log"] == LOGS[0] + LOGS[1]
    assert first["partial_incomplete"] == "true"
    assert second == {**piece(3), "tag": second["tag"], "time": second["time"]}
    assert journal_left(tmp_path, "root-route0-filter0") == 0
