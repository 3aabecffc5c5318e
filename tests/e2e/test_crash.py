"""kill -9 while acking clients send at full speed: every acked event must be in the output afterwards.

Four clients send numbered events in acked PackedForward chunks. forwardd is killed with SIGKILL several
times (each time after a random number of acks, not after a sleep) and restarted on the same storage.
Clients resend a chunk whose ack they did not get (at-least-once). At the end forwardd stops gracefully,
and the JSON-lines output must hold every acked event; duplicates are allowed and reported.
"""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from pathlib import Path

import pytest

from forwardd.testing.client import AckError, ForwardClient
from tests.e2e.helpers import Proc

CLIENTS = 4
CHUNK = 50
ROUNDS = 3


class Sender(threading.Thread):
    """Sends chunks of numbered events until told to stop or the connection breaks."""

    def __init__(
        self, ident: int, port: int, acked: list[int], progress: threading.Semaphore, resend: list[int] | None
    ) -> None:
        super().__init__(daemon=True)
        self.client_id = ident
        self.port = port
        self.acked = acked
        self.progress = progress
        self.unacked: list[int] = resend or []
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            client = ForwardClient(port=self.port, timeout=10)
        except OSError:
            return
        with client:
            while not self.stop.is_set():
                if not self.unacked:
                    start = self.client_id * 10_000_000 + len(self.acked)
                    self.unacked = list(range(start, start + CHUNK))
                try:
                    client.packed("crash", [{"seq": s, "pad": "x" * 150} for s in self.unacked], ack=True)
                except (AckError, OSError):
                    return  # killed: the chunk stays in self.unacked and is resent next round
                self.acked.extend(self.unacked)
                self.unacked = []
                self.progress.release()


@pytest.mark.slow
@pytest.mark.parametrize("file_fsync", ["grouped", "write"])
def test_sigkill_loses_no_acked_event(tmp_path: Path, file_fsync: str) -> None:
    rng = random.Random(20261123)
    out = tmp_path / "out"
    config = {
        "storage": {"path": str(tmp_path / "data")},
        "sources": [{"name": "in", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False}],
        "routes": [{"match": "**", "outputs": ["files"]}],
        "outputs": {
            "files": {
                "type": "file",
                "path": str(out / "${tag}.log"),
                "fsync": file_fsync,
                "buffer": {"fsync": "always"},
            }
        },
    }
    acked: list[list[int]] = [[] for _ in range(CLIENTS)]
    resend: list[list[int] | None] = [None] * CLIENTS
    for _ in range(ROUNDS):
        proc = Proc(config, tmp_path)
        port = proc.port()
        progress = threading.Semaphore(0)
        senders = [Sender(i, port, acked[i], progress, resend[i]) for i in range(CLIENTS)]
        for s in senders:
            s.start()
        for _ in range(rng.randint(20, 80)):  # kill after this many acked chunks
            assert progress.acquire(timeout=30), "clients stopped getting acks"
        proc.kill()
        for s in senders:
            s.stop.set()
            s.join(30)
            assert not s.is_alive()
        resend = [s.unacked or None for s in senders]
    final = Proc(config, tmp_path)
    final.port()
    assert final.terminate() == 0
    seen = Counter(json.loads(line)["seq"] for f in out.glob("*.log*") for line in f.read_text().splitlines())
    want = [s for per in acked for s in per]
    missing = [s for s in want if s not in seen]
    assert not missing, f"{len(missing)} acked events lost, e.g. {missing[:5]}"
    dup = sum(n - 1 for n in seen.values() if n > 1)
    print(f"\n{len(want)} acked events, all delivered; {dup} duplicates after {ROUNDS} SIGKILLs")


def test_sigkill_between_the_pieces_of_a_long_docker_line_loses_none(tmp_path: Path) -> None:
    """docker_partial acks each piece (docker waits for it before sending the next); its journal is what
    makes that ack mean "on disk". Killed between pieces, forwardd holds the acked ones again after the
    restart, and the line comes out whole when docker sends the rest."""
    out = tmp_path / "out"
    config = {
        "storage": {"path": str(tmp_path / "data")},
        "sources": [{"name": "in", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False}],
        "routes": [
            {"match": "**", "filters": [{"type": "docker_partial"}], "outputs": ["files"]},
        ],
        "outputs": {"files": {"type": "file", "path": str(out / "${tag}.log")}},
    }
    cid = "c" * 64

    def piece(ordinal: int, last: bool, log: str) -> dict[str, str]:
        return {
            "container_id": cid, "container_name": "/web", "source": "stdout", "log": log,
            "partial_message": "true", "partial_id": "pid-1",
            "partial_ordinal": str(ordinal), "partial_last": "true" if last else "false",
        }  # fmt: skip

    proc = Proc(config, tmp_path)
    with ForwardClient(port=proc.port(), timeout=10) as client:
        client.message("docker.web", piece(1, False, "A" * 16384), ack=True)
        client.message("docker.web", piece(2, False, "B" * 16384), ack=True)
    proc.kill()
    proc = Proc(config, tmp_path)
    with ForwardClient(port=proc.port(), timeout=10) as client:
        client.message("docker.web", piece(3, True, "C\n"), ack=True)
    assert proc.terminate() == 0
    lines = [json.loads(x) for f in out.glob("*.log*") for x in f.read_text().splitlines()]
    assert [x["log"] for x in lines] == ["A" * 16384 + "B" * 16384 + "C\n"]
    assert "partial_incomplete" not in lines[0]
