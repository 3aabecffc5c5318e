"""Fault injection, for testing clients: slow acks, no acks, closed connections, refused handshakes."""

from __future__ import annotations

import time

import pytest

from forwardd.protocol import encode
from forwardd.testing import ForwardClient, run_test_server
from forwardd.testing.client import AckError


def test_ack_delay_delays_every_ack():
    with run_test_server(ack_delay=0.2) as server, ForwardClient(port=server.port) as c:
        for _ in range(2):
            t0 = time.monotonic()
            c.message("slow", {"k": 1}, ack=True)
            assert time.monotonic() - t0 >= 0.2


def test_withhold_acks_until_released():
    with run_test_server(withhold_acks=True) as server, ForwardClient(port=server.port) as c:
        c.send(encode.message("t", 1, {"n": 1}, chunk="a"))
        server.wait_for(1)
        with pytest.raises(AckError, match="no reply"):
            c.read_value(timeout=0.2)
        server.release_acks()
        assert c.read_value() == {"ack": "a"}
        c.message("t", {"n": 2}, ack=True)  # released for good: later chunks are acked at once


def test_close_after_n_requests_acks_them_then_closes():
    with run_test_server(close_after=2) as server, ForwardClient(port=server.port) as c:
        c.send(b"".join(encode.message("t", 1, {"n": i}, chunk=str(i)) for i in range(4)))
        assert c.read_value() == {"ack": "0"}
        assert c.read_value() == {"ack": "1"}
        with pytest.raises(AckError, match="closed"):
            c.read_value()
        assert [e.record["n"] for e in server.events] == [0, 1]


def test_close_after_applies_to_each_connection():
    with run_test_server(close_after=1) as server:
        for i in range(2):
            with ForwardClient(port=server.port) as c:
                c.message("t", {"n": i}, ack=True)
                assert c.closed_by_server(5)
        assert [e.record["n"] for e in server.wait_for(2)] == [0, 1]


def test_refuse_handshake_answers_with_a_failure_pong():
    with (
        run_test_server(shared_key="k", refuse_handshake=True) as server,
        ForwardClient(port=server.port, shared_key="k") as c,
    ):
        assert c.pong == ["PONG", False, "refused by configuration", "", ""]
        assert c.closed_by_server(5)
        assert server.stats.handshake_failures == 1


def test_the_refusing_handshake_refuses_a_good_ping_and_judges_a_malformed_one():
    """What the refuse_handshake fault does to the protocol core (it was Security.refuse_all)."""
    import msgpack

    from forwardd.protocol import HandshakeFailed, Security, ServerConnection
    from forwardd.protocol.handshake import client_ping
    from forwardd.testing.faults import Faults

    for frame, reason in (
        (lambda helo: client_ping(helo, hostname="cli", shared_key="k3y")[0], "refused by configuration"),
        (lambda helo: msgpack.packb(["PING", "cli"]), "PING message is malformed"),
    ):
        conn = ServerConnection(
            security=Security(self_hostname="srv", shared_key="k3y"), peer_address="127.0.0.1"
        )
        Faults(refuse_handshake=True).begun(conn)
        helo = msgpack.unpackb(conn.initial_bytes(), raw=True)[1]
        [ev] = conn.receive_data(frame(helo))
        assert isinstance(ev, HandshakeFailed)
        assert ev.reason == reason
