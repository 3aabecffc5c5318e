"""The forward output behind forwardd's real disk buffer and delivery loop, built from configuration as
the daemon builds it: a receiver that is down holds the queue (nothing is dropped, nothing dead-lettered),
and everything committed is delivered once it is back; a receiver that dies mid-stream costs duplicates
at most, within what the output counted."""

from __future__ import annotations

import asyncio
from pathlib import Path

from forwardd.app import build_sink, parse_config
from forwardd.buffer import BufferedSink
from forwardd.outputs.forward import ForwardOutput
from forwardd.testing import TestServer
from tests.outputs.forward.helpers import check_delivery, chunk, restart, seqs, wait_until


def forward_sink(tmp_path: Path, port: int, extra: str = "") -> BufferedSink:
    """The sink the daemon builds for this output configuration (fast retries for the test)."""
    text = f"""
storage: {{path: {tmp_path / "data"}}}
sources: [{{name: in, port: 0}}]
routes: [{{match: "**", outputs: [agg]}}]
outputs:
  agg:
    type: forward
    servers: [{{host: 127.0.0.1, port: {port}}}]
    heartbeat_type: none
    recover_wait: 0s
    ack_response_timeout: 2s
    connect_timeout: 1s
    max_message_size: 4KiB
    buffer: {{retry: {{initial: 20ms, max: 50ms}}}}
{extra}"""
    cfg = parse_config(text)
    sink = build_sink("agg", cfg.outputs["agg"], tmp_path / "data")
    assert isinstance(sink, BufferedSink)
    assert isinstance(sink.output, ForwardOutput)
    return sink


async def submit_all(sink: BufferedSink, start: int, n: int, per_chunk: int, tags: int = 1) -> None:
    """Hand chunks to the sink and wait until each is committed (what a client's ack waits for); with
    ``tags``, the chunks take turns among that many tags (per-container tags)."""
    for i in range(start, start + n, per_chunk):
        tag = "app" if tags == 1 else f"c{i // per_chunk % tags}"
        waiter = sink.submit(chunk(tag, i, per_chunk, pad=20))
        if waiter is not None:
            await waiter


async def test_receiver_down_holds_the_queue_and_everything_goes_when_it_is_back(tmp_path: Path) -> None:
    srv = await TestServer().start()
    port = srv.port
    await srv.stop()
    sink = forward_sink(tmp_path, port)
    await sink.start()
    try:
        await submit_all(sink, 0, 500, 25)  # committed and acked while nobody receives
        await wait_until(lambda: sink.stats.retries >= 2, what="failed attempts")
        stats = sink.stats
        assert stats.queued_chunks == 20
        assert stats.delivered_events == 0
        assert stats.dead_lettered == 0
        assert stats.dropped == 0
        srv = await restart(srv)
        await wait_until(lambda: sink.stats.queued_chunks == 0, what="the queue to drain")
        assert seqs(srv.events) == list(range(500)), "in order, each once: nothing was half-sent"
    finally:
        await sink.stop()
        await srv.stop()


class Crashed:
    """What :func:`crash_mid_stream` saw: the sequence numbers the receiver got (before and after its
    crash), the output, the sink's dead-letter files, and the receiver's connections at the crash."""

    def __init__(
        self, received: list[int], out: ForwardOutput, dead_lettered: int, open_at_crash: int
    ) -> None:
        self.received = received
        self.out = out
        self.dead_lettered = dead_lettered
        self.open_at_crash = open_at_crash


async def crash_mid_stream(tmp_path: Path, extra: str = "", tags: int = 1) -> Crashed:
    """3,000 events in chunks of 20 (taking turns among ``tags`` tags) to a receiver that dies after
    600, before acking its last requests (its connections are aborted with the acks still owed), and
    comes back; returns once the queue has drained."""
    srv = await TestServer(ack_delay=0.03).start()
    sink = forward_sink(tmp_path, srv.port, extra)
    await sink.start()
    received: list[int] = []
    try:
        feed = asyncio.create_task(submit_all(sink, 0, 3000, 20, tags=tags))
        await srv.wait_for(600)
        open_at_crash = srv.stats.open_connections
        await srv.listener.stop(grace=0)  # a crash: owed acks are never sent
        received += seqs(srv.events)
        srv = await restart(srv)
        await feed
        await wait_until(lambda: sink.stats.queued_chunks == 0, timeout=30, what="the queue to drain")
        received += seqs(srv.events)
        out = sink.output
        assert isinstance(out, ForwardOutput)
        return Crashed(received, out, sink.stats.dead_lettered, open_at_crash)
    finally:
        await sink.stop()
        await srv.stop()


async def test_receiver_crashing_mid_stream_costs_only_counted_duplicates(tmp_path: Path) -> None:
    """The receiver has the events of its last requests but dies before acking them: they are sent
    again, to the receiver once it is back."""
    crashed = await crash_mid_stream(tmp_path)
    check_delivery(crashed.received, 3000, duplicates_bound=crashed.out.stats.unacked_events)
    assert crashed.out.stats.unacked_events > 0, "the crash left requests in doubt"
    assert len(crashed.received) > 3000, "and they were delivered twice"
    assert crashed.dead_lettered == 0


async def test_refused_handshake_holds_the_queue_and_never_dead_letters(tmp_path: Path) -> None:
    async with TestServer(shared_key="k", refuse_handshake=True) as srv:
        sink = forward_sink(tmp_path, srv.port, "    security: {self_hostname: a, shared_key: k}\n")
        await sink.start()
        try:
            await submit_all(sink, 0, 100, 10)
            await wait_until(lambda: sink.stats.retries >= 3, what="retries")
            assert sink.stats.queued_chunks == 10
            assert sink.stats.dead_lettered == 0
            assert srv.events == []
        finally:
            await sink.stop()


# --- in_flight: several chunks (tags) written at once ---------------------------------------------------


async def test_in_flight_writes_the_tags_of_a_batch_at_once_each_delivered_once(tmp_path: Path) -> None:
    """The receiver holds its acks: with in_flight 4, four chunks of four tags are open at once, on four
    connections (one write at a time would leave one). Released, every chunk arrives exactly once."""
    async with TestServer(withhold_acks=True) as srv:
        sink = forward_sink(tmp_path, srv.port, "    in_flight: 4\n")
        await sink.start()
        try:
            await submit_all(sink, 0, 160, 20, tags=8)  # committed: acked to the clients
            await wait_until(lambda: len(srv.sink.chunks) >= 4, what="four requests open at once")
            assert len({c.tag for c in srv.sink.chunks}) == len(srv.sink.chunks) == 4
            assert srv.stats.open_connections == 4
            assert sink.stats.delivered_events == 0, "nothing acked yet"
            srv.release_acks()
            await wait_until(lambda: sink.stats.queued_chunks == 0, what="the queue to drain")
            assert sorted(seqs(srv.events)) == list(range(160)), "each event exactly once"
            for t in range(8):
                mine = [s for s in range(160) if s // 20 % 8 == t]
                assert seqs(srv.events, f"c{t}") == mine, "in order within a tag here: no retry happened"
            out = sink.output
            assert isinstance(out, ForwardOutput)
            assert out.stats.unacked_events == out.stats.resent_events == 0
        finally:
            await sink.stop()


async def test_receiver_crashing_with_writes_in_flight_loses_nothing(tmp_path: Path) -> None:
    """As the crash above, with ten tags and four writes in flight: the writes cut off by the crash are
    each sent again (once it is back), nothing is lost or dead-lettered, duplicates within the count."""
    crashed = await crash_mid_stream(tmp_path, "    in_flight: 4\n", tags=10)
    assert crashed.open_at_crash > 1, "writes in flight together"
    check_delivery(crashed.received, 3000, duplicates_bound=crashed.out.stats.unacked_events, ordered=False)
    assert crashed.out.stats.unacked_events > 0, "the crash left requests in doubt"
    assert crashed.dead_lettered == 0
