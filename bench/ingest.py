"""Ingest benchmark driver: every scenario against forwardd and the baseline receiver, in the same run.

The machine is shared and noisy (±30 % between minutes), so a forwardd number means little on its own:
each scenario runs against both targets, repetitions interleaved (baseline, forwardd, baseline, …), and the
table shows forwardd beside the baseline measured minutes apart at most. Each cell is the median of the
repetitions that succeeded; a repetition that lost or mismatched an ack counts as failed, not as slow.

Targets are commands with placeholders, so the way forwardd is started can change without touching this
file: ``{python}`` (this interpreter), ``{host}``, ``{port}`` (a free port picked per start) and
``{config}`` (a YAML file rendered from the config template, see ``--forwardd-config``).

    python -m bench.ingest                          # all scenarios, baseline and forwardd, 3 s each, 3 reps
    python -m bench.ingest --targets baseline --scenarios packed-1conn-ack,message-noack --duration 1
    python -m bench.ingest --targets baseline,forwardd-file --ab /work/main   # A/B against another checkout

The physical floor of a stop-and-wait client that waits for a durable ack is one round trip plus one
fdatasync: ``1 / (rtt + fdatasync)``. Whenever ``message-ack-w1-1conn`` runs, the driver measures the
fdatasync of a ~300-byte append in the targets' storage directory (the same filesystem) just before each
repetition, takes the round trip from the baseline receiver's ack p50 in the same scenario, and prints
every forwardd row of that scenario as a share of the floor.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import (
    LoadConfig,
    LoadError,
    LoadResult,
    Mode,
    Ring,
    encode_ring,
    proc_tree_cpu_seconds,
    run_load,
)

__all__ = [
    "DEFAULT_COMMANDS",
    "FORWARDD_CONFIG",
    "SCENARIOS",
    "Floor",
    "Run",
    "Scenario",
    "Target",
    "TargetError",
    "format_table",
    "main",
    "run_suite",
    "sync_append_latency",
    "wait_for_port",
]

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

DEFAULT_COMMANDS = {
    "baseline": "{python} -m bench.baseline_receiver --host {host} --port {port}",
    "forwardd": "{python} -m forwardd run --config {config}",
}

#: forwardd's configuration for the benchmark: one forward source, everything to a null output. Its storage
#: (the lock) is per port, like the other targets': with --ab two of them run side by side.
FORWARDD_CONFIG = """\
storage: {{path: ./data-null-{port}}}
sources:
  - name: main
    type: forward
    bind: {host}
    port: {port}
routes:
  - match: "**"
    outputs: [sink]
outputs:
  sink:
    type: "null"
"""


#: The durable path: a disk buffer (fsync per group commit, the default) in front of a null output, so the
#: ack means committed to disk and nothing else costs.
FORWARDD_BUFFER_CONFIG = """\
storage: {{path: ./data-buffer-{port}}}
sources:
  - name: main
    type: forward
    bind: {host}
    port: {port}
routes:
  - match: "**"
    outputs: [sink]
outputs:
  sink:
    type: "null"
    buffer: {{type: disk, fsync: always}}
"""

#: Prepended for the ``-w2`` targets: two worker processes sharing the port (SO_REUSEPORT), each with its
#: own disk buffers and files (``name.worker1.log`` for the second), to use both cores.
WORKERS_2 = "workers: 2\n"

#: End to end into JSON-lines files: disk buffer (fsync per commit) and the file output (its default, an
#: fsync per write; ``forwardd-file-grouped``: its opt-in ``fsync: grouped``).
#: The queue is kept small so that, once it is full, ingest runs at the rate the files are written.
FORWARDD_FILE_CONFIG = """\
storage: {{path: ./data-file-{port}}}
sources:
  - name: main
    type: forward
    bind: {host}
    port: {port}
routes:
  - match: "**"
    outputs: [files]
outputs:
  files:
    type: file
    path: ./files-{port}/${{tag}}.log
    buffer: {{type: disk, fsync: always, max_size: 32MiB}}
"""
FORWARDD_FILE_GROUPED_CONFIG = FORWARDD_FILE_CONFIG.replace(
    "    type: file\n", "    type: file\n    fsync: grouped\n"
)
assert FORWARDD_FILE_GROUPED_CONFIG != FORWARDD_FILE_CONFIG

#: A copy route: every chunk into the JSON-lines files and, beside them, a second durable output (a disk
#: buffer in front of a null output, standing in for Kafka): the ack waits for both buffers' commits.
FORWARDD_COPY_CONFIG = (
    FORWARDD_FILE_CONFIG.replace("outputs: [files]", "outputs: [files, copy]")
    + """\
  copy:
    type: "null"
    buffer: {{type: disk, fsync: always, max_size: 32MiB}}
"""
)
assert "[files, copy]" in FORWARDD_COPY_CONFIG


#: The stop-and-wait scenario that the physical floor is measured beside.
FLOOR_SCENARIO = "message-ack-w1-1conn"
#: The same client while a bulk sender pushes acked PackedForward on 4 connections (issue 16: >= 0.7x the
#: floor); the floor is that of the quiet scenario.
BULK_FLOOR_SCENARIO = "message-ack-w1-1conn-bulk"


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    mode: Mode
    conns: int
    ack: bool
    window: int
    about: str
    #: Load generator arguments of a second sender that runs beside the measured one, in its own process
    #: (so the two do not share an interpreter); its figures are not reported.
    beside: tuple[str, ...] = ()

    def config(self, address: str, chunk_size: int, duration: float, events: int | None) -> LoadConfig:
        return LoadConfig(
            address=address,
            mode=self.mode,
            conns=self.conns,
            ack=self.ack,
            window=self.window,
            chunk_size=chunk_size,
            duration=duration,
            events=events,
        )


def scenarios(packed_window: int = 4) -> list[Scenario]:
    """The suite, in the order it runs; ``packed_window`` is the ack window of the acked packed cases."""
    w = packed_window
    return [
        Scenario("packed-1conn-ack", "packed", 1, True, w, f"PackedForward, 1 connection, ack window {w}"),
        Scenario("packed-4conn-ack", "packed", 4, True, w, f"PackedForward, 4 connections, ack window {w}"),
        Scenario("packed-1conn-noack", "packed", 1, False, 1, "PackedForward, 1 connection, no acks"),
        Scenario("packed-4conn-noack", "packed", 4, False, 1, "PackedForward, 4 connections, no acks"),
        Scenario("message-noack", "message", 1, False, 1, "Message mode, 1 connection, no acks"),
        Scenario(
            "message3-noack",
            "message3",
            1,
            False,
            1,
            "Message mode [tag, time, record] (fluent-logger for Python), 1 connection, no acks",
        ),
        Scenario(
            "message-noack-4conn", "message", 4, False, 1, "Message mode [tag, time, record, {}], 4 conns"
        ),
        Scenario(
            "message3-noack-4conn", "message3", 4, False, 1, "Message mode [tag, time, record], 4 connections"
        ),
        Scenario("message-ack-w64", "message", 1, True, 64, "Message mode, 1 connection, ack window 64"),
        Scenario(
            FLOOR_SCENARIO,
            "message",
            1,
            True,
            1,
            "Message mode, 1 connection, ack per message (stop and wait: the floor is rtt + fdatasync)",
        ),
        Scenario(
            BULK_FLOOR_SCENARIO,
            "message",
            1,
            True,
            1,
            "Message mode, 1 connection, ack per message, while another sender pushes acked PackedForward"
            " on 4 connections",
            # Containers of their own (tags and records), as a forwarder's are in life.
            beside=tuple(
                f"--mode packed --conns 4 --ack --window {packed_window} --first-container 100".split()
            ),
        ),
        Scenario(
            "message-ack-w1-16conn",
            "message",
            16,
            True,
            1,
            "Message mode, 16 connections, ack per message (docker fluentd-request-ack=true)",
        ),
        Scenario(
            "message-ack-w1-32conn",
            "message",
            32,
            True,
            1,
            "Message mode, 32 connections, ack per message",
        ),
    ]


SCENARIOS = scenarios()


def sync_append_latency(directory: str | Path, count: int = 300, size: int = 300) -> tuple[float, float]:
    """p50 and p99 seconds of one ``size``-byte append followed by fdatasync, in ``directory``.

    What the disk charges a durable ack at the least: a stop-and-wait client can get no more than
    ``1 / (rtt + this)`` acks per second. A fresh file each call, appended to (the file grows, so each
    fdatasync also journals the new size, as the first commit into a new segment does)."""
    path = Path(directory) / f"sync-probe-{os.getpid()}.bin"
    record = b"x" * size
    times: list[float] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            os.write(fd, record)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    times.sort()
    return times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))]


@dataclass(slots=True)
class Floor:
    """The single-connection stop-and-wait floor measured in one suite (see the module doc)."""

    fsync_p50_ms: list[float] = field(default_factory=list)
    fsync_p99_ms: list[float] = field(default_factory=list)
    rtt_p50_ms: float | None = None

    @property
    def fsync_ms(self) -> float | None:
        return statistics.median(self.fsync_p50_ms) if self.fsync_p50_ms else None

    @property
    def per_s(self) -> float | None:
        f = self.fsync_ms
        if f is None or self.rtt_p50_ms is None:
            return None
        return 1000 / (self.rtt_p50_ms + f)

    def lines(self, rows: list[Row]) -> Iterator[str]:
        f = self.fsync_ms
        if f is None:
            return
        p99 = statistics.median(self.fsync_p99_ms)
        yield f"fdatasync of a 300-byte append in the storage directory: p50 {f:.3f} ms, p99 {p99:.3f} ms"
        if self.rtt_p50_ms is None or self.per_s is None:
            yield "  (no baseline row in this run: the round trip, hence the floor, is unknown)"
            return
        yield (
            f"floor = 1 / (rtt {self.rtt_p50_ms:.3f} ms [baseline ack p50] + fdatasync {f:.3f} ms)"
            f" = {self.per_s:,.0f} acks/s"
        )
        for r in rows:
            if r.scenario == FLOOR_SCENARIO and r.target != "baseline" and r.events_per_s:
                yield f"  {r.target}: {r.events_per_s:,.0f}/s = {r.events_per_s / self.per_s:.2f}x the floor"
        for r in rows:
            if r.scenario == BULK_FLOOR_SCENARIO and r.target != "baseline" and r.events_per_s:
                yield (
                    f"  {r.target} beside a bulk sender: {r.events_per_s:,.0f}/s ="
                    f" {r.events_per_s / self.per_s:.2f}x the floor"
                )


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL whatever is left of the process group ``proc`` leads (its workers, with ``workers: N``): a
    benchmark that stops, fails or is interrupted must not leave daemons that load the next run."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


class TargetError(Exception):
    """A target did not start, or died."""


def wait_for_port(host: str, port: int, deadline: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Return once ``host:port`` accepts a connection; raise TargetError at ``deadline`` (monotonic) or
    as soon as ``proc`` exits. The pause between attempts is a wait on the process, so an exit is seen
    at once."""
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as e:
            last = e
        if time.monotonic() >= deadline:
            raise TargetError(f"{host}:{port} did not accept connections in time ({last})")
        if proc is not None:
            try:
                rc = proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                continue
            raise TargetError(f"exited with code {rc} before listening")
        time.sleep(0.05)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LineCounter:
    """Lines written under a directory so far, read incrementally (only what each file gained since the
    last call, up to its last whole line): the forwardd-file targets' JSON lines, one per event."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.lines = 0
        self._offsets: dict[str, int] = {}

    def count(self) -> int:
        for root, _, files in os.walk(self.directory):
            for name in files:
                path = os.path.join(root, name)
                off = self._offsets.get(path, 0)
                try:
                    with open(path, "rb") as f:
                        f.seek(off)
                        data = f.read()
                except OSError:
                    continue
                cut = data.rfind(b"\n") + 1
                self.lines += data.count(b"\n", 0, cut)
                self._offsets[path] = off + cut
        return self.lines


#: How often the end-to-end count polls the files during and after a run.
E2E_POLL = 0.05
#: How long after the load ends the files may take to hold every event before the run fails.
E2E_TIMEOUT = 120.0


class Target:
    """One receiver started from a command template; its output goes to ``<logdir>/<name>.log``.

    It runs in ``logdir`` with the repository on PYTHONPATH, so whatever it writes relative to its working
    directory (forwardd's default storage) lands in the scratch directory, not in the repository."""

    def __init__(
        self, name: str, command: str, config_template: str, logdir: Path, repo: Path = REPO
    ) -> None:
        self.name = name
        self.repo = repo
        self.command = command
        self.config_template = config_template
        self.logdir = logdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = logdir / f"{name}.log"
        self._files: LineCounter | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float) -> None:
        self.port = _free_port(HOST)
        config = self.logdir / f"{self.name}-{self.port}.yaml"
        config.write_text(self.config_template.format(host=HOST, port=self.port))
        argv = shlex.split(
            self.command.format(python=shlex.quote(sys.executable), host=HOST, port=self.port, config=config)
        )
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.repo), env.get("PYTHONPATH", "")) if p)
        with open(self.log_path, "ab") as log:
            log.write(f"$ {shlex.join(argv)}\n".encode())
            log.flush()
            # In a session of its own, so that stop() can end its workers too (kill_group).
            self.proc = subprocess.Popen(
                argv, cwd=self.logdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_for_port(HOST, self.port, time.monotonic() + timeout, self.proc)
        except TargetError as e:
            self.stop()
            raise TargetError(f"{self.name}: {e}; last output:\n{self.log_tail()}") from None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        kill_group(self.proc)
        self.proc = None

    def files(self) -> LineCounter | None:
        """The counter of the JSON lines this target writes (forwardd's file targets), else None."""
        if "files-{port}" not in self.config_template:
            return None
        if self._files is None or self._files.directory != self.logdir / f"files-{self.port}":
            self._files = LineCounter(self.logdir / f"files-{self.port}")
        return self._files

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass(slots=True)
class Run:
    scenario: str
    target: str
    rep: int
    result: LoadResult | None
    receiver_cpu_s: float = 0.0
    error: str | None = None
    #: Seconds from the start of the load until the target's files held every event sent (file targets).
    e2e_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.result is not None and self.result.ok


@dataclass(slots=True)
class Row:
    scenario: str
    target: str
    runs: int
    ok_runs: int
    events_per_s: float | None = None
    #: Events per second into the files, end to end (file targets): acked is not yet written.
    e2e_events_per_s: float | None = None
    mb_per_s: float | None = None
    ack_p50_ms: float | None = None
    ack_p99_ms: float | None = None
    sender_cpu_pct: float | None = None
    receiver_cpu_pct: float | None = None
    errors: list[str] = field(default_factory=list)


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarise(runs: list[Run], order: Sequence[tuple[str, str]]) -> list[Row]:
    """One row per (scenario, target): medians over the successful repetitions."""
    rows = []
    for scen, tgt in order:
        mine = [r for r in runs if r.scenario == scen and r.target == tgt]
        good = [r.result for r in mine if r.ok and r.result is not None]
        row = Row(scen, tgt, len(mine), len(good))
        for r in mine:
            if not r.ok:
                errs = [r.error] if r.error else (r.result.errors if r.result else [])
                row.errors.extend(e for e in errs if e)
        if good:
            row.events_per_s = _median([g.events_per_s for g in good])
            row.e2e_events_per_s = _median(
                [r.result.events / r.e2e_s for r in mine if r.ok and r.result is not None and r.e2e_s]
            )
            row.mb_per_s = _median([g.mb_per_s for g in good])
            row.ack_p50_ms = _median([g.ack_p50_ms for g in good])
            row.ack_p99_ms = _median([g.ack_p99_ms for g in good])
            row.sender_cpu_pct = _median([100 * g.sender_cpu_s / g.duration_s for g in good if g.duration_s])
            row.receiver_cpu_pct = _median(
                [
                    100 * r.receiver_cpu_s / r.result.duration_s
                    for r in mine
                    if r.ok and r.result is not None and r.result.duration_s
                ]
            )
        rows.append(row)
    return rows


def _fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def format_table(rows: list[Row]) -> str:
    """A Markdown table; forwardd rows also show their events/s as a share of the baseline's."""
    base = {r.scenario: r.events_per_s for r in rows if r.target == "baseline"}
    head = [
        "scenario",
        "target",
        "events/s",
        "into files/s",
        "MB/s",
        "ack p50 ms",
        "ack p99 ms",
        "sender CPU",
        "receiver CPU",
        "vs baseline",
        "ok runs",
    ]
    body = []
    for r in rows:
        b = base.get(r.scenario)
        ratio = f"{r.events_per_s / b:.2f}x" if r.target != "baseline" and r.events_per_s and b else ""
        body.append(
            [
                r.scenario,
                r.target,
                _fmt(r.events_per_s, ",.0f"),
                _fmt(r.e2e_events_per_s, ",.0f"),
                _fmt(r.mb_per_s, ",.1f"),
                _fmt(r.ack_p50_ms, ".2f"),
                _fmt(r.ack_p99_ms, ".2f"),
                _fmt(r.sender_cpu_pct, ".0f") + ("%" if r.sender_cpu_pct is not None else ""),
                _fmt(r.receiver_cpu_pct, ".0f") + ("%" if r.receiver_cpu_pct is not None else ""),
                ratio,
                f"{r.ok_runs}/{r.runs}",
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in body:
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("| " + " | ".join(cells) + " |")
    seen: set[str] = set()
    for r in rows:
        for e in r.errors:
            if e not in seen:  # a target that never started would repeat the same line per scenario
                seen.add(e)
                lines.append(f"  {r.scenario} / {r.target}: {e}")
    return "\n".join(lines)


def _run_one(
    scen: Scenario, target: Target, rep: int, rings: dict[int, Ring], args: argparse.Namespace
) -> Run:
    if not target.alive():
        # It died (or was killed) since the last run: that run's failure is already recorded; say so
        # in the log and go on with a fresh process rather than failing every remaining scenario.
        print(f"  [{target.name}] not running any more, restarting; log: {target.log_path}", flush=True)
        try:
            target.stop()
            target.start(args.start_timeout)
        except TargetError as e:
            return Run(scen.name, target.name, rep, None, error=f"target died and did not restart: {e}")
    cfg = scen.config(target.address, args.chunk_size, args.duration, args.events)
    # End to end into files: only where nothing else writes to them (no sender beside).
    files = target.files() if not scen.beside else None
    with _beside(scen, target, args) as bulk, _counting(files) as counted:
        cpu0 = proc_tree_cpu_seconds(target.pid)
        try:
            res = run_load(cfg, rings)
        except LoadError as e:
            return Run(scen.name, target.name, rep, None, error=str(e))
        cpu = proc_tree_cpu_seconds(target.pid) - cpu0
        waited = counted(res.events + res.sync_events) if res.ok else None
    e2e = res.duration_s + waited if waited is not None else None
    if bulk is not None and bulk.returncode not in (0, -signal.SIGTERM):
        return Run(scen.name, target.name, rep, None, error=f"the sender beside exited {bulk.returncode}")
    if files is not None and res.ok and e2e is None:
        why = f"the files lacked events {E2E_TIMEOUT:.0f} s after the load ended"
        return Run(scen.name, target.name, rep, None, error=why)
    return Run(scen.name, target.name, rep, res, cpu, e2e_s=e2e)


@contextlib.contextmanager
def _counting(files: LineCounter | None) -> Iterator[Callable[[int], float | None]]:
    """Counts ``files``' lines in a thread while the load runs (so that the count after it reads only the
    rest); yields a function, called when the load has ended, that waits for ``n`` more lines than there
    were at the start and returns how long that took (None past E2E_TIMEOUT, or without files)."""
    if files is None:
        yield lambda n: None
        return
    start_lines = files.count()
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(E2E_POLL):
            files.count()

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()

    def wait(n: int) -> float | None:
        t0 = time.monotonic()
        stop.set()
        thread.join()
        deadline = t0 + E2E_TIMEOUT
        while files.count() < start_lines + n:
            if time.monotonic() > deadline:
                return None
            time.sleep(E2E_POLL)
        return time.monotonic() - t0

    try:
        yield wait
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def _beside(
    scen: Scenario, target: Target, args: argparse.Namespace
) -> Iterator[subprocess.Popen[bytes] | None]:
    """The scenario's second sender (``Scenario.beside``), running for longer than the measured one and
    stopped after it; it has sent for a second before the measured sender starts."""
    if not scen.beside:
        yield None
        return
    seconds = (args.duration if args.events is None else 60.0) + 5.0
    cmd = [sys.executable, "-m", "bench.loadgen", target.address, *scen.beside, "--duration", str(seconds)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_traffic = time.monotonic() + 1.0
        while time.monotonic() < wait_for_traffic and proc.poll() is None:
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_suite(args: argparse.Namespace, out: Any = sys.stdout) -> tuple[list[Run], list[Row], Floor]:
    selected = scenarios(args.packed_window)
    if args.scenarios:
        wanted = args.scenarios.split(",")
        unknown = set(wanted) - {s.name for s in selected}
        if unknown:
            raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}")
        selected = [s for s in selected if s.name in wanted]
    names = args.targets.split(",")
    logdir = Path(tempfile.mkdtemp(prefix="forwardd-bench-"))
    commands = {
        "baseline": args.baseline_cmd,
        "forwardd": args.forwardd_cmd,
        "forwardd-buffer": args.forwardd_cmd,
        "forwardd-file": args.forwardd_cmd,
        "forwardd-file-grouped": args.forwardd_cmd,
        "forwardd-copy": args.forwardd_cmd,
        "forwardd-buffer-w2": args.forwardd_cmd,
        "forwardd-file-w2": args.forwardd_cmd,
    }
    config_template = Path(args.forwardd_config).read_text() if args.forwardd_config else FORWARDD_CONFIG
    templates = {
        "forwardd-buffer": FORWARDD_BUFFER_CONFIG,
        "forwardd-file": FORWARDD_FILE_CONFIG,
        "forwardd-file-grouped": FORWARDD_FILE_GROUPED_CONFIG,
        "forwardd-copy": FORWARDD_COPY_CONFIG,
        "forwardd-buffer-w2": WORKERS_2 + FORWARDD_BUFFER_CONFIG,
        "forwardd-file-w2": WORKERS_2 + FORWARDD_FILE_CONFIG,
    }
    for name in names:
        if name not in commands:
            raise SystemExit(f"unknown target {name!r} (known: {', '.join(commands)})")
    # --ab: each forwardd target also runs from another checkout, right after this one's, per repetition.
    plan: list[tuple[str, str, Path]] = []  # (row name, target kind, repository)
    for name in names:
        plan.append((name, name, REPO))
        if args.ab and name != "baseline":
            plan.append((f"{name}@{args.ab_name}", name, Path(args.ab).resolve()))
    targets: list[Target] = []
    not_started: dict[str, str] = {}
    runs: list[Run] = []
    floor = Floor()
    try:
        for row_name, kind, repo in plan:
            t = Target(row_name, commands[kind], templates.get(kind, config_template), logdir, repo)
            try:
                t.start(args.start_timeout)
            except TargetError as e:
                last = [ln for ln in t.log_tail().splitlines() if ln.strip()][-1:] or [str(e)]
                not_started[row_name] = last[0].strip()
                print(f"[{row_name}] not started: {e}", file=out, flush=True)
                continue
            print(
                f"[{row_name}] listening on {t.address} (pid {t.pid}, log {t.log_path})", file=out, flush=True
            )
            targets.append(t)
        for scen in selected:
            probe = scen.config("", args.chunk_size, args.duration, args.events)
            rings = {c: encode_ring(probe, c) for c in range(scen.conns)}
            for rep in range(1, args.reps + 1):
                if scen.name in (FLOOR_SCENARIO, BULK_FLOOR_SCENARIO):
                    p50, p99 = sync_append_latency(logdir)
                    floor.fsync_p50_ms.append(p50 * 1000)
                    floor.fsync_p99_ms.append(p99 * 1000)
                    print(f"  fdatasync probe: p50 {p50 * 1000:.3f} ms, p99 {p99 * 1000:.3f} ms", file=out)
                for t in targets:
                    run = _run_one(scen, t, rep, rings, args)
                    runs.append(run)
                    res = run.result
                    if run.ok and res is not None:
                        lat = f", ack p50 {res.ack_p50_ms:.2f} ms" if res.ack_p50_ms is not None else ""
                        msg = f"{res.events_per_s:,.0f} events/s{lat}"
                    else:
                        msg = "FAILED: " + (run.error or "; ".join(res.errors if res else []))[:300]
                    print(f"  {scen.name} [{t.name}] #{rep}: {msg}", file=out, flush=True)
            for name, why in not_started.items():
                runs.append(Run(scen.name, name, 0, None, error=f"not started: {why}"))
    finally:
        for t in targets:
            t.stop()
        # The targets' buffers and files (gigabytes after a long run) go; their logs stay for a look.
        for p in logdir.iterdir():
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
    order = [(s.name, row_name) for s in selected for row_name, _, _ in plan]
    rows = summarise(runs, order)
    for r in rows:
        if r.scenario == FLOOR_SCENARIO and r.target == "baseline":
            floor.rtt_p50_ms = r.ack_p50_ms
    return runs, rows, floor


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench.ingest",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="scenarios:\n" + "\n".join(f"  {s.name:24} {s.about}" for s in SCENARIOS),
    )
    ap.add_argument(
        "--targets",
        default="baseline,forwardd",
        help="comma-separated: baseline, forwardd (null output, memory buffer), forwardd-buffer "
        "(disk buffer, fsync per commit, null output), forwardd-file (disk buffer and JSON-lines files), "
        "forwardd-file-grouped (the file output's opt-in fsync: grouped), forwardd-copy (a copy route: the "
        "files and a second disk-buffered output), "
        "forwardd-buffer-w2 and forwardd-file-w2 (the same with workers: 2)",
    )
    ap.add_argument("--scenarios", default="", help="comma-separated scenario names (default: all)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per scenario and target")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds of traffic per repetition")
    ap.add_argument("--events", type=int, default=None, help="events per connection (replaces --duration)")
    ap.add_argument("--chunk-size", type=int, default=1000, help="events per PackedForward chunk")
    ap.add_argument("--packed-window", type=int, default=4, help="ack window of the acked packed scenarios")
    ap.add_argument("--baseline-cmd", default=DEFAULT_COMMANDS["baseline"])
    ap.add_argument("--forwardd-cmd", default=DEFAULT_COMMANDS["forwardd"])
    ap.add_argument("--forwardd-config", default=None, help="YAML template with {host} and {port}")
    ap.add_argument("--start-timeout", type=float, default=20.0, help="seconds for a target to listen")
    ap.add_argument("--json", default=None, help="also write every run and the summary to this file")
    ap.add_argument(
        "--ab",
        default=None,
        metavar="PATH",
        help="another checkout of forwardd (with its C extensions built): every forwardd target also runs "
        "from it, interleaved with this one's, as a row named TARGET@NAME",
    )
    ap.add_argument("--ab-name", default="ab", help="the suffix of the --ab rows (default: ab)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    what = f"{args.duration:g} s" if args.events is None else f"{args.events:,} events/conn"
    load0 = os.getloadavg()[0]
    print(
        f"ingest benchmark: {what} per run, {args.reps} rep(s), chunk {args.chunk_size};"
        f" {os.cpu_count()} CPUs, load average {load0:.2f}",
        flush=True,
    )
    runs, rows, floor = run_suite(args)
    print()
    print(format_table(rows))
    for line in floor.lines(rows):
        print(line)
    # Other work on the machine shows up here before it shows up as a mysteriously slow row.
    print(f"load average before {load0:.2f}, after {os.getloadavg()[0]:.2f}")
    if args.json:
        payload = {
            "args": vars(args),
            "rows": [asdict(r) for r in rows],
            "floor": {**asdict(floor), "per_s": floor.per_s},
            "runs": [
                {**asdict(r), "result": None if r.result is None else {**asdict(r.result), "ok": r.result.ok}}
                for r in runs
            ],
        }
        Path(args.json).write_text(json.dumps(payload, indent=1))
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
