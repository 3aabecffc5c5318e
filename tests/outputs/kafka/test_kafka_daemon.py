"""The Kafka output inside the whole daemon: forward clients in, disk buffer, Kafka out, outages."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from forwardd.testing import ForwardClient
from forwardd.testing.daemon import RunningDaemon, run_daemon

from .conftest import Broker, Received, consume

pytestmark = pytest.mark.kafka


def config(tmp_path: Path, bootstrap: str, topic: str) -> str:
    # Short librdkafka timeout and back-off: an outage is noticed in a second and a retry follows soon.
    return f"""
storage: {{path: {tmp_path / "data"}}}
sources: [{{name: in, bind: 127.0.0.1, port: 0, udp_heartbeat: false}}]
routes: [{{match: "**", outputs: [kafka]}}]
outputs:
  kafka:
    type: kafka
    brokers: [{bootstrap}]
    topic: {topic}
    message_key: user
    options: {{message.timeout.ms: 1000}}
    buffer:
      retry: {{initial: 0.1, max: 0.5}}
"""


def send(d: RunningDaemon, first: int, chunks: int, per_chunk: int = 100) -> None:
    """Acked PackedForward chunks of records numbered from ``first``; returns once every ack came."""
    with ForwardClient("127.0.0.1", d.port()) as client:
        for c in range(chunks):
            base = first + c * per_chunk
            client.packed(
                "app.web", [{"n": base + i, "user": f"u{i % 5}"} for i in range(per_chunk)], ack=True
            )


def numbers(bootstrap: str, topic: str, count: int) -> set[int]:
    """The event numbers on ``topic``, read until 0..count-1 are all there (or 30 s): delivery is at least
    once, so the first ``count`` records may hold a duplicate and miss the last one."""
    want = set(range(count))

    def seen(got: list[Received]) -> set[int]:
        return {orjson.loads(r.value)["n"] for r in got}

    return seen(consume(bootstrap, topic, count, timeout=30, until=lambda got: want <= seen(got)))


def test_daemon_delivers_every_acked_event(tmp_path: Path, kafka_broker: Broker, topic: str) -> None:
    with run_daemon(config(tmp_path, kafka_broker.bootstrap, topic)) as d:
        send(d, 0, 20)
        got = numbers(kafka_broker.bootstrap, topic, 2000)
    assert got == set(range(2000))


def test_outage_with_daemon_restart_loses_no_acked_event(
    tmp_path: Path, own_broker: Broker, topic: str
) -> None:
    """The broker is down while a client sends and gets acks; the daemon restarts during the outage (its
    disk buffer carries the chunks over); when the broker is back every acked event reaches it."""
    conf = config(tmp_path, own_broker.bootstrap, topic)
    with run_daemon(conf) as d:
        send(d, 0, 10)
    with run_daemon(conf) as d:
        send(d, 1000, 10)
        own_broker.start()
        got = numbers(own_broker.bootstrap, topic, 2000)
    assert got == set(range(2000))
