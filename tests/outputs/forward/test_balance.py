"""The balancer alone (pure state, a hand-driven clock): weights, standby servers, up and down."""

from __future__ import annotations

from collections import Counter

import pytest

from forwardd.outputs.forward.balance import Balancer, Endpoint, ServerSpec


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def balancer(*servers: ServerSpec, heartbeats: bool = True, clock: Clock | None = None) -> Balancer:
    b = Balancer(servers, recover_wait=10.0, hard_timeout=60.0, heartbeats=heartbeats, clock=clock or Clock())
    for i, s in enumerate(servers):
        b.set_addresses(i, [s.host])
    return b


def picks(b: Balancer, n: int) -> Counter[str]:
    out: Counter[str] = Counter()
    for _ in range(n):
        ep = b.pick()
        assert ep is not None
        out[ep.server.host] += 1
    return out


def test_weights_share_the_writes_smoothly() -> None:
    b = balancer(ServerSpec("a", weight=60), ServerSpec("b", weight=30), ServerSpec("c", weight=10))
    assert picks(b, 100) == {"a": 60, "b": 30, "c": 10}
    # Smooth: no server gets a long run while others wait (nginx's smooth weighted round robin).
    seq = [b.pick().server.host for _ in range(10)]  # type: ignore[union-attr]
    assert max(len(run) for run in "".join(seq).replace("b", " ").replace("c", " ").split()) <= 3


def test_weight_zero_is_never_picked() -> None:
    b = balancer(ServerSpec("a", weight=0), ServerSpec("b"))
    assert picks(b, 10) == {"b": 10}


def test_standby_only_while_no_regular_server_is_up() -> None:
    clock = Clock()
    b = balancer(ServerSpec("a"), ServerSpec("b"), ServerSpec("s", standby=True), clock=clock)
    assert "s" not in picks(b, 20)
    a, bb, _s = b.endpoints
    b.failed(a, "refused")
    assert picks(b, 5) == {"b": 5}
    b.failed(bb, "refused")
    assert picks(b, 5) == {"s": 5}
    # A write that failed on every regular server within itself goes to the standby at once.
    b2 = balancer(ServerSpec("a"), ServerSpec("s", standby=True))
    first = b2.pick()
    assert first is not None
    assert first.server.host == "a"
    second = b2.pick(exclude=[first])
    assert second is not None
    assert second.server.host == "s"
    assert b2.pick(exclude=[first, second]) is None


def test_with_heartbeats_down_until_a_heartbeat_after_recover_wait() -> None:
    clock = Clock()
    b = balancer(ServerSpec("a"), clock=clock)
    (ep,) = b.endpoints
    assert b.failed(ep, "connect: refused") is True
    assert b.failed(ep, "again") is False
    assert b.pick() is None
    clock.now += 5
    assert b.heartbeat(ep, True) is None, "within recover_wait a heartbeat does not bring it back"
    assert b.pick() is None
    clock.now += 5
    assert b.heartbeat(ep, True) is True
    assert b.pick() is ep


def test_heartbeats_take_an_up_server_down_only_after_hard_timeout() -> None:
    clock = Clock()
    b = balancer(ServerSpec("a"), clock=clock)
    (ep,) = b.endpoints
    for _ in range(59):
        clock.now += 1
        assert b.heartbeat(ep, False) is None, "a lost probe or two is no outage (UDP flapping)"
    clock.now += 1
    assert b.heartbeat(ep, False) is False
    assert not ep.up
    assert ep.reason == "heartbeat failed"
    # A successful write counts as a sign of life too.
    clock.now += 100
    b.succeeded(ep)
    clock.now += 30
    assert b.heartbeat(ep, False) is None


def test_without_heartbeats_a_down_server_is_retried_after_recover_wait() -> None:
    clock = Clock()
    b = balancer(ServerSpec("a"), ServerSpec("b"), heartbeats=False, clock=clock)
    a, _bb = b.endpoints
    b.failed(a, "x")
    assert picks(b, 3) == {"b": 3}
    assert b.next_chance() == pytest.approx(10.0)
    clock.now += 10
    assert "a" in picks(b, 4), "on trial again: the next write is its probe"
    assert b.succeeded(a) is True
    assert a.up


def test_addresses_change_and_endpoints_that_stay_keep_their_state() -> None:
    clock = Clock()
    b = Balancer([ServerSpec("tasks.agg", 24224)], clock=clock)
    added, removed = b.set_addresses(0, ["10.0.0.1", "10.0.0.2"])
    assert [e.address for e in added] == ["10.0.0.1", "10.0.0.2"]
    assert removed == []
    one, two = b.endpoints
    b.failed(one, "x")
    added, removed = b.set_addresses(0, ["10.0.0.1", "10.0.0.3"])
    assert [e.address for e in added] == ["10.0.0.3"]
    assert removed == [two]
    assert b.endpoints[0] is one
    assert not one.up
    assert one.key == "tasks.agg:24224@10.0.0.1"
    assert b.describe() == {"tasks.agg:24224@10.0.0.1": "down (x)", "tasks.agg:24224@10.0.0.3": "up"}
    # Each replica gets the server's weight: the writes spread over them.
    assert Counter(e.address for e in (b.pick() for _ in range(10)) if e) == {"10.0.0.3": 10}
    b.succeeded(one)
    assert Counter(e.address for e in (b.pick() for _ in range(10)) if e) == {"10.0.0.1": 5, "10.0.0.3": 5}


def test_names() -> None:
    assert ServerSpec("::1", 1).label == "[::1]:1"
    assert ServerSpec("h", 2, name="agg-1").label == "agg-1"
    assert repr(Endpoint(ServerSpec("h"), "h", 0.0)) == "Endpoint(h:24224, up)"
    with pytest.raises(ValueError, match="at least one server"):
        Balancer([])
