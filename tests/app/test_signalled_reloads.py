"""SIGHUPs into reloads (SignalledReloads), on a real daemon: the file is read in a thread, so a SIGHUP can
come while a reload reads it; it must be neither lost nor run alongside."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from forwardd.app import Daemon
from forwardd.app.config import Config
from forwardd.app.reloading import SignalledReloads
from forwardd.lifecycle import Deadline

TIMEOUT = 10.0


def config(tmp_path: Path) -> Config:
    return Config.model_validate(
        {
            "storage": {"path": str(tmp_path / "data")},
            "sources": [{"name": "in", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False}],
            "routes": [{"match": "**", "outputs": ["out"]}],
            "outputs": {"out": {"type": "file", "path": str(tmp_path / "out" / "${tag}.log")}},
        }
    )


async def test_sighups_during_a_reload_make_one_more_after_it_and_none_come_once_stopping(
    tmp_path: Path,
) -> None:
    """The reload in progress may have read the file before it changed: SIGHUPs meanwhile ask for one
    more reload after it (one, however many came), never a second one at the same time."""
    new = config(tmp_path)
    daemon = Daemon(new)
    reading = threading.Event()
    release = threading.Event()
    reads: list[int] = []

    def load() -> Config:
        reads.append(len(reads))
        reading.set()
        assert release.wait(TIMEOUT)
        return new

    stopping = asyncio.Event()
    reloads = SignalledReloads(daemon, load, "<test>", stopping)
    await daemon.start()
    try:
        reloads.request(1)
        assert await asyncio.to_thread(reading.wait, TIMEOUT)  # the first reload is reading its file
        reloads.request(2)
        reloads.request(3)
        release.set()
        await reloads.finish(Deadline.after(TIMEOUT))
        assert reads == [0, 1]
        stopping.set()
        reloads.request(4)
        await reloads.finish(Deadline.after(TIMEOUT))
        assert reads == [0, 1]
    finally:
        await daemon.stop()
