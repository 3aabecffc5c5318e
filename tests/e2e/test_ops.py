"""The operators' endpoint against a real daemon process: real HTTP requests to /metrics, /health, /ready
and /status, real forward traffic, a real HTTP destination that fails and recovers, ``workers: 2``, and
``forwardd top`` as a real command. Every wait polls a condition with a deadline."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from forwardd.ops.collector import METRICS
from forwardd.testing import ForwardClient
from tests.e2e.helpers import Proc, run_cli

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def poll(what: Callable[[], T | None], timeout: float = 20.0, message: str = "condition") -> T:
    """``what()`` once it is truthy; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(0.05)


def metrics(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics by (name, labels), parsed by prometheus_client's own parser."""
    status, body = get(f"{base}/metrics")
    assert status == 200
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def status(base: str) -> dict[str, Any]:
    code, body = get(f"{base}/status")
    assert code == 200
    data: dict[str, Any] = json.loads(body)
    return data


def listening_ports(pid: int) -> set[tuple[str, int]]:
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return {
        (c.laddr.ip, c.laddr.port)
        for p in procs
        for c in p.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }


def base_config(tmp_path: Path, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "storage": {"path": str(tmp_path / "data")},
        "sources": [{"name": "in", "bind": "127.0.0.1", "port": port, "udp_heartbeat": False}],
        "routes": [{"match": "**", "outputs": ["files"]}],
        "outputs": {"files": {"type": "file", "path": str(tmp_path / "out" / "events.log")}},
        **extra,
    }


@pytest.fixture
def proc_factory() -> Iterator[Callable[..., Proc]]:
    procs: list[Proc] = []

    def make(config: dict[str, Any], workdir: Path) -> Proc:
        p = Proc(config, workdir)
        procs.append(p)
        return p

    yield make
    for p in procs:  # after a failure: the workers too, or they would outlive the test holding its ports
        p.close()


def test_off_by_default_no_port_is_opened(tmp_path: Path, proc_factory: Callable[..., Proc]) -> None:
    port = free_port()
    proc = proc_factory(base_config(tmp_path, port), tmp_path)
    proc.wait_ready()
    assert listening_ports(proc.proc.pid) == {("127.0.0.1", port)}
    assert not [line for line in proc.lines if line.get("event") == "http_server.started"]
    assert proc.terminate() == 0


def test_bind_defaults_to_loopback(tmp_path: Path, proc_factory: Callable[..., Proc]) -> None:
    port, ops = free_port(), free_port()
    proc = proc_factory(base_config(tmp_path, port, http_server={"port": ops}), tmp_path)
    proc.wait_ready()
    started = proc.wait_event("http_server.started")
    assert (started["bind"], started["port"]) == ("127.0.0.1", ops)
    assert listening_ports(proc.proc.pid) == {("127.0.0.1", port), ("127.0.0.1", ops)}
    assert proc.terminate() == 0


def test_metrics_count_real_traffic_and_keep_increasing(
    tmp_path: Path, proc_factory: Callable[..., Proc]
) -> None:
    port, ops = free_port(), free_port()
    base = f"http://127.0.0.1:{ops}"
    proc = proc_factory(base_config(tmp_path, port, http_server={"port": ops}), tmp_path)
    proc.wait_ready()
    assert get(f"{base}/health") == (200, b'{"status":"ok"}')
    assert get(f"{base}/ready") == (200, b'{"ready":true}')

    with ForwardClient(port=port) as c:
        for k in range(10):
            c.packed("app.web", [{"k": k, "i": i} for i in range(20)], ack=True)
    src = (("source", "in"),)
    out = (("output", "files"),)

    def delivered(n: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        """The metrics once ``n`` events are delivered and synced (the file output's grouped fsyncs keep
        written chunks queued until their sync), else None."""
        m = metrics(base)
        if (
            m[("forwardd_output_delivered_events_total", out)] == n
            and m[("forwardd_output_queued_chunks", out)] == 0
        ):
            return m
        return None

    m = poll(lambda: delivered(200), message="200 events delivered and synced")
    names = {name for name, _ in m}
    for name in METRICS:  # every documented family is there (histograms as _bucket/_sum/_count)
        assert name in names or f"{name}_count" in names, name
    assert m[("forwardd_source_events_total", src)] == 200
    assert m[("forwardd_source_requests_total", src)] == 10
    assert m[("forwardd_source_acks_total", src)] == 10
    assert m[("forwardd_source_connections_total", src)] == 1
    assert m[("forwardd_source_received_bytes_total", src)] > 0
    # Every ack was observed in the histogram, with a real (non-zero) latency.
    assert m[("forwardd_source_ack_latency_seconds_count", src)] == 10
    assert m[("forwardd_source_ack_latency_seconds_sum", src)] > 0
    assert m[("forwardd_source_ack_latency_seconds_bucket", (("le", "+Inf"), ("source", "in")))] == 10
    assert m[("forwardd_output_delivery_latency_seconds_count", out)] >= 1
    assert m[("forwardd_output_queued_chunks", out)] == 0
    assert m[("forwardd_output_oldest_queued_age_seconds", out)] == 0
    assert m[("forwardd_output_buffer_limit_bytes", out)] > 0
    assert m[("forwardd_router_routed_chunks_total", ())] == 10
    assert m[("forwardd_ready", ())] == 1
    assert m[("forwardd_worker_up", (("worker", "0"),))] == 1

    with ForwardClient(port=port) as c:
        c.message("app.api", {"x": 1}, ack=True)
    m2 = poll(lambda: delivered(201), message="one more event delivered and synced")
    assert m2[("forwardd_source_events_total", src)] == 201
    assert m2[("forwardd_source_acks_total", src)] == 11
    assert m2[("forwardd_source_connections_total", src)] == 2
    assert m2[("forwardd_source_ack_latency_seconds_count", src)] == 11

    st = status(base)
    assert set(st) >= {"version", "ready", "reasons", "workers", "sources", "outputs", "router"}
    assert st["ready"] is True
    assert st["reasons"] == []
    assert st["sources"]["in"]["events"] == 201
    assert st["sources"]["in"]["listening"] is True
    assert st["sources"]["in"]["address"] == f"127.0.0.1:{port}"
    files = st["outputs"]["files"]
    assert files["type"] == "file"
    assert files["delivered_events"] == 201
    assert files["tags"] == {"app.web": 200, "app.api": 1}
    assert files["last_error"] is None
    assert files["oldest_age_seconds"] == 0
    assert [w["worker"] for w in st["workers"]] == [0]
    assert st["workers"][0]["up"] is True
    assert st["router"]["routed"] == 11
    assert get(f"{base}/nope")[0] == 404
    assert proc.terminate() == 0


class _Flaky(BaseHTTPRequestHandler):
    """A real HTTP destination whose answer the test sets (``server.answer``)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        code = self.server.answer  # type: ignore[attr-defined]
        self.server.received += 1  # type: ignore[attr-defined]
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


def test_ready_turns_503_while_an_output_is_stuck_and_back(
    tmp_path: Path, proc_factory: Callable[..., Proc]
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    server.answer = 500  # type: ignore[attr-defined]
    server.received = 0  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port, ops = free_port(), free_port()
        base = f"http://127.0.0.1:{ops}"
        config = base_config(tmp_path, port, http_server={"port": ops, "stuck_after": "1s"})
        config["routes"] = [{"match": "**", "outputs": ["web"]}]
        config["outputs"] = {
            "web": {
                "type": "http",
                "endpoint": f"http://127.0.0.1:{server.server_address[1]}/logs",
                "buffer": {"retry": {"initial": "50ms", "max": "200ms"}},
            }
        }
        proc = proc_factory(config, tmp_path)
        proc.wait_ready()
        assert get(f"{base}/ready")[0] == 200
        with ForwardClient(port=port) as c:
            c.packed("app", [{"i": i} for i in range(5)], ack=True)  # acked: on disk, not yet delivered

        def not_ready() -> dict[str, Any] | None:
            code, body = get(f"{base}/ready")
            return json.loads(body) if code == 503 else None

        why = poll(not_ready, message="/ready 503")
        assert why["ready"] is False
        assert any(r.startswith("output web: writes failing for") and "500" in r for r in why["reasons"])
        assert get(f"{base}/health")[0] == 200  # alive all the same: no restart for a dead destination
        m = metrics(base)
        web = (("output", "web"),)
        assert m[("forwardd_ready", ())] == 0
        assert m[("forwardd_output_failing_seconds", web)] >= 1
        assert m[("forwardd_output_retries_total", web)] >= 1
        assert m[("forwardd_output_last_error_timestamp_seconds", web)] > 0
        assert m[("forwardd_output_queued_chunks", web)] == 1
        assert m[("forwardd_output_oldest_queued_age_seconds", web)] >= 1
        out = status(base)["outputs"]["web"]
        assert "500" in out["last_error"]
        assert out["delivered_events"] == 0

        server.answer = 200  # type: ignore[attr-defined]
        poll(lambda: get(f"{base}/ready")[0] == 200, message="/ready 200 again")
        out = poll(
            lambda: (lambda o: o if o["delivered_events"] == 5 else None)(status(base)["outputs"]["web"]),
            message="the events delivered",
        )
        assert out["failing_seconds"] == 0
        assert out["queued_chunks"] == 0
        assert out["oldest_age_seconds"] == 0
        assert proc.terminate() == 0
    finally:
        server.shutdown()
        server.server_close()


def test_two_workers_one_endpoint_sums_both(tmp_path: Path, proc_factory: Callable[..., Proc]) -> None:
    port, ops = free_port(), free_port()
    base = f"http://127.0.0.1:{ops}"
    proc = proc_factory(base_config(tmp_path, port, workers=2, http_server={"port": ops}), tmp_path)
    proc.wait_ready(workers=2)
    sent = 0
    # A connection each: SO_REUSEPORT spreads them over both workers (all 40 on one: odds 2^-39).
    for k in range(40):
        with ForwardClient(port=port) as c:
            c.packed("app", [{"k": k, "i": i} for i in range(25)], ack=True)
            sent += 25
    st = poll(
        lambda: (lambda s: s if s["outputs"]["files"]["delivered_events"] == sent else None)(status(base)),
        message="every event delivered",
    )
    workers = st["workers"]
    assert [w["worker"] for w in workers] == [0, 1]
    assert all(w["up"] and w["ready"] for w in workers)
    assert len({w["pid"] for w in workers}) == 2
    assert proc.proc.pid not in {w["pid"] for w in workers}
    per_worker = [w["events"] for w in workers]
    assert all(n > 0 for n in per_worker), per_worker  # real traffic reached both
    assert sum(per_worker) == sent == st["sources"]["in"]["events"]
    assert st["sources"]["in"]["connections"] == 40
    assert st["sources"]["in"]["acks"] == 40
    m = metrics(base)
    assert m[("forwardd_source_events_total", (("source", "in"),))] == sent
    assert m[("forwardd_source_acks_total", (("source", "in"),))] == 40
    assert m[("forwardd_source_ack_latency_seconds_count", (("source", "in"),))] == 40
    assert m[("forwardd_output_delivered_events_total", (("output", "files"),))] == sent
    assert m[("forwardd_worker_up", (("worker", "0"),))] == m[("forwardd_worker_up", (("worker", "1"),))] == 1
    assert get(f"{base}/ready") == (200, b'{"ready":true}')
    assert get(f"{base}/health")[0] == 200
    # The parent serves it: one port, held by the parent and by no worker.
    assert ("127.0.0.1", ops) in {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(proc.proc.pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }
    assert proc.terminate() == 0


def forwardd(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args)


def test_top_once_shows_sources_outputs_and_tags(tmp_path: Path, proc_factory: Callable[..., Proc]) -> None:
    port, ops = free_port(), free_port()
    config = base_config(tmp_path, port, http_server={"port": ops})
    proc = proc_factory(config, tmp_path)
    proc.wait_ready()
    with ForwardClient(port=port) as c:
        c.packed("app.top", [{"i": i} for i in range(30)], ack=True)
    poll(lambda: status(f"http://127.0.0.1:{ops}")["outputs"]["files"]["delivered_events"] == 30)
    cfg = str(tmp_path / "forwardd.yaml")
    frames = [
        forwardd("top", "--once", "--interval", "0.2", "--url", f"http://127.0.0.1:{ops}"),
        forwardd("-c", cfg, "top", "--once", "--interval", "0.2"),
        forwardd("top", "-c", cfg, "--once", "--interval", "0.2"),
    ]
    for r in frames:
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].startswith("forwardd ")
        assert "workers 1/1 up  ready" in lines[0]
        assert any(line.split()[:2] == ["SOURCE", "CONN"] for line in lines)
        [src] = [line.split() for line in lines if line.startswith("in ")]
        assert src[1] == "0"
        assert src[-1] == "up"
        [out] = [line.split() for line in lines if line.startswith("files ")]
        assert out[1] == "file"
        assert out[3] == "0"
        [tag] = [line.split() for line in lines if line.startswith("app.top ")]
        assert tag[1] == "files"
        assert tag[-1] == "30"
    assert proc.terminate() == 0


@pytest.mark.parametrize(
    ("form", "message"),
    [
        (["top", "-c", "{cfg}", "--url", "http://127.0.0.1:1", "--once"], "either -c/--config or --url"),
        (["-c", "{cfg}", "top", "-c", "{other}", "--once"], "-c/--config given twice"),
        (["--log-level", "debug", "top", "--once"], "--log-level not used by `forwardd top`"),
        (["top", "-c", "{other}", "--once"], "has no http_server"),
        (["top", "--once", "--interval", "0"], "--interval must be above 0"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_top_refuses_what_cannot_mean_one_thing(tmp_path: Path, form: list[str], message: str) -> None:
    cfg = tmp_path / "a.yaml"
    cfg.write_text("sources: [{port: 0}]\nhttp_server: {port: 1}\n")
    other = tmp_path / "b.yaml"
    other.write_text("sources: [{port: 0}]\n")
    r = forwardd(*[a.replace("{cfg}", str(cfg)).replace("{other}", str(other)) for a in form])
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr


def test_top_once_says_when_nothing_answers() -> None:
    r = forwardd("top", "--once", "--url", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 1
    assert "cannot read" in r.stderr
    assert r.stdout == ""
