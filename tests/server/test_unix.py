"""The Unix socket listener: the full protocol (handshake and acks) and the socket file's life."""

from __future__ import annotations

import os
import socket
import stat

import pytest

from forwardd.protocol import Security

from .support import make_listener

SECURITY = Security(self_hostname="server.test", shared_key="s3cret")


@pytest.mark.parametrize("mode", [0o600, 0o660, 0o666])
def test_socket_file_gets_the_configured_mode(serve, tmp_path, mode):
    path = tmp_path / "fwd.sock"
    served = serve(listener_kw={"unix_path": str(path), "unix_mode": mode})
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == mode
    with served.client() as c:
        c.message("unix", {"k": 1}, ack=True)


def test_handshake_and_acks_over_unix_socket(serve, tmp_path):
    served = serve(security=SECURITY, listener_kw={"unix_path": str(tmp_path / "fwd.sock")})
    with served.client(shared_key="s3cret", hostname="client.test") as c:
        assert c.pong is not None
        assert c.pong[:4] == ["PONG", True, "", "server.test"]
        c.packed("u.p", [{"n": 1}, {"n": 2}], ack=True)
        c.message("u.m", {"n": 3}, ack=True)
    assert served.sink is not None
    assert [(e.tag, e.record["n"]) for e in served.sink.events] == [("u.p", 1), ("u.p", 2), ("u.m", 3)]


def test_wrong_key_over_unix_socket_gets_a_failure_pong(serve, tmp_path):
    served = serve(security=SECURITY, listener_kw={"unix_path": str(tmp_path / "fwd.sock")})
    with served.client() as c:
        pong = c.handshake("wrong", hostname="client.test")
        assert pong == ["PONG", False, "shared_key mismatch", "", ""]
        assert c.closed_by_server(5)
    assert served.stats.handshake_failures == 1


def test_stale_socket_file_is_replaced(serve, tmp_path):
    path = str(tmp_path / "fwd.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # as a crashed process leaves it: the file stays, nobody listens
    stale.close()
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    served = serve(listener_kw={"unix_path": path})
    with served.client() as c:
        c.message("after.stale", {"k": 1}, ack=True)
    served.stop()
    assert not os.path.exists(path)  # a clean stop removes its socket file


def test_a_regular_file_in_the_way_is_not_deleted(lt, tmp_path):
    path = tmp_path / "fwd.sock"
    path.write_text("precious")
    with pytest.raises(OSError):
        make_listener(lt, listener_kw={"unix_path": str(path)})
    assert path.read_text() == "precious"
