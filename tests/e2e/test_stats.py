"""Each source and each output reports its counters (``source.stats``, ``output.stats``): periodically
and when forwardd stops."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from forwardd.testing import ForwardClient
from forwardd.testing.daemon import run_daemon


def test_stats_are_reported_per_source_and_per_output(tmp_path: Path) -> None:
    config = {
        "storage": {"path": str(tmp_path / "data")},
        "sources": [{"name": "in", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False}],
        "routes": [{"match": "**", "outputs": ["files"]}],
        "outputs": {"files": {"type": "file", "path": str(tmp_path / "out" / "${tag}.log")}},
    }
    with capture_logs() as logs, run_daemon(config) as d, ForwardClient(port=d.port()) as c:
        c.packed("app", [{"n": i} for i in range(10)], ack=True)
        c.message("app", {"n": 10}, ack=True)
    [source] = [e for e in logs if e["event"] == "source.stats"]
    assert (source["listener"], source["events"], source["acks"]) == ("in", 11, 2)
    [output] = [e for e in logs if e["event"] == "output.stats"]
    assert output["output"] == "files"
    assert output["delivered_events"] == 11
    assert output["queued_chunks"] == 0
    assert output["dead_lettered"] == 0
    assert output["latency_p50_ms"] is not None
    assert output["latency_p99_ms"] >= output["latency_p50_ms"] > 0
