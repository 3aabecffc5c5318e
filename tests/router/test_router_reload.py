"""Router.hold and Router.replace, the routing half of a reload, with real disk queues behind the sinks.

The contract: a chunk handed to an entry is routed once, wholly by the old table or wholly by the new one;
between hold() and replace() no chunk reaches a sink and none is acked; replace() routes what came
meanwhile by the new table, in the order it came, before any chunk that comes after it; an entry taken
before the reload keeps working. What each sink got is read back from its DiskQueue on tmp_path.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path

import pytest

from forwardd.buffer import BufferedSink, DiskQueue
from forwardd.errors import ChunkRejected
from forwardd.model import Chunk, Event
from forwardd.outputs.debug import NullOutput
from forwardd.protocol import Limits, encode
from forwardd.router import ROOT_LABEL, Route, Router, compile_pattern
from forwardd.server.listener import ForwardListener, ListenerSettings
from forwardd.server.session import SessionSettings

TIMEOUT = 10.0


def numbered(tag: str, n: int, **extra: object) -> Chunk:
    return Chunk.from_events(tag, [Event(1_700_000_000_000_000_000, {"n": n, **extra})], 0)


def to(output: str, pattern: str = "**") -> list[Route]:
    return [Route(compile_pattern(pattern), (), (output,))]


@pytest.fixture
async def sinks(tmp_path: Path) -> AsyncIterator[dict[str, BufferedSink]]:
    """Two outputs' buffers: real disk queues, whose delivery loop is not started (the test reads them)."""
    made = {
        name: BufferedSink(name, NullOutput(name=name), DiskQueue(str(tmp_path / name), fsync="never"))
        for name in ("old", "new")
    }
    for sink in made.values():
        await sink.queue.start()
    yield made
    for sink in made.values():
        await sink.queue.close()


def queued(sink: BufferedSink) -> list[tuple[str, int]]:
    """(tag, n) of every committed chunk in the sink's queue, in queue order."""
    got = []
    while (taken := sink.queue.take_nowait()) is not None:
        got += [(taken.chunk.tag, e.record["n"]) for e in taken.chunk.events()]
    return got


async def acked(results: Iterable[Awaitable[None] | None]) -> None:
    await asyncio.wait_for(asyncio.gather(*(r for r in results if r is not None)), TIMEOUT)


def reached_a_sink(sinks: dict[str, BufferedSink]) -> int:
    """Chunks handed to any sink so far (committed or pending): the router's submits, counted at once."""
    return sum(s.queue.queued_chunks + s.queue.pending_chunks for s in sinks.values())


async def test_chunks_that_come_while_held_go_once_by_the_new_table_in_their_order(
    sinks: dict[str, BufferedSink],
) -> None:
    router = Router({ROOT_LABEL: to("old")}, sinks)
    entry = router.entry()
    await acked([entry(numbered("app.a", n)) for n in range(3)])  # "app.a" is now a cached decision
    router.hold()
    held = [entry(numbered(tag, n)) for n, tag in enumerate(["app.a", "app.b", "app.a"], start=3)]
    assert reached_a_sink(sinks) == 3  # the three routed before hold(), nothing since
    assert all(isinstance(r, asyncio.Future) and not r.done() for r in held)  # no ack yet
    router.replace({ROOT_LABEL: to("new")}, sinks)
    after = [entry(numbered("app.a", n)) for n in range(6, 8)]
    await acked(held + after)
    assert queued(sinks["old"]) == [("app.a", 0), ("app.a", 1), ("app.a", 2)]
    assert queued(sinks["new"]) == [
        ("app.a", 3), ("app.b", 4), ("app.a", 5),  # held, in the order they came, before...
        ("app.a", 6), ("app.a", 7),  # ...what came after the switch
    ]  # fmt: skip


async def test_a_held_chunk_of_a_label_the_new_table_removed_is_refused_for_now(
    sinks: dict[str, BufferedSink],
) -> None:
    """A source of a removed label is draining: its held chunk goes nowhere, and is refused as temporary
    (no ack: the client sends it again to the source that replaced it), rather than lost or misrouted."""
    router = Router({ROOT_LABEL: to("old"), "@side": to("old")}, sinks)
    side = router.entry("@side")
    await acked([side(numbered("app.s", 0))])
    router.hold()
    held = side(numbered("app.s", 1))
    assert held is not None
    router.replace({ROOT_LABEL: to("new")}, sinks)
    with pytest.raises(ChunkRejected) as refused:
        await asyncio.wait_for(held, TIMEOUT)
    assert refused.value.permanent is False
    assert queued(sinks["old"]) == [("app.s", 0)]
    assert queued(sinks["new"]) == []


async def test_sessions_sending_through_a_reload_lose_nothing_and_route_nothing_twice(
    sinks: dict[str, BufferedSink],
) -> None:
    """Several senders hand over a chunk every loop turn without waiting for the acks (pipelined, as a
    session does), while the reload holds the router across its own awaits (the daemon's waits for
    filters and journals) and then replaces the table. Every chunk is acked and is in
    exactly one queue: those handed over before hold() in the old one, every later one in the new one,
    each sender's in its own order, the held ones before any that came after the switch."""
    senders, per_sender = 4, 60
    router = Router({ROOT_LABEL: to("old")}, sinks)
    phase = ["old"]
    sent: dict[tuple[str, int], str] = {}  # (tag, n) -> the phase it was handed over in
    results: list[Awaitable[None] | None] = []
    in_phase = {"old": 0, "held": 0, "new": 0}
    enough = {"old": asyncio.Event(), "held": asyncio.Event(), "new": asyncio.Event()}
    entries = [router.entry() for _ in range(senders)]

    async def sender(k: int) -> None:
        tag = f"app.s{k}"
        for n in range(per_sender):
            now = phase[0]
            sent[(tag, n)] = now
            in_phase[now] += 1
            results.append(entries[k](numbered(tag, n)))
            if in_phase[now] >= 2 * senders:
                enough[now].set()
            await asyncio.sleep(0)  # one loop turn between two chunks, as a session reading the next

    async def reload() -> None:
        await enough["old"].wait()
        router.hold()
        phase[0] = "held"
        await enough["held"].wait()  # the reload's own awaits: the senders go on meanwhile
        router.replace({ROOT_LABEL: to("new")}, sinks)
        phase[0] = "new"

    await asyncio.wait_for(asyncio.gather(reload(), *(sender(k) for k in range(senders))), TIMEOUT)
    await acked(results)
    assert in_phase["held"] >= 2 * senders
    assert in_phase["new"] > 0
    old = queued(sinks["old"])
    new = queued(sinks["new"])
    assert sorted(old + new) == sorted(sent), "a chunk lost or routed twice"
    assert {x for x in old} == {x for x, p in sent.items() if p == "old"}
    assert {x for x in new} == {x for x, p in sent.items() if p != "old"}
    for k in range(senders):
        tag = f"app.s{k}"
        mine = [n for t, n in old + new if t == tag]
        assert mine == list(range(per_sender)), f"{tag} out of order"
    phases = [sent[x] for x in new]
    assert phases == sorted(phases, key=["held", "new"].index), "a held chunk after one that came later"


async def test_a_replace_without_a_hold_routes_a_cached_tag_by_the_new_table(
    sinks: dict[str, BufferedSink],
) -> None:
    """An entry taken before the reload, for a tag whose decision it has cached, follows the new table
    from the first chunk after replace(), on the same entry."""
    router = Router({ROOT_LABEL: to("old")}, sinks)
    entry = router.entry()
    await acked([entry(numbered("app.a", 0)), entry(numbered("app.a", 1))])
    router.replace({ROOT_LABEL: to("new")}, sinks)
    await acked([entry(numbered("app.a", 2))])
    assert queued(sinks["old"]) == [("app.a", 0), ("app.a", 1)]
    assert queued(sinks["new"]) == [("app.a", 2)]


class LoopLag:
    """A callback that reschedules itself on every loop turn and keeps the longest gap between two runs:
    how long the loop was kept from everything else (every session) at once."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._handle = self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        now = self._loop.time()
        self.longest = max(self.longest, now - self._last)
        self._last = now
        self._handle = self._loop.call_soon(self._tick)

    def stop(self) -> float:
        self._handle.cancel()
        self._tick()
        self._handle.cancel()
        return self.longest


async def test_a_large_pile_kept_during_a_reload_is_routed_in_slices_that_let_the_loop_run(
    sinks: dict[str, BufferedSink],
) -> None:
    """Many connections send without waiting for acks while a reload holds the router: the pile they leave
    (30,000 chunks here) used to be routed in one loop turn by replace(), seconds in which no connection
    was served. Now it is routed in short slices: the longest loop stall is a small part of the whole
    replay, and every chunk is delivered once, each connection's in order, its later chunks after it."""
    connections, per_connection, later = 300, 100, 5
    pad = "x" * 1000  # docker-sized lines: the disk queue commits a few dozen per inline write, as it would
    router = Router({ROOT_LABEL: to("old")}, sinks)
    entries = [router.entry() for _ in range(connections)]
    router.hold()
    results: list[Awaitable[None] | None] = [
        entries[k](numbered(f"app.c{k}", n, pad=pad))
        for n in range(per_connection)
        for k in range(connections)
    ]
    assert reached_a_sink(sinks) == 0
    # Later chunks of the same connections, handed over while the pile is still being routed (made
    # beforehand: encoding them is the test's work, not the router's).
    later_chunks = [
        (k, numbered(f"app.c{k}", n, pad=pad))
        for n in range(per_connection, per_connection + later)
        for k in range(connections)
    ]
    pile = asyncio.gather(*(r for r in results if r is not None))  # 30,000 callbacks added: not timed
    # A full collection of the test process's heap (pytest's, and the pile this test built) lands in
    # whichever loop turn it likes: the test process's cost, not the router's. Frozen, it is not scanned.
    gc.collect()
    gc.freeze()
    try:
        loop = asyncio.get_running_loop()
        lag = LoopLag()
        began = loop.time()
        router.replace({ROOT_LABEL: to("new")}, sinks)
        after = [entries[k](c) for k, c in later_chunks]
        await asyncio.wait_for(pile, TIMEOUT)
        await acked(after)
        took = loop.time() - began
        longest = lag.stop()
    finally:
        gc.unfreeze()
    assert longest < max(0.05, took / 10), f"the loop stalled {longest:.3f}s of a {took:.3f}s replay"
    assert queued(sinks["old"]) == []
    got = queued(sinks["new"])
    assert len(got) == connections * (per_connection + later), "a chunk lost or routed twice"
    for k in range(connections):
        mine = [n for t, n in got if t == f"app.c{k}"]
        assert mine == list(range(per_connection + later)), f"app.c{k} out of order"


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Wait on the loop for a server counter, which has no event to wait on."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.002)


async def test_connections_stop_reading_while_the_pile_of_a_reload_is_over_its_bound(
    sinks: dict[str, BufferedSink],
) -> None:
    """Each connection bounds only its own chunks awaiting acks (64 by default); a pile across thousands
    of connections is bounded by the router's gate: once the pile is over ``max_parked_chunks``, every
    connection that owes acks stops reading (real sockets, real sessions) until the replay has brought
    the pile down, and then everything is delivered, each connection's in order."""
    router = Router({ROOT_LABEL: to("old")}, sinks, max_parked_chunks=10)
    session = SessionSettings(listener="in", limits=Limits())
    listener = ForwardListener(
        ListenerSettings(name="in", session=session, bind="127.0.0.1", port=0, udp_heartbeat=False),
        router.entry(),
        gate=router.gate,
    )
    await listener.start()
    stats = listener.stats

    def messages(tag: str, numbers: range) -> bytes:
        """A Forward request per event (a chunk each; no ack asked: the client sends on at once)."""
        return b"".join(encode.forward(tag, [(1_700_000_000, {"n": n})]) for n in numbers)

    writers = []
    try:
        router.hold()
        _, a = await asyncio.open_connection("127.0.0.1", listener.port)
        writers.append(a)
        a.write(messages("app.a", range(12)))
        await until(lambda: stats.backpressure_pauses == 1, "the first connection to stop reading")
        assert router.gate.closed
        assert router.stats.parked_limit_reached == 1  # on /metrics: the operator sees why reads stopped
        parked = router.parked
        assert 10 < parked <= 12
        a.write(messages("app.a", range(12, 62)))  # well under its own max_inflight: only the gate stops it
        _, b = await asyncio.open_connection("127.0.0.1", listener.port)
        writers.append(b)
        b.write(messages("app.b", range(1)))  # a connection that owes nothing reads once...
        await until(lambda: router.parked == parked + 1, "the second connection's first chunk")
        await until(lambda: stats.backpressure_pauses == 2, "the second connection to stop reading")
        b.write(messages("app.b", range(1, 51)))  # ...and then waits too
        router.replace({ROOT_LABEL: to("new")}, sinks)
        await until(lambda: sinks["new"].queue.queued_chunks == 113, "everything sent to be committed")
        assert not router.gate.closed
        assert router.stats.parked_limit_reached == 1  # once per shut, not per chunk kept meanwhile
    finally:
        for w in writers:
            w.close()
        await listener.stop(1.0)
    got = queued(sinks["new"])
    assert [n for t, n in got if t == "app.a"] == list(range(62))
    assert [n for t, n in got if t == "app.b"] == list(range(51))


async def test_a_reload_that_holds_again_while_the_last_pile_is_routed_pauses_it_and_loses_nothing(
    sinks: dict[str, BufferedSink],
) -> None:
    """A second reload can begin while the first one's pile is still being routed: its hold must stop the
    routing (its stateful filters are being switched), and its replace routes what is left, then what
    came since, by its own table, each chunk once and in order."""
    router = Router({ROOT_LABEL: to("old")}, sinks)
    entry = router.entry()
    router.hold()
    first = [entry(numbered("app.a", n)) for n in range(20_000)]
    router.replace({ROOT_LABEL: to("new")}, sinks)
    await until(lambda: 0 < router.parked < 20_000, "the replay to begin")
    router.hold()
    left = router.parked
    routed = reached_a_sink(sinks)
    second = [entry(numbered("app.a", n)) for n in range(20_000, 20_100)]
    for _ in range(10):
        await asyncio.sleep(0)  # loop turns in which a replay that went on would route more
    assert reached_a_sink(sinks) == routed
    assert router.parked == left + 100
    router.replace({ROOT_LABEL: to("old")}, sinks)
    await acked(first + second)
    got = queued(sinks["new"]) + queued(sinks["old"])
    assert [n for _, n in got] == list(range(20_100))
