"""Connections that cost little: every docker container opens its own connection, so an aggregator of a
large Swarm holds thousands, mostly idle. Measured on the real daemon: 2,000 connections that each sent one
acked message and stay open must cost at most 16 KiB each (it was about 90 KiB: two 64 KiB Unpacker
buffers per connection, up front), and a good part of it must come back once they close (none did).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import msgpack
import psutil
import pytest

from .helpers import Proc

N = 2000
KiB = 1024


def _rss(proc: psutil.Process) -> int:
    return int(proc.memory_info().rss)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_idle_connections_cost_little_and_give_their_memory_back(tmp_path: Path) -> None:
    config = {
        "sources": [
            {"name": "main", "type": "forward", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False}
        ],
        "routes": [{"match": "**", "outputs": ["sink"]}],
        "outputs": {"sink": {"type": "null"}},
    }
    daemon = Proc(config, tmp_path)
    try:
        port = daemon.port()
        server = psutil.Process(daemon.proc.pid)
        record = {"container_id": "c" * 64, "container_name": "/app", "source": "stdout", "log": "x" * 100}

        def one(i: int) -> socket.socket:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(msgpack.packb([f"docker.{i % 50}", 1_700_000_000, record, {"chunk": f"c{i}"}]))
            return s

        with one(-1) as warm:  # the first connection pays for code paths and caches, not the others
            assert msgpack.unpackb(warm.recv(100)) == {"ack": "c-1"}
        before = _rss(server)
        socks = [one(i) for i in range(N)]
        try:
            for i, s in enumerate(socks):
                assert msgpack.unpackb(s.recv(100)) == {"ack": f"c{i}"}
            opened = _rss(server)
        finally:
            for s in socks:
                s.close()
        per_connection = (opened - before) / N
        assert per_connection <= 16 * KiB, f"{per_connection / KiB:.1f} KiB per idle connection"
        # Freed heap is handed back by the daemon's periodic malloc_trim: wait for it (a condition, polled).
        want = opened - 0.3 * (opened - before)
        deadline = time.monotonic() + 40
        while _rss(server) > want and time.monotonic() < deadline:
            time.sleep(0.5)
        after = _rss(server)
        assert after <= want, (before / KiB, opened / KiB, after / KiB)
    finally:
        daemon.terminate()
