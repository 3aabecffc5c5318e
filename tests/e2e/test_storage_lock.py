"""One forwardd per storage directory: a second instance on the same storage exits at once with exit code 2
and says who holds it, with one worker or several; the first keeps working, and the lock goes with it."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from forwardd.testing import ForwardClient
from tests.e2e.helpers import Proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(storage: Path, out: Path, workers: int) -> dict[str, Any]:
    return {
        "workers": workers,
        "storage": {"path": str(storage)},
        # A port of its own for each instance: the lock, not the port, must be what stops the second.
        "sources": [{"name": "in", "bind": "127.0.0.1", "port": free_port(), "udp_heartbeat": False}],
        "routes": [{"match": "**", "outputs": ["files"]}],
        "outputs": {"files": {"type": "file", "path": str(out)}},
    }


@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_instance_on_the_same_storage_exits_with_a_clear_error(tmp_path: Path, workers: int) -> None:
    storage = tmp_path / "data"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first_config = config(storage, tmp_path / "a.log", workers)
    first = Proc(first_config, tmp_path / "a")
    first.wait_ready(workers)
    second = Proc(config(storage, tmp_path / "b.log", workers), tmp_path / "b")
    assert second.wait(30) == 2
    locked = second.wait_event("storage.locked")
    assert locked["path"] == str(storage / "forwardd.lock")
    assert locked["pid"] == first.proc.pid
    assert not [line for line in second.lines if line.get("event") == "forwardd.ready"]
    # The first instance never noticed: it still takes and delivers events.
    port = first_config["sources"][0]["port"]
    with ForwardClient(port=port) as c:
        c.message("app", {"n": 1}, ack=True)
    assert first.terminate() == 0
    lines = [x for f in tmp_path.glob("a*.log") for x in f.read_text().splitlines()]  # a.worker1.log too
    assert [json.loads(x)["n"] for x in lines] == [1]
    # Once it is gone, the storage is free again.
    third = Proc(config(storage, tmp_path / "b.log", workers), tmp_path / "b")
    third.wait_ready(workers)
    assert third.terminate() == 0


def test_a_storage_path_that_cannot_hold_the_lock_fails_at_once(tmp_path: Path) -> None:
    storage = tmp_path / "data"
    storage.write_text("a file where the storage directory should be")
    proc = Proc(config(storage, tmp_path / "a.log", 1), tmp_path)
    assert proc.wait(30) == 1
    assert proc.wait_event("storage.unusable")["path"] == str(storage / "forwardd.lock")
