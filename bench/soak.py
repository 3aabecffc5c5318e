"""Memory over a long run: forwardd's RSS sampled while acking clients send at full speed.

forwardd runs as a real process with a disk buffer (fsync per commit) in front of a null output, so
every byte goes through the decoder, the group commit, the segment files and the delivery loop (with
``--output file``, in front of the JSON-lines file output of ``bench.ingest``'s forwardd-file target
instead, whose 32 MiB queue also keeps it in back-pressure; the files written are deleted after each
wave so that the run does not fill the disk, which the output notices and reopens them for); the
load generator sends PackedForward with acks over 4 connections and Message mode with acks over 16,
alternating, for ``--seconds``. RSS is sampled every ``--every`` seconds; the summary gives its range
after the first minute and the events sent.

    python -m bench.soak [--seconds 300] [--every 10] [--output null|file]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.ingest import FORWARDD_BUFFER_CONFIG, FORWARDD_FILE_CONFIG, HOST, kill_group, wait_for_port
from bench.kafka_bench import free_port
from bench.loadgen import LoadConfig, run_load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--every", type=float, default=10.0)
    ap.add_argument("--output", choices=("null", "file"), default="null")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="forwardd-soak-"))
    port = free_port()
    config = work / "forwardd.yaml"
    template = FORWARDD_FILE_CONFIG if args.output == "file" else FORWARDD_BUFFER_CONFIG
    config.write_text(template.format(host=HOST, port=port))
    files = work / f"files-{port}"
    log = open(work / "forwardd.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [sys.executable, "-m", "forwardd", "run", "--config", str(config), "--log-format", "json"],
        cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_port(HOST, port, time.monotonic() + 30.0, proc)
        ps = psutil.Process(proc.pid)
        start = time.monotonic()
        samples: list[tuple[float, int]] = []
        events = 0
        phases = [
            LoadConfig(f"{HOST}:{port}", mode="packed", conns=4, ack=True, window=4, duration=args.every),
            LoadConfig(f"{HOST}:{port}", mode="message", conns=16, ack=True, window=1, duration=args.every),
        ]
        i = 0
        while time.monotonic() - start < args.seconds:
            res = run_load(phases[i % 2])
            events += res.events
            i += 1
            for f in files.rglob("*") if files.exists() else ():
                if not f.is_dir():
                    f.unlink(missing_ok=True)
            rss = ps.memory_info().rss
            t = time.monotonic() - start
            samples.append((t, rss))
            mode = phases[(i - 1) % 2].mode
            print(f"{t:6.0f} s  rss {rss / 2**20:6.1f} MiB  {res.events_per_s:>10,.0f} events/s ({mode})")
        steady = [rss for t, rss in samples if t >= 60] or [rss for _, rss in samples]
        peak = max(r for _, r in samples)
        print(
            f"\n{events:,} events in {time.monotonic() - start:.0f} s; RSS after the first minute "
            f"{min(steady) / 2**20:.1f}-{max(steady) / 2**20:.1f} MiB (peak {peak / 2**20:.1f})"
        )
    finally:
        proc.terminate()
        proc.wait(60)
        kill_group(proc)
        log.close()
        shutil.rmtree(work, ignore_errors=True)
        os.sync()


if __name__ == "__main__":
    main()
