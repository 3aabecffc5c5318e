"""The HTTP output inside the whole daemon: forward clients → disk buffer → an HTTP server that fails a while.

The server runs on its own thread (the ForwardClient and run_daemon block the test's thread).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from forwardd.buffer.dead_letter import read_dead_letter
from forwardd.testing import ForwardClient
from forwardd.testing.daemon import run_daemon

from .conftest import Recorder, Reply, Seen, ThreadedRecorder


def config(storage: Path, endpoint: str, **output: Any) -> str:
    extra = "".join(f"    {k}: {v}\n" for k, v in output.items())
    return f"""
storage: {{path: {storage}}}
sources: [{{name: in, bind: 127.0.0.1, port: 0, udp_heartbeat: false}}]
routes: [{{match: "**", outputs: [web]}}]
outputs:
  web:
    type: http
    endpoint: "{endpoint}"
    buffer: {{retry: {{initial: 0.05, max: 0.2, jitter: 0}}}}
{extra}"""


def seqs(server: Recorder) -> set[int]:
    return {e["seq"] for e in server.events()}


def send(port: int, tag: str, start: int, chunks: int, per_chunk: int = 10) -> set[int]:
    """Send acked PackedForward chunks; returns the seq numbers that were acked."""
    acked: set[int] = set()
    with ForwardClient("127.0.0.1", port) as client:
        for c in range(chunks):
            base = start + c * per_chunk
            batch = [{"seq": base + i, "log": f"event {base + i}"} for i in range(per_chunk)]
            client.packed(tag, batch, ack=True)
            acked.update(r["seq"] for r in batch)
    return acked


def test_failing_endpoint_then_recovery_delivers_everything(
    threaded_server: ThreadedRecorder, tmp_path: Path
) -> None:
    server = threaded_server.recorder
    server.default = Reply(500)
    threaded_server.start()
    with run_daemon(config(tmp_path / "data", server.url + "/in")) as d:
        acked = send(d.port(), "app.web", 0, 20)
        # Everything is acked (on disk) while the endpoint refuses; it has been retried at least twice.
        server.wait_until(lambda s: sum(r.status == 500 for r in s.requests) >= 2)
        with server.cond:
            server.default = Reply(200)
        server.wait_until(lambda s: seqs(s) >= acked)
    assert seqs(server) == acked == set(range(200))
    assert {r.path for r in server.requests} == {"/in"}


def test_rejected_chunks_go_to_dead_letter_and_nothing_else_is_lost(
    threaded_server: ThreadedRecorder, tmp_path: Path
) -> None:
    server = threaded_server.recorder

    def rule(seen: Seen) -> Reply | None:
        return Reply(400, body=b"schema mismatch") if seen.path == "/in/bad" else None

    server.rule = rule
    threaded_server.start()
    endpoint = f"http://127.0.0.1:{server.port}/in/${{tag[0]}}"
    storage = tmp_path / "data"
    cfg = config(storage, endpoint, allowed_hosts="[127.0.0.1]")
    with run_daemon(cfg) as d:
        good = send(d.port(), "good.app", 0, 5)
        bad = send(d.port(), "bad.app", 1000, 3)
        # One delivery loop, oldest chunk first: once this last chunk arrives, every bad one has been
        # dead-lettered (the loop moves on only after the dead-letter files are written).
        last = send(d.port(), "good.app", 2000, 1)
        server.wait_until(lambda s: 2000 in seqs(s))
    assert seqs(server) == good | last
    assert all(r.status in (200, 400) for r in server.requests)
    dead = sorted((storage / "dead-letter" / "web").glob("*.chunk"))
    assert dead, "no dead-letter files"
    dead_seqs = [e.record["seq"] for p in dead for e in read_dead_letter(str(p)).events()]
    assert sorted(dead_seqs) == sorted(bad)
    assert {read_dead_letter(str(p)).tag for p in dead} == {"bad.app"}
    for p in dead:
        assert "HTTP 400" in p.with_suffix(".json").read_text()


def test_outage_across_daemon_restart(threaded_server: ThreadedRecorder, tmp_path: Path) -> None:
    """The endpoint is down (nothing listens) while clients send and the daemon restarts; when it comes
    back, every acked event is delivered."""
    server = threaded_server.recorder
    with socket.socket() as s:  # reserve a port number for the endpoint, then leave it unbound
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = config(tmp_path / "data", f"http://127.0.0.1:{port}/in")
    with run_daemon(cfg) as d:
        acked = send(d.port(), "app.web", 0, 10)
    with run_daemon(cfg) as d:
        acked |= send(d.port(), "app.web", 100, 10)
        threaded_server.start(port)
        server.wait_until(lambda s: seqs(s) >= acked)
    assert seqs(server) == acked == set(range(200))


def test_in_flight_overlaps_the_requests_of_chunks_in_the_daemon(
    threaded_server: ThreadedRecorder, tmp_path: Path
) -> None:
    """``in_flight: 4`` in the configuration: the first request is still open when a later chunk's arrives
    (held by the server until then), and every acked event arrives once."""
    server = threaded_server.recorder
    saw_later: list[bool] = []

    async def hold(seen: Seen) -> None:
        if not saw_later:
            saw_later.append(False)
            saw_later[0] = await server.until_open(2, 10.0)

    server.hold = hold
    threaded_server.start()
    with run_daemon(config(tmp_path / "data", server.url + "/in", in_flight=4)) as d:
        acked: set[int] = set()
        for k in range(4):
            acked |= send(d.port(), f"app.{k}", 100 * k, 1)
        server.wait_until(lambda s: seqs(s) >= acked)
    assert saw_later == [True]
    assert sorted(e["seq"] for e in server.events()) == sorted(acked)  # each exactly once
