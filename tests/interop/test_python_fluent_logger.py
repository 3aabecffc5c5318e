"""PyPI fluent-logger (sync and async senders) against forwardd's listener, over TCP and a Unix socket."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from fluent import asyncsender, sender

from tests.server.support import wait_until

N = 200
BASE_NS = 1_700_000_000_123_456_789


def record(i: int) -> dict:
    return {"i": i, "s": "héllo", "f": 1.5, "b": b"\x00\xff", "none": None, "nested": {"l": [1, "x"]}}


def check(server, *, exact_times: bool = True) -> None:
    server.wait_for(N)
    wait_until(lambda: server.stats.open_connections == 0, what="the sender to disconnect")
    events = server.events
    assert Counter(e.record["i"] for e in events) == Counter(range(N)), "every event exactly once"
    for e in events:
        i = e.record["i"]
        assert e.tag == f"py.ev{i % 3}"
        assert e.record == record(i)
        if exact_times:
            assert e.time_ns == BASE_NS + i  # nanoseconds survive the trip


@pytest.mark.parametrize("make", [sender.FluentSender, asyncsender.FluentSender], ids=["sync", "async"])
def test_tcp_nanosecond_times(forwardd_server, make):
    s = make("py", host="127.0.0.1", port=forwardd_server.port, nanosecond_precision=True)
    for i in range(N):
        assert (
            s.emit_with_time(f"ev{i % 3}", sender.EventTime.from_unix_nano(BASE_NS + i), record(i))
            is not False
        )
    s.close()
    assert s.last_error is None
    check(forwardd_server)


@pytest.mark.parametrize("make", [sender.FluentSender, asyncsender.FluentSender], ids=["sync", "async"])
def test_unix_socket(forwardd_unix_server, make):
    s = make("py", host=f"unix://{forwardd_unix_server.unix_path}", nanosecond_precision=True)
    for i in range(N):
        s.emit_with_time(f"ev{i % 3}", sender.EventTime.from_unix_nano(BASE_NS + i), record(i))
    s.close()
    assert s.last_error is None
    check(forwardd_unix_server)


def test_emit_takes_the_clock_with_nanoseconds(forwardd_server):
    s = sender.FluentSender("py", host="127.0.0.1", port=forwardd_server.port, nanosecond_precision=True)
    before = time.time_ns()
    for i in range(N):
        assert s.emit(f"ev{i % 3}", record(i))
    after = time.time_ns()
    s.close()
    check(forwardd_server, exact_times=False)
    times = [e.time_ns for e in forwardd_server.events]
    assert all(before <= t <= after for t in times)
    assert any(t % 1_000_000 for t in times), "times were rounded to milliseconds or coarser"
