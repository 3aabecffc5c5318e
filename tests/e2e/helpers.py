"""Run ``forwardd`` as a real process (the console script's code path) and find its port from its logs.

No daemon outlives its test. Each one runs in a session (and process group) of its own, so that its forked
workers can be found and ended together: :meth:`Proc.close` kills the whole group and waits until none of
it is left, and ``tests/conftest.py`` calls it after every test for each daemon the test started, whether
the test passed, failed or was interrupted (and, through :func:`close_all`, when pytest exits or is sent
SIGTERM or SIGHUP: a session of its own no longer gets the signal a terminal or ``timeout`` sends pytest's
group). A signal a test sends on purpose (``kill``, ``terminate``, ``os.killpg``) reaches what it always
reached: the group kill is for teardown only, so that a worker that must die with its parent is still
tested by killing the parent alone.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import yaml

#: Every daemon started and not yet closed: what the per-test finaliser and :func:`close_all` end.
LIVE: list[Proc] = []
#: The process that started them: a child forked from it (a test's own fork) must not end them.
_OWNER = os.getpid()


def group_members(pgid: int) -> list[tuple[int, str]]:
    """The processes of process group ``pgid`` that still run (pid, command line), from /proc. A zombie
    counts as gone: it holds no memory, port or lock, and on a machine whose init does not reap orphans
    (this one) a worker killed with its parent stays one for good."""
    found: list[tuple[int, str]] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
            fields = stat[stat.rindex(b")") + 2 :].split()  # after "pid (comm) ": comm may hold spaces
            if int(fields[2]) != pgid or fields[0] in (b"Z", b"X"):
                continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except (OSError, ValueError, IndexError):
            continue  # it ended while being read
        found.append((int(entry.name), cmdline))
    return found


def kill_group(pgid: int, timeout: float = 10.0) -> None:
    """SIGKILL to every process of group ``pgid``, then wait until none of them runs; fails naming the
    ones still there after ``timeout`` (a process stuck in the kernel: the test must not pass over it)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while left := group_members(pgid):
        if time.monotonic() > deadline:
            raise AssertionError(f"processes of group {pgid} still run {timeout}s after SIGKILL: {left}")
        time.sleep(0.01)  # polling interval: nothing announces the end of a process that is not our child


def close_all() -> None:
    """Kill every daemon not yet closed, at once: pytest is exiting, or was told to stop."""
    if os.getpid() != _OWNER:
        return
    for proc in list(LIVE):
        with contextlib.suppress(Exception):
            proc.close(grace=0)


atexit.register(close_all)


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """``python -m forwardd ARGS`` run to its end (a command, or a ``run`` that must refuse its
    configuration), in a session of its own whose every process is killed once it returns or times out:
    a ``run`` that started after all leaves no daemon behind."""
    with subprocess.Popen(
        [sys.executable, "-m", "forwardd", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    ) as proc:  # fmt: skip
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            kill_group(proc.pid)  # a `run` that started after all, and the workers it forked
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


class Proc:
    """A forwardd process whose JSON log lines are collected as they come.

    It leads a process group of its own (its id is the parent's pid), which its workers share: a signal
    to the whole group (``os.killpg``) reaches them all, as a terminal or an init would send it."""

    def __init__(self, config: dict[str, Any] | None, workdir: Path, *args: str) -> None:
        cmd = [sys.executable, "-m", "forwardd", "run", "--log-format", "json"]
        if config is not None:
            path = workdir / "forwardd.yaml"
            path.write_text(yaml.safe_dump(config))
            cmd += ["--config", str(path)]
        self.proc = subprocess.Popen(
            [*cmd, *args], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True,
        )  # fmt: skip
        #: The process group of the daemon and its workers.
        self.pgid = self.proc.pid
        LIVE.append(self)
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._cond = threading.Condition()
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                line = json.loads(text)
            except ValueError:
                line = {"event": "<not json>", "text": text}
            with self._cond:
                self.raw.append(text)
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_event(self, event: str, timeout: float = 20.0) -> dict[str, Any]:
        """The first log line with this event name; fails if the process exits or time runs out first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if line.get("event") == event:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no {event!r} log line; output:\n" + "\n".join(self.raw[-30:]))
                self._cond.wait(left)

    def wait_next(self, timeout: float = 20.0) -> None:
        """Wait for the next log line (or the process's end)."""
        with self._cond:
            n = len(self.lines)
            self._cond.wait_for(
                lambda: len(self.lines) > n or (self.proc.poll() is not None and not self._reader.is_alive()),
                timeout,
            )
            if len(self.lines) == n:
                raise AssertionError("no new log line; output:\n" + "\n".join(self.raw[-30:]))

    def wait_ready(self, workers: int = 1) -> None:
        """Wait until every worker logged ``forwardd.ready`` (a signal before that kills a worker)."""
        ready = [self.wait_event("forwardd.ready")]
        while len(ready) < workers:
            with self._cond:
                ready = [line for line in self.lines if line.get("event") == "forwardd.ready"]
            if len(ready) < workers:
                self.wait_next()

    def port(self) -> int:
        ready = self.wait_event("forwardd.ready")
        return int(ready["listeners"][0].rsplit(":", 1)[1])

    def _reap(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        if self._reader.is_alive():  # closing the pipe under the blocked reader would hang for good
            raise AssertionError(
                f"the daemon exited ({code}) but its output pipe is still open {timeout}s later: held by "
                f"{group_members(self.pgid)} of its group, or something outside it"
            )
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code

    def wait(self, timeout: float = 30.0) -> int:
        """Its exit code, once it has exited on its own."""
        return self._reap(timeout)

    def kill(self) -> None:
        """kill -9 of the parent alone, the crash a test stages: its workers must notice on their own."""
        self.proc.send_signal(signal.SIGKILL)
        self._reap(10)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM to the parent, as an orchestrator stops it; its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self._reap(timeout)

    def close(self, grace: float = 3.0) -> None:
        """Teardown: nothing this daemon started is left. A parent still running gets SIGTERM and ``grace``
        seconds for a clean stop (it then reaps its own workers); whatever is left of the group, stopped,
        draining or orphaned, gets SIGKILL, and this waits until none of it runs. Safe to call again."""
        if grace > 0 and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        try:
            kill_group(self.pgid)  # before the reap: a parent's zombie keeps its group id from reuse
        finally:
            self._reap(10)
            with contextlib.suppress(ValueError):
                LIVE.remove(self)


def incompressible(n: int, rng: random.Random) -> str:
    """``n`` characters LZ4 cannot shrink by an eighth (random hex): for a test whose premise is the bytes it
    sends taking their room on disk, with the buffer's default ``compression: lz4`` (which writes
    repetitive records 5-9x smaller and would let a small queue or a small disk take far more)."""
    return rng.randbytes((n + 1) // 2).hex()[:n]


def left_queued(proc: Proc, output: str = "out") -> int:
    """What ``output`` said it left in its queue at the stop (its ``output.stopped`` line): what the next
    start delivers."""
    [line] = [x for x in proc.lines if x.get("event") == "output.stopped" and x.get("output") == output]
    return int(line["left_chunks"])
