"""Event times past year 9999 (or before 1970, or of no event-time shape) against the real daemon and its
real file output: the entries are left out at the edge, counted in the listener's ``invalid_times`` (in
/status and in ``source.stats``) and logged with listener, peer and tag, while the rest of each chunk is
delivered and acked as before. Nothing reaches the output's dead-letter folder.

Before, an integer time such as 2**62 s was acked, committed to the disk queue, and then parked by the file
output (gmtime() raises OSError for it) with a log line far from the peer that sent it.
"""

from __future__ import annotations

import json
import math
import socket
import struct
import time
import urllib.request
from pathlib import Path
from typing import Any

from forwardd.constants import MAX_SECONDS
from forwardd.testing.client import ForwardClient
from tests.hostile.harness import Daemon, base_config, dead_letters, read_records, wait_delivered
from tests.pipeline import mp

NOW = 1_700_000_000
LAST_FLOAT = math.nextafter(float(MAX_SECONDS + 1), 0.0)

#: (time, record) that must be delivered, and the time text the file output writes for each.
VALID: list[tuple[Any, dict[str, Any], str]] = [
    (1, {"v": 0}, "1970-01-01T00:00:01.000000000Z"),
    (MAX_SECONDS, {"v": 1}, "9999-12-31T23:59:59.000000000Z"),
    (LAST_FLOAT, {"v": 2}, "9999-12-31T23:59:59.999969482Z"),
    (mp.Ext(0, struct.pack(">II", 2**32 - 1, 999_999_999)), {"v": 3}, "2106-02-07T06:28:15.999999999Z"),
]
#: Times the edge refuses, one entry each.
REFUSED: list[Any] = [
    2**62,
    MAX_SECONDS + 1,
    2**64 - 1,
    float(MAX_SECONDS + 1),
    math.inf,
    -1,
    mp.Ext(-1, struct.pack(">I", NOW)),  # a msgpack Timestamp, 2023: not an event time
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def wait_status(port: int, check: Any, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        st = status(port)
        if check(st):
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"/status never showed it: {st['sources']}")
        time.sleep(0.05)  # a polling interval, not a synchronisation


def test_times_outside_the_range_are_counted_at_the_edge_and_the_rest_delivered(tmp_path: Path) -> None:
    ops = free_port()
    config = {**base_config(tmp_path), "http_server": {"port": ops}}
    out = tmp_path / "out"
    payload = b""
    for i, (t, record, _) in enumerate(VALID):
        payload += mp.entry(t, record)
        payload += mp.entry(REFUSED[i], {"bad": i})
    payload += b"".join(mp.entry(t, {"bad": 10 + i}) for i, t in enumerate(REFUSED[len(VALID) :]))
    with Daemon(tmp_path, config) as d:
        with ForwardClient(port=d.port, timeout=20) as c:
            c.send(mp.packed_forward("times.packed", payload, chunk="p1"))
            c.expect_ack("p1")
            c.send(mp.message("times.message", 2**62, {"bad": 20}, chunk="m1"))
            c.expect_ack("m1")  # acked with nothing in it: no retry can make it valid
            c.send(mp.message("times.message", NOW, {"v": 4}, chunk="m2"))
            c.expect_ack("m2")
        wait_delivered(out, {0, 1, 2, 3, 4}, key="v")
        written = {r["v"]: r for r in read_records(out) if "v" in r}
        assert {v: r["time"] for v, r in written.items() if v < 4} == {r["v"]: text for _, r, text in VALID}
        assert (out / "times.packed" / "99991231.log").exists()  # the path's strftime codes, year 9999
        assert not [r for r in read_records(out) if "bad" in r]

        refused = len(REFUSED) + 1
        st = wait_status(ops, lambda s: s["sources"]["in"]["invalid_times"] == refused)
        assert st["sources"]["in"]["invalid_entries"] == refused
        assert st["sources"]["in"]["events"] == len(VALID) + 1

        lines = d.wait_lines("chunk.invalid_entries", n=2)
        assert {line["tag"] for line in lines} == {"times.packed", "times.message"}
        for line in lines:
            assert (line["listener"], line["peer"].split(":")[0], line["reason"]) == (
                "in",
                "127.0.0.1",
                "bad_time",
            )
            assert line["sample"]
        [packed] = [line for line in lines if line["tag"] == "times.packed"]
        assert (packed["invalid"], packed["bad_times"], packed["events"]) == (len(REFUSED), len(REFUSED), 4)

        stats = d.stop()
    assert stats["source:in"]["invalid_times"] == refused
    assert stats["output:files"]["dead_lettered"] == 0
    assert stats["output:files"]["queued_chunks"] == 0
    assert not d.lines("delivery.dead_letter")
    assert dead_letters(tmp_path / "data") == []
    assert not d.not_json(), d.not_json()[:5]
