"""Heartbeats: Fluentd's connect-and-close, the UDP 0x00 on the same port, and the in-stream nil."""

from __future__ import annotations

import socket

from structlog.testing import capture_logs

from forwardd.protocol import encode

from .support import wait_until


def test_connect_only_connections_are_heartbeats_and_log_nothing_loud(serve):
    served = serve()
    with capture_logs() as logs:
        for _ in range(3):
            socket.create_connection(("127.0.0.1", served.port), timeout=5).close()
        wait_until(lambda: served.stats.heartbeats == 3 and served.stats.open_connections == 0)
    assert [e for e in logs if e["log_level"] not in ("debug", "info")] == []
    assert served.stats.connections == 3
    assert served.stats.protocol_errors == 0


def test_udp_heartbeat_is_answered_with_a_zero_byte_from_the_same_port(serve):
    served = serve(listener_kw={"udp_heartbeat": True})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(5)
        for payload in (b"\x00", b"anything at all"):
            udp.sendto(payload, ("127.0.0.1", served.port))
            data, addr = udp.recvfrom(16)
            assert data == b"\x00"
            assert addr == ("127.0.0.1", served.port)
    assert served.stats.heartbeats == 2


def test_nil_is_a_heartbeat_that_keeps_the_connection_open(serve):
    served = serve()
    with served.client() as c:
        c.send(b"\xc0\xc0")
        c.send(encode.message("after.nil", 1, {"k": "v"}, chunk="a"))
        assert c.read_value() == {"ack": "a"}  # nothing answered the nils, the connection lives on
    assert served.stats.heartbeats == 2
    assert served.sink is not None
    assert [e.tag for e in served.sink.events] == ["after.nil"]
