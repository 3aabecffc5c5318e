"""Reload (SIGHUP, ``forwardd reload``) against the real daemon: real signals, real sockets, real files.

Every wait is on a log line or a condition with a deadline; the outputs are read after a graceful stop.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from forwardd.testing import ForwardClient
from tests.e2e.helpers import Proc, run_cli


def _file_output(tmp_path: Path, name: str) -> dict[str, Any]:
    return {"type": "file", "path": str(tmp_path / "out" / name / "${tag}.log")}


def _config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "storage": {"path": str(tmp_path / "data")},
        "sources": [{"name": "in", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False}],
        "routes": [{"match": "**", "outputs": ["a"]}],
        "outputs": {"a": _file_output(tmp_path, "a")},
    }
    config.update(extra)
    return config


def _write(tmp_path: Path, config: dict[str, Any]) -> None:
    (tmp_path / "forwardd.yaml").write_text(yaml.safe_dump(config))


def _events(proc: Proc, event: str) -> list[dict[str, Any]]:
    with proc._cond:
        return [line for line in proc.lines if line.get("event") == event]


def _wait_count(proc: Proc, event: str, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The log lines named ``event`` once there are ``count`` of them."""
    deadline = time.monotonic() + timeout
    while True:
        found = _events(proc, event)
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(found)} {event!r} lines, wanted {count}:\n" + "\n".join(proc.raw[-30:])
            )
        proc.wait_next(max(0.1, deadline - time.monotonic()))


def _hup(proc: Proc, count: int = 1, event: str = "config.reloaded") -> dict[str, Any]:
    proc.proc.send_signal(signal.SIGHUP)
    return _wait_count(proc, event, count)[count - 1]


def _read(tmp_path: Path, output: str) -> list[dict[str, Any]]:
    root = tmp_path / "out" / output
    got: list[dict[str, Any]] = []
    if root.exists():
        for f in sorted(root.iterdir()):
            got.extend(json.loads(line) for line in f.read_text().splitlines())
    return got


def _until(cond: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)  # polling a condition with a deadline, not standing in for one


class Sender:
    """One connection that sends acked events continuously; records the sequence numbers acked."""

    def __init__(self, port: int, tag: str = "app.web") -> None:
        self.client = ForwardClient("127.0.0.1", port, timeout=30.0)
        self.tag = tag
        self.acked: list[int] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seq = 0
        try:
            while not self._stop.is_set():
                self.client.message(self.tag, {"seq": seq}, ack=True)
                self.acked.append(seq)
                seq += 1
        except BaseException as exc:
            self.error = exc

    def wait_acked(self, n: int) -> None:
        _until(lambda: len(self.acked) >= n or self.error is not None, what=f"{n} acks")
        assert self.error is None, self.error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert self.error is None, f"the connection failed: {self.error!r}"
        assert not self.client.closed_by_server(0.05)
        self.client.close()


def test_reload_swaps_route_and_filter_under_one_open_connection(tmp_path: Path) -> None:
    """A client keeps one connection and sends acked events all along while a reload moves its route to
    another output and changes the filter: the connection stays open, and every acked event is in exactly
    one output, stamped by the filter of the configuration that accepted it, the switch at one point."""
    outputs = {"a": _file_output(tmp_path, "a"), "b": _file_output(tmp_path, "b")}
    v1 = _config(
        tmp_path,
        routes=[
            {"match": "app.**", "filters": [{"type": "record_modify", "set": {"v": "1"}}], "outputs": ["a"]}
        ],
        outputs=outputs,
    )
    proc = Proc(v1, tmp_path)
    try:
        proc.wait_ready()
        sender = Sender(proc.port())
        sender.wait_acked(200)
        v2 = dict(
            v1,
            routes=[
                {
                    "match": "app.**",
                    "filters": [{"type": "record_modify", "set": {"v": "2"}}],
                    "outputs": ["b"],
                }
            ],
        )
        _write(tmp_path, v2)
        reloaded = _hup(proc)
        assert reloaded["routes_changed"] is True
        at_reload = len(sender.acked)
        sender.wait_acked(at_reload + 200)
        sender.stop()
        acked = list(sender.acked)
    finally:
        assert proc.terminate() == 0
    a, b = _read(tmp_path, "a"), _read(tmp_path, "b")
    assert all(r["v"] == "1" for r in a)
    assert all(r["v"] == "2" for r in b)
    seq_a, seq_b = [r["seq"] for r in a], [r["seq"] for r in b]
    assert not set(seq_a) & set(seq_b), "an event went both ways"
    assert sorted(seq_a + seq_b) == acked, "an acked event is missing or doubled"
    # One switch point: everything before it by the old configuration, everything after by the new.
    assert seq_a == list(range(len(seq_a)))
    assert seq_b == list(range(len(seq_a), len(acked)))
    assert 200 <= len(seq_a) <= at_reload + 1
    assert len(seq_b) >= 200


def test_reload_adds_and_removes_a_source(tmp_path: Path) -> None:
    """A source added by a reload accepts; a removed one stops accepting, its open connection is
    drained (its acks sent) and closed; the source that stays keeps its connection."""
    v1 = _config(
        tmp_path,
        sources=[
            {"name": "keep", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False},
            {"name": "old", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False},
        ],
    )
    proc = Proc(v1, tmp_path)
    try:
        ready = proc.wait_event("forwardd.ready")
        keep_port, old_port = (int(x.rsplit(":", 1)[1]) for x in ready["listeners"])
        keep = ForwardClient("127.0.0.1", keep_port)
        old = ForwardClient("127.0.0.1", old_port)
        keep.message("t.keep", {"n": 1}, ack=True)
        old.message("t.old", {"n": 1}, ack=True)
        with socketserver_port() as new_port:
            pass
        v2 = _config(
            tmp_path,
            sources=[
                {"name": "keep", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False},
                {"name": "new", "bind": "127.0.0.1", "port": new_port, "udp_heartbeat": False},
            ],
        )
        # port 0 stays port 0: "keep" is unchanged and keeps its ephemeral port and connection.
        _write(tmp_path, v2)
        reloaded = _hup(proc)
        assert reloaded["sources_added"] == ["new"]
        assert reloaded["sources_removed"] == ["old"]
        proc.wait_event("listener.stopped")
        assert old.closed_by_server(10)
        old.close()
        keep.message("t.keep", {"n": 2}, ack=True)
        with ForwardClient("127.0.0.1", new_port) as new:
            new.message("t.new", {"n": 1}, ack=True)
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", old_port)) != 0, "the removed source still accepts"
        keep.close()
    finally:
        assert proc.terminate() == 0
    got = sorted((r["tag"], r["n"]) for r in _read(tmp_path, "a"))
    assert got == [("t.keep", 1), ("t.keep", 2), ("t.new", 1), ("t.old", 1)]


class socketserver_port:
    """A free TCP port on 127.0.0.1 (bound, then released)."""

    def __enter__(self) -> int:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        port: int = self.sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_output_removed_then_readded_delivers_its_queue(tmp_path: Path) -> None:
    """An output removed by a reload keeps its queue on disk and says so; the reload that brings it back
    delivers that queue. Its destination is unwritable while the events are queued (a file where its
    directory should be), so they are still queued when it goes."""
    blocked = tmp_path / "out" / "b"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a directory")
    outputs = {"a": _file_output(tmp_path, "a"), "b": _file_output(tmp_path, "b")}
    fast_retry = {"retry": {"initial": 0.05, "max": 0.2}}
    outputs["b"]["buffer"] = fast_retry
    v1 = _config(tmp_path, routes=[{"match": "**", "outputs": ["b"]}], outputs=outputs)
    proc = Proc(v1, tmp_path)
    try:
        proc.wait_ready()
        with ForwardClient("127.0.0.1", proc.port()) as c:
            for n in range(20):
                c.message("t.b", {"n": n}, ack=True)
            _write(tmp_path, _config(tmp_path))  # b gone; its route too
            _hup(proc)
            removed = proc.wait_event("output.removed")
            assert removed["output"] == "b", removed
            assert removed["left_chunks"] >= 1, removed
            c.message("t.a", {"n": 100}, ack=True)
            blocked.unlink()
            _write(tmp_path, v1)
            reloaded = _hup(proc, 2)
            assert reloaded["outputs_added"] == ["b"]
            _until(lambda: len(_read(tmp_path, "b")) >= 20, what="b's queue delivered")
    finally:
        assert proc.terminate() == 0
    assert sorted(r["n"] for r in _read(tmp_path, "b")) == list(range(20))
    assert [r["n"] for r in _read(tmp_path, "a")] == [100]


def test_invalid_config_is_refused_and_the_old_one_serves(tmp_path: Path) -> None:
    """A new file with mistakes is refused with each one at file:line; one that changes what a reload
    cannot (storage) is refused by name; the running configuration serves on the same connection."""
    v1 = _config(tmp_path)
    proc = Proc(v1, tmp_path)
    try:
        proc.wait_ready()
        with ForwardClient("127.0.0.1", proc.port()) as c:
            c.message("t", {"n": 1}, ack=True)
            _write(tmp_path, dict(v1, routes=[{"match": "**", "outputs": ["nowhere"]}]))
            failed = _hup(proc, event="config.reload_failed")
            text = "\n".join(failed["errors"])
            assert "forwardd.yaml:" in text, failed
            assert "nowhere" in text, failed
            c.message("t", {"n": 2}, ack=True)
            _write(tmp_path, dict(v1, storage={"path": str(tmp_path / "elsewhere")}))
            failed = _hup(proc, 2, event="config.reload_failed")
            assert any("storage" in e and "restart" in e for e in failed["errors"]), failed
            c.message("t", {"n": 3}, ack=True)
            assert not _events(proc, "config.reloaded")
    finally:
        assert proc.terminate() == 0
    assert [r["n"] for r in _read(tmp_path, "a")] == [1, 2, 3]


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH", "")))


def test_forwardd_reload_command(tmp_path: Path) -> None:
    """``forwardd reload -c FILE`` (and ``forwardd -c FILE reload``) signal the forwardd holding FILE's
    storage; with none running it says so (exit 1); a file that does not load is refused (exit 2)
    before anything is signalled; an option reload does not use is refused (exit 2)."""
    cfg = str(tmp_path / "forwardd.yaml")
    v1 = _config(tmp_path)
    _write(tmp_path, v1)
    none = _cli(tmp_path, "reload", "-c", cfg)
    assert none.returncode == 1
    assert "no forwardd is running" in none.stderr
    proc = Proc(v1, tmp_path)
    try:
        proc.wait_ready()
        _write(tmp_path, dict(v1, outputs={"a": _file_output(tmp_path, "a2")}))
        done = _cli(tmp_path, "reload", "-c", cfg)
        assert done.returncode == 0, done.stderr
        assert f"pid {proc.proc.pid}" in done.stdout
        assert _wait_count(proc, "config.reloaded", 1)[0]["outputs_rebuilt"] == ["a"]
        done = _cli(tmp_path, "-c", cfg, "reload")
        assert done.returncode == 0, done.stderr
        assert _wait_count(proc, "config.reloaded", 2)[1].get("unchanged") is True
        assert _cli(tmp_path, "--log-level", "debug", "reload", "-c", cfg).returncode == 2
        assert _cli(tmp_path, "-c", cfg, "reload", "-c", str(tmp_path / "other.yaml")).returncode == 2
        (tmp_path / "forwardd.yaml").write_text("sources: [}\n")
        bad = _cli(tmp_path, "reload", "-c", cfg)
        assert bad.returncode == 2
        assert "forwardd.yaml:1" in bad.stderr
        assert not _events(proc, "config.reload_failed")
        with ForwardClient("127.0.0.1", proc.port()) as c:
            c.message("t", {"n": 1}, ack=True)
    finally:
        assert proc.terminate() == 0
    assert [r["n"] for r in _read(tmp_path, "a2")] == [1]


def test_workers_each_reload_once(tmp_path: Path) -> None:
    """With ``workers: 2`` a SIGHUP to the parent is forwarded once to each worker, and a SIGHUP to the
    whole process group (each worker gets it twice) still makes each reload once."""
    with socketserver_port() as port:
        pass
    v1 = _config(
        tmp_path,
        workers=2,
        sources=[{"name": "in", "bind": "127.0.0.1", "port": port, "udp_heartbeat": False}],
    )
    proc = Proc(v1, tmp_path)
    try:
        proc.wait_ready(2)
        _write(tmp_path, dict(v1, outputs={"a": _file_output(tmp_path, "a2")}))
        proc.proc.send_signal(signal.SIGHUP)
        first = _wait_count(proc, "config.reloaded", 2)
        assert sorted(x["worker"] for x in first) == [0, 1]
        assert all(x["outputs_rebuilt"] == ["a"] for x in first)
        os.killpg(proc.proc.pid, signal.SIGHUP)
        second = _wait_count(proc, "config.reloaded", 4)[2:]
        assert sorted(x["worker"] for x in second) == [0, 1]
        _wait_count(proc, "worker.reload_signal_ignored", 2)
        for n in range(10):  # every connection, whichever worker has it, writes where the new file says
            with ForwardClient("127.0.0.1", port) as c:
                c.message("t", {"n": n}, ack=True)
    finally:
        assert proc.terminate() == 0
    assert len(_events(proc, "config.reloaded")) == 4
    assert sorted(r["n"] for r in _read(tmp_path, "a2")) == list(range(10))


def test_changed_source_on_the_same_address_takes_over_its_socket(tmp_path: Path) -> None:
    """A source whose settings change but not its address is replaced by a listener that takes over the
    listening socket: the port never refuses a connection, the old connection drains and closes after its
    acks, and new connections get the new settings (here a tag prefix)."""
    with socketserver_port() as port:
        pass
    src = {"name": "in", "bind": "127.0.0.1", "port": port, "udp_heartbeat": False}
    v1 = _config(tmp_path, sources=[src])
    proc = Proc(v1, tmp_path)
    try:
        proc.wait_ready()
        old = ForwardClient("127.0.0.1", port)
        old.message("t", {"n": 1}, ack=True)
        _write(tmp_path, _config(tmp_path, sources=[{**src, "add_tag_prefix": "v2"}]))
        reloaded = _hup(proc)
        assert reloaded["sources_replaced"] == ["in"]
        with ForwardClient("127.0.0.1", port) as new:
            new.message("t", {"n": 2}, ack=True)
        assert old.closed_by_server(10)
        old.close()
    finally:
        assert proc.terminate() == 0
    assert sorted((r["tag"], r["n"]) for r in _read(tmp_path, "a")) == [("t", 1), ("v2.t", 2)]
