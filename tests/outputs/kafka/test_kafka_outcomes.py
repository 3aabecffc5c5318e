"""Kafka messages rejected one by one, through the real delivery loop and the real broker (issue 18 item 3):
exactly the rejected events are dead-lettered, every other event arrives once, never re-sent.

Two kinds of real per-message rejection: a message over the producer's ``message.max.bytes`` (librdkafka
refuses it at produce()), and a topic name the broker refuses (TOPIC_EXCEPTION in the delivery report).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from forwardd.buffer import BufferedSink, DiskQueue, RetryPolicy, read_dead_letter
from forwardd.errors import PartialDelivery, RetryableError
from forwardd.outputs.kafka import KafkaOutput
from tests.buffer.test_buffer_delivery import FakeTime
from tests.buffer.test_delivery_isolation import dead_letters, entries_chunk, numbered

from .conftest import Broker, consume
from .test_kafka_output import make_chunk

pytestmark = pytest.mark.kafka

TIMEOUT = 20.0


async def test_rejected_messages_of_a_merged_batch_cost_exactly_their_events(
    kafka_broker: Broker, topic: str, tmp_path: Path
) -> None:
    t = FakeTime()
    out = KafkaOutput(
        name="k", brokers=[kafka_broker.bootstrap], topic=topic, topic_key="dest",
        options={"message.max.bytes": 4000},
    )  # fmt: skip
    q = DiskQueue(str(tmp_path / "q"), fsync="never")
    sink = BufferedSink(
        "k", out, q, RetryPolicy(), str(tmp_path / "dead"), clock=t.clock, sleep=t.sleep, rand=lambda: 1.0
    )
    await q.start()
    want: list[int] = []
    bad: list[int] = []
    for k in range(4):  # four chunks, merged by the loop into one write
        records: list[dict[str, Any]] = [{"n": 10 * k + i} for i in range(10)]
        if k == 1:
            records[3]["log"] = "x" * 5000  # over the producer's limit
            records[8]["dest"] = "bad topic!"  # refused by the broker
            bad += [13, 18]
        want += [r["n"] for r in records if r["n"] not in bad]
        await asyncio.wait_for(sink.submit(make_chunk(records)), TIMEOUT)  # type: ignore[arg-type]
    await sink.start()
    try:

        async def empty() -> None:
            while sink.stats.queued_chunks:
                await asyncio.sleep(0.01)  # polls the queue the loop empties; bounded by the timeout

        await asyncio.wait_for(empty(), TIMEOUT)
    finally:
        await sink.stop()
    got = consume(kafka_broker.bootstrap, topic, len(want))
    counts = Counter(orjson.loads(r.value)["n"] for r in got)
    assert sorted(counts) == sorted(want)
    assert set(counts.values()) == {1}  # nothing re-sent
    sidecars = sorted((tmp_path / "dead").glob("*.json"))
    dead = [e.record["n"] for p in sidecars for e in read_dead_letter(str(p.with_suffix(".chunk"))).events()]
    assert sorted(dead) == bad
    errors = " ".join(json.loads(p.read_text())["error"] for p in sidecars)
    assert "MSG_SIZE_TOO_LARGE" in errors
    assert "TOPIC_EXCEPTION" in errors
    assert (sink.stats.delivered_events, sink.stats.dead_lettered_events) == (38, 2)
    assert t.sleeps == []


async def test_a_broker_lost_mid_write_resends_only_what_it_had_not_acknowledged(own_broker: Broker) -> None:
    """Messages the broker acknowledged before it died are not sent again; the others are. The broker keeps
    everything in memory, so after its restart the topic holds exactly what was re-sent."""
    own_broker.start()
    out = KafkaOutput(
        name="k", brokers=[own_broker.bootstrap], topic="partial",
        # A small local queue and a long linger make the 20k-event write last seconds, so the broker is
        # killed in the middle of it once some of it is acknowledged (seen by a consumer), not after a sleep.
        options={"message.timeout.ms": 1000, "queue.buffering.max.messages": 100, "linger.ms": 50},
    )  # fmt: skip
    await out.start()
    try:
        await out.write(make_chunk([{"n": -1}]))  # connected, topic known
        big = make_chunk([{"n": i, "log": "y" * 200} for i in range(20_000)])
        task = asyncio.create_task(out.write(big))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: consume(own_broker.bootstrap, "partial", 2, timeout=TIMEOUT))
        assert not task.done()
        own_broker.kill()
        with pytest.raises(PartialDelivery) as info:
            await asyncio.wait_for(task, 30)
        err = info.value
        assert isinstance(err.cause, RetryableError)
        assert err.rejected is None
        assert err.unsent is not None
        assert err.delivered >= 1
        assert err.delivered + err.unsent.count == 20_000
        unsent = {e.record["n"] for e in err.unsent.events()}
        own_broker.start()
        await out.stop()
        # The rest through a producer without the slowing settings (the outcome is what is under test).
        out = KafkaOutput(
            name="k", brokers=[own_broker.bootstrap], topic="partial", options={"message.timeout.ms": 1000}
        )
        await out.start()
        pending = err.unsent
        for _ in range(30):  # what the delivery loop does: write what is left until it goes through
            try:
                await out.write(pending)
                break
            except PartialDelivery as exc:
                if exc.unsent is None:
                    break
                pending = exc.unsent
            except RetryableError:
                continue
        else:
            pytest.fail("the rest was never delivered after the broker came back")
    finally:
        await out.stop()
    got = consume(
        own_broker.bootstrap, "partial", len(unsent), timeout=30,
        until=lambda g: unsent <= {orjson.loads(r.value)["n"] for r in g},
    )  # fmt: skip
    assert {orjson.loads(r.value)["n"] for r in got} == unsent  # none of the acknowledged ones again


async def test_a_record_no_format_can_write_past_the_first_slices_costs_only_itself(
    kafka_broker: Broker, topic: str, tmp_path: Path
) -> None:
    """Values are encoded and produced a slice at a time: a record the C transcoder declines and the Python
    path cannot write (nested 600 deep) is met after a thousand events went out. Those are delivered once,
    the rest goes back to the delivery loop, which isolates the one record; nothing is sent twice."""
    t = FakeTime()
    out = KafkaOutput(name="k", brokers=[kafka_broker.bootstrap], topic=topic)
    q = DiskQueue(str(tmp_path / "q"), fsync="never")
    sink = BufferedSink(
        "k", out, q, RetryPolicy(), str(tmp_path / "dead"), clock=t.clock, sleep=t.sleep, rand=lambda: 1.0
    )
    await q.start()
    await asyncio.wait_for(sink.submit(entries_chunk("app", numbered(2500, poison_at=(1500,)))), TIMEOUT)  # type: ignore[arg-type]
    with capture_logs() as logs:
        await sink.start()
        try:

            async def empty() -> None:
                while sink.stats.queued_chunks:
                    await asyncio.sleep(0.01)  # polls the queue the loop empties; bounded by the timeout

            await asyncio.wait_for(empty(), TIMEOUT)
        finally:
            await sink.stop()
    got = consume(kafka_broker.bootstrap, topic, 2499)
    counts = Counter(orjson.loads(r.value)["seq"] for r in got)
    assert sorted(counts) == [i for i in range(2500) if i != 1500]
    assert set(counts.values()) == {1}  # the first slices were not sent again
    [(chunk, sidecar)] = dead_letters(tmp_path / "dead")
    assert [e.record["seq"] for e in chunk.events()] == [1500]
    assert sidecar["reason"] == "unprocessable"
    assert (sink.stats.delivered_events, sink.stats.dead_lettered_events) == (2499, 1)
    assert sink.stats.isolations == 1
    assert "delivery.isolating" in [e["event"] for e in logs]
    assert t.sleeps == []
