"""Runs fuzz/fuzz_decoder.py (atheris) for a bounded time, seeded with the real client traffic of
tests/data/wire-samples, and fails on any crash it finds (an exception other than ProtocolError, a chunk
that does not decode, a buffer over the frame limit, or a memory blow-up past -rss_limit_mb)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import rss_limit_mb
from tests.protocol.wire import (
    CLIENT_NAMES,
    FLUENT_BIT_STEMS,
    FLUENTD_VARIANTS,
    client_capture,
    fluent_bit_capture,
    fluentd_capture,
)

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "fuzz" / "fuzz_decoder.py"


def seed_corpus(directory: Path) -> int:
    """One file per capture and per mode of the target (flags byte, split-seed byte, client bytes)."""
    streams = [client_capture(n).client_bytes for n in CLIENT_NAMES]
    streams += [c.client_bytes for v in FLUENTD_VARIANTS for c in fluentd_capture(v) if c.c2s]
    streams += [fluent_bit_capture(s).client_bytes for s in FLUENT_BIT_STEMS]
    n = 0
    for i, data in enumerate(streams):
        if len(data) > 20_000:
            continue  # the docker partial captures: big, and nothing the others do not cover
        for flags, seed in ((0, 0), (0, 7), (2, 3), (5, 1), (1, 0), (8, 5), (10, 0)):
            (directory / f"seed-{i}-{flags}-{seed}").write_bytes(bytes([flags, seed]) + data)
            n += 1
    return n


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_fuzz_decoder_finds_no_crash(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    assert seed_corpus(corpus) > 100
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [
            sys.executable,
            str(TARGET),
            str(corpus),
            "-max_total_time=20",
            rss_limit_mb(1024),
            "-timeout=10",
            "-max_len=8192",
            f"-artifact_prefix={tmp_path}/",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "oom-", "timeout-")))
    assert not crashes, f"{crashes}\n{proc.stderr[-6000:]}"
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert "DONE" in proc.stderr  # it did run, and to the end
