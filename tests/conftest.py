"""Shared test helpers: the repository root, the test data and the scripts the tests run.

Everything the tests need lives in this repository: the captured client traffic under ``tests/data``, the
scripts that start the Kafka-protocol broker and the Docker engine under ``scripts/``.
"""

from __future__ import annotations

from pathlib import Path

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
