"""A Kafka output retired with writes in flight (what a reload that changes its settings does): the real
broker, a real disk queue, BufferedSink.retire and take_over with real KafkaOutputs.

retire cuts off the writes still in flight (their messages may still reach the broker: the old producer
had sent some) and hands their works to the new output, which writes them again: every event arrives at
least once, and the only events that may arrive twice are those the new output was handed, unconfirmed.

(With the real output, the old writes also end without the cancel: retire closes the old producer, whose
purge fails them, before it returns. tests/buffer/test_delivery_reload.py holds the cancel itself.)
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from structlog.testing import capture_logs

from forwardd.buffer import BufferedSink, DiskQueue
from forwardd.model import Chunk
from forwardd.outputs.kafka import KafkaOutput

from .conftest import Broker, Received, consume
from .test_kafka_output import make_chunk

pytestmark = pytest.mark.kafka

TIMEOUT = 60.0
TAGS = 8  # one work per tag in a batch: as many writes in flight as the output takes
PER_CHUNK = 200
TOTAL = 24_000
PAD = "p" * 1000


class Kafka(KafkaOutput):
    """The real Kafka output, counting its writes in progress."""

    writing = 0

    async def write(self, chunk: Chunk) -> None:
        self.writing += 1
        try:
            await super().write(chunk)
        finally:
            self.writing -= 1


def output(bootstrap: str, topic: str, generation: str) -> Kafka:
    """The Kafka output of one configuration; ``generation`` (a header) is the setting a reload changes.
    A linger keeps each write waiting for its messages a while, so writes are in flight when it retires."""
    return Kafka(
        name="kafka", brokers=[bootstrap], topic=topic, headers={"generation": generation},
        options={"linger.ms": 100, "message.timeout.ms": 20_000},
    )  # fmt: skip


async def wait_until(cond: Callable[[], bool], what: str) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.01)  # polls state the loop changes; the timeout bounds it

    try:
        await asyncio.wait_for(poll(), TIMEOUT)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def number(r: Received) -> int:
    n: int = orjson.loads(r.value)["n"]
    return n


async def test_writes_in_flight_when_retired_are_written_again_by_the_new_output_and_only_those_twice(
    tmp_path: Path, kafka_broker: Broker, topic: str
) -> None:
    queue = DiskQueue(str(tmp_path / "queue"), fsync="never")
    old_out = output(kafka_broker.bootstrap, topic, "1")
    old = BufferedSink("kafka", old_out, queue)
    await old.start()
    new: BufferedSink | None = None
    try:
        for k, base in enumerate(range(0, TOTAL, PER_CHUNK)):
            records = [{"n": n, "pad": PAD} for n in range(base, base + PER_CHUNK)]
            committed = old.submit(make_chunk(records, tag=f"app.{k % TAGS}"))
            assert committed is not None
            await asyncio.wait_for(committed, TIMEOUT)
        await wait_until(lambda: old.stats.delivered_events > 0, "the first writes to be confirmed")
        await wait_until(lambda: old_out.writing >= 2, "several writes in flight")
        with capture_logs() as logs:
            gathered, works = await old.retire(0.0)  # a reload that does not wait: cut off at once
        assert any(e["event"] == "delivery.stop_timeout" for e in logs), "no write was in flight"
        assert old_out.writing == 0  # ended: no work is written by two outputs at once
        # What the new output is to write: the pieces of each work not confirmed yet (a work whose write
        # completed has none left), and what was taken and not begun.
        handed = {
            e.record["n"]
            for chunk in [*(p.chunk for w in works for p in w.pieces), *(t.chunk for t in gathered)]
            for e in chunk.events()
        }
        new = BufferedSink("kafka", output(kafka_broker.bootstrap, topic, "2"), queue)
        await new.take_over(gathered, works)
        await wait_until(lambda: queue.queued_chunks == 0, "every chunk delivered")
    finally:
        if new is not None:
            await new.stop()
        else:
            await old.stop()
    want = set(range(TOTAL))
    loop = asyncio.get_running_loop()
    got = await loop.run_in_executor(
        None,
        lambda: consume(
            kafka_broker.bootstrap, topic, TOTAL, timeout=TIMEOUT,
            until=lambda g: want <= {number(r) for r in g},
        ),
    )  # fmt: skip
    seen = Counter(number(r) for r in got)
    assert set(seen) == want  # every event at least once
    twice = {n for n, c in seen.items() if c > 1}
    assert twice <= handed, f"{len(twice - handed)} events not in flight at the retire arrived twice"
    assert max(seen.values()) <= 2
    by_new = {number(r) for r in got if ("generation", b"2") in r.headers}
    assert handed <= by_new  # what was in flight was written again by the new output
    print(f"\n{len(handed)} events in flight at the retire; {len(twice)} of them arrived twice")
