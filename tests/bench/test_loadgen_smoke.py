"""Keeps the ingest benchmark harness honest: the load generator's counts must match what a real receiver
(the baseline, as a subprocess) counted, and a wrong, late or missing ack must fail a run, not slow it."""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.loadgen import (
    AckError,
    AckMatcher,
    LoadConfig,
    encode_ring,
    percentile,
    proc_tree_cpu_seconds,
    run_load,
)

REPO = Path(__file__).resolve().parents[2]


class Receiver:
    """``python -m bench.baseline_receiver`` on a free port or a unix socket."""

    def __init__(self, unix: str | None = None) -> None:
        where = ["--unix", unix] if unix else ["--port", "0"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.baseline_receiver", *where],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("READY "):
            self.proc.kill()
            raise AssertionError(f"receiver did not get ready: {line!r}")
        self.address = unix if unix else f"127.0.0.1:{line.split()[1]}"

    def stop(self) -> dict[str, int]:
        """SIGTERM, then the counters it printed."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=15)
        stats = next(ln for ln in out.splitlines() if ln.startswith("STATS "))
        return {k: int(v) for k, v in (kv.split("=") for kv in stats.split()[1:])}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    if r.proc.poll() is None:
        r.proc.kill()
        r.proc.wait()


def test_packed_with_acks_counts_match_the_receiver(receiver: Receiver) -> None:
    cfg = LoadConfig(
        receiver.address, mode="packed", conns=2, ack=True, window=3, chunk_size=100, events=1050, procs=0
    )
    res = run_load(cfg)
    assert res.ok, res.errors
    # 1050 events per connection round up to 11 whole chunks of 100.
    assert (res.units_sent, res.acks, res.events) == (22, 22, 2200)
    assert res.ack_p50_ms is not None
    assert res.ack_max_ms is not None
    assert res.ack_max_ms >= res.ack_p50_ms > 0
    assert res.bytes_sent > 2200 * 200
    assert receiver.stop() == {"events": 2200, "messages": 22, "acks": 22, "connections": 2, "bad": 0}


def test_message_mode_without_acks_over_unix_ends_with_one_sync_ack(tmp_path: Path) -> None:
    r = Receiver(unix=str(tmp_path / "fwd.sock"))
    try:
        res = run_load(LoadConfig(r.address, mode="message", conns=1, ack=False, events=500, procs=0))
        assert res.ok, res.errors
        assert (res.events, res.units_sent, res.acks, res.sync_events) == (500, 500, 0, 1)
        assert res.ack_p50_ms is None
        assert r.stop() == {"events": 501, "messages": 501, "acks": 1, "connections": 1, "bad": 0}
    finally:
        if r.proc.poll() is None:
            r.proc.kill()


def test_message_mode_without_the_option_element(tmp_path: Path) -> None:
    """[tag, time, record], as fluent-logger for Python sends it: no acks possible, the sync still acks."""
    r = Receiver(unix=str(tmp_path / "fwd.sock"))
    try:
        res = run_load(LoadConfig(r.address, mode="message3", conns=1, ack=False, events=300, procs=0))
        assert res.ok, res.errors
        assert (res.events, res.units_sent, res.acks, res.sync_events) == (300, 300, 0, 1)
        assert r.stop() == {"events": 301, "messages": 301, "acks": 1, "connections": 1, "bad": 0}
    finally:
        if r.proc.poll() is None:
            r.proc.kill()
    ring = encode_ring(LoadConfig("x", mode="message3", events=1), 0, units=1)
    assert len(msgpack.unpackb(ring.buf)) == 3


@pytest.mark.parametrize(
    ("mode", "conns", "ack", "window", "engine"),
    [
        ("message", 4, True, 1, "auto"),  # one forked event loop for all four connections
        ("packed", 3, False, 1, "threads"),  # two forked processes of blocking threads
        ("message", 2, True, 5, "threads"),
    ],
)
def test_forked_senders_count_every_event(receiver: Receiver, mode, conns, ack, window, engine) -> None:
    cfg = LoadConfig(
        receiver.address,
        mode=mode,
        conns=conns,
        ack=ack,
        window=window,
        chunk_size=50,
        events=200,
        engine=engine,
    )
    res = run_load(cfg)
    assert res.ok, res.errors
    units = conns * 200 // cfg.events_per_unit
    assert (res.events, res.units_sent) == (conns * 200, units)
    assert res.acks == (units if ack else 0)
    assert res.sender_cpu_s > 0
    stats = receiver.stop()
    sync = 0 if ack else conns
    assert stats["events"] == conns * 200 + sync
    assert stats["acks"] == (units if ack else sync)


def test_time_bound_run_lasts_its_duration(receiver: Receiver) -> None:
    res = run_load(LoadConfig(receiver.address, mode="message", ack=True, window=64, duration=0.3, procs=0))
    assert res.ok, res.errors
    assert 0.3 <= res.duration_s < 5
    assert res.acks == res.units_sent == res.events > 0
    assert receiver.stop()["events"] == res.events


class FakeReceiver:
    """Acks every message with ``reply(chunk_id)`` (or nothing if it returns b""), on a real socket."""

    def __init__(self, reply: Callable[[str], bytes]) -> None:
        self.reply = reply
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(10)
        with contextlib.suppress(OSError):
            conn, _ = self.sock.accept()
            with conn:
                conn.settimeout(10)
                up = msgpack.Unpacker(raw=False)
                while data := conn.recv(65536):
                    up.feed(data)
                    for msg in up:
                        out = self.reply(msg[-1]["chunk"])
                        if out:
                            conn.sendall(out)

    def close(self) -> None:
        self.sock.close()
        self.thread.join(15)


@pytest.mark.parametrize(
    ("reply", "expect"),
    [
        (lambda cid: msgpack.packb({"ack": cid[::-1]}), "mismatch"),
        (lambda cid: msgpack.packb({"ack": cid}) * 2, "unsolicited"),
        (lambda cid: b"", "no ack within the timeout"),
    ],
    ids=["wrong-id", "extra-ack", "no-ack"],
)
@pytest.mark.parametrize("engine", ["threads", "asyncio"])
def test_bad_acks_fail_the_run(reply, expect, engine) -> None:
    fake = FakeReceiver(reply)
    try:
        cfg = LoadConfig(
            fake.address,
            mode="message",
            ack=True,
            window=1,
            events=3,
            ack_timeout=0.3,
            procs=0,
            engine=engine,
        )
        res = run_load(cfg)
    finally:
        fake.close()
    assert not res.ok
    assert any(expect in e for e in res.errors), res.errors


def test_acks_in_another_encoding_are_accepted() -> None:
    """A str8 header for a 24-character id is legal msgpack: matched by value, not by bytes."""

    def str8_ack(cid: str) -> bytes:
        return b"\x81\xa3ack\xd9" + bytes([len(cid)]) + cid.encode()

    fake = FakeReceiver(str8_ack)
    try:
        res = run_load(LoadConfig(fake.address, mode="message", ack=True, window=2, events=7, procs=0))
    finally:
        fake.close()
    assert res.ok, res.errors
    assert res.acks == 7


_IDS = [f"id-{i:020d}" for i in range(5)]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40),
    window=st.integers(1, 8),
    str8=st.lists(st.booleans(), min_size=40, max_size=40),
    cuts=st.lists(st.integers(0, 2000), max_size=12),
)
def test_ack_matcher_matches_in_order_across_any_split(n, window, str8, cuts) -> None:
    acks = [msgpack.packb({"ack": i}) for i in _IDS]
    m = AckMatcher(acks, _IDS, window)
    wire = b""
    sent = 0
    t = 1000
    while m.acked < n:
        burst = min(window - m.inflight, n - sent)
        m.sent(burst, t)
        for k in range(sent, sent + burst):
            cid = _IDS[k % len(_IDS)]
            wire += (
                (b"\x81\xa3ack\xd9" + bytes([len(cid)]) + cid.encode()) if str8[k] else acks[k % len(acks)]
            )
        sent += burst
        points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
        for a, b in itertools.pairwise(points):
            m.feed(wire[a:b], t + 7)
        wire = b""
        t += 1000
    assert m.acked == n
    assert list(m.latencies) == [7] * n


def test_ack_matcher_rejects_an_ack_out_of_order() -> None:
    acks = [msgpack.packb({"ack": i}) for i in _IDS]
    m = AckMatcher(acks, _IDS, 4)
    m.sent(2, 0)
    with pytest.raises(AckError, match="mismatch"):
        m.feed(acks[1] + acks[0], 1)


def test_ring_is_docker_shaped_and_acks_are_precomputed() -> None:
    cfg = LoadConfig("127.0.0.1:1", mode="message", ack=True, window=4)
    ring = encode_ring(cfg, 3, units=10)
    up = msgpack.Unpacker(raw=False, strict_map_key=False)
    up.feed(ring.buf)
    msgs = list(up)
    assert len(msgs) == ring.units == 10
    tag, t, record, _ = msgs[0]
    assert tag.startswith("docker.")
    assert (t.code, len(t.data)) == (0, 8)
    assert set(record) == {"log", "container_id", "container_name", "source"}
    assert record["container_name"] == "/app-3"
    assert len(record["container_id"]) == 64
    assert [m[3]["chunk"] for m in msgs] == ring.ids
    assert len(set(ring.ids)) == 10
    assert [msgpack.unpackb(a) for a in ring.acks] == [{"ack": i} for i in ring.ids]
    assert 200 <= ring.offsets[1] - ring.offsets[0] <= 330
    # Every unit boundary is a message boundary and every send batch stays within send_bytes.
    assert ring.offsets[-1] == len(ring.buf)
    assert all(
        ring.offsets[e] - ring.offsets[i] <= cfg.send_bytes or e == i + 1
        for i, e in enumerate(ring.batch_end)
    )


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50, 99, 100)
    assert percentile([5], 99) == 5


def test_process_tree_cpu_counts_live_descendants() -> None:
    """The receiver's CPU is read as its process tree's, so a worker process of forwardd counts too."""
    spin = (
        "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 0.15: pass\n"
        "print('spun', flush=True)\nsys.stdin.read()"
    )
    before = proc_tree_cpu_seconds(os.getpid())
    child = subprocess.Popen(
        [sys.executable, "-c", spin], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "spun\n"
        assert proc_tree_cpu_seconds(child.pid) >= 0.1
        assert proc_tree_cpu_seconds(os.getpid()) - before >= 0.1
    finally:
        child.communicate(timeout=15)
    assert proc_tree_cpu_seconds(child.pid) == 0.0
