"""atheris target for the whole event path: arbitrary bytes -> ServerConnection -> chunks -> a Router built
from a configuration with every filter type -> the delivery loop of every output (file: JSON lines through
the C transcoder and the Python paths, msgpack, Fluentd's format, a template split by record keys; HTTP
bodies in every format; Kafka values, keys and headers) -> dead letters and @ERROR -> log lines in JSON and
console mode. The checks are those of tests/pipeline/harness.py: only documented errors at each stage, no
delivery loop that dies or retries a chunk without end, every log line renders. A Violation is a crash.

Input layout (as fuzz_decoder.py, so that a corpus of real traffic is easy to seed): byte 0 holds flags,
byte 1 seeds the read sizes, the rest is what the peer sends.

* flag 1: log lines rendered by the console renderer instead of JSON;
* flag 2: JSON mode allowed (a payload starting with ``[`` or ``{`` is a JSON stream).

Run: ``python fuzz/fuzz_pipeline.py CORPUS_DIR -max_total_time=60`` (tests/pipeline/test_fuzz_pipeline.py
does, seeded with ../shared/wire-samples and the hostile requests of issue 14).
"""

from __future__ import annotations

import atexit
import random
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import atheris

# Only forwardd is instrumented: the asyncio loop, aiohttp, structlog and friends that the harness drives
# would cost the fuzzer ~30x its speed (8 inputs/s instead of ~250) and are not what is under test.
with atheris.instrument_imports(include=["forwardd"]):
    from tests.pipeline.harness import Pipeline

_ROOT = Path(tempfile.mkdtemp(prefix="fuzz-pipeline-"))
_PIPELINES: dict[str, Pipeline] = {}


def _pipeline(log_format: str) -> Pipeline:
    """One pipeline per log format, built once (building one costs ~50 ms, an input ~1 ms)."""
    p = _PIPELINES.get(log_format)
    if p is None:
        for other in list(_PIPELINES.values()):  # logging is process-wide: one pipeline active at a time
            other.__exit__(None, None, None)
        _PIPELINES.clear()
        p = Pipeline(_ROOT / f"{log_format}-{random.getrandbits(32):08x}", log_format=log_format)
        p.__enter__()
        _PIPELINES[log_format] = p
    return p


@atexit.register
def _close() -> None:
    for p in _PIPELINES.values():
        p.__exit__(None, None, None)


def reads(data: bytes, seed: int) -> Iterator[bytes]:
    """Cut ``data`` into reads whose sizes come from ``seed``: 0 feeds it whole."""
    if seed == 0:
        yield data
        return
    rnd = random.Random(seed)
    pos = 0
    while pos < len(data):
        size = rnd.choice((1, 2, 3, 7, 64, 1000, 1 << 16))
        yield data[pos : pos + size]
        pos += size


def TestOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    flags, seed, payload = data[0], data[1], data[2:]
    p = _pipeline("console" if flags & 1 else "json")
    p.feed(reads(payload, seed), json_mode=bool(flags & 2))  # raises Violation: a crash for atheris
    if p.fed % 500 == 0:
        p.reset_files()


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
