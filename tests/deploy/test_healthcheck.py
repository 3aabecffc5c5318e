"""The image's health check (deploy/docker/healthcheck.py) run as the process docker runs, against real
listeners: healthy only when what FORWARDD_HEALTH names answers (TCP, Unix socket, HTTP 200)."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "deploy" / "docker" / "healthcheck.py"


def check(target: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FORWARDD_HEALTH"}
    if target is not None:
        env["FORWARDD_HEALTH"] = target
    return subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30, check=False
    )


@pytest.fixture
def http_server() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 503)
            self.end_headers()
            self.wfile.write(b"ok\n")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_tcp_listening_and_not() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert check(f"tcp://127.0.0.1:{port}").returncode == 0
    r = check(f"tcp://127.0.0.1:{port}")
    assert r.returncode == 1
    assert r.stderr.startswith(f"unhealthy: tcp://127.0.0.1:{port}: ")


def test_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "forwardd.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        s.listen()
        assert check(f"unix://{path}").returncode == 0
    path.unlink()
    assert check(f"unix://{path}").returncode == 1


def test_http_needs_200(http_server: int) -> None:
    assert check(f"http://127.0.0.1:{http_server}/health").returncode == 0
    r = check(f"http://127.0.0.1:{http_server}/ready")
    assert r.returncode == 1
    assert "503" in r.stderr


@pytest.mark.parametrize("target", ["ftp://x/", "tcp://127.0.0.1", "127.0.0.1:24224"])
def test_malformed_target_is_unhealthy_and_says_why(target: str) -> None:
    r = check(target)
    assert r.returncode == 1
    assert target in r.stderr
