"""Runs fuzz/fuzz_decoder.py (atheris) for a bounded time, seeded with the real client traffic of
tests/data/wire-samples, and fails on any crash it finds (an exception other than ProtocolError, a chunk
that does not decode, a buffer over the frame limit, or a memory blow-up past -rss_limit_mb)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.depth import seconds
from tests.fuzzing import run_fuzzer
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
#: Mutation time after the seed corpus (which always runs whole): 5 s in CI took coverage from 483 to ~600
#: edges (20 s: ~630); the long search is scripts/fuzz's.
SECONDS = seconds(ci=5, deep=300)


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
@pytest.mark.deep
@pytest.mark.timeout(SECONDS + 160)
def test_fuzz_decoder_finds_no_crash(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    assert seed_corpus(corpus) > 100
    run_fuzzer(
        TARGET, corpus, tmp_path,
        seconds=SECONDS, rss_budget_mb=1024, input_timeout=10, max_len=8192, wall_timeout=SECONDS + 150,
    )  # fmt: skip
