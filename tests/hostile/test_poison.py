"""Poison records: acked (committed to the disk buffer), then impossible to encode. Each must cost only its
own events: parked in the dead-letter folder with a log line and a counter, while everything acked before and
after it, on its own connection and on others, is delivered, before and after a restart.

The issue's example is a Message whose tag is not UTF-8 and whose record nests 600 arrays deep (JSON
encoding raised RecursionError, the delivery loop's log line raised on the tag, the loop died silently; with
a UTF-8 tag the chunk was retried for 72 hours at the head of the queue). Its relatives here: other depths
and container kinds, a PackedForward whose poison entry sits between good ones, non-string keys (bin, None,
float) with NaN and infinities, a msgpack timestamp past year 9999, 64-bit edge integers and ext values.

A plain record whose event time (2**62 s) time.gmtime() refuses with OSError was one of them: acked,
queued, then parked by the output. It is no poison any more: the edge leaves it out as a bad time, counted
in the listener's ``invalid_times`` (tests/hostile/test_event_time_range.py), and it is never queued.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from forwardd.testing.client import ForwardClient
from tests.hostile.harness import (
    Daemon,
    base_config,
    check_delivered,
    dead_letters,
    numbers,
    read_records,
    steady,
    wait_delivered,
)
from tests.pipeline import mp

NOW = 1_700_000_000
FAR_TIMESTAMP = mp.Ext(-1, bytes(4) + (2**62).to_bytes(8, "big"))  # msgpack timestamp, year >> 9999
#: The poisons no encoder can represent, parked in the dead-letter folder; the one that looked like one;
#: and the one whose time the edge refuses (neither parked nor written).
PARKED, FAR, REFUSED = {1, 2, 3, 5, 6}, 4, 7


def _good(m: int) -> bytes:
    return mp.entry(NOW, {"m": m, "log": "fine"})


def poison_requests() -> list[tuple[str, bytes, list[int]]]:
    """(chunk id, request, good ``m`` numbers it carries) of each poison; each record has ``poison: id``."""
    p = []
    p.append(
        ("p1", mp.message(b"\xff\xfe", NOW, mp.Map((("poison", 1), ("a", mp.Deep(600)))), chunk="p1"), [])
    )
    p.append(
        (
            "p2",
            mp.message("poison.utf8", NOW, mp.Map((("poison", 2), ("a", mp.Deep(900, "map")))), chunk="p2"),
            [],
        )
    )
    payload = (
        _good(0)
        + _good(1)
        + mp.entry(NOW, mp.Map((("poison", 3), ("a", mp.Deep(700)))))
        + _good(2)
        + _good(3)
    )
    p.append(("p3", mp.packed_forward(b"\xc3\x28", payload, chunk="p3"), [0, 1, 2, 3]))
    # Not a poison any more: a Timestamp gmtime() cannot write keeps its bytes in JSON. It must be written
    # once, as the others must be parked once (FAR below).
    p.append(("p4", mp.message(b"\xed\xa0\x80", NOW, {"poison": 4, "t": FAR_TIMESTAMP}, chunk="p4"), []))
    keys = mp.Map((
        ("poison", 5), (b"\xff", float("nan")), (None, float("inf")), (1.5, -float("inf")),
        (True, mp.Deep(650, "map")),
    ))  # fmt: skip
    p.append(
        (
            "p5",
            mp.packed_forward("poison.keys", _good(4) + mp.entry(NOW, keys) + _good(5), chunk="p5"),
            [4, 5],
        )
    )
    edges = {"poison": 6, "big": 2**64 - 1, "small": -(2**63), "ext": mp.Ext(42, b"x"), "a": mp.Deep(1000)}
    p.append(("p6", mp.forward(b"poison.\xff", [mp.entry(NOW, edges), _good(6)], chunk="p6"), [6]))
    # A plain record, a UTF-8 tag, and a time gmtime() cannot take (OSError EOVERFLOW, for path and JSON):
    # past year 9999, so the edge refuses it (acked, counted, never queued).
    p.append(("p7", mp.message("poison.time", 2**62, {"poison": 7}, chunk="p7"), []))
    return p


def _poison_ids(chunks: list[Any]) -> set[int]:
    ids: set[int] = set()
    for chunk in chunks:
        for ev in chunk.events():
            if isinstance(ev.record.get("poison"), int):
                ids.add(ev.record["poison"])
    return ids


def test_acked_poison_costs_only_itself_also_after_a_restart(tmp_path: Path) -> None:
    requests = poison_requests()
    config = base_config(tmp_path)
    out, dead = tmp_path / "out", tmp_path / "data" / "dead-letter"
    with Daemon(tmp_path, config) as d:
        before = d.rss()
        with steady(d.port) as s:
            with ForwardClient(port=d.port, timeout=30) as attacker:
                for chunk_id, request, _ in requests:
                    attacker.send(request)
                    attacker.expect_ack(chunk_id)  # acked: committed, so it must never block what follows
            s.wait_acks(100)  # events acked after the poison, while it is being delivered
        s.check_latency()
        check_delivered(out / "steady", s)
        goods = sorted(m for _, _, ms in requests for m in ms)
        found = wait_delivered(out, set(goods), key="m")
        assert sorted(found) == goods, "the good events sharing a chunk with a poison, each exactly once"
        lines = d.wait_lines("delivery.dead_letter", n=1)
        assert all(line.get("output") == "files" and "tag" in line for line in lines)
        assert _poison_ids(dead_letters(dead)) == PARKED
        written = [r for r in read_records(out) if "poison" in r]
        assert [r["poison"] for r in written] == [FAR], "a poison written, or the far time not once"
        assert written[0]["t"]["ext"] == -1, "the far Timestamp keeps its bytes"
        d.wait_rss_back(before)
        stats = d.stop()
        assert stats["output:files"]["queued_chunks"] == 0
        assert stats["output:files"]["dead_lettered"] >= 1
        assert stats["source:in"]["invalid_times"] == 1, "the time past year 9999 is left out at the edge"
        assert REFUSED not in _poison_ids(dead_letters(dead))
        assert not d.not_json(), d.not_json()[:5]

    # A restart: nothing is left queued, and the output keeps delivering.
    with Daemon(tmp_path, config) as d2:
        with steady(d2.port, first=s.next + 1_000_000) as s2:
            s2.wait_acks(50)
        s2.check_latency()
        found = wait_delivered(out / "steady", set(s2.acked))
        assert len([n for n in found if n >= s2.first]) == len(set(s2.acked)), "delivered twice after restart"
        assert set(numbers(read_records(out / "steady"))) >= set(s.acked) | set(s2.acked)
        stats = d2.stop()
        assert stats["output:files"]["queued_chunks"] == 0
        assert _poison_ids(dead_letters(dead)) == PARKED, "dead letters kept, none added"
