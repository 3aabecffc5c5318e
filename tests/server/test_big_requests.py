"""A big request at the session: finished in a worker thread, its chunks ingested in order, its ack sent
once all of them are accepted, and the requests after it kept waiting so that acks and events keep their
order."""

from __future__ import annotations

from forwardd.protocol import Limits, encode

from .support import HeldIngest, no_data_within, wait_until

T = 1_700_000_000
SMALL = Limits(inline_request_size=2000, max_chunk_entries=10)


def big(tag: str, n: int, chunk: str) -> bytes:
    return encode.packed_forward(tag, [(T, {"i": i, "pad": "x" * 50}) for i in range(n)], chunk=chunk)


def test_requests_after_a_big_one_wait_for_it(serve):
    served = serve(limits=SMALL)
    with served.client() as c:
        c.send(
            encode.message("a", T, {"i": -1}, chunk="a")
            + big("b", 45, "b")
            + encode.message("c", T, {"i": 99}, chunk="c")
        )
        assert [c.read_value() for _ in range(3)] == [{"ack": "a"}, {"ack": "b"}, {"ack": "c"}]
    assert served.sink is not None
    assert [(e.tag, e.record["i"]) for e in served.sink.events] == [
        ("a", -1), *[("b", i) for i in range(45)], ("c", 99),
    ]  # fmt: skip
    assert [len(c_.entries) > 0 for c_ in served.sink.chunks] == [True] * 7  # 1 + 5 chunks of <= 10 + 1
    assert [c_.count for c_ in served.sink.chunks] == [1, 10, 10, 10, 10, 5, 1]
    assert served.stats.offloaded == 1
    assert (served.stats.chunks, served.stats.events, served.stats.acks) == (3, 47, 3)


def test_the_ack_of_a_cut_request_waits_for_every_chunk(serve, lt):
    ingest = HeldIngest(lt)
    served = serve(ingest, limits=SMALL)
    with served.client() as c:
        c.send(big("b", 45, "b"))
        ingest.wait(5)
        for i in (4, 0, 1, 3):  # all but one, out of order
            ingest.resolve(i)
        assert no_data_within(c.sock, 0.3)
        ingest.resolve(2)
        assert c.read_value() == {"ack": "b"}


def test_a_rejected_chunk_of_a_cut_request_does_not_lose_the_ack_of_the_others(serve, lt):
    from forwardd.errors import ChunkRejected

    ingest = HeldIngest(lt)
    served = serve(ingest, limits=SMALL)
    with served.client() as c:
        c.send(big("b", 30, "b"))
        ingest.wait(3)
        ingest.resolve(0, ChunkRejected("too big for the output", permanent=True))
        ingest.resolve(1)
        ingest.resolve(2)
        assert c.read_value() == {"ack": "b"}
    assert served.stats.dropped_events == 10


def test_a_closed_connection_drops_its_request_in_flight(serve):
    served = serve(limits=Limits(inline_request_size=2000))
    with served.client() as c:
        c.send(encode.packed_forward("t", bytes(4 * 1024 * 1024), chunk="x", options={}))
    wait_until(lambda: served.stats.open_connections == 0, what="the close")
    wait_until(lambda: served.stats.offloaded == 1, what="the request to be taken")
    with served.client() as c:
        c.message("after", {"k": 1}, ack=True)  # the listener goes on
