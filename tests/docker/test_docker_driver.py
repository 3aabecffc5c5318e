"""The real Docker engine's fluentd log driver against forwardd: over TCP and unix://, with
fluentd-request-ack and sub-second precision, a 100 KiB line split into 16 KiB partials and joined back by
forwardd's reassembly, and a Swarm service. Every line must arrive exactly once, with docker's fields."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from forwardd.testing import run_test_server
from forwardd.testing.daemon import run_daemon
from tests.docker.conftest import Docker

pytestmark = pytest.mark.docker

N = 500


def _check_lines(events: list, n: int, name: str) -> None:
    logs = Counter(e.record["log"] for e in events)
    assert logs == Counter(str(i) for i in range(1, n + 1)), "every line exactly once"
    for e in events:
        r = e.record
        assert set(r) >= {"container_id", "container_name", "source", "log"}
        assert r["container_name"] == f"/{name}"
        assert r["source"] == "stdout"
        assert len(r["container_id"]) == 64
        assert all(isinstance(v, str) for v in r.values()), "docker sends every value as a string"


def test_tcp_request_ack_subsecond(docker: Docker) -> None:
    with run_test_server() as server:
        docker.run(
            "fwd-tcp",
            "--log-opt", f"fluentd-address=127.0.0.1:{server.port}",
            "--log-opt", "fluentd-request-ack=true",
            "--log-opt", "fluentd-sub-second-precision=true",
            "--log-opt", "tag=docker.{{.Name}}",
            cmd=["sh", "-c", f"seq 1 {N}"],
        )  # fmt: skip
        events = server.wait_for(N, timeout=30)
        assert len(events) == N
        _check_lines(events, N, "fwd-tcp")
        assert {e.tag for e in events} == {"docker.fwd-tcp"}
        # Sub-second precision: EventTime carries nanoseconds, not whole seconds.
        assert any(e.time_ns % 1_000_000_000 for e in events)
        assert server.stats.acks == N, "one ack per message, as the driver waits for each"


def test_unix_socket_request_ack(docker: Docker, tmp_path: Path) -> None:
    sock = tmp_path / "fwd.sock"
    with run_test_server(unix_path=str(sock)) as server:
        docker.run(
            "fwd-unix",
            "--log-opt", f"fluentd-address=unix://{sock}",
            "--log-opt", "fluentd-request-ack=true",
            cmd=["sh", "-c", f"seq 1 {N}"],
        )  # fmt: skip
        events = server.wait_for(N, timeout=30)
        assert len(events) == N
        _check_lines(events, N, "fwd-unix")
        # Without sub-second precision docker sends whole seconds.
        assert all(e.time_ns % 1_000_000_000 == 0 for e in events)
        assert server.stats.acks == N


def test_100k_line_reassembled_byte_for_byte(docker: Docker, tmp_path: Path) -> None:
    """A 100 KiB line is split by docker into 16 KiB partials; forwardd's docker_partial filter joins
    them and the file output holds the whole line once."""
    out = tmp_path / "out"
    config = {
        "storage": {"path": str(tmp_path / "data")},
        "sources": [{"name": "in", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False}],
        "routes": [{"match": "**", "filters": [{"type": "docker_partial"}], "outputs": ["files"]}],
        "outputs": {"files": {"type": "file", "path": str(out / "${tag}.log")}},
    }
    # A deterministic 100 KiB line (102,400 characters) followed by a short one, from busybox's awk.
    script = (
        'awk \'BEGIN { s = ""; for (i = 0; i < 102400; i++) s = s sprintf("%c", 97 + i % 26); '
        'print s; print "short" }\''
    )
    expected = "".join(chr(97 + i % 26) for i in range(102400))
    with run_daemon(config) as d:
        docker.run(
            "fwd-partial",
            "--log-opt", f"fluentd-address=127.0.0.1:{d.port()}",
            "--log-opt", "fluentd-request-ack=true",
            "--log-opt", "tag=big",
            cmd=["sh", "-c", script],
        )  # fmt: skip
    # The daemon has stopped: everything acked was delivered and flushed to the file.
    lines = [json.loads(x) for x in (out / "big.log").read_text().splitlines()]
    logs = [x["log"] for x in lines]
    assert logs == [expected, "short"]
    assert not any(k.startswith("partial_") for x in lines for k in x)


@pytest.mark.slow
def test_swarm_service(docker: Docker) -> None:
    with run_test_server(host="127.0.0.1") as server:
        docker.service(
            "fwdsvc",
            "--log-opt", f"fluentd-address=127.0.0.1:{server.port}",
            "--log-opt", "fluentd-request-ack=true",
            "--log-opt", "tag=swarm.{{.Name}}",
            cmd=["sh", "-c", "seq 1 200"],
        )  # fmt: skip
        events = server.wait_for(200, timeout=60)
        logs = Counter(e.record["log"] for e in events)
        assert logs == Counter(str(i) for i in range(1, 201))
        # Swarm task containers are named <service>.<slot>.<task id>.
        assert all(e.tag.startswith("swarm.fwdsvc.1.") for e in events)
