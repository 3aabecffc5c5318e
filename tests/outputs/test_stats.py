"""Every output's own counters, and the sink's, export one flat shape: ``as_dict()`` of plain values."""

from __future__ import annotations

from pathlib import Path

from forwardd.buffer import SinkStats
from forwardd.model import Chunk, Event
from forwardd.outputs.debug import NullOutput
from forwardd.outputs.file import FileOutput
from forwardd.outputs.http import HttpStats
from forwardd.outputs.kafka import KafkaOutput, KafkaOutputStats

T0 = 1_700_000_000 * 10**9


def assert_plain(d: dict[str, object]) -> None:
    assert d
    for k, v in d.items():
        assert type(k) is str
        assert v is None or type(v) in (int, float, str), (k, v)


async def test_file_output_counts_events_and_bytes(tmp_path: Path) -> None:
    out = FileOutput(name="f", path=str(tmp_path / "${tag}.log"))
    assert out.stats.as_dict() == {"events": 0, "bytes": 0, "syncs": 0, "writes": 0, "fsync_rounds": 0}
    await out.write(Chunk.from_events("app", [Event(T0, {"a": 1}), Event(T0, {"a": 2})], T0))
    await out.stop()
    size = (tmp_path / "app.log").stat().st_size
    # A small write alone: fsynced where it was appended, a round of its own.
    assert out.stats.as_dict() == {"events": 2, "bytes": size, "syncs": 0, "writes": 1, "fsync_rounds": 1}


async def test_file_output_counts_its_grouped_syncs(tmp_path: Path) -> None:
    out = FileOutput(name="f", path=str(tmp_path / "${tag}.log"), fsync="grouped")
    for _ in range(3):
        await out.write(Chunk.from_events("app", [Event(T0, {"a": 1})], T0))
    await out.sync()
    await out.stop()
    assert out.stats.as_dict()["syncs"] == 1


def test_every_stats_object_is_flat_and_plain() -> None:
    http = HttpStats(
        events=3, bytes=10, requests=2, retries={"timeout": 1}, rejected={"400": 2, "oversize": 1}
    )
    assert http.as_dict() == {
        "events": 3,
        "bytes": 10,
        "requests": 2,
        "retries": 1,
        "rejected": 3,
        "retries.timeout": 1,
        "rejected.400": 2,
        "rejected.oversize": 1,
    }
    kafka = KafkaOutputStats(delivered_events=5, last_error="x")
    assert kafka.as_dict()["delivered_events"] == 5
    sink = SinkStats(latency_p50_ms=1.5, last_error="boom")
    for stats in (http, kafka, sink, KafkaOutputStats(), SinkStats()):
        assert_plain(stats.as_dict())


def test_kafka_stats_are_a_snapshot_and_outputs_without_counters_say_none() -> None:
    out = KafkaOutput(name="k", brokers=["127.0.0.1:9"], topic="t")
    snap = out.stats
    snap.delivered_events = 99
    assert out.stats.delivered_events == 0
    assert NullOutput().stats is None
