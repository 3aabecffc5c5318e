"""Slow and many clients: every drop is visible, and no peer can flood the log (issue 14, item 5).

1000 clients that connect, send half a frame and close made 1000 ``conn.closed_mid_frame`` lines: such
per-connection lines must be rate-limited, with the count of what was suppressed logged (by the time the
daemon stops, at the latest). On a TLS listener, plaintext and a client that never completes the TLS
handshake left no line at all: each must leave one, naming the peer.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.hostile.harness import Daemon, base_config, check_delivered, raw_connection, steady
from tests.pipeline import mp

NOW = 1_700_000_000
CLIENTS = 1000


def _half_frames(port: int, n: int) -> None:
    """``n`` clients, one after the other: connect, send the first half of a Message, close."""
    frame = mp.message("slow.client", NOW, {"log": "x" * 200}, chunk="never")
    half = frame[: len(frame) // 2]
    for _ in range(n):
        with raw_connection(port) as s:
            s.sendall(half)


def _suppressed(line: dict[str, Any]) -> int:
    """What a line says was suppressed: any integer field named for it (``suppressed_since_last``...)."""
    return sum(
        v for k, v in line.items() if "suppress" in k and isinstance(v, int) and not isinstance(v, bool)
    )


@pytest.mark.slow
def test_a_thousand_half_frames_do_not_flood_the_log_and_are_all_counted(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with Daemon(tmp_path, base_config(tmp_path)) as d:
        before = d.rss()
        with steady(d.port) as s:
            attacker = threading.Thread(target=_half_frames, args=(d.port, CLIENTS), daemon=True)
            attacker.start()
            attacker.join(120)
            assert not attacker.is_alive()
            d.wait_lines("conn.closed_mid_frame")
            s.wait_acks(20)
        s.check_latency()
        check_delivered(out / "steady", s)
        d.wait_rss_back(before)
        stats = d.stop()
        assert stats["source:in"]["connections"] >= CLIENTS + 1
        lines = d.lines("conn.closed_mid_frame")
        n = len(lines)
        assert n <= 50, f"{n} conn.closed_mid_frame lines for {CLIENTS} clients: not rate-limited"
        # Each line naming a peer is one connection; the count of what was suppressed comes on later lines of
        # the same event or on a summary line (one without a peer) of that event or naming it.
        summaries = d.lines(lambda line: "conn.closed_mid_frame" in [str(v) for v in line.values()] and
                            line.get("event") != "conn.closed_mid_frame")  # fmt: skip
        counted = sum(1 for line in lines if line.get("peer")) + sum(_suppressed(line) for line in lines)
        counted += sum(_suppressed(line) or int(line.get("count", 0)) for line in summaries)
        assert counted == CLIENTS, f"lines and suppressed counts add up to {counted}, not {CLIENTS}"
        assert not d.not_json(), d.not_json()[:5]


def _tls_config(tmp: Path) -> dict[str, Any]:
    ca = trustme.CA()
    pem = tmp / "server.pem"
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    config = base_config(tmp)
    config["sources"].append(
        {"name": "tls", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False,
         "tls": {"cert_file": str(pem), "key_file": str(pem)}, "limits": {"handshake_timeout": "1s"}}
    )  # fmt: skip
    return config


def _mentions_port(line: dict[str, Any], port: int) -> bool:
    return any(f":{port}" in str(v) or v == port for v in line.values())


def _tls_line(port: int) -> Any:
    return lambda line: "tls" in str(line.get("event")).lower() and _mentions_port(line, port)


@pytest.mark.slow
def test_tls_handshake_failures_and_timeouts_are_logged(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with Daemon(tmp_path, _tls_config(tmp_path)) as d:
        plain, tls_port = d.ports
        with steady(plain) as s:
            # Plaintext on the TLS port: a forward request where a ClientHello should be.
            with raw_connection(tls_port) as p:
                p.sendall(mp.message("plain.on.tls", NOW, {"k": 1}, chunk="c"))
                plain_port = p.getsockname()[1]
                with contextlib.suppress(OSError):
                    p.recv(1024)
                d.wait_lines(_tls_line(plain_port), timeout=5)
            # A client that starts TLS and never finishes: half a ClientHello, then silence.
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            hello = ssl.MemoryBIO(), ssl.MemoryBIO()
            obj = ctx.wrap_bio(*hello, server_hostname="localhost")
            with contextlib.suppress(ssl.SSLWantReadError):
                obj.do_handshake()
            client_hello = hello[1].read()
            with raw_connection(tls_port) as q:
                q.sendall(client_hello[: len(client_hello) // 2])
                silent_port = q.getsockname()[1]
                d.wait_lines(_tls_line(silent_port), timeout=5)  # after the 1 s handshake timeout
            # And one that never says anything at all.
            with raw_connection(tls_port) as r:
                mute_port = r.getsockname()[1]
                d.wait_lines(_tls_line(mute_port), timeout=5)
                with contextlib.suppress(OSError):
                    r.settimeout(5)
                    assert r.recv(1024) == b""  # closed by the daemon
            s.wait_acks(20)
        s.check_latency()
        check_delivered(out / "steady", s)
        d.stop()
        assert not d.not_json(), d.not_json()[:5]
