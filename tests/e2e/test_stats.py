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


def test_docker_partial_reports_its_open_lines_and_journal(tmp_path: Path) -> None:
    config = {
        "storage": {"path": str(tmp_path / "data")},
        "sources": [{"name": "in", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False}],
        "routes": [{"match": "**", "filters": [{"type": "docker_partial"}], "outputs": ["files"]}],
        "outputs": {"files": {"type": "file", "path": str(tmp_path / "out" / "${tag}.log")}},
    }
    piece = {
        "container_id": "c" * 64, "log": "half", "partial_message": "true", "partial_id": "p",
        "partial_ordinal": "1", "partial_last": "false",
    }  # fmt: skip
    with capture_logs() as logs, run_daemon(config) as d, ForwardClient(port=d.port()) as c:
        c.message("docker.web", piece, ack=True)
    [stats] = [e for e in logs if e["event"] == "filter.stats"]
    assert stats["filter"] == "docker_partial[0]"
    assert (stats["open_lines"], stats["journaled_chunks"]) == (1, 1)  # kept for the next start
    assert stats["journal"] == "root-route0-filter0"
