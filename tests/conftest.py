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
