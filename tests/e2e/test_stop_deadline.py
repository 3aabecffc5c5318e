"""A stop that fits the orchestrator (issue 17, item 4): SIGTERM while an output is down or the disk is
full ends the process within ``shutdown_timeout`` (Docker and Swarm kill at 10 s), with exit code 0; what
was not delivered stays queued on disk, each output says how much (``output.stopped``), and the next start
delivers every acked event.

One test per situation, each against the real thing: a Kafka broker that was stopped, an HTTP endpoint
that answers 503 or never answers, a forward output with no receiver or with one that never acks, a full
filesystem under the buffer or under the output's files. Each measures the time from SIGTERM to the exit.
Before this, each step of the stop had a fixed wait of its own: 23 s with Kafka down, 12 s with a full disk.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forwardd.testing import ForwardClient, run_test_server
from forwardd.testing.client import AckError
from tests.e2e.helpers import Proc, incompressible, left_queued
from tests.e2e.test_dead_output import fill, tmpfs
from tests.outputs.http.conftest import Reply, ThreadedRecorder

#: shutdown_timeout of the tests that do not check the default.
STOP = 3.0
#: What the exit may take past the deadline: the interpreter's own exit, on a busy 2-core machine.
MARGIN = 1.0
SOURCE = {"name": "in", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(storage: Path, output: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "shutdown_timeout": f"{STOP}s",
        **top,
        "storage": {"path": str(storage)},
        "sources": [SOURCE],
        "routes": [{"match": "**", "outputs": ["out"]}],
        "outputs": {"out": output},
    }


def send(port: int, first: int, chunks: int, per: int = 100) -> set[int]:
    """Acked chunks of events numbered from ``first``; the numbers acked."""
    with ForwardClient(port=port) as c:
        for k in range(chunks):
            base = first + k * per
            c.packed("app", [{"n": base + i} for i in range(per)], ack=True)
    return set(range(first, first + chunks * per))


def stop(proc: Proc, deadline: float = STOP) -> float:
    """SIGTERM, then the seconds until the process has exited; it must exit 0 within the deadline."""
    t0 = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    code = proc.proc.wait(deadline + 30)
    took = time.monotonic() - t0
    proc.wait(10)
    assert code == 0, "\n".join(proc.raw[-20:])
    assert took < deadline + MARGIN, f"stop took {took:.2f}s with shutdown_timeout {deadline}s"
    return took


# --- HTTP ------------------------------------------------------------------------------------------------


@pytest.fixture
def recorder() -> Iterator[ThreadedRecorder]:
    server = ThreadedRecorder()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("answer", ["503", "never"])
def test_stop_within_the_deadline_while_the_http_endpoint_refuses(
    tmp_path: Path, recorder: ThreadedRecorder, answer: str
) -> None:
    """503 (the output backs off: nothing to wait for) or no answer at all (a request in flight, with
    a 30 s timeout, is cut off at the deadline)."""
    server = recorder.recorder
    server.default = Reply(503) if answer == "503" else Reply(action="hang")
    recorder.start()
    output = {"type": "http", "endpoint": f"{server.url}/in", "batch": {"max_wait": "10ms"}}
    proc = Proc(config(tmp_path / "data", output), tmp_path)
    acked = send(proc.port(), 0, 20)
    server.wait_until(lambda s: len(s.requests) >= 1)
    took = stop(proc)
    assert left_queued(proc) > 0
    with server.cond:
        server.default = Reply()
    again = Proc(config(tmp_path / "data", output), tmp_path)
    again.port()
    server.wait_until(lambda s: {e["n"] for e in s.events()} >= acked)
    assert again.terminate() == 0
    print(f"http {answer}: stopped in {took:.2f}s")


# --- forward -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("receiver", ["none", "never_acks"])
def test_stop_within_the_deadline_while_the_forward_receiver_is_down(tmp_path: Path, receiver: str) -> None:
    """No receiver (connections refused: the output backs off) or one that takes the data and never
    acks (a write waiting for ``ack_response_timeout``, 30 s, is cut off at the deadline)."""
    port = free_port()
    output = {"type": "forward", "servers": [{"host": "127.0.0.1", "port": port}], "heartbeat_type": "none"}
    with contextlib.ExitStack() as stack:
        if receiver == "never_acks":
            down = stack.enter_context(run_test_server(port=port, withhold_acks=True))
        proc = Proc(config(tmp_path / "data", output), tmp_path)
        acked = send(proc.port(), 0, 20)
        if receiver == "never_acks":
            down.wait_for(1, timeout=20)  # received: the write is waiting for its ack
        else:
            proc.wait_event("forward.server_down")
        took = stop(proc)
        assert left_queued(proc) > 0
    with run_test_server(port=port) as up:
        again = Proc(config(tmp_path / "data", output), tmp_path)
        again.port()
        up.wait_for(len(acked), timeout=30)
        assert again.terminate() == 0
        assert {r["n"] for r in up.records()} >= acked
    print(f"forward {receiver}: stopped in {took:.2f}s")


# --- Kafka -------------------------------------------------------------------------------------------------


@pytest.mark.kafka
def test_stop_with_the_default_deadline_while_the_kafka_broker_is_stopped(tmp_path: Path) -> None:
    """The case that took 23 s (the drain, the write in progress and the producer's flush each waited
    5 s): the broker is stopped while events are being written, with librdkafka's defaults as forwardd
    sets them (messages time out after 30 s). With the default shutdown_timeout the stop fits inside
    Docker's 10 s, and every acked event reaches the broker once it is back."""
    from tests.outputs.kafka.conftest import Broker, consume

    broker = Broker(tmp_path / "broker")
    broker.start()
    try:
        output = {"type": "kafka", "brokers": [broker.bootstrap], "topic": "stop"}
        conf = config(tmp_path / "data", output)
        del conf["shutdown_timeout"]  # the default
        proc = Proc(conf, tmp_path)
        port = proc.port()
        send(port, 0, 2)
        consume(broker.bootstrap, "stop", 200)  # the output works
        broker.kill()
        acked = send(port, 1000, 20)
        proc.wait_event("kafka.client_error")  # it has noticed: its write is waiting on a dead broker
        took = stop(proc, deadline=8.0)
        assert left_queued(proc) > 0
        broker.start()  # empty: a Tansu restart forgets everything
        again = Proc(conf, tmp_path)
        again.port()
        want = acked

        def seen(got: list[Any]) -> set[int]:
            return {json.loads(r.value)["n"] for r in got}

        got = consume(broker.bootstrap, "stop", len(want), timeout=60, until=lambda g: want <= seen(g))
        assert want <= seen(got)
        assert again.terminate() == 0
    finally:
        broker.stop()
    print(f"kafka down: stopped in {took:.2f}s")


# --- full disk ---------------------------------------------------------------------------------------------


def test_stop_within_the_deadline_when_the_buffer_disk_is_full(
    tmp_path: Path, recorder: ThreadedRecorder
) -> None:
    """The filesystem of the buffer is full: a client's chunk cannot be committed (no ack, and none is
    owed), the output is down too (what is queued cannot leave). The stop neither waits for the commit nor
    for the output; the queue on the full disk is intact for the next start."""
    server = recorder.recorder
    server.default = Reply(503)
    recorder.start()
    output = {
        "type": "http", "endpoint": f"{server.url}/in", "batch": {"max_wait": "10ms"},
        "buffer": {"segment_size": "1MiB"},
    }  # fmt: skip
    with tmpfs(tmp_path / "disk", "16m") as disk:
        proc = Proc(config(disk / "data", output), tmp_path)
        port = proc.port()
        acked = send(port, 0, 20)
        filler = fill(disk)
        with ForwardClient(port=port, timeout=STOP + 5) as c:
            # More than any space the segment had ahead, even compressed.
            rng = random.Random(3)
            big = [{"n": -1, "pad": incompressible(1000, rng)} for _ in range(2000)]
            pending = c.packed("app", big, ack=True, wait=False)
            assert pending is not None
            proc.wait_event("buffer.write_failed")
            took = stop(proc)
            with pytest.raises((AckError, OSError)):
                c.expect_ack(pending)
        assert left_queued(proc) > 0
        filler.unlink()
        with server.cond:
            server.default = Reply()
        again = Proc(config(disk / "data", output), tmp_path)
        again.port()
        server.wait_until(lambda s: {e["n"] for e in s.events()} >= acked)
        assert again.terminate() == 0
    print(f"buffer disk full: stopped in {took:.2f}s")


def test_stop_within_the_deadline_when_the_output_disk_is_full(tmp_path: Path) -> None:
    """The file output's filesystem is full and its queue reached max_size: a client is held waiting for
    room (its ack is not owed until the chunk is committed). The stop does not wait for room that will
    not come; everything acked is written by the next start once there is space."""
    with tmpfs(tmp_path / "out", "8m") as out:
        output = {
            "type": "file", "path": str(out / "${tag}.log"),
            "buffer": {"max_size": "1MiB", "segment_size": "256KiB",
                       "retry": {"initial": "50ms", "max": "200ms"}},
        }  # fmt: skip
        filler = fill(out)
        proc = Proc(config(tmp_path / "data", output), tmp_path)
        port = proc.port()
        acked: set[int] = set()
        with ForwardClient(port=port, timeout=3) as c:
            seq = 0
            rng = random.Random(5)
            pads = [incompressible(200, rng) for _ in range(200)]  # as big on disk as sent
            while True:  # acked chunks until the queue is full and one is held waiting for room
                blocked = c.packed(
                    "app", [{"n": seq + i, "pad": pads[i]} for i in range(200)], ack=True, wait=False
                )
                assert blocked is not None
                try:
                    c.expect_ack(blocked)
                except AckError:
                    break
                acked.update(range(seq, seq + 200))
                seq += 200
                assert seq < 100_000, "acks never stopped: the queue limit is not enforced"
            proc.wait_event("buffer.full")
            took = stop(proc)
        assert left_queued(proc) > 0
        filler.unlink()
        again = Proc(config(tmp_path / "data", output), tmp_path)
        again.port()
        assert again.terminate() == 0  # the drain at the stop writes the rest of the queue
        seen = {json.loads(line)["n"] for line in (out / "app.log").read_text().splitlines()}
        assert seen >= acked
    print(f"output disk full: stopped in {took:.2f}s")
