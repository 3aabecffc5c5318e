"""The command line as users run it: exit codes, check-config, the default configuration, SIGTERM."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from forwardd import __version__
from forwardd.testing import ForwardClient
from tests.e2e.helpers import Proc, run_cli


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd)


def test_version() -> None:
    r = run("version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"forwardd {__version__} (native json lines: yes, native entry scan: yes)"


def test_check_config_reports_problems_with_file_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  - port: nope\n    bind: [1]\n")
    r = run("check-config", str(bad))
    assert r.returncode == 2
    assert f"{bad}:2: sources[0].port: expected an integer, got 'nope'" in r.stderr
    assert f"{bad}:3: sources[0].bind" in r.stderr


def test_run_refuses_a_route_to_an_unknown_output(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  - port: 0\nroutes:\n  - match: '**'\n    outputs: [missing]\n")
    r = run("run", "--config", str(bad))
    assert r.returncode == 2
    assert f"{bad}:5" in r.stderr
    assert "missing" in r.stderr


def test_check_config_prints_routes(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    r = run("check-config", str(root / "conf" / "forwardd.yaml"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()


def test_default_config_receives_and_writes_files_then_stops_cleanly(tmp_path: Path) -> None:
    """`forwardd` with no arguments: port 24224, JSON lines under ./forwardd-data/logs/."""
    proc = Proc(None, tmp_path)
    try:
        assert proc.port() == 24224
        with ForwardClient(port=24224) as c:
            c.message("docker.web", {"log": "hello"}, ack=True)
            c.packed("app", [{"n": i} for i in range(10)], ack=True, compressed="gzip")
    finally:
        code = proc.terminate()
    assert code == 0
    stopped = proc.wait_event("forwardd.stopped")
    assert stopped["level"] == "info"
    web = tmp_path / "forwardd-data" / "logs" / "docker.web"
    [day] = list(web.iterdir())
    assert json.loads(day.read_text())["log"] == "hello"
    app_lines = next((tmp_path / "forwardd-data" / "logs" / "app").iterdir()).read_text().splitlines()
    assert [json.loads(x)["n"] for x in app_lines] == list(range(10))


# --- where the configuration comes from: every form the README and --help show ---------------------------


def _bad_config(tmp_path: Path) -> Path:
    """A configuration that fails validation at a known line: a command that read it exits 2 naming it,
    one that ignored it would run (or check) the built-in default instead."""
    bad = tmp_path / "prod.yaml"
    bad.write_text("sources:\n  - port: 0\nroutes:\n  - match: '**'\n    outputs: [missing]\n")
    return bad


@pytest.mark.parametrize(
    "form",
    [
        ["-c", "{f}", "run"],
        ["--config", "{f}", "run"],
        ["run", "-c", "{f}"],
        ["run", "--config", "{f}"],
        ["-c", "{f}"],
        ["--config={f}"],
        ["-c", "{f}", "check-config"],
        ["--config", "{f}", "check-config"],
        ["check-config", "{f}"],
        ["check-config", "-c", "{f}"],
        ["check-config", "--config", "{f}"],
        ["-c", "{f}", "check-config", "{f}"],
        ["-c", "{f}", "run", "--config", "{f}"],
    ],
    ids=lambda form: " ".join(form),
)
def test_the_configuration_file_is_read_whatever_the_form(tmp_path: Path, form: list[str]) -> None:
    bad = _bad_config(tmp_path)
    r = run(*[a.replace("{f}", str(bad)) for a in form])
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert f"{bad}:5" in r.stderr
    assert "missing" in r.stderr


@pytest.mark.parametrize(
    ("form", "message"),
    [
        (["-c", "a.yaml", "run", "-c", "b.yaml"], "-c/--config given twice with different values"),
        (["--config", "a.yaml", "check-config", "b.yaml"], "two configuration files given"),
        (["check-config", "a.yaml", "--config", "b.yaml"], "two configuration files given"),
        (["--log-level", "debug", "check-config"], "--log-level not used by `forwardd check-config`"),
        (["check-config", "--log-format", "json"], "--log-format not used by `forwardd check-config`"),
        (["-c", "a.yaml", "version"], "-c/--config not used by `forwardd version`"),
        (["version", "--config", "a.yaml"], "-c/--config not used by `forwardd version`"),
        (["--log-level", "info", "run", "--log-level", "debug"], "--log-level given twice"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_a_conflicting_or_unused_option_is_an_error(form: list[str], message: str) -> None:
    r = run(*form)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr
    assert "usage: forwardd" in r.stderr


def test_check_config_accepts_the_same_file_in_either_place(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    conf = str(root / "conf" / "forwardd.yaml")
    outs = {tuple(f): run(*f) for f in (["check-config", conf], ["-c", conf, "check-config"])}
    for form, r in outs.items():
        assert r.returncode == 0, (form, r.stderr)
    assert len({r.stdout for r in outs.values()}) == 1
