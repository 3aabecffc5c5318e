"""The stop's watchdog (forwardd.lifecycle) guards the event loop's stop only: once that stop is over, the
interpreter's own exit must not be cut short by it. It stayed armed until the process ended, so a stop
that used its whole budget left the exit a few hundred milliseconds; when the exit took longer (a loaded
machine), the watchdog fired while the interpreter finalized - seen once as a SIGSEGV (-11) after a stop
that had gone well. Here the exit is made slow on purpose (an atexit handler that sleeps, installed through
sitecustomize) and must still end with code 0.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.e2e.helpers import Proc

STOP = 1.0
EXIT_SLEEP = 2.5  # past the watchdog, which fires at STOP - margin / 2 after the signal


def test_a_slow_exit_after_a_clean_stop_is_not_cut_by_the_watchdog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    hook = f"import atexit, time\natexit.register(time.sleep, {EXIT_SLEEP})\n"
    (site / "sitecustomize.py").write_text(hook)
    monkeypatch.setenv("PYTHONPATH", f"{site}:{Path(__file__).resolve().parents[2]}")
    proc = Proc(
        {
            "shutdown_timeout": f"{STOP}s",
            "storage": {"path": str(tmp_path / "data")},
            "sources": [{"name": "in", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False}],
            "routes": [{"match": "**", "outputs": ["out"]}],
            "outputs": {"out": {"type": "null"}},
        },
        tmp_path,
    )
    proc.wait_ready()
    proc.proc.send_signal(signal.SIGTERM)
    code = proc.proc.wait(EXIT_SLEEP + 30)
    proc.wait(10)
    assert code == 0, "\n".join(proc.raw[-30:])
    assert not any("Timeout" in line or "Thread 0x" in line for line in proc.raw), "the watchdog fired"
