"""The reported poison message against the real daemon: a Message whose tag is not UTF-8 (b"\\xff\\xfe") and
whose record nests 600 arrays deep, acked between numbered good events.

Before: the file output raised RecursionError encoding it, the log line about it raised on the tag, the
delivery task died silently, and nothing acked after it was ever delivered, also after a restart. Now:
every good event is in the output files, the poison one is in the dead-letter folder with its exact bytes
and a sidecar naming the exception, and delivery goes on, across a kill -9 and a restart.

Also the filter side: a record grep cannot read (nested 1000 deep: its value_str raises RecursionError)
goes to the filter's dead-letter folder before the ack, and the events around it go on.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack

from forwardd.buffer import read_dead_letter
from forwardd.protocol import encode
from forwardd.testing.client import ForwardClient
from tests.e2e.helpers import Proc

TIMEOUT = 30.0
POISON_TAG = b"\xff\xfe".decode("utf-8", "surrogateescape")


def poison(chunk_id: str, depth: int = 600, tag: bytes = b"\xff\xfe") -> bytes:
    """The Message ``[tag, time, {"log": [[...depth...["x"]]]}, {"chunk": id}]``, packed by hand: the
    client libraries refuse both the tag and the depth."""
    record = b"\x81\xa3log" + b"\x91" * depth + b"\xa1x"
    head = b"\x94" + bytes((0xA0 | len(tag),)) + tag
    return (
        head + msgpack.packb(encode.event_time(time.time_ns())) + record + msgpack.packb({"chunk": chunk_id})
    )


def send_with_poison(port: int, first: int, n: int, tag: str = "app", depth: int = 600) -> None:
    """n good events numbered from ``first``, the poison one in the middle; every one acked."""
    with ForwardClient(port=port, timeout=10) as c:
        for i in range(first, first + n // 2):
            c.message(tag, {"seq": i}, ack=True)
        chunk_id = encode.new_chunk_id()
        c.send(poison(chunk_id, depth, tag.encode() if depth > 600 else b"\xff\xfe"))
        c.expect_ack(chunk_id)
        for i in range(first + n // 2, first + n):
            c.message(tag, {"seq": i}, ack=True)


def delivered(out: Path) -> Counter[int]:
    seqs: Counter[int] = Counter()
    for path in out.glob("*.log*"):
        for line in path.read_text().splitlines():
            seqs[json.loads(line)["seq"]] += 1
    return seqs


def wait_until(what: str, cond: Any, proc: Proc) -> None:
    """Poll what the daemon writes (files: no log line announces each delivery), bounded by TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        if time.monotonic() > deadline or proc.proc.poll() is not None:
            raise AssertionError(f"no {what}; log:\n" + "\n".join(proc.raw[-30:]))
        time.sleep(0.05)


def config(tmp_path: Path, **route: Any) -> dict[str, Any]:
    return {
        "storage": {"path": str(tmp_path / "data")},
        "sources": [{"name": "in", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False}],
        "routes": [{"match": "**", "outputs": ["files"], **route}],
        "outputs": {"files": {"type": "file", "path": str(tmp_path / "out" / "${tag}.log")}},
    }


def test_the_poison_message_costs_itself_and_delivery_goes_on_across_a_restart(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    out, dead = tmp_path / "out", tmp_path / "data" / "dead-letter" / "files"
    proc = Proc(cfg, tmp_path)
    try:
        send_with_poison(proc.port(), 0, 20)
        proc.kill()  # at once, without waiting for delivery: what is left is delivered after the restart
    finally:
        proc.close()
    proc = Proc(cfg, tmp_path)
    try:
        port = proc.port()
        send_with_poison(port, 20, 20)
        wait_until("both poison messages", lambda: len(list(dead.glob("*.chunk"))) >= 2, proc)
        # After the poison was handled, the loop still delivers (before, the task was dead by now).
        with ForwardClient(port=port, timeout=10) as c:
            c.packed("app", [{"seq": i} for i in range(40, 50)], ack=True)
        wait_until("every good event", lambda: set(delivered(out)) >= set(range(50)), proc)
        assert proc.terminate() == 0
    finally:
        proc.close()
    seqs = delivered(out)
    assert set(seqs) == set(range(50))
    # At-least-once: only what was in flight at the kill may be there twice; nothing after the restart.
    assert all(seqs[i] == 1 for i in range(20, 50))
    sidecars = [json.loads(p.read_text()) for p in sorted(dead.glob("*.json"))]
    assert 2 <= len(sidecars) <= 3  # the first one may be parked again if the kill beat the ledger
    for p in sorted(dead.glob("*.chunk")):
        chunk = read_dead_letter(str(p))
        assert chunk.tag == POISON_TAG  # its exact tag bytes, for a replay
        assert chunk.count == 1
    for sidecar in sidecars:
        assert sidecar["tag"] == "\\xff\\xfe"
        assert sidecar["reason"] == "unprocessable"
        assert sidecar["error"].startswith("UnprocessableError: ")
        assert "254 containers" in sidecar["error"]
    lines = [line for line in proc.lines if line.get("event") == "delivery.dead_letter"]
    assert lines
    assert lines[0]["tag"] == "\\xff\\xfe"
    assert not [line for line in proc.lines if line.get("event") in ("<not json>", "delivery.loop_crashed")]


def test_a_record_a_filter_cannot_read_goes_to_its_dead_letter_folder(tmp_path: Path) -> None:
    cfg = config(tmp_path, filters=[{"type": "grep", "exclude": [{"key": "log", "pattern": "^never$"}]}])
    out = tmp_path / "out"
    proc = Proc(cfg, tmp_path)
    try:
        port = proc.port()
        with ForwardClient(port=port, timeout=10) as c:
            c.packed("app", [{"seq": i, "log": "x"} for i in range(5)], ack=True)
        send_with_poison(port, 5, 10, depth=1000)
        wait_until("every good event", lambda: set(delivered(out)) >= set(range(15)), proc)
        assert proc.terminate() == 0
    finally:
        proc.close()
    assert delivered(out) == Counter(range(15))
    [folder] = list((tmp_path / "data" / "dead-letter").glob("filter-*"))
    assert folder.name == "filter-root-route0-grep_0_"
    [chunk_file] = list(folder.glob("*.chunk"))
    assert read_dead_letter(str(chunk_file)).count == 1
    sidecar = json.loads(chunk_file.with_suffix(".json").read_text())
    assert (sidecar["reason"], sidecar["filter"]) == ("filter_failed", "grep[0]")
    assert sidecar["error"].startswith("RecursionError")
    assert [line["events"] for line in proc.lines if line.get("event") == "filter.failed"] == [1]
