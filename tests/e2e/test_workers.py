"""``workers: 2``: two processes share the port through SO_REUSEPORT, each with its own buffer and its
own output files; every acked event is delivered, and SIGTERM stops both cleanly."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from forwardd.testing import ForwardClient
from tests.e2e.helpers import Proc, run_cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_workers_share_the_port_and_lose_nothing(tmp_path: Path) -> None:
    port = free_port()
    config = {
        "workers": 2,
        "storage": {"path": str(tmp_path / "data")},
        "sources": [{"name": "in", "bind": "127.0.0.1", "port": port, "udp_heartbeat": False}],
        "routes": [{"match": "**", "outputs": ["files"]}],
        "outputs": {"files": {"type": "file", "path": str(tmp_path / "out" / "events.log")}},
    }
    proc = Proc(config, tmp_path)
    ready = [proc.wait_event("forwardd.ready")]
    # Both workers must be up before clients connect, or the first takes every connection.
    while len(ready) < 2:
        ready = [line for line in list(proc.lines) if line.get("event") == "forwardd.ready"]
        if len(ready) < 2:
            proc.wait_next()
    assert sorted(r["worker"] for r in ready) == [0, 1]
    sent = []
    for k in range(8):
        with ForwardClient(port=port) as c:
            records = [{"k": k, "i": i} for i in range(50)]
            c.packed("app", records, ack=True)
            sent += [(k, i) for i in range(50)]
    assert proc.terminate() == 0
    files = sorted((tmp_path / "out").iterdir())
    got = [(r["k"], r["i"]) for f in files for r in map(json.loads, f.read_text().splitlines())]
    assert sorted(got) == sorted(sent)
    # Each worker has its own buffer directory: they never share a queue.
    assert (tmp_path / "data" / "buffer" / "files" / "worker-1").is_dir()


def test_workers_refuse_a_source_they_cannot_share(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump({"workers": 2, "sources": [{"name": "in", "port": 0}]}))
    r = run_cli("run", "--config", str(path))
    assert r.returncode == 2
    assert "needs a fixed TCP port" in r.stderr


@pytest.mark.slow
def test_fewer_workers_after_a_restart_still_deliver_what_every_old_worker_queued(tmp_path: Path) -> None:
    """workers: 2 with a dead output leaves a backlog in each worker's queue (worker 1's in worker-1/);
    restarted with workers: 1 and a working output, worker 0 adopts worker 1's queue and journal and
    everything acked arrives (issue 17: a worker that no longer exists left its queue orphaned)."""
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens there once the socket closes
    base: dict[str, Any] = {
        "storage": {"path": str(tmp_path / "data")},
        "sources": [{"name": "in", "bind": "127.0.0.1", "port": port, "udp_heartbeat": False}],
        "routes": [
            {
                "match": "docker.**",
                "filters": [{"type": "docker_partial", "journal": True}],
                "outputs": ["out"],
            },
            {"match": "**", "outputs": ["out"]},
        ],
    }
    down = {"out": {"type": "http", "endpoint": f"http://127.0.0.1:{dead}/logs"}}
    proc = Proc({**base, "workers": 2, "outputs": down}, tmp_path)
    proc.wait_ready(workers=2)
    sent = []
    # A connection each: SO_REUSEPORT spreads them over both workers (all 40 on one: odds 2^-39).
    for k in range(40):
        with ForwardClient(port=port) as c:
            c.packed("app", [{"k": k, "i": i} for i in range(50)], ack=True)
            sent += [(k, i) for i in range(50)]
    # The first piece of a long docker line, on connections until one lands on worker 1 (its journal).
    piece1 = {"log": "A" * 100, "partial_message": "true", "partial_id": "p1", "partial_ordinal": "1",
              "partial_last": "false", "container_id": "c" * 64, "source": "stdout"}  # fmt: skip
    worker1_journal = tmp_path / "data" / "journal" / "root-route0-filter0" / "worker-1"
    for _ in range(40):
        with ForwardClient(port=port) as c:
            c.message("docker.web", piece1, ack=True)
        if worker1_journal.is_dir() and any(
            p.suffix == ".open" and p.stat().st_size for p in worker1_journal.iterdir()
        ):
            break
    else:
        raise AssertionError("no piece reached worker 1's journal")
    assert proc.terminate() == 0
    parked = tmp_path / "data" / "dead-letter" / "out" / "worker-1"  # what worker 1 parked for a human
    parked.mkdir(parents=True)
    (parked / "1-1-0-out.chunk").write_bytes(b"")

    up = {"out": {"type": "file", "path": str(tmp_path / "out" / "events.log")}}
    proc = Proc({**base, "workers": 1, "outputs": up}, tmp_path)
    proc.port()
    adopted = [line for line in proc.lines if line.get("event") == "buffer.adopted"]
    assert {a["directory"] for a in adopted} >= {str(tmp_path / "data" / "buffer" / "out" / "worker-1")}
    left = proc.wait_event("dead_letter.left_by_old_worker")  # stays where it is, and the log says where
    assert (left["directory"], left["files"]) == (str(parked), 1)
    with ForwardClient(port=proc.port()) as c:  # the rest of the line, now to worker 0
        c.message(
            "docker.web", {**piece1, "log": "B\n", "partial_ordinal": "2", "partial_last": "true"}, ack=True
        )
    assert proc.terminate() == 0  # a clean stop delivers what is queued first
    lines = [json.loads(x) for f in (tmp_path / "out").iterdir() for x in f.read_text().splitlines()]
    got = [(r["k"], r["i"]) for r in lines if "k" in r]
    assert sorted(got) == sorted(sent)
    assert [r["log"] for r in lines if "log" in r] == ["A" * 100 + "B\n"]
    assert not (tmp_path / "data" / "buffer" / "out" / "worker-1").exists()  # drained, then removed
