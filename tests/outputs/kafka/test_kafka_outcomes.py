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

from forwardd.buffer import BufferedSink, DiskQueue, RetryPolicy, read_dead_letter
from forwardd.outputs.kafka import KafkaOutput
from tests.buffer.test_buffer_delivery import FakeTime

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
