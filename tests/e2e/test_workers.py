"""``workers: 2``: two processes share the port through SO_REUSEPORT, each with its own buffer and its
own output files; every acked event is delivered, and SIGTERM stops both cleanly."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from forwardd.testing import ForwardClient
from tests.e2e.helpers import Proc


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
    r = subprocess.run(
        [sys.executable, "-m", "forwardd", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2
    assert "needs a fixed TCP port" in r.stderr
