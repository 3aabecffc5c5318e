"""Entries that decoding will drop are counted in the listener's counters and logged, with a sample, where
the peer is known: before, they vanished later at decode time with the listener's counter at 0."""

from __future__ import annotations

import msgpack
from structlog.testing import capture_logs

from forwardd.protocol import encode

T = 1_700_000_000
BAD_KEY = bytes.fromhex("92 00 81 80 00")  # [0, {{}: 0}]: a map used as a map key


def test_invalid_entries_and_times_are_counted_and_logged_with_a_sample(serve):
    served = serve()
    good = msgpack.packb([T, {"n": 1}])
    payload = good + BAD_KEY + msgpack.packb([-1, {"n": 2}]) + msgpack.packb([T, "not a map"])
    with capture_logs() as logs, served.client() as c:
        c.send(encode.packed_forward("app.x", payload, chunk="c1"))
        assert c.read_value() == {"ack": "c1"}
    assert (served.stats.invalid_entries, served.stats.invalid_times) == (3, 1)
    [line] = [e for e in logs if e["event"] == "chunk.invalid_entries"]
    assert line["log_level"] == "warning"
    assert (line["tag"], line["invalid"], line["bad_times"], line["events"]) == ("app.x", 3, 1, 1)
    assert (line["reason"], line["sample"]) == ("unhashable_key", BAD_KEY.hex(" "))
    assert line["peer"].startswith("127.0.0.1:")
    assert served.sink is not None
    assert [e.record for e in served.sink.events] == [{"n": 1}]


def test_the_log_line_is_rate_limited_but_the_counter_is_not(serve):
    served = serve()
    with capture_logs() as logs, served.client() as c:
        for i in range(50):
            c.send(encode.packed_forward("t", BAD_KEY * 3, chunk=f"c{i}"))
            assert c.read_value() == {"ack": f"c{i}"}
    assert served.stats.invalid_entries == 150
    assert 1 <= len([e for e in logs if e["event"] == "chunk.invalid_entries"]) <= 5
    assert served.sink is not None
    assert served.sink.chunks == []  # nothing in them could be delivered: acked, counted, not handed on
