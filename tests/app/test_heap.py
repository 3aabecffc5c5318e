"""forwardd.app.heap: buffers of hundreds of KiB reuse the heap's pages in a tuned process.

Each check runs in a child interpreter, so that the test runner's own allocator is left alone (as an
embedded server leaves its host's), and counts the page faults the process takes while it allocates and
frees such buffers as the hot paths do.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from forwardd.app import heap

_CHURN = """
import resource, sys
from forwardd.app import heap
if sys.argv[1] == "tuned":
    assert heap.tune()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    b = b"x" * 400_000
    del b
before = faults()
for _ in range(200):
    b = b"x" * 400_000            # a read or a batch's JSON lines, written over (every page touched)
    c = b[:300_000] + b"y"        # a body cut from it
    del b, c
print(faults() - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, check=True, timeout=60
    )
    return int(out.stdout)


@pytest.mark.skipif(heap.trimmer() is None, reason="not glibc: tune() is a no-op there")
def test_big_buffers_reuse_pages_once_tuned():
    # 200 rounds of 700 KB: untuned glibc faults each round's pages in again (~40,000 here); tuned, the
    # pages stay mapped and the count is the few the interpreter takes anyway.
    plain, tuned = _faults("plain"), _faults("tuned")
    assert tuned < 2_000 < plain


@pytest.mark.skipif(heap.trimmer() is None, reason="not glibc")
def test_trim_still_gives_freed_memory_back():
    script = """
import sys
from forwardd.app import heap
assert heap.tune()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
base = rss()
held = [b"x" * 300_000 for _ in range(100)]   # 30 MB of buffers, then freed: kept by the heap
del held
kept = rss() - base
heap.trimmer()(0)
print(kept, rss() - base)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    kept, after = (int(x) for x in out.stdout.split())
    assert kept > 20_000_000  # the tuned heap kept them: else this test shows nothing
    assert after < 5_000_000
