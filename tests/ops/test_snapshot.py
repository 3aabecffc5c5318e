"""The pieces of the operators' endpoint that need no process: the hot path's counters, the sum over
workers, and the Prometheus exposition of a status (parsed back with prometheus_client's parser)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from forwardd.ops.collector import METRICS, StatusCollector
from forwardd.ops.counters import OTHER_TAGS, LatencyHistogram, TagCounts
from forwardd.ops.snapshot import merge
from forwardd.ops.top import render


def test_histogram_puts_each_observation_in_its_bucket() -> None:
    h = LatencyHistogram((0.001, 0.01))
    for v in (0.0005, 0.001, 0.002, 0.5):
        h.observe(v)
    assert h.counts == [2, 1, 1]  # <= 1 ms (bounds are inclusive), <= 10 ms, above
    assert h.count == 4
    assert abs(h.sum - 0.5035) < 1e-9


def test_tag_counts_stay_bounded_and_lose_no_event() -> None:
    t = TagCounts(limit=3)
    for i in range(10):
        t.add(f"docker.{i}", 1)
    t.add("docker.9", 5)
    assert len(t.counts) <= 3 + 1  # the limit, and the catch-all
    assert sum(t.counts.values()) == 15
    assert t.counts["docker.9"] == 6  # recent tags are kept, the oldest folded into OTHER_TAGS
    assert OTHER_TAGS in t.counts


def _snap(
    worker: int, events: int, *, oldest: float | None, ready: bool = True, **out: Any
) -> dict[str, Any]:
    hist = {"bounds": [0.001, 0.01], "counts": [events, 1, 0], "sum": 0.5 * worker + 0.25}
    return {
        "worker": worker,
        "pid": 100 + worker,
        "started": 0.0,
        "time": 0.0,
        "ready": ready,
        "reasons": [] if ready else ["output web: buffer full (9 of 9 bytes)"],
        "sources": {
            "in": {"events": events, "acks": 2, "open_connections": 1, "listening": True, "ack_latency": hist}
        },
        "outputs": {
            "web": {
                "type": "http",
                "queued_chunks": 3,
                "queued_bytes": 30,
                "max_size": 100,
                "full": not ready,
                "oldest_received": oldest,
                "failing_seconds": float(worker),
                "loop_alive": True,
                "delivered_events": events,
                "last_error": f"error of {worker}",
                "last_error_at": 10.0 + worker,
                "delivery_latency": None,
                "tags": {"a": events, f"only{worker}": 1},
                **out,
            }
        },
        "router": {"routed": events},
    }


def test_merge_sums_counters_and_combines_gauges() -> None:
    st = merge([_snap(0, 10, oldest=None), _snap(1, 5, oldest=50.0, ready=False)])
    src, web = st["sources"]["in"], st["outputs"]["web"]
    assert src["events"] == 15
    assert src["open_connections"] == 2
    assert src["listening"] is True
    assert src["ack_latency"]["counts"] == [15, 2, 0]
    assert src["ack_latency"]["sum"] == 1.0
    assert web["queued_bytes"] == 60
    assert web["max_size"] == 200
    assert web["full"] is True  # any worker's
    assert web["failing_seconds"] == 1.0  # the longest
    assert web["oldest_received"] == 50.0  # the oldest of those that have one
    assert web["oldest_age_seconds"] > 0
    assert web["last_error"] == "error of 1"  # the most recent
    assert web["tags"] == {"a": 15, "only0": 1, "only1": 1}
    assert st["router"] == {"routed": 15}
    assert st["ready"] is False
    assert st["reasons"] == ["worker 1: output web: buffer full (9 of 9 bytes)"]
    assert [w["events"] for w in st["workers"]] == [10, 5]


def test_a_worker_that_does_not_answer_makes_it_not_ready() -> None:
    st = merge([_snap(0, 10, oldest=None), None])
    assert st["ready"] is False
    assert st["reasons"] == ["worker 1: not responding"]
    assert st["workers"][1] == {"worker": 1, "up": False, "ready": False, "reasons": ["not responding"]}
    assert st["sources"]["in"]["events"] == 10


def test_exposition_parses_and_sums() -> None:
    st = merge([_snap(0, 10, oldest=None), _snap(1, 5, oldest=None)])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(st))
    text = generate_latest(registry).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    assert samples[("forwardd_source_events_total", (("source", "in"),))] == 15
    assert samples[("forwardd_source_ack_latency_seconds_bucket", (("le", "0.001"), ("source", "in")))] == 15
    assert samples[("forwardd_source_ack_latency_seconds_bucket", (("le", "+Inf"), ("source", "in")))] == 17
    assert samples[("forwardd_source_ack_latency_seconds_count", (("source", "in"),))] == 17
    assert samples[("forwardd_output_queued_bytes", (("output", "web"),))] == 60
    assert samples[("forwardd_output_last_error_timestamp_seconds", (("output", "web"),))] == 11.0
    assert samples[("forwardd_worker_up", (("worker", "1"),))] == 1
    assert samples[("forwardd_build_info", (("version", st["version"]),))] == 1


def test_top_rates_are_differences_over_the_interval() -> None:
    prev = merge([_snap(0, 10, oldest=None)])
    cur = merge([_snap(0, 30, oldest=None)])
    cur["time"] = prev["time"] + 2.0
    frame = render(cur, prev, "http://x")
    [src] = [line.split() for line in frame.splitlines() if line.startswith("in ")]
    assert src[2] == "10.0"  # (30 - 10) events / 2 s
    [tag] = [line.split() for line in frame.splitlines() if line.startswith("a ")]
    assert tag[1:] == ["web", "10.0", "30"]


def test_the_readme_documents_every_metric() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [name for name in METRICS if f"`{name}`" not in readme]
    assert missing == []
