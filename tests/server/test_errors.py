"""A peer's errors cost that peer its connection, one rate-limited log line and a counter; never other
connections, and never acks already owed."""

from __future__ import annotations

import msgpack
import pytest
from structlog.testing import capture_logs

from forwardd.protocol import Limits, encode

from .support import HeldIngest, wait_until


def events_named(logs: list[dict], name: str) -> list[dict]:
    return [e for e in logs if e["event"] == name]


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (b"\xc1\xc1\xc1", "bad_msgpack"),  # 0xc1 is never used in msgpack
        (b"\x81\xa1a\x01", "not_an_array"),  # a map at top level
        (b"GET / HTTP/1.1\r\n\r\n", "not_an_array"),
        (msgpack.packb([1, 2, 3]), "bad_tag"),
    ],
    ids=["bad-msgpack", "map", "http", "bad-tag"],
)
def test_garbage_closes_that_connection_only(serve, garbage, reason):
    served = serve()
    with capture_logs() as logs, served.client() as good, served.client() as bad:
        good.message("ok", {"n": 1}, ack=True)
        bad.send(garbage)
        assert bad.closed_by_server(5)
        good.message("ok", {"n": 2}, ack=True)  # still acked after the other connection's error
    [line] = events_named(logs, "conn.protocol_error")
    assert line["reason"] == reason
    assert line["log_level"] == "warning"
    assert line["peer"].startswith("127.0.0.1:")
    assert served.stats.protocol_errors == 1
    assert served.sink is not None
    assert [e.record["n"] for e in served.sink.events] == [1, 2]


def test_protocol_error_names_the_peer(serve):
    served = serve()
    with capture_logs() as logs, served.client() as bad:
        port = bad.sock.getsockname()[1]
        bad.send(b"\xc1")
        assert bad.closed_by_server(5)
    [line] = events_named(logs, "conn.protocol_error")
    assert line["peer"] == f"127.0.0.1:{port}"
    assert line["listener"] == "t"


def test_a_hundred_bad_connections_are_counted_but_log_lines_are_rate_limited(serve):
    served = serve()
    with capture_logs() as logs, served.client() as good:
        for _ in range(100):
            with served.client() as bad:
                bad.send(b"\xc1")
                assert bad.closed_by_server(5)
        good.message("ok", {"still": "fine"}, ack=True)
    lines = events_named(logs, "conn.protocol_error")
    assert 1 <= len(lines) <= 5
    assert served.stats.protocol_errors == 100


def test_acks_owed_before_a_protocol_error_are_still_sent(serve, lt):
    ingest = HeldIngest(lt)
    served = serve(ingest)
    with served.client() as c:
        c.send(
            encode.message("t1", 1, {"n": 1}, chunk="first")
            + encode.message("t2", 1, {"n": 2}, chunk="second")
        )
        ingest.wait(2)
        c.send(b"\xc1garbage")

        wait_until(lambda: served.stats.protocol_errors == 1, what="the protocol error")
        ingest.resolve(0)
        assert c.read_value() == {"ack": "first"}
        ingest.resolve(1)
        assert c.read_value() == {"ack": "second"}
        assert c.closed_by_server(5)


def test_chunks_in_the_same_read_as_the_garbage_are_still_handed_on_and_acked(serve):
    served = serve()
    with served.client() as c:
        c.send(encode.message("t", 1, {"n": 1}, chunk="first") + b"\xc1garbage")
        assert c.read_value() == {"ack": "first"}
        assert c.closed_by_server(5)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (encode.packed_forward("t", [(1, {"a": 1})], chunk="r", compressed="lz4"), "unknown_compression"),
        (encode.message("t", 1, "not a map", chunk="r"), "bad_message"),  # type: ignore[arg-type]
        # The frame limit is checked per 1 MiB fed: an oversized frame must exceed that to be seen.
        (encode.packed_forward("t", [(1, {"pad": "x" * 2_000_000})], chunk="r"), "frame_too_large"),
    ],
    ids=["unknown-compression", "record-not-a-map", "oversized"],
)
def test_rejected_chunks_are_acked_logged_and_the_connection_goes_on(serve, frame, reason):
    served = serve(limits=Limits(max_frame_size=64 * 1024))
    with capture_logs() as logs, served.client() as c:
        c.send(frame + encode.message("t", 1, {"after": 1}, chunk="next"))
        assert c.read_value() == {"ack": "r"}
        assert c.read_value() == {"ack": "next"}
    [line] = events_named(logs, "chunk.rejected")
    assert line["reason"] == reason
    assert line["acked"] is True
    assert line["tag"] == "t"
    assert served.stats.rejected == 1
    assert served.sink is not None
    assert [e.record for e in served.sink.events] == [{"after": 1}]
