"""One budget of buffered bytes for all the connections of a listener: a hundred peers each sending a frame
near the limit cannot make forwardd hold a hundred frames; those holding bytes stop reading until the
total falls, the oldest always goes on (no deadlock), and every request is still acked in the end."""

from __future__ import annotations

import threading

from structlog.testing import capture_logs

from forwardd.protocol import encode

from .support import wait_until

KiB = 1024


def test_connections_beyond_the_budget_stop_reading_until_it_has_room(serve, lt):
    limit = 1024 * KiB
    served = serve(listener_kw={"max_buffered_bytes": limit})
    budget = served.listener.budget
    frames = [encode.message("t", 1, {"i": i, "log": "x" * 600 * KiB}, chunk=f"c{i}") for i in range(6)]
    clients = [served.client(timeout=30) for _ in frames]
    most = 0
    with capture_logs() as logs:
        try:
            for c, f in zip(clients, frames, strict=True):
                c.send(f[: 300 * KiB])  # half a frame each: 1.8 MiB would be held without the budget
            wait_until(lambda: served.stats.budget_pauses >= 1, what="a connection to be paused")
            most = max(most, lt.call(lambda: budget.total))
            threads = [
                threading.Thread(target=c.send, args=(f[300 * KiB :],))
                for c, f in zip(clients, frames, strict=True)
            ]
            for t in threads:
                t.start()
            for i, c in enumerate(clients):
                assert c.read_value(timeout=30) == {"ack": f"c{i}"}
            for t in threads:
                t.join(10)
        finally:
            for c in clients:
                c.close()
    assert most <= limit + 6 * 256 * KiB
    assert lt.call(lambda: budget.total) == 0
    exhausted = [e for e in logs if e["event"] == "buffer_budget.exhausted"]
    recovered = [e for e in logs if e["event"] == "buffer_budget.recovered"]
    assert len(exhausted) >= 1
    assert len(recovered) == len(exhausted)  # once per episode, each one ended
    assert exhausted[0]["limit"] == limit
    assert served.sink is not None
    assert sorted(e.record["i"] for e in served.sink.events) == list(range(6))


def test_the_budget_is_released_by_connections_that_close(serve, lt):
    served = serve(listener_kw={"max_buffered_bytes": 512 * KiB})
    budget = served.listener.budget
    for _ in range(3):
        with served.client() as c:
            c.send(encode.message("t", 1, {"log": "x" * 400 * KiB})[: 300 * KiB])
            wait_until(lambda: lt.call(lambda: budget.total) > 0, what="bytes to be held")
        wait_until(lambda: not served.listener.sessions, what="the close")
        assert lt.call(lambda: budget.total) == 0
    with served.client() as c:
        c.message("t", {"k": "v"}, ack=True)  # nobody is held back by what closed connections held


class _Conn:
    """What the budget asks of a connection: to be told when it may read again."""

    def __init__(self) -> None:
        self.resumed = 0

    def budget_resumed(self) -> None:
        self.resumed += 1


def test_the_oldest_holder_always_goes_on_and_the_others_wait_for_room() -> None:
    from forwardd.server.budget import BufferBudget
    from forwardd.server.stats import SourceStats

    lines: list[tuple[str, str]] = []
    budget = BufferBudget(100, "t", SourceStats(), lambda level, event, **kw: lines.append((level, event)))
    a, b, c = _Conn(), _Conn(), _Conn()
    assert budget.update(a, 60)
    assert budget.update(b, 30)
    assert not budget.update(c, 20)  # over: c waits
    assert budget.update(a, 90)  # the oldest holder is never held back
    assert not budget.update(b, 40)
    assert (a.resumed, b.resumed, c.resumed) == (0, 0, 0)
    assert budget.update(a, 0)  # a's frame is complete: 60 held, under 90% of the limit
    assert (b.resumed, c.resumed) == (1, 1)
    assert lines == [("warning", "buffer_budget.exhausted"), ("info", "buffer_budget.recovered")]
    budget.release(b)
    budget.release(c)
    assert budget.total == 0


def test_a_waiting_connection_that_became_the_oldest_is_resumed() -> None:
    from forwardd.server.budget import BufferBudget
    from forwardd.server.stats import SourceStats

    budget = BufferBudget(100, "t", SourceStats(), lambda *a, **kw: None)
    a, b, c = _Conn(), _Conn(), _Conn()
    assert budget.update(a, 80)
    assert not budget.update(b, 40)
    assert not budget.update(c, 60)
    budget.release(a)  # 100 held, over 90% of the limit: only b, now the oldest holder, goes on
    assert (b.resumed, c.resumed) == (1, 0)
    assert budget.update(b, 0)
    assert c.resumed == 1


def test_a_budget_of_0_holds_nobody_back() -> None:
    from forwardd.server.budget import BufferBudget
    from forwardd.server.stats import SourceStats

    budget = BufferBudget(0, "t", SourceStats(), lambda *a, **kw: None)
    assert all(budget.update(_Conn(), 10**9) for _ in range(3))
