"""forwardd → forwardd as real processes: an agent whose forward output feeds two aggregators (forward in,
docker_swarm, JSON-lines files). One aggregator is killed with SIGKILL mid-run; then the agent itself.
Every event a client got an ack for arrives at least once, with the Swarm fields; the duplicates are
within what the agent's output counted as unacked."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forwardd.protocol import encode
from forwardd.testing.client import AckError, ForwardClient
from tests.e2e.helpers import Proc
from tests.outputs.forward.helpers import check_delivery

pytestmark = pytest.mark.slow

TASK = "ni622j04jlivi19d2snj1ap3k"
NODE = "g1hfdktzvqmjjv0jrtv98rtfh"


def aggregator_config(base: Path) -> dict[str, Any]:
    return {
        "storage": {"path": str(base / "data")},
        "sources": [{"name": "in", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False}],
        "routes": [{"match": "**", "filters": [{"type": "docker_swarm"}], "outputs": ["files"]}],
        # An fsync per write: a kill -9 of an aggregator then repeats no line it wrote, so that the
        # duplicates the tests count are the forward output's alone (grouped syncs repeat what was
        # written and not yet synced: tests/e2e/test_crash.py).
        "outputs": {"files": {"type": "file", "path": str(base / "out" / "${tag}.log"), "fsync": "write"}},
    }


def agent_config(base: Path, ports: list[int]) -> dict[str, Any]:
    return {
        "storage": {"path": str(base / "data")},
        "sources": [{"name": "in", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False}],
        "routes": [{"match": "**", "outputs": ["aggregators"]}],
        "outputs": {
            "aggregators": {
                "type": "forward",
                "servers": [{"host": "127.0.0.1", "port": p} for p in ports],
                "heartbeat_interval": 0.2,
                "hard_timeout": 1,
                "recover_wait": 1,
                "connect_timeout": 2,
                "ack_response_timeout": 5,
                "buffer": {"retry": {"initial": 0.05, "max": 0.5}},
            }
        },
    }


def swarm_record(seq: int) -> dict[str, str]:
    return {
        "container_id": "c" * 64,
        "container_name": f"/web.2.{TASK}",
        "source": "stdout",
        "log": f"line {seq}",
        "seq": str(seq),
        "com.docker.swarm.node.id": NODE,
    }


def read_lines(base: Path) -> list[dict[str, Any]]:
    """Every complete JSON line an aggregator has written so far."""
    out = []
    for path in sorted((base / "out").glob("*.log")):
        for line in path.read_text().split("\n"):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:  # a line being written right now
                    pass
    return out


def wait_for_lines(bases: list[Path], n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        have = {int(x["seq"]) for b in bases for x in read_lines(b)}
        if len(have) >= n:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(have)} of {n} events arrived within {timeout}s")
        time.sleep(0.05)


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []

    def start(self, config: dict[str, Any], name: str) -> Proc:
        work = self.tmp / name
        work.mkdir(exist_ok=True)
        proc = Proc(config, work)
        self.procs.append(proc)
        proc.wait_ready()
        return proc

    def close(self) -> None:
        for proc in self.procs:
            proc.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


def send(port: int, start: int, n: int, per_chunk: int = 50) -> None:
    """Acked PackedForward chunks: each ack means the agent has the chunk on disk."""
    with ForwardClient(port=port, timeout=30) as client:
        for i in range(start, start + n, per_chunk):
            t = encode.event_time(time.time_ns())
            chunk = encode.new_chunk_id()
            entries = [(t, swarm_record(s)) for s in range(i, i + per_chunk)]
            client.send(encode.packed_forward("swarm.web", entries, chunk=chunk))
            client.expect_ack(chunk)


def forward_stats(agent: Proc) -> dict[str, Any]:
    line = next(x for x in reversed(agent.lines) if x.get("event") == "output.stats")
    return dict(line["output_stats"])


def test_one_aggregator_killed_mid_run(cluster: Cluster) -> None:
    tmp = cluster.tmp
    agg = [cluster.start(aggregator_config(tmp / f"agg{i}"), f"agg{i}") for i in range(2)]
    agent = cluster.start(agent_config(tmp / "agent", [a.port() for a in agg]), "agent")
    send(agent.port(), 0, 2000)
    wait_for_lines([tmp / "agg0", tmp / "agg1"], 2000)
    first = {i: len(read_lines(tmp / f"agg{i}")) for i in range(2)}
    assert min(first.values()) > 0, "both aggregators take writes"
    agg[0].kill()
    send(agent.port(), 2000, 3000)
    # What agg0 acked before the kill is in its disk buffer: started again (no sender), it writes it out.
    again = cluster.start(aggregator_config(tmp / "agg0"), "agg0")
    wait_for_lines([tmp / "agg0", tmp / "agg1"], 5000)
    assert agent.terminate() == 0
    assert agg[1].terminate() == 0
    assert again.terminate() == 0
    lines = read_lines(tmp / "agg0") + read_lines(tmp / "agg1")
    stats = forward_stats(agent)
    # Per aggregator, in the order each received them: no reordering beyond a re-send.
    for i in range(2):
        got = [int(x["seq"]) for x in read_lines(tmp / f"agg{i}")]
        firsts = list(dict.fromkeys(got))
        assert firsts == sorted(firsts), f"aggregator {i} got events out of order"
    check_delivery(sorted(int(x["seq"]) for x in lines), 5000, duplicates_bound=stats["unacked_events"])
    for x in lines:
        assert (x["service"], x["task"], x["slot"], x["node"]) == ("web", TASK, "2", NODE)
    assert len(read_lines(tmp / "agg1")) > 3000 - first[0], "the survivor took over"
    key = f"127.0.0.1:{agg[0].port()}"
    state = stats["servers"][key] if "servers" in stats else stats[f"servers.{key}"]  # nested or flat
    assert state.startswith("down")


def test_agent_killed_and_its_aggregator_down_loses_nothing(cluster: Cluster) -> None:
    """The aggregator is down while clients are acked (back-pressure into the agent's disk buffer); the
    agent is then killed with SIGKILL and started again; when the aggregator comes back it gets it all."""
    tmp = cluster.tmp
    agg = cluster.start(aggregator_config(tmp / "agg"), "agg")
    port = agg.port()
    agent = cluster.start(agent_config(tmp / "agent", [port]), "agent")
    send(agent.port(), 0, 500)
    wait_for_lines([tmp / "agg"], 500)
    agg.kill()
    send(agent.port(), 500, 1500)  # acked: committed to the agent's disk, no receiver up
    agent.kill()
    cfg = aggregator_config(tmp / "agg")
    cfg["sources"][0]["port"] = port
    cluster.start(cfg, "agg")
    agent2 = cluster.start(agent_config(tmp / "agent", [port]), "agent")
    wait_for_lines([tmp / "agg"], 2000)
    assert agent2.terminate() == 0
    got = sorted(int(x["seq"]) for x in read_lines(tmp / "agg"))
    assert set(got) == set(range(2000))


def test_no_receiver_fills_the_buffer_then_holds_the_client_back(cluster: Cluster) -> None:
    """With the aggregator down the agent acks into its disk buffer until the buffer is full; then the
    client's acks stop (back-pressure, nothing dropped). The aggregator comes back: the withheld ack
    comes, and every event the client sent arrives."""
    tmp = cluster.tmp
    agg = cluster.start(aggregator_config(tmp / "agg"), "agg")
    port = agg.port()
    agg.kill()
    cfg = agent_config(tmp / "agent", [port])
    cfg["outputs"]["aggregators"]["buffer"].update({"max_size": "512KiB", "segment_size": "64KiB"})
    agent = cluster.start(cfg, "agent")
    sent = 0
    with ForwardClient(port=agent.port(), timeout=30) as client:
        held = None
        while held is None:
            t = encode.event_time(time.time_ns())
            chunk = encode.new_chunk_id()
            entries = [(t, swarm_record(s)) for s in range(sent, sent + 50)]
            client.send(encode.packed_forward("swarm.web", entries, chunk=chunk))
            sent += 50
            try:
                reply = client.read_value(timeout=1.5)
            except AckError:
                held = chunk
            else:
                assert reply == {"ack": chunk}
            assert sent < 100_000, "the buffer never filled"
        assert sent > 1000, "the buffer took a good part before holding back"
        again = aggregator_config(tmp / "agg")
        again["sources"][0]["port"] = port
        cluster.start(again, "agg")
        client.expect_ack(held)  # the withheld ack, once the buffer drained
    wait_for_lines([tmp / "agg"], sent)
    assert agent.terminate() == 0
    assert {int(x["seq"]) for x in read_lines(tmp / "agg")} == set(range(sent))
