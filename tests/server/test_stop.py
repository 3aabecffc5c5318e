"""Graceful stop: stop accepting, send the acks owed as chunks are accepted, then close; abort after grace."""

from __future__ import annotations

import socket

import msgpack
import pytest
from structlog.testing import capture_logs

from forwardd.protocol import encode

from .support import HeldIngest, no_data_within


def test_stop_sends_owed_acks_then_closes(serve, lt):
    ingest = HeldIngest(lt)
    served = serve(ingest)
    with served.client() as c:
        c.send(b"".join(encode.message(f"t{i}", 1, {"n": i}, chunk=str(i)) for i in range(3)))
        ingest.wait(3)
        served.stopped = True
        stopping = lt.submit(served.listener.stop(grace=10))
        ingest.resolve(1)
        assert no_data_within(c.sock, 0.1)  # still waiting for chunk 0: no ack, and not closed
        ingest.resolve(0)
        ingest.resolve(2)
        assert [c.read_value() for _ in range(3)] == [{"ack": "0"}, {"ack": "1"}, {"ack": "2"}]
        assert c.closed_by_server(5)
        stopping.result(5)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", served.port), timeout=5)


def test_stop_aborts_what_is_not_accepted_within_the_grace_period(serve, lt):
    ingest = HeldIngest(lt)
    served = serve(ingest)
    with capture_logs() as logs, served.client() as c:
        c.send(encode.message("t", 1, {"n": 1}, chunk="never"))
        ingest.wait(1)
        served.stop(grace=0.2)
        assert c.closed_by_server(5)
    [line] = [e for e in logs if e["event"] == "conn.closed_with_unsent_acks"]
    assert line["unsent_acks"] == 1


def test_idle_connections_are_closed_at_stop(serve):
    served = serve()
    with served.client() as c:
        c.message("t", {"n": 1}, ack=True)
        served.stop()
        assert c.closed_by_server(5)


def test_graceful_stop_delivers_a_large_ack_to_a_slow_reader(serve, lt):
    """Closing after the last ack must flush it, not abort it while it still sits in the write buffer."""
    ingest = HeldIngest(lt)
    served = serve(ingest)
    for s in served.listener._server.sockets:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
    chunk_id = "x" * (1024 * 1024)  # the ack echoes it: far more than the socket buffers hold
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024)
    sock.connect(("127.0.0.1", served.port))
    with sock:
        sock.sendall(encode.message("t", 1, {"n": 1}, chunk=chunk_id))
        ingest.wait(1)
        served.stopped = True
        stopping = lt.submit(served.listener.stop(grace=10))
        ingest.resolve(0)
        expected = msgpack.packb({"ack": chunk_id})
        received = bytearray()
        sock.settimeout(10)
        while data := sock.recv(1 << 16):
            received += data
        assert len(received) == len(expected)
        assert bytes(received) == expected
        stopping.result(10)
