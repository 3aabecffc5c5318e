"""Runs fuzz/fuzz_pipeline.py (atheris) for a bounded time over the whole event path, seeded with the real
client traffic of ../shared/wire-samples and with the hostile requests of issue 14, and fails on any crash
it finds: an undocumented exception at any stage, a delivery loop that dies or retries without end, a log
line that does not render, or a memory blow-up past -rss_limit_mb."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import zstandard

from tests.depth import seconds
from tests.fuzzing import run_fuzzer
from tests.pipeline import mp
from tests.protocol.wire import (
    CLIENT_NAMES,
    FLUENT_BIT_STEMS,
    FLUENTD_VARIANTS,
    client_capture,
    fluent_bit_capture,
    fluentd_capture,
)

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "fuzz" / "fuzz_pipeline.py"
NOW = 1_700_000_000
#: Mutation time after the seed corpus, which always runs whole and is most of this test: on a loaded
#: 2-core machine the corpus alone took longer than the 25 s this was before, so those runs mutated
#: nothing either way; the long search is scripts/fuzz's.
SECONDS = seconds(ci=5, deep=300)


def hostile_seeds() -> list[bytes]:
    """The requests issue 14 reports, and a few relatives, so that the fuzzer starts where faults were."""
    deep = mp.Map((("a", mp.Deep(600)),))
    bad_keys = b"\x92\x00\x81\x80\x00" * 50  # [0, {{}: 0}]
    good = b"".join(mp.entry(NOW, {"log": f'{{"level": "info", "n": {i}}}', "msg": "a=1"}) for i in range(3))
    return [
        mp.message(b"\xff\xfe", NOW, deep, chunk="c1"),
        mp.message("app.web", NOW, mp.Map((("a", mp.Deep(700, "map")),)), chunk="c2"),
        mp.packed_forward(b"\xff\xfe", good + mp.entry(NOW, deep) + good, chunk="c3"),
        mp.packed_forward("t", zstandard.compress(bad_keys), chunk="c4", compressed="zstd"),
        mp.packed_forward("t", gzip.compress(bad_keys + good, mtime=0), chunk="c5", compressed="gzip"),
        mp.packed_forward(b"\xc3", good, chunk="c6", compressed="bogus"),
        mp.message(b"docker.\xff", NOW, "not a map", chunk="c7"),
        mp.message(b"\xff", "not a time", {"log": "x"}, chunk="c8"),
        mp.message("app", NOW, {"log": '{"a":' * 600 + "1" + "}" * 600, "level": b"\xff"}, chunk="c9"),
        mp.forward("${tag}/../%Y", [mp.entry(mp.Ext(0, b"\xff" * 8), {"t": mp.Ext(-1, b"\x00" * 12)})]),
    ]


def seed_corpus(directory: Path) -> int:
    """One file per capture or hostile request and per mode of the target (flags byte, split-seed byte)."""
    streams = [client_capture(n).client_bytes for n in CLIENT_NAMES]
    streams += [c.client_bytes for v in FLUENTD_VARIANTS for c in fluentd_capture(v) if c.c2s]
    streams += [fluent_bit_capture(s).client_bytes for s in FLUENT_BIT_STEMS]
    streams = [s for s in streams if len(s) <= 20_000]  # the docker partial captures: big, nothing new
    streams += hostile_seeds()
    n = 0
    for i, data in enumerate(streams):
        for flags, seed in ((0, 0), (1, 0), (0, 7), (3, 2)):
            (directory / f"seed-{i}-{flags}-{seed}").write_bytes(bytes([flags, seed]) + data)
            n += 1
    return n


@pytest.mark.slow
@pytest.mark.deep
@pytest.mark.timeout(SECONDS + 215)
def test_fuzz_pipeline_finds_no_crash(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    assert seed_corpus(corpus) > 100
    run_fuzzer(
        TARGET, corpus, tmp_path,
        seconds=SECONDS, rss_budget_mb=2048, input_timeout=30, max_len=16384, wall_timeout=SECONDS + 195,
    )  # fmt: skip
