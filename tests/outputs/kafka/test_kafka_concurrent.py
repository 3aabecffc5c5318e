"""The Kafka output with several writes in flight (``concurrent_writes``) against the real broker killed,
hung or outlived mid-run: each write's outcome concerns exactly its own events, nothing acked is lost,
and what is delivered twice is bounded by what was in flight.

Tansu keeps its records in memory: a killed broker comes back empty, so after a kill the topic holds
exactly what was sent again. A hung one (SIGSTOP) keeps everything and answers late.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from forwardd.buffer.batching import BATCH_MAX_BYTES
from forwardd.buffer.in_flight import IN_FLIGHT_BYTES
from forwardd.errors import PartialDelivery, RetryableError
from forwardd.model import Chunk
from forwardd.outputs.kafka import KafkaOutput
from forwardd.testing import ForwardClient
from tests.e2e.helpers import Proc

from .conftest import Broker, Received, consume
from .test_kafka_output import make_chunk

pytestmark = pytest.mark.kafka

TIMEOUT = 30.0
PAD = "p" * 1000
TAGS = 8  # one work per tag in a batch: as many writes in flight as the output takes
PER_CHUNK = 200


def numbers_of(got: list[Received]) -> Counter[int]:
    return Counter(orjson.loads(r.value)["n"] for r in got)


async def test_writes_in_flight_together_each_resend_exactly_what_the_broker_did_not_acknowledge(
    own_broker: Broker,
) -> None:
    """Three writes in flight on one producer when the broker dies. Each settles on its own reports: what
    it says was acknowledged is never sent again, and what it hands back (unsent, or the whole chunk when
    nothing got through) is exactly what the restarted, empty broker must receive. A report counted for
    the wrong write would lose events (they would be in no write's rest) or send some twice."""
    own_broker.start()
    out = KafkaOutput(
        name="k", brokers=[own_broker.bootstrap], topic="together",
        # A small local queue and a long linger keep the three writes going for seconds, side by side.
        options={"message.timeout.ms": 1000, "queue.buffering.max.messages": 100, "linger.ms": 50},
    )  # fmt: skip
    assert out.concurrent_writes >= 3
    await out.start()
    chunks = [make_chunk([{"n": w * 100_000 + i, "log": "y" * 200} for i in range(8000)]) for w in range(3)]
    try:
        await out.write(make_chunk([{"n": -1}]))  # connected, topic known
        tasks = [asyncio.create_task(out.write(c)) for c in chunks]
        loop = asyncio.get_running_loop()
        bootstrap = own_broker.bootstrap
        await loop.run_in_executor(None, lambda: consume(bootstrap, "together", 2, timeout=TIMEOUT))
        assert not any(t.done() for t in tasks)
        own_broker.kill()
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
    finally:
        await out.stop()
    rests: list[Chunk] = []
    delivered = 0
    for chunk, outcome in zip(chunks, outcomes, strict=True):
        if outcome is None:
            delivered += chunk.count
        elif isinstance(outcome, PartialDelivery):
            assert outcome.rejected is None
            assert outcome.unsent is not None
            assert isinstance(outcome.cause, RetryableError)
            assert outcome.delivered + outcome.unsent.count == chunk.count
            delivered += outcome.delivered
            rests.append(outcome.unsent)
        else:
            assert isinstance(outcome, RetryableError), outcome
            rests.append(chunk)
    assert delivered >= 1  # the consumer saw some: at least one write got part of its chunk through
    resend = Counter(e.record["n"] for rest in rests for e in rest.events())
    assert max(resend.values()) == 1
    assert delivered + len(resend) == 3 * 8000
    own_broker.start()
    out = KafkaOutput(
        name="k", brokers=[own_broker.bootstrap], topic="together", options={"message.timeout.ms": 5000}
    )
    await out.start()
    try:

        async def until_done(pending: Chunk) -> None:  # what the delivery loop does with each work
            for _ in range(30):
                try:
                    await out.write(pending)
                    return
                except PartialDelivery as exc:
                    if exc.unsent is None:
                        return
                    pending = exc.unsent
                except RetryableError:
                    continue
            pytest.fail("the rest was never delivered after the broker came back")

        await asyncio.gather(*(until_done(rest) for rest in rests))
    finally:
        await out.stop()
    got = consume(
        own_broker.bootstrap, "together", len(resend), timeout=TIMEOUT,
        until=lambda g: set(resend) <= set(numbers_of(g)),
    )  # fmt: skip
    assert set(numbers_of(got)) == set(resend)  # none of the acknowledged ones again, none missing


def daemon_config(tmp_path: Path, bootstrap: str, topic: str) -> dict[str, Any]:
    return {
        "storage": {"path": str(tmp_path / "data")},
        "sources": [{"name": "in", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False}],
        "routes": [{"match": "**", "outputs": ["kafka"]}],
        "outputs": {
            "kafka": {
                "type": "kafka",
                "brokers": [bootstrap],
                "topic": topic,
                # An outage is noticed in a second, and the retries follow each other quickly.
                "options": {"message.timeout.ms": 1000},
                "buffer": {"retry": {"initial": 0.1, "max": 0.5}},
            }
        },
    }


def send(port: int, first: int, count: int) -> None:
    """``count`` numbered events of ~1 KB from ``first``, in acked PackedForward chunks spread over TAGS
    tags (so a batch is several works, written together); returns once every chunk is acked."""
    with ForwardClient("127.0.0.1", port, timeout=30) as client:
        for k, base in enumerate(range(first, first + count, PER_CHUNK)):
            records = [{"n": n, "pad": PAD} for n in range(base, min(base + PER_CHUNK, first + count))]
            client.packed(f"app.{k % TAGS}", records, ack=True)


def in_flight_bound() -> int:
    """The events that can be taken from the queue and unconfirmed at once: IN_FLIGHT_BYTES of entries in
    the writes begun, plus one batch (BATCH_MAX_BYTES) taken and not begun yet (never produced, so never a
    duplicate, but counted to stay on the safe side). An entry here is just over 1 KB."""
    return (IN_FLIGHT_BYTES + BATCH_MAX_BYTES) // len(PAD)


def arrived(bootstrap: str, topic: str, count: int) -> Counter[int]:
    """How often each of 0..count-1 is on ``topic``, read until every one is (or TIMEOUT fails it)."""
    want = set(range(count))
    got = consume(bootstrap, topic, count, timeout=TIMEOUT * 2, until=lambda g: want <= set(numbers_of(g)))
    return numbers_of(got)


@pytest.mark.slow
def test_a_broker_hung_mid_run_loses_nothing_and_duplicates_stay_within_what_was_in_flight(
    tmp_path: Path, own_broker: Broker, topic: str
) -> None:
    """The broker hangs (SIGSTOP) while the daemon has writes in flight and clients keep sending; their
    messages time out, the delivery loop backs off and retries only what was not acknowledged; when the
    broker resumes it also takes what had reached its sockets. Every acked event arrives, and the copies
    are bounded by what can be in flight (not by what was queued during the outage)."""
    own_broker.start()
    proc = Proc(daemon_config(tmp_path, own_broker.bootstrap, topic), tmp_path)
    total = 40_000
    try:
        port = proc.port()
        send(port, 0, total // 2)
        consume(own_broker.bootstrap, topic, 1, timeout=TIMEOUT)  # delivery is flowing
        own_broker.freeze()
        try:
            send(port, total // 2, total // 2)  # acked during the outage: queued on disk
            proc.wait_event("delivery.retry", timeout=TIMEOUT)
        finally:
            own_broker.thaw()
        seen = arrived(own_broker.bootstrap, topic, total)
    finally:
        assert proc.terminate() == 0
    assert set(seen) == set(range(total))
    duplicates = sum(seen.values()) - total
    print(f"\n{total} events, all delivered; {duplicates} duplicates (bound {in_flight_bound()})")
    assert duplicates <= in_flight_bound()


@pytest.mark.slow
def test_a_daemon_killed_with_writes_in_flight_redelivers_what_was_not_confirmed(
    tmp_path: Path, own_broker: Broker, topic: str
) -> None:
    """The broker dies; clients go on sending and get acks; the daemon begins writes of those chunks, which
    wait for a broker that is gone, and is killed (-9) meanwhile. Nothing of those writes was confirmed, so
    the next start delivers all of it to the broker, back (and empty: it kept its records in memory). What
    the first run had delivered is not sent again, except what was still unconfirmed: bounded by what can
    be in flight, although 30 MB were queued."""
    own_broker.start()
    config = daemon_config(tmp_path, own_broker.bootstrap, topic)
    first, total = 10_000, 40_000
    proc = Proc(config, tmp_path)
    try:
        send(proc.port(), 0, first)
        arrived(own_broker.bootstrap, topic, first)  # delivered (and, mostly, confirmed)
        own_broker.kill()
        send(proc.port(), first, total - first)  # acked: on disk; writes begin, and wait for the broker
    finally:
        proc.kill()
    own_broker.start()
    again = Proc(config, tmp_path)
    try:
        again.port()
        want = set(range(first, total))
        got = consume(
            own_broker.bootstrap, topic, len(want), timeout=TIMEOUT * 2,
            until=lambda g: want <= set(numbers_of(g)),
        )  # fmt: skip
    finally:
        assert again.terminate() == 0
    seen = numbers_of(got)
    assert want <= set(seen)
    again_sent = sum(seen.values()) - len(want)  # copies, and events of the first run sent again
    print(f"\n{total - first} events acked while the broker was gone, all delivered; {again_sent} sent again")
    assert again_sent <= in_flight_bound()
