"""A C extension of forwardd built with AddressSanitizer and UndefinedBehaviorSanitizer and exercised by a
workload in a child Python, the one way: tests/protocol/test_entries_sanitizers.py (_entries.c) and
tests/outputs/test_jsonl_sanitizers.py (_jsonl.c) each bring their workload and check what it prints.

The child preloads libasan (Python itself is not built with it) and allocates through malloc
(``PYTHONMALLOC=malloc``), so that ASan sees the buffers of Python objects the extension reads, not only
its own; any report aborts the child. Leak checking is off: the interpreter's own allocations at exit
would be reported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.conftest import ROOT

#: How much of the child's stderr a failure shows: the sanitizer's report with its stack.
TAIL = 8000


def compiler() -> str:
    return os.environ.get("CC", "gcc")


def build_sanitized(source: Path, workdir: Path) -> Path:
    """``source`` built with both sanitizers (every report fatal) as a shared object in ``workdir``."""
    lib = workdir / f"{source.stem}_asan.so"
    build = [
        compiler(), "-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
        "-fno-sanitize-recover=all", "-shared", "-fPIC", f"-I{sysconfig.get_paths()['include']}",
        str(source), "-o", str(lib), "-lm",
    ]  # fmt: skip
    done = subprocess.run(build, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{source.name} did not build with the sanitizers:\n{done.stderr[-TAIL:]}"
    return lib


def run_sanitized(source: Path, workdir: Path, child: str, *args: str, timeout: float = 110) -> str:
    """Build ``source`` with the sanitizers, then run ``python -c child LIB ARGS`` (``sys.argv[1]`` is the
    built library, for the child to load in place of the installed extension) with ASan preloaded. Fails
    on an exit other than 0, an AddressSanitizer report or a runtime error; returns the child's stdout."""
    lib = build_sanitized(source, workdir)
    asan = subprocess.run(
        [compiler(), "-print-file-name=libasan.so"], check=True, capture_output=True, text=True
    ).stdout.strip()
    env = {
        **os.environ,
        "LD_PRELOAD": asan,
        "PYTHONMALLOC": "malloc",
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.run(
        [sys.executable, "-c", child, str(lib), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    tail = proc.stderr[-TAIL:]
    assert proc.returncode == 0, f"the workload on {source.name} exited with {proc.returncode}:\n{tail}"
    assert "ERROR: AddressSanitizer" not in proc.stderr, tail
    assert "runtime error" not in proc.stderr, tail
    return proc.stdout
