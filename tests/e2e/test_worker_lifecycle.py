"""``workers: N`` as an orchestrator and an operator treat it (issue 17, item 3): the workers never outlive
their parent, a signal sent to the whole process group stops each worker once (the copy the parent
forwards does not abort a drain), a signal that comes while the workers are being forked stops them
cleanly instead of killing them, and the parent's deadline covers a worker that does not stop.

Real processes throughout: the daemon as a subprocess in a process group of its own, real signals, real
sockets; a worker that does not stop is a real process frozen with SIGSTOP.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import psutil

from forwardd.testing import ForwardClient
from tests.e2e.helpers import Proc
from tests.outputs.http.conftest import Reply, ThreadedRecorder

#: shutdown_timeout of these tests: short, so that a test which waits for it is short too.
STOP = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(tmp_path: Path, port: int, workers: int = 2) -> dict[str, Any]:
    return {
        "workers": workers,
        "shutdown_timeout": f"{STOP}s",
        "storage": {"path": str(tmp_path / "data")},
        "sources": [{"name": "in", "bind": "127.0.0.1", "port": port, "udp_heartbeat": False}],
        "routes": [{"match": "**", "outputs": ["files"]}],
        "outputs": {"files": {"type": "file", "path": str(tmp_path / "out" / "events.log")}},
    }


def http_config(tmp_path: Path, port: int, endpoint: str) -> dict[str, Any]:
    return {
        **config(tmp_path, port),
        "routes": [{"match": "**", "outputs": ["web"]}],
        "outputs": {"web": {"type": "http", "endpoint": endpoint, "batch": {"max_wait": "10ms"}}},
    }


def send(port: int, first: int, connections: int, per: int = 50) -> set[int]:
    """Acked chunks, one connection each (SO_REUSEPORT spreads them over the workers); the numbers acked."""
    acked: set[int] = set()
    for k in range(connections):
        base = first + k * per
        with ForwardClient(port=port) as c:
            c.packed("app", [{"n": base + i} for i in range(per)], ack=True)
        acked.update(range(base, base + per))
    return acked


def delivered(tmp_path: Path) -> set[int]:
    out = tmp_path / "out"
    return {json.loads(line)["n"] for f in out.iterdir() for line in f.read_text().splitlines()}


def workers_of(proc: Proc, count: int, timeout: float = 20.0) -> list[psutil.Process]:
    """The forked workers of ``proc``, once there are ``count`` of them (polled: nothing announces a fork)."""
    parent = psutil.Process(proc.proc.pid)
    deadline = time.monotonic() + timeout
    while len(children := parent.children()) < count:
        assert time.monotonic() < deadline, f"{len(children)} of {count} workers after {timeout}s"
    return children


def gone(p: psutil.Process) -> bool:
    """Exited: no longer there, or a zombie waiting for whichever process it was handed to."""
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def events(proc: Proc, name: str) -> list[dict[str, Any]]:
    return [line for line in list(proc.lines) if line.get("event") == name]


def test_workers_die_with_their_parent_and_free_the_port(tmp_path: Path) -> None:
    """kill -9 of the parent: every worker stops (cleanly: it acks, closes its queues) within the stop
    deadline, the port and the storage lock are free for the next instance, and nothing acked is lost
    (issue 17: killing the parent left orphaned workers listening on the port)."""
    port = free_port()
    proc = Proc(config(tmp_path, port), tmp_path)
    proc.wait_ready(workers=2)
    workers = workers_of(proc, 2)
    acked = send(port, 0, 10)
    killed = time.monotonic()
    proc.kill()
    left = [w for w in workers if not gone(w)]
    while left and time.monotonic() - killed < STOP + 2:
        psutil.wait_procs(left, timeout=0.1)  # a worker is handed to init: it may linger as a zombie
        left = [w for w in left if not gone(w)]
    assert not left, f"workers {[w.pid for w in left]} outlived their parent by {STOP + 2}s"
    # Each one stopped as it would on SIGTERM: the parent's death reached it (signal and pipe both).
    assert sorted(line["worker"] for line in events(proc, "forwardd.stopped")) == [0, 1]
    assert len(events(proc, "worker.parent_gone")) == 2
    # The port and the storage are free: a new instance starts on both and delivers everything acked.
    again = Proc(config(tmp_path, port), tmp_path)
    again.wait_ready(workers=2)
    acked |= send(port, 10_000, 4)
    assert again.terminate() == 0
    assert delivered(tmp_path) >= acked


def test_sigterm_to_the_process_group_stops_each_worker_once(tmp_path: Path) -> None:
    """The group's SIGTERM reaches the parent and both workers, and the parent forwards its copy: each
    worker stops once, drains (its output hangs, so the drain lasts until the deadline), exits 0, and
    everything acked is delivered after a restart (issue 17: the second copy killed a worker mid-drain).

    Two copies that arrive close together are merged by the kernel (a signal is pending at most once),
    so the test also sends each worker a copy of its own once it is draining, as a parent that was slow
    to forward would: that one must not abort the drain either."""
    port = free_port()
    server = ThreadedRecorder()
    try:
        server.recorder.default = Reply(action="hang")
        server.start()
        endpoint = f"{server.recorder.url}/in"
        proc = Proc(http_config(tmp_path, port, endpoint), tmp_path)
        proc.wait_ready(workers=2)
        workers = workers_of(proc, 2)
        acked = send(port, 0, 10)
        server.recorder.wait_until(lambda r: len(r.requests) >= 2)  # both are in a write that hangs
        os.killpg(proc.proc.pid, signal.SIGTERM)
        while len(events(proc, "forwardd.stopping")) < 2:
            proc.wait_next()
        for w in workers:
            w.send_signal(signal.SIGTERM)  # the late copy, mid-drain
        assert proc.wait(STOP + 2) == 0
        assert sorted(line["worker"] for line in events(proc, "forwardd.stopping")) == [0, 1]
        assert sorted(line["worker"] for line in events(proc, "forwardd.stopped")) == [0, 1]
        assert len(events(proc, "forwardd.stop_signal_repeated")) >= 2
        assert not events(proc, "forwardd.abort")
        assert len(events(proc, "workers.stopping")) == 1
        stopped = events(proc, "output.stopped")  # each says what it left queued: the write cut off
        assert len(stopped) == 2
        assert all(line["left_chunks"] > 0 for line in stopped), stopped
        # What the hanging endpoint never took is delivered by the next start.
        with server.recorder.cond:
            server.recorder.default = Reply()
        again = Proc(http_config(tmp_path, port, endpoint), tmp_path)
        again.wait_ready(workers=2)
        server.recorder.wait_until(lambda r: {e["n"] for e in r.events()} >= acked)
        assert again.terminate() == 0
    finally:
        server.close()


def test_sigterm_while_the_workers_start_stops_them_cleanly(tmp_path: Path) -> None:
    """A SIGTERM to the group right after the workers are forked, before their event loops handle signals
    (they are still importing the daemon), waits until they do: each starts, stops once, exits 0 (issue
    17: the default action of SIGTERM killed such a worker)."""
    port = free_port()
    proc = Proc(config(tmp_path, port), tmp_path)
    workers_of(proc, 2)
    os.killpg(proc.proc.pid, signal.SIGTERM)
    assert proc.wait(STOP + 10) == 0, "\n".join(proc.raw[-20:])
    assert sorted(line["worker"] for line in events(proc, "forwardd.stopped")) == [0, 1]
    assert not events(proc, "forwardd.abort")


def test_the_parent_kills_a_worker_that_overruns_the_deadline(tmp_path: Path) -> None:
    """A worker that cannot stop (frozen: SIGSTOP) is killed by the parent before ``shutdown_timeout``
    ends, so the whole stop fits it (exit 1, said in the log); what the frozen worker acked is on its
    disk and delivered by the next start."""
    port = free_port()
    proc = Proc(config(tmp_path, port), tmp_path)
    proc.wait_ready(workers=2)
    workers = workers_of(proc, 2)
    acked = send(port, 0, 10)
    workers[0].suspend()
    t0 = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    code = proc.wait(STOP + 5)
    took = time.monotonic() - t0
    assert code == 1
    assert took < STOP + 0.5, f"stop took {took:.2f}s with shutdown_timeout {STOP}s"
    [deadline] = events(proc, "workers.stop_deadline")
    assert len(deadline["workers"]) == 1
    assert len(events(proc, "forwardd.stopped")) == 1  # the other worker stopped on its own
    again = Proc(config(tmp_path, port), tmp_path)
    again.wait_ready(workers=2)
    assert again.terminate() == 0
    assert delivered(tmp_path) == acked


def test_a_worker_that_dies_stops_the_others(tmp_path: Path) -> None:
    """A worker killed on its own (the OOM killer) takes the service down cleanly (exit 1) so that the
    orchestrator restarts it whole, instead of running on with half its workers and a queue nobody drains."""
    port = free_port()
    proc = Proc(config(tmp_path, port), tmp_path)
    proc.wait_ready(workers=2)
    workers = workers_of(proc, 2)
    acked = send(port, 0, 10)
    workers[0].kill()
    assert proc.wait(STOP + 2) == 1
    [exited] = events(proc, "worker.exited")
    assert exited["code"] == -signal.SIGKILL
    assert len(events(proc, "forwardd.stopped")) == 1
    again = Proc(config(tmp_path, port), tmp_path)
    again.wait_ready(workers=2)
    assert again.terminate() == 0
    assert delivered(tmp_path) == acked
