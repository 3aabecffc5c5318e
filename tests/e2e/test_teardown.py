"""No daemon outlives its test (tests/e2e/helpers.py, tests/conftest.py): stale forwardd workers from old
runs were found on the machine hours later, holding ports and storage locks.

Each test here starts a real daemon with ``workers: 2`` and one worker frozen (SIGSTOP: it cannot stop on
its own, and the parent waits for it until a long ``shutdown_timeout``), so that only a SIGKILL to the
whole process group ends everything; then it checks, from /proc through psutil, that no process of that
group still runs. A worker killed with its parent may stay a zombie (this machine's init does not reap
orphans): that counts as gone, it holds nothing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.e2e import helpers
from tests.e2e.helpers import Proc

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(tmp_path: Path, port: int) -> dict[str, Any]:
    return {
        "workers": 2,
        "shutdown_timeout": "60s",  # the clean stop cannot end while a worker is frozen
        "storage": {"path": str(tmp_path / "data")},
        "sources": [{"name": "in", "bind": "127.0.0.1", "port": port, "udp_heartbeat": False}],
        "routes": [{"match": "**", "outputs": ["files"]}],
        "outputs": {"files": {"type": "file", "path": str(tmp_path / "out" / "events.log")}},
    }


def running_in_group(pgid: int) -> list[int]:
    """The pids of group ``pgid`` that still run (zombies excluded), read independently of the helper."""
    found = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
        except (psutil.Error, ProcessLookupError):
            continue
    return found


def still_running(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running, wherever they are now (a process could leave its group)."""
    found = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                found.append(pid)
        except psutil.NoSuchProcess:
            continue
    return found


def start_with_a_frozen_worker(tmp_path: Path) -> tuple[Proc, list[int]]:
    """A daemon with two workers, one frozen; the pids of the parent and its workers."""
    proc = Proc(config(tmp_path, free_port()), tmp_path)
    proc.wait_ready(workers=2)
    workers = psutil.Process(proc.proc.pid).children()
    assert len(workers) == 2
    assert proc.pgid == proc.proc.pid == os.getpgid(proc.proc.pid)  # it leads a group of its own
    assert {os.getpgid(w.pid) for w in workers} == {proc.pgid}
    workers[0].suspend()
    return proc, [proc.proc.pid, *(w.pid for w in workers)]


def test_close_ends_the_daemon_and_every_worker(tmp_path: Path) -> None:
    """The helper's teardown path: the parent's SIGTERM cannot finish the stop (a worker is frozen), so it
    is the group's SIGKILL that ends them all, the frozen worker included; close() returns only then."""
    proc, pids = start_with_a_frozen_worker(tmp_path)
    assert sorted(running_in_group(proc.pgid)) == sorted(pids)
    proc.close(grace=0.5)
    assert running_in_group(proc.pgid) == []
    assert still_running(pids) == []
    assert proc not in helpers.LIVE
    assert proc.proc.returncode == -signal.SIGKILL


INNER = """
import json, os, signal
from pathlib import Path

import psutil

from tests.e2e.helpers import Proc
from tests.e2e.test_teardown import running_in_group, start_with_a_frozen_worker

REPORT = Path(os.environ["TEARDOWN_REPORT"])
HOW = os.environ["TEARDOWN_HOW"]


def test_leaves_its_daemon_running(tmp_path):
    proc, pids = start_with_a_frozen_worker(tmp_path)
    REPORT.write_text(json.dumps({"pgid": proc.pgid, "pids": pids}))
    if HOW == "fail":
        raise AssertionError("a test that fails with its daemon running")
    if HOW == "interrupt":
        raise KeyboardInterrupt
    signal.pause()  # until the SIGTERM the outer test sends pytest
    raise AssertionError("SIGTERM did not end pytest")


def test_runs_after_the_failed_one():
    # The finaliser of the test before, not pytest's exit, ended its daemon.
    assert running_in_group(json.loads(REPORT.read_text())["pgid"]) == []
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["fail", "interrupt", "sigterm"])
def test_no_daemon_outlives_a_test_that_fails_or_is_interrupted(tmp_path: Path, how: str) -> None:
    """An inner pytest session, with the suite's conftest, runs a test that leaves its daemon running and
    then fails (the next test checks the daemon is gone already), is interrupted (Ctrl-C), or has pytest
    sent SIGTERM (as ``timeout`` does): no process of the daemon's group is left in any case."""
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER))
    report = tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), TEARDOWN_REPORT=str(report), TEARDOWN_HOW=how)
    cmd = [
        sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:randomly", "-p", "no:cacheprovider",
        "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT), f"--basetemp={tmp_path / 'base'}",
        "-q", str(tmp_path / "test_inner.py"),
    ]  # fmt: skip
    inner = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    pgid = None
    try:
        if how == "sigterm":
            deadline = time.monotonic() + 60
            while not report.exists() or not report.read_text():  # polled: the inner test writes a file
                assert inner.poll() is None, inner.communicate()[0]
                assert time.monotonic() < deadline, "the inner test never started its daemon"
                time.sleep(0.05)
            inner.send_signal(signal.SIGTERM)
        out, _ = inner.communicate(timeout=90)
        started = json.loads(report.read_text())
        pgid = started["pgid"]
        assert running_in_group(pgid) == [], out
        assert still_running(started["pids"]) == [], out
        if how == "fail":
            assert inner.returncode == 1, out
            assert "1 failed, 1 passed" in out, out
            assert "a test that fails with its daemon running" in out
        elif how == "interrupt":
            assert inner.returncode == 2, out  # pytest's "interrupted"
            assert "KeyboardInterrupt" in out, out
        else:
            assert inner.returncode == -signal.SIGTERM, out
    finally:
        if inner.poll() is None:
            inner.kill()
            inner.wait()
        if pgid is not None:
            helpers.kill_group(pgid)  # this test's own teardown, if what it checks failed
