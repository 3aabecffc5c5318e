"""Timeouts and limits that close connections: each with its log line."""

from __future__ import annotations

from structlog.testing import capture_logs

from forwardd.protocol import Security, encode

from .support import wait_until


def named(logs: list[dict], event: str) -> list[dict]:
    return [e for e in logs if e["event"] == event]


def test_silent_connection_is_closed_after_the_handshake_timeout(serve):
    served = serve(security=Security(self_hostname="s", shared_key="k"), handshake_timeout=0.2)
    with capture_logs() as logs, served.client() as c:
        helo = c.read_value()
        assert helo[0] == "HELO"
        assert c.closed_by_server(5)
    [line] = named(logs, "handshake.timeout")
    assert line["log_level"] == "warning"
    assert line["timeout"] == 0.2


def test_completed_handshake_is_not_closed_by_the_handshake_timeout(serve):
    served = serve(security=Security(self_hostname="s", shared_key="k"), handshake_timeout=0.2)
    with capture_logs() as logs, served.client(shared_key="k") as c:
        c.message("t", {"n": 1}, ack=True)
        assert not c.closed_by_server(0.5)
        c.message("t", {"n": 2}, ack=True)
    assert named(logs, "handshake.timeout") == []


def test_idle_connection_is_closed(serve):
    served = serve(idle_timeout=0.2)
    with capture_logs() as logs, served.client() as c:
        c.message("t", {"n": 1}, ack=True)
        assert c.closed_by_server(5)
    [line] = named(logs, "conn.idle_timeout")
    assert line["idle"] == 0.2


def test_deny_keepalive_closes_after_the_first_response(serve):
    served = serve(deny_keepalive=True)
    with served.client() as c:
        c.message("t", {"n": 1}, ack=True)
        assert c.closed_by_server(5)
    with served.client() as c:
        c.send(encode.message("t", 1, {"n": 2}))  # no ack asked: closed once the request is taken
        assert c.closed_by_server(5)
    assert served.sink is not None
    assert [e.record["n"] for e in served.sink.events] == [1, 2]


def test_deny_keepalive_after_a_handshake_closes_after_the_first_request_not_the_pong(serve):
    # As Fluentd's in_forward: the PONG establishes the connection; its first request is still served.
    served = serve(security=Security(self_hostname="s", shared_key="k"), deny_keepalive=True)
    with served.client() as c:
        c.handshake("k", hostname="client")
        c.message("t", {"n": 1}, ack=True)
        assert c.closed_by_server(5)
    assert served.sink is not None
    assert [e.record["n"] for e in served.sink.events] == [1]


def test_connection_over_the_limit_is_refused_with_a_log_line(serve):
    served = serve(listener_kw={"max_connections": 1})
    with capture_logs() as logs, served.client() as first:
        first.message("t", {"n": 1}, ack=True)
        with served.client() as second:
            assert second.closed_by_server(5)
        first.message("t", {"n": 2}, ack=True)  # the admitted connection is unaffected
    [line] = named(logs, "conn.refused")
    assert line["limit"] == 1
    assert served.stats.refused_connections == 1
    wait_until(lambda: served.stats.open_connections == 0)
    with served.client() as third:  # a freed slot is available again
        third.message("t", {"n": 3}, ack=True)
