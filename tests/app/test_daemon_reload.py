"""Daemon.reload on the daemon's own loop: the real router, filters, journals and disk queues, with chunks
handed to the router's entry on every loop turn while a reload runs, as sessions hand them over.

What only the loop's own interleaving shows is tested here; the e2e tests (tests/e2e/test_reload*.py)
run the daemon as a process and reload it by SIGHUP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from forwardd.app import Daemon
from forwardd.app.config import Config
from forwardd.buffer.journal import PieceJournal
from forwardd.model import Chunk
from tests.filters.helpers import make_chunk
from tests.filters.test_docker_partial import piece

TIMEOUT = 10.0
PIECES = 2_000  # sent while the reload runs, one per loop turn


def config(tmp_path: Path, **partial: Any) -> Config:
    """One source, one route through docker_partial (``partial``: its settings) into a file output."""
    return Config.model_validate(
        {
            "storage": {"path": str(tmp_path / "data")},
            "sources": [{"name": "in", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False}],
            "routes": [
                {"match": "**", "filters": [{"type": "docker_partial", **partial}], "outputs": ["out"]}
            ],
            "outputs": {"out": {"type": "file", "path": str(tmp_path / "out" / "${tag}.log")}},
        }
    )


def first_piece(pid: str) -> Chunk:
    """The first piece of a long line whose rest never comes: docker_partial holds it, acked."""
    return make_chunk("docker.web", [piece(pid, 1, False, "x" * 100)])


async def test_pieces_that_come_during_a_reload_are_journaled_before_their_ack(tmp_path: Path) -> None:
    """A reload that changes docker_partial's settings replaces the filter by one at the same place, which
    takes over its journal. A piece handed over on every loop turn of the reload (parked while the router
    holds, then routed by the new table) is acked only once it is in that journal: after the stop, the
    journal holds every piece that was acked, which is what a restart would hold again. (Before the fix the
    successor was started after the router's switch: every piece of the reload was acked from memory.)"""
    daemon = Daemon(config(tmp_path, flush_timeout="60s"))
    await daemon.start()
    entry = daemon.router.entry()
    sent = ["before"]
    acks: list[Awaitable[None] | None] = []
    try:
        reload = asyncio.ensure_future(daemon.reload(config(tmp_path, flush_timeout="61s")))
        # Routed by the running filter into its journal, which the reload closes before the journal's
        # commit loop has run: the close must still commit it, and return.
        acks.append(entry(first_piece("before")))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while not reload.done():
            assert loop.time() < deadline, "the reload did not finish"
            # At most PIECES: the filter holds at most max_pending lines (10,000 by default) and flushes
            # the oldest beyond that, and a fast loop turns tens of thousands of times in one reload.
            if len(sent) < PIECES:
                pid = f"during-{len(sent)}"
                sent.append(pid)
                acks.append(entry(first_piece(pid)))
            await asyncio.sleep(0)  # one loop turn: the reload goes on between two pieces
        assert reload.result() is True
        await asyncio.wait_for(asyncio.gather(*(a for a in acks if a is not None)), TIMEOUT)
    finally:
        await daemon.stop()
    assert len(sent) > 10  # pieces came while the reload ran, not only before it
    journal = PieceJournal(str(tmp_path / "data" / "journal" / "root-route0-filter0"))
    recovered = await journal.start()
    await journal.close()
    held = [e.record["partial_id"] for _, chunk in recovered for e in chunk.events()]
    assert sorted(held) == sorted(sent)
