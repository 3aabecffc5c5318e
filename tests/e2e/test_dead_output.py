"""A dead output fills its queue; then clients stop getting acks, forwardd stops reading, its memory stays
flat; when the output recovers everything acked is delivered.

The output writes to a real, small tmpfs that is filled up (ENOSPC), the queue's limit is small, and a
client pushes acked chunks until it can push no more.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from forwardd.protocol import encode
from forwardd.testing.client import AckError, ForwardClient
from tests.e2e.helpers import Proc, incompressible, left_queued

MiB = 1024 * 1024


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, f"cannot mount a tmpfs (this test needs root): {r.stderr}"
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Fill the filesystem at ``path`` to the last byte."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for block in (MiB, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * block):
                    pass
    finally:
        os.close(fd)
    return filler


@pytest.mark.slow
def test_full_disk_stops_acks_keeps_memory_flat_and_loses_nothing(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "out", "48m") as out:
        config = {
            "storage": {"path": str(tmp_path / "data")},
            "sources": [{"name": "in", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False}],
            "routes": [{"match": "**", "outputs": ["files"]}],
            "outputs": {
                "files": {
                    "type": "file",
                    "path": str(out / "${tag}.log"),
                    "buffer": {"max_size": "4MiB", "segment_size": "1MiB",
                               "retry": {"initial": "50ms", "max": "200ms"}},
                }
            },
        }  # fmt: skip
        filler = fill(out)
        proc = Proc(config, tmp_path)
        port = proc.port()
        process = psutil.Process(proc.proc.pid)
        acked: list[int] = []
        with ForwardClient(port=port, timeout=3) as c:
            # Acked chunks of 200 events (~50 KB) until the queue is full and acks stop coming.
            seq = 0
            rng = random.Random(11)
            pads = [incompressible(200, rng) for _ in range(200)]  # the queue's 4 MiB hold what was sent
            while True:
                records = [{"seq": seq + i, "pad": pads[i]} for i in range(200)]
                blocked = c.packed("dead", records, ack=True, wait=False)
                assert blocked is not None
                try:
                    c.expect_ack(blocked)
                except AckError:
                    break  # the queue is full: no ack for this chunk (yet)
                acked.extend(range(seq, seq + 200))
                seq += 200
                assert seq < 1_000_000, "acks never stopped: the queue limit is not enforced"
            assert proc.wait_event("buffer.full")["level"] == "warning"
            rss_full = process.memory_info().rss
            # Push more as fast as the socket takes it: forwardd must stop reading, not buffer it.
            raw = socket.create_connection(("127.0.0.1", port))
            raw.setblocking(False)
            chunk = encode.packed_forward("dead", [(1, {"pad": "q" * 200})] * 1000, chunk="x")
            pushed = 0
            with contextlib.suppress(BlockingIOError):
                while pushed < 512 * MiB:
                    pushed += raw.send(chunk)
            rss_pushed = process.memory_info().rss
            assert pushed < 512 * MiB, "forwardd kept reading a client while its queue was full"
            assert rss_pushed - rss_full < 40 * MiB, (rss_full, rss_pushed, pushed)
            raw.close()
            # The disk recovers: the blocked chunk is accepted and acked, the rest is delivered.
            os.unlink(filler)
            c.timeout = 30
            c.expect_ack(blocked)
            acked.extend(range(seq, seq + 200))
        assert proc.terminate() == 0
        runs = [proc]
        # A stop does not wait for an output that is failing: a write backing off with no write gone
        # through since it failed ends the drain (one that failed before another went through is tried
        # at once). What a stop leaves stays queued on disk and the next start delivers it, so what is
        # asked of the first stop is only that: a second run, on a healthy disk, must leave nothing.
        if left_queued(proc, "files"):
            again = Proc(config, tmp_path)
            again.wait_event("forwardd.ready")
            assert again.terminate() == 0
            assert left_queued(again, "files") == 0, "a stop with a healthy output left chunks queued"
            runs.append(again)
        seen = {json.loads(line)["seq"] for line in (out / "dead.log").read_text().splitlines()
                if "seq" in line}  # fmt: skip
        missing = [s for s in acked if s not in seen]
        assert not missing, f"{len(missing)} acked events lost; files: {sorted(os.listdir(out))}"
        for run in runs:
            unretrieved = [i for i, line in enumerate(run.raw) if "never retrieved" in line]
            assert not unretrieved, "\n".join(run.raw[unretrieved[0] : unretrieved[0] + 12])
