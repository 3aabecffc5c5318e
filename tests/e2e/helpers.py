"""Run ``forwardd`` as a real process (the console script's code path) and find its port from its logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import yaml


class Proc:
    """A forwardd process whose JSON log lines are collected as they come."""

    def __init__(
        self, config: dict[str, Any] | None, workdir: Path, *args: str, new_session: bool = False
    ) -> None:
        """``new_session``: in a process group of its own (whose id is its pid), for a signal sent to the
        whole group (``os.killpg``) as a terminal or an init would send it."""
        cmd = [sys.executable, "-m", "forwardd", "run", "--log-format", "json"]
        if config is not None:
            path = workdir / "forwardd.yaml"
            path.write_text(yaml.safe_dump(config))
            cmd += ["--config", str(path)]
        self.proc = subprocess.Popen(
            [*cmd, *args], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=new_session,
        )  # fmt: skip
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
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code

    def wait(self, timeout: float = 30.0) -> int:
        """Its exit code, once it has exited on its own."""
        return self._reap(timeout)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self._reap(10)

    def terminate(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self._reap(timeout)
