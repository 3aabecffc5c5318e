"""Running an atheris target of fuzz/ from a test, the one way: bounded in time and memory, seeded with a
corpus, and failing on anything libFuzzer reports, with the fuzzer's own output to say what it found.

tests/protocol/test_fuzz.py and tests/pipeline/test_fuzz_pipeline.py each seed their corpus and call
:func:`run_fuzzer`; what counts as a failure (a crash, an out-of-memory, a timeout, an unclean exit, a run
cut short) is written once, here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, rss_limit_mb

#: The files libFuzzer writes (under -artifact_prefix) for each kind of failure it finds.
ARTIFACTS = ("crash-", "oom-", "timeout-")
#: How much of the fuzzer's output a failure shows: its report and the stack that led to it.
TAIL = 6000


def run_fuzzer(
    target: Path,
    corpus: Path,
    workdir: Path,
    *,
    seconds: int,
    rss_budget_mb: int,
    input_timeout: int,
    max_len: int,
    wall_timeout: float,
    runs: int | None = None,
) -> str:
    """Fuzz ``target`` from ``corpus`` for ``seconds`` (or ``runs`` inputs, whichever ends first), with
    ``rss_budget_mb`` of memory of its own (see :func:`rss_limit_mb`), ``input_timeout`` seconds per
    input and inputs of at most ``max_len`` bytes; artifacts go to ``workdir``, which is also its working
    directory. Fails if it found a crash, an out-of-memory or a timeout, exited unclean, or did not run to
    the end; returns libFuzzer's log (atheris' per-module "INFO: Instrumenting" lines left out)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [
        sys.executable,
        str(target),
        str(corpus),
        f"-max_total_time={seconds}",
        rss_limit_mb(rss_budget_mb),
        f"-timeout={input_timeout}",
        f"-max_len={max_len}",
        f"-artifact_prefix={workdir}/",
    ]
    if runs is not None:
        cmd.append(f"-runs={runs}")
    try:
        proc = subprocess.run(
            cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=wall_timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode("utf-8", "replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        raise AssertionError(
            f"{target.name} still ran {wall_timeout}s after its start; its output's end:\n{err[-TAIL:]}"
        ) from exc
    found = sorted(p.name for p in workdir.iterdir() if p.name.startswith(ARTIFACTS))
    log = "\n".join(line for line in proc.stderr.splitlines() if "INFO: Instrumenting" not in line)
    tail = log[-TAIL:]
    if proc.stdout.strip():  # atheris prints an uncaught Python exception there, libFuzzer only its input
        tail += f"\n--- its stdout:\n{proc.stdout[-TAIL:]}"
    replay = f"replay: python {target} {workdir / found[0]}" if found else ""
    assert not found, f"{target.name} found {found} ({replay}); its output's end:\n{tail}"
    assert proc.returncode == 0, f"{target.name} exited with {proc.returncode}; its output's end:\n{tail}"
    assert "DONE" in proc.stderr, f"{target.name} did not run to the end; its output's end:\n{tail}"
    return log
