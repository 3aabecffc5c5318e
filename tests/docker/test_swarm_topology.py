"""The two-tier topology on the real Docker engine in swarm mode: a real Swarm service task logs with docker's
fluentd driver over a Unix socket to an agent forwardd (docker_partial at the edge, forward out), which
forwards to two aggregator forwardd processes (forward in, docker_swarm, JSON-lines files). One aggregator
is killed with SIGKILL while the task is still running, with half of its lines still to log. Every line
arrives at least once, with Swarm's fields read from the real labels and task name, and the long line joined
whole. (What the killed aggregator acked is in its disk buffer: it is started again at the end, with no
sender, to write it out.)

The agent and the aggregators are conf/examples/swarm-node-agent.yaml and swarm-log-aggregator.yaml with
what a test needs changed: loopback ports instead of tasks.<service>, files instead of Kafka, no shared key,
fast heartbeats.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.docker.conftest import Docker
from tests.e2e.helpers import Proc

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]

N = 3000
LONG_AT = 1500
LONG = 40_000
#: The labels docker_swarm reads (the conf/examples/swarm-node-agent.yaml recipe).
LABELS = ",".join(f"com.docker.swarm.{x}" for x in ("service.name", "task.name", "task.id", "node.id"))


def aggregator(base: Path) -> dict[str, Any]:
    return {
        "storage": {"path": str(base / "data")},
        "sources": [{"name": "agents", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": True}],
        "routes": [
            {
                "match": "swarm.**",
                "filters": [{"type": "docker_swarm", "remove_labels": True}],
                "outputs": ["archive"],
            },
        ],
        # An fsync per write: the killed aggregator then repeats no line it wrote, so that the duplicates
        # bounded below are the agent's forward output's alone (grouped syncs would also repeat what it
        # wrote and had not synced: tests/e2e/test_crash.py).
        "outputs": {"archive": {"type": "file", "path": str(base / "out" / "${tag}.log"), "fsync": "write"}},
    }


def agent(base: Path, sock: Path, ports: list[int]) -> dict[str, Any]:
    return {
        "storage": {"path": str(base / "data")},
        "sources": [{"name": "docker", "unix": {"path": str(sock), "mode": "0666"}}],
        "routes": [{"match": "**", "filters": [{"type": "docker_partial"}], "outputs": ["aggregators"]}],
        "outputs": {
            "aggregators": {
                "type": "forward",
                "servers": [{"host": "127.0.0.1", "port": p} for p in ports],
                "compress": "zstd",
                "heartbeat_type": "udp",
                "heartbeat_interval": 0.2,
                "hard_timeout": 1,
                "recover_wait": 1,
                "buffer": {"retry": {"initial": 0.1, "max": 1}},
            }
        },
    }


def lines(base: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted((base / "out").glob("*.log")):
        for text in path.read_text().split("\n"):
            if text.strip():
                try:
                    out.append(json.loads(text))
                except ValueError:  # the line being written right now
                    pass
    return out


def wait(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_swarm_task_through_agent_to_two_aggregators_one_killed(docker: Docker, tmp_path: Path) -> None:
    procs: list[Proc] = []

    def start(config: dict[str, Any], name: str) -> Proc:
        work = tmp_path / name
        work.mkdir()
        proc = Proc(config, work)
        procs.append(proc)
        proc.wait_ready()
        return proc

    try:
        aggs = [start(aggregator(tmp_path / f"agg{i}"), f"agg{i}") for i in range(2)]
        sock = tmp_path / "agent.sock"
        agent_proc = start(agent(tmp_path / "agent", sock, [a.port() for a in aggs]), "agent")
        # Numbered lines, and one line of 40,000 characters that docker splits into 16 KiB pieces. The
        # task logs the first half, waits at a gate (a file the test creates after the kill, in a folder
        # bind-mounted into the task), then logs the rest: it is still running, with lines to log, when an
        # aggregator dies, whatever the machine's speed. (Without the gate, a fast task could end before
        # its first lines reached the aggregators.)
        gate = tmp_path / "gate"
        gate.mkdir()
        long_line = f's = ""; for (j = 0; j < {LONG}; j++) s = s "x"; print "long " s'
        first = f"for (i = 1; i <= {LONG_AT}; i++) print i; {long_line}"
        rest = f"for (i = {LONG_AT + 1}; i <= {N}; i++) print i"
        wait_gate = "n=0; while [ ! -e /gate/go ] && [ $n -lt 3000 ]; do sleep 0.1; n=$((n+1)); done"
        script = f"awk 'BEGIN {{ {first} }}'; {wait_gate}; awk 'BEGIN {{ {rest} }}'"
        report: dict[str, str] = {}

        def run_service() -> None:
            report["out"] = docker.service(
                "fwdtopo",
                "--mount", f"type=bind,source={gate},target=/gate,readonly",
                "--log-opt", f"fluentd-address=unix://{sock}",
                "--log-opt", "fluentd-request-ack=true",
                "--log-opt", "tag=swarm.{{.Name}}",
                "--log-opt", f"labels={LABELS}",
                cmd=["sh", "-c", script],
            )  # fmt: skip

        task = threading.Thread(target=run_service)
        task.start()
        seen = lambda: len(lines(tmp_path / "agg0")) + len(lines(tmp_path / "agg1"))  # noqa: E731
        wait(lambda: seen() >= 300 or not task.is_alive(), 240, "the first lines at the aggregators")
        assert task.is_alive(), f"the task ended before the kill: {report}"
        aggs[0].kill()
        # What its files held at the kill, to tell its own redelivery after the restart from the agent's.
        in_agg0_files = Counter(r["log"] for r in lines(tmp_path / "agg0"))
        killed_with = sum(in_agg0_files.values())
        (gate / "go").touch()
        task.join(300)
        assert not task.is_alive()
        # What the killed aggregator acked is in its disk buffer (that is what its ack meant): started
        # again on the same storage, with no sender, it writes those lines to its files.
        start(aggregator(tmp_path / "agg0"), "agg0-again")
        numbers = {str(i) for i in range(1, N + 1)}
        logs = lambda: {r["log"] for b in ("agg0", "agg1") for r in lines(tmp_path / b)}  # noqa: E731
        wait(lambda: logs() >= numbers, 120, "every line")
        assert agent_proc.terminate() == 0
        for p in procs[-2:]:
            assert p.terminate() == 0
    finally:
        for p in procs:
            p.close()

    got = lines(tmp_path / "agg0") + lines(tmp_path / "agg1")
    assert killed_with > 0
    assert len(lines(tmp_path / "agg1")) > 0
    counts = Counter(r["log"] for r in got)
    want = {str(i) for i in range(1, N + 1)} | {"long " + "x" * LONG}
    assert set(counts) == want, "every line at least once, the long one joined whole"
    stats = next(x for x in reversed(agent_proc.lines) if x.get("event") == "output.stats")["output_stats"]
    # Duplicates come from two places, each bounded by what it had in flight. The agent sends again what
    # the killed aggregator had not acked (its unacked_events). The killed aggregator, started again,
    # writes again the batch its file output had written and not yet marked delivered at the SIGKILL (at
    # least once, as tests/e2e/test_crash.py shows for one process): lines its files already held.
    rewritten = Counter(r["log"] for r in lines(tmp_path / "agg0")) - in_agg0_files
    redone = sum(n for log, n in rewritten.items() if log in in_agg0_files)
    dups = sum(counts.values()) - len(counts)
    assert dups <= stats["unacked_events"] + redone, (stats, redone, Counter(counts.values()))
    tasks = set()
    for r in got:
        assert r["service"] == "fwdtopo"
        assert r["slot"] == "1"
        assert len(r["task"]) == 25
        assert len(r["node"]) == 25
        assert r["container_name"] == f"/fwdtopo.1.{r['task']}"
        assert not any(k.startswith("com.docker.swarm.") for k in r), "labels read, then removed"
        assert not any(k.startswith("partial_") for k in r)
        tasks.add(r["task"])
    assert len(tasks) == 1
