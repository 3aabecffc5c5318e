"""The synchronous test server: a real listener in a background thread, waited on without sleeping."""

from __future__ import annotations

import json
import socket

import pytest
from fluent import sender

from forwardd.testing import ForwardClient, SyncTestServer, run_test_server


def test_run_test_server_captures_what_fluent_logger_sends():
    with run_test_server() as server:
        s = sender.FluentSender("app", host="127.0.0.1", port=server.port)
        s.emit("login", {"user": "alice"})
        s.emit("logout", {"user": "alice"})
        s.close()
        first, second = server.wait_for(2)
        assert (first.tag, first.record) == ("app.login", {"user": "alice"})
        assert second.tag == "app.logout"
        assert server.records("app.logout") == [{"user": "alice"}]
        assert server.assert_received("app.login", user="alice") is first
    with pytest.raises(ConnectionRefusedError):
        ForwardClient("127.0.0.1", server.port, timeout=2)  # stopped on leaving the block


def test_wait_for_times_out_with_a_clear_message():
    with run_test_server() as server, ForwardClient(port=server.port) as c:
        c.message("one", {"k": 1}, ack=True)
        with pytest.raises(AssertionError, match=r"expected 2 events within 0\.1s, got 1"):
            server.wait_for(2, timeout=0.1)


def test_assert_received_says_what_it_saw():
    with run_test_server() as server, ForwardClient(port=server.port) as c:
        c.message("app.login", {"user": "alice"}, ack=True)
        with pytest.raises(
            AssertionError, match=r"no event with tag='app.login' and \{'user': 'bob'\}.*alice"
        ):
            server.assert_received("app.login", user="bob")


def test_clear_forgets_earlier_events():
    with run_test_server() as server, ForwardClient(port=server.port) as c:
        c.message("a", {"n": 1}, ack=True)
        server.clear()
        c.message("b", {"n": 2}, ack=True)
        assert [e.tag for e in server.wait_for(1)] == ["b"]
        assert server.stats.events == 2


def test_unix_socket_and_explicit_start_stop(tmp_path):
    server = SyncTestServer(unix_path=str(tmp_path / "t.sock")).start()
    try:
        with ForwardClient(unix_path=server.unix_path) as c:
            c.packed("u", [{"n": 1}, {"n": 2}], ack=True, compressed="gzip")
        assert [e.record["n"] for e in server.wait_for(2)] == [1, 2]
    finally:
        server.stop()
    assert not (tmp_path / "t.sock").exists()


def test_handshake_with_users():
    with (
        run_test_server(shared_key="k", users={"u": "p"}, self_hostname="srv") as server,
        ForwardClient(port=server.port, shared_key="k", username="u", password="p") as c,
    ):
        assert c.pong is not None
        assert c.pong[:4] == ["PONG", True, "", "srv"]
        c.message("auth", {"ok": True}, ack=True)
        server.assert_received("auth", ok=True)


def test_stop_twice_is_harmless():
    """A test may stop a fixture's server itself (to test reconnects); the fixture stops it again."""
    server = SyncTestServer().start()
    port = server.port
    server.stop()
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        ForwardClient("127.0.0.1", port, timeout=2)


def test_json_mode_captures_a_json_client_and_acks_it_in_json():
    with run_test_server(json_mode=True) as server:
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            sock.sendall(b'["app.go", 1700000000, {"user": "bob"}, {"chunk": "c1"}]')
            reply = b""
            while not reply.endswith(b"}"):
                reply += sock.recv(100)
        assert json.loads(reply) == {"ack": "c1"}
        [event] = server.wait_for(1, timeout=5)
        assert (event.tag, event.record) == ("app.go", {"user": "bob"})
