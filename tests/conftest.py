"""Shared test helpers: the repository root, the test data and the scripts the tests run.

Everything the tests need lives in this repository: the captured client traffic under ``tests/data``, the
scripts that start the Kafka-protocol broker and the Docker engine under ``scripts/``.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from tests.e2e import helpers

ROOT = Path(__file__).resolve().parent.parent
#: Real clients' bytes on the wire (see tests/data/wire-samples/README.md for where each came from).
WIRE_SAMPLES = ROOT / "tests" / "data" / "wire-samples"
#: start-broker.sh / stop-broker.sh: a real Kafka-protocol broker (Tansu) on loopback.
KAFKA_SCRIPTS = ROOT / "scripts" / "kafka"
#: realdocker.sh: the real Docker engine (Debian's docker.io) for `--log-driver=fluentd` tests.
DOCKER_SCRIPT = ROOT / "scripts" / "docker" / "realdocker.sh"


def rss_limit_mb(budget_mb: int) -> str:
    """libFuzzer's -rss_limit_mb for a fuzzer started from this process: ``budget_mb`` of its own.

    libFuzzer reads the peak RSS (getrusage's ru_maxrss), and Linux hands a child the peak of the process
    that forked it: after a full test session (~1.1 GB) a fuzzer started with a flat 1024 MB limit was
    "out of memory" before running one input."""
    import resource

    inherited = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # KiB -> MiB
    return f"-rss_limit_mb={inherited + budget_mb}"


@pytest.fixture(autouse=True)
def _no_daemon_outlives_its_test() -> Iterator[None]:
    """After each test, passed, failed or interrupted (pytest tears fixtures down after a Ctrl-C too),
    every forwardd it started (tests/e2e/helpers.Proc) is ended with its whole process group: a daemon
    left running by a failed assertion, or its forked workers, outlived the run by hours and held its
    ports. A failure to end one fails the test's teardown."""
    started_before = set(helpers.LIVE)
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) is signal.SIG_DFL:  # reset by an in-process daemon's loop
                signal.signal(signum, _end_daemons_then_die)
    yield
    errors: list[str] = []
    for proc in [p for p in helpers.LIVE if p not in started_before]:
        try:
            proc.close()
        except AssertionError as exc:
            errors.append(str(exc))
    assert not errors, "\n".join(errors)


def _end_daemons_then_die(signum: int, frame: FrameType | None) -> None:
    """pytest told to stop (``timeout``, a closed terminal): the daemons run in sessions of their own, so
    the signal sent to pytest's group no longer reaches them; they are killed first, then pytest dies of
    the signal as it would have."""
    helpers.close_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
