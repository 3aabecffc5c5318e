"""Every per-connection line a peer can cause is rate-limited, and what was held back is said: the next
line that gets through, or a summary line every period and at stop, carries the count suppressed."""

from __future__ import annotations

import socket
import struct
from typing import Any

from structlog.testing import capture_logs

from forwardd.protocol import encode
from forwardd.server.logs import EdgeLog, safe

from .support import HeldIngest, wait_until


def lines_of(logs: list[dict[str, Any]], name: str) -> tuple[int, int]:
    """(lines logged one by one, total count of the lines they stand for)."""
    mine = [e for e in logs if e["event"] == name]
    direct = [e for e in mine if not e.get("summary")]
    return len(direct), len(direct) + sum(e.get("suppressed_since_last", 0) for e in mine)


def test_thirty_clients_closing_mid_frame_give_at_most_five_lines_and_the_count(serve):
    served = serve()
    with capture_logs() as logs:
        for _ in range(30):
            with served.client() as c:
                c.send(encode.message("t", 1, {"log": "x" * 1000})[:500])
                wait_until(lambda: served.stats.bytes > 0, what="bytes")
        wait_until(lambda: served.stats.connections == 30 and not served.listener.sessions, what="30 closes")
        served.stop()
    direct, total = lines_of(logs, "conn.closed_mid_frame")
    assert 1 <= direct <= 5
    assert total == 30


def test_connections_closed_with_acks_owed_are_rate_limited(serve, lt):
    ingest = HeldIngest(lt)
    served = serve(ingest)
    with capture_logs() as logs:
        for i in range(12):
            with served.client() as c:
                c.send(encode.message("t", 1, {"n": i}, chunk=f"c{i}"))
                ingest.wait(i + 1)
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        wait_until(lambda: served.stats.connections == 12 and not served.listener.sessions, what="12 closes")
        served.stop()
    direct, total = lines_of(logs, "conn.closed_with_unsent_acks")
    assert direct <= 5
    assert total == 12


def test_idle_timeouts_are_rate_limited(serve):
    served = serve(idle_timeout=0.1)
    with capture_logs() as logs:
        clients = [served.client() for _ in range(8)]
        try:
            for c in clients:
                c.message("t", {"k": "v"}, ack=True)
            for c in clients:
                assert c.closed_by_server(5)
        finally:
            for c in clients:
                c.close()
        served.stop()
    direct, total = lines_of(logs, "conn.idle_timeout")
    assert direct <= 5
    assert total == 8


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_what_is_held_back_is_said_by_the_next_line_or_by_the_periodic_summary() -> None:
    clock = _Clock()
    with capture_logs() as logs:
        log = EdgeLog(period=10.0, burst=2, clock=clock)
        for _ in range(7):
            log.limited("warning", "conn.x", listener="l", peer="p")
        assert lines_of(logs, "conn.x") == (2, 2)
        clock.now += 11  # the window ended: the next line says how many were held back
        log.limited("warning", "conn.x", listener="l", peer="p")
        assert logs[-1]["suppressed_since_last"] == 5
        for _ in range(4):
            log.limited("warning", "conn.x", listener="l", peer="p")
        log.flush()  # the window is still open: nothing to say yet
        assert lines_of(logs, "conn.x") == (4, 9)
        clock.now += 11
        log.flush()  # no new line came: the summary says it
    assert logs[-1] == {
        "event": "conn.x",
        "log_level": "warning",
        "suppressed_since_last": 3,
        "listener": "l",
        "summary": True,
    }
    assert lines_of(logs, "conn.x") == (4, 12)


def test_values_are_made_safe_to_render() -> None:
    assert safe("caf\u00e9") == "caf\u00e9"
    assert safe("\udcff\udcfe-tag") == "\\xff\\xfe-tag"
    assert safe(b"\xff\x00") == "\\xff\x00"
    assert safe(("127.0.0.1", 5)) == ["127.0.0.1", 5]
    assert safe({"\udcff": [b"\xff"]}) == {"\\xff": ["\\xff"]}
    assert safe(ValueError("\udcff")) == "ValueError('\\udcff')"
