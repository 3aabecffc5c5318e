"""A real Kafka-protocol broker (Tansu, scripts/kafka) for the Kafka output tests, and a reader for it.

Tansu keeps everything in memory, so "the broker comes back" means starting it again on the same port. Its
end offsets are wrong after multi-record batches: the reader assigns every partition from the earliest
offset and counts records until it has as many as it expects, never asking for watermarks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from tests.conftest import KAFKA_SCRIPTS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """One Tansu process on a fixed loopback port; start/stop may be repeated (each start is empty)."""

    def __init__(self, state_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.state_dir = state_dir
        self.bootstrap = f"127.0.0.1:{self.port}"

    def start(self) -> None:
        out = subprocess.run(
            [str(KAFKA_SCRIPTS / "start-broker.sh"), str(self.port), str(self.state_dir)],
            check=True, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.stdout.strip() == self.bootstrap, out.stderr

    def kill(self) -> None:
        """SIGKILL, as a crash: a busy Tansu takes seconds to honour the SIGTERM of stop-broker.sh."""
        pid_file = self.state_dir / "broker.pid"
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        pid_file.unlink()

    def freeze(self) -> None:
        """SIGSTOP: a hung broker. Connections stay open, the kernel still takes bytes into its sockets,
        nothing is answered; :meth:`thaw` resumes it with everything it held."""
        os.kill(int((self.state_dir / "broker.pid").read_text()), signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(int((self.state_dir / "broker.pid").read_text()), signal.SIGCONT)

    def stop(self) -> None:
        pid_file = self.state_dir / "broker.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGCONT)  # a frozen broker cannot take SIGTERM
        pid = int(pid_file.read_text()) if pid_file.exists() else None
        # stop-broker.sh checks the pid's command line with `ps -o args=`, which ps cuts at 80 columns
        # when it sees no terminal (as under pytest), cutting off the port: ask for a wide one.
        subprocess.run(
            [str(KAFKA_SCRIPTS / "stop-broker.sh"), str(self.port), str(self.state_dir)],
            check=True, capture_output=True, timeout=30, env=dict(os.environ, COLUMNS="4096"),
        )  # fmt: skip
        if pid is not None:
            stat = Path(f"/proc/{pid}/stat")
            assert not stat.exists() or stat.read_text().split(")")[-1].split()[0] == "Z", (
                f"stop-broker.sh left broker pid {pid} running"
            )


@dataclass
class Received:
    topic: str
    partition: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def consume(
    bootstrap: str,
    topic: str,
    count: int,
    timeout: float = 20.0,
    until: Callable[[list[Received]], bool] | None = None,
) -> list[Received]:
    """The first ``count`` records of ``topic`` (all partitions, from the start); fails if fewer arrive.

    With ``until``, reads on until it holds of what arrived (at-least-once delivery may have written some
    records twice, so a count alone can stop short of the last ones); fails if it never does."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    try:
        deadline = time.monotonic() + timeout
        # The producer may not have created the topic yet (a consumer's metadata request does not).
        while not (parts := sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)):
            assert time.monotonic() < deadline, f"topic {topic} never appeared"
            time.sleep(0.1)  # polling the broker's metadata: there is nothing to wait on
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        got: list[Received] = []
        done = (lambda g: len(g) >= count) if until is None else until
        while not done(got) and time.monotonic() < deadline:
            for m in c.consume(num_messages=10_000, timeout=0.5):
                assert m.error() is None, m.error()
                got.append(Received(m.topic(), m.partition(), m.key(), m.value(), m.headers() or []))
        assert len(got) >= count, f"{len(got)} of {count} records arrived on {topic}"
        assert until is None or until(got), f"{len(got)} records on {topic}, and not all that was expected"
        return got
    finally:
        c.close()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """The broker shared by every test that does not stop it; tests isolate themselves by topic."""
    assert (KAFKA_SCRIPTS / "start-broker.sh").is_file(), f"no broker scripts under {KAFKA_SCRIPTS}"
    broker = Broker(tmp_path_factory.mktemp("kafka-broker"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker this test may kill and restart (not started yet); stopped at the end whatever happened."""
    broker = Broker(tmp_path / "broker")
    yield broker
    broker.stop()


@pytest.fixture
def topic(request: pytest.FixtureRequest) -> str:
    """A topic no other test (or earlier run against the same broker) writes to."""
    base = "".join(ch if ch.isalnum() else "-" for ch in request.node.name)[:80]
    return f"t-{base}-{uuid.uuid4().hex[:8]}"
