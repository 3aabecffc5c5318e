"""Acks mean acceptance: none before the ingest resolves, and always in request order per connection."""

from __future__ import annotations

import socket

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forwardd.errors import ChunkRejected
from forwardd.protocol import encode
from forwardd.testing.client import AckError

from .support import HeldIngest, LoopThread, make_listener, no_data_within


def test_withheld_ack_arrives_only_after_release(serve, lt):
    served = serve()
    assert served.sink is not None
    served.sink.withhold_acks = True
    with served.client() as c:
        c.send(encode.message("a.b", encode.event_time(1), {"k": 1}, chunk="c1"))
        served.sink.wait_for_sync(1, 5)  # the server has the chunk: only the acceptance is missing
        with pytest.raises(AckError, match="no reply"):
            c.read_value(timeout=0.2)
        assert served.stats.acks == 0
        lt.call(served.sink.release_acks)
        assert c.read_value() == {"ack": "c1"}


def test_pipelined_acks_come_in_request_order_when_accepted_in_reverse(serve, lt):
    ingest = HeldIngest(lt)
    served = serve(ingest)
    ids = [f"chunk-{i}" for i in range(5)]
    with served.client() as c:
        c.send(
            # One tag per message: consecutive messages of one tag would be merged into one chunk.
            b"".join(
                encode.message(f"t{i}", encode.event_time(1), {"i": i}, chunk=k) for i, k in enumerate(ids)
            )
        )
        ingest.wait(5)
        for i in (4, 3, 2, 1):
            ingest.resolve(i)
        # Four chunks are accepted, but the first is not: nothing may be acked yet.
        assert served.stats.acks == 0
        assert no_data_within(c.sock, 0.1)
        ingest.resolve(0)
        assert [c.read_value() for _ in ids] == [{"ack": k} for k in ids]
    assert [ch.events()[0].record["i"] for ch in ingest.chunks] == list(range(5))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(range(6)))
def test_each_ack_goes_out_exactly_when_its_prefix_is_accepted(order):
    lt = LoopThread()
    try:
        ingest = HeldIngest(lt)
        served = make_listener(lt, ingest)
        try:
            with served.client() as c:
                frames = [encode.packed_forward("t", [(1, {"i": i})], chunk=str(i)) for i in range(6)]
                c.send(b"".join(frames))
                ingest.wait(6)
                done: set[int] = set()
                for i in order:
                    ingest.resolve(i)
                    done.add(i)
                    prefix = next((j for j in range(6) if j not in done), 6)
                    assert served.stats.acks == prefix
                assert [c.read_value() for _ in range(6)] == [{"ack": str(i)} for i in range(6)]
        finally:
            served.stop(grace=0.5)
    finally:
        lt.close()


def test_mixed_modes_pipelined_are_acked_in_order(serve):
    served = serve()
    t = encode.event_time(1_700_000_000_123_456_789)
    frames = [
        encode.message("m", t, {"n": 1}, chunk="a"),
        encode.forward("f", [(t, {"n": 2}), (t, {"n": 3})], chunk="b"),
        encode.packed_forward("p", [(t, {"n": 4})], chunk="c"),
        encode.packed_forward("z", [(t, {"n": 5})], chunk="d", compressed="zstd"),
        encode.packed_forward("g", [(t, {"n": 6})], chunk="e", compressed="gzip"),
        encode.message("nochunk", t, {"n": 7}),
        encode.message("m", t, {"n": 8}, chunk="f\n"),  # Fluentd's Base64.encode64 adds a newline
    ]
    with served.client() as c:
        c.send(b"".join(frames))
        assert [c.read_value() for _ in range(6)] == [{"ack": k} for k in ("a", "b", "c", "d", "e", "f\n")]
    assert served.sink is not None
    events = served.sink.wait_for_sync(8, 5)
    assert [e.record["n"] for e in events] == list(range(1, 9))
    assert {e.time_ns for e in events} == {1_700_000_000_123_456_789}


def test_ack_echoes_binary_chunk_id_byte_for_byte(serve):
    served = serve()
    chunk = b"\x00\xffraw"
    with served.client() as c:
        c.send(encode.message("t", 1, {"k": "v"}, chunk=chunk))
        c.sock.settimeout(5)
        reply = c.sock.recv(100)
    assert reply == msgpack.packb({"ack": chunk}, use_bin_type=True)


def test_temporary_rejection_sends_no_ack_and_closes(serve, lt):
    """A chunk not accepted for a temporary reason: no ack (the client resends), a negative ack, close."""
    ingest = HeldIngest(lt)
    served = serve(ingest)
    with served.client() as c:
        c.send(encode.message("t1", 1, {"k": 1}, chunk="ok") + encode.message("t2", 1, {"k": 2}, chunk="no"))
        ingest.wait(2)
        ingest.resolve(0)
        ingest.resolve(1, ChunkRejected("buffer full", permanent=False))
        assert c.read_value() == {"ack": "ok"}
        assert c.read_value() == {}
        assert c.closed_by_server(5)
    assert served.stats.nacks == 1


def test_permanent_rejection_is_acked_and_counted(serve, lt):
    ingest = HeldIngest(lt)
    served = serve(ingest)
    with served.client() as c:
        c.send(encode.forward("t", [(1, {"k": 1}), (1, {"k": 2})], chunk="x"))
        ingest.wait(1)
        ingest.resolve(0, ChunkRejected("unserialisable", permanent=True))
        assert c.read_value() == {"ack": "x"}
        # The connection goes on.
        c.send(encode.message("t", 1, {"after": True}, chunk="y"))
        ingest.wait(2)
        ingest.resolve(1)
        assert c.read_value() == {"ack": "y"}
    assert served.stats.dropped_events == 2


def test_half_closed_client_still_gets_its_acks(serve, lt):
    """A client may shut down its sending side and then wait for the acks it is owed."""
    ingest = HeldIngest(lt)
    served = serve(ingest)
    with served.client() as c:
        c.send(encode.message("t1", 1, {"n": 1}, chunk="a") + encode.message("t2", 1, {"n": 2}, chunk="b"))
        ingest.wait(2)
        c.sock.shutdown(socket.SHUT_WR)
        ingest.resolve(0)
        ingest.resolve(1)
        assert [c.read_value(), c.read_value()] == [{"ack": "a"}, {"ack": "b"}]
        assert c.closed_by_server(5)
