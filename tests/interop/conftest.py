"""Interop fixtures: the npm fluent-logger package, installed once per session if missing."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

NODE_DIR = Path(__file__).parent / "node"


@pytest.fixture(scope="session")
def node_sender() -> Any:
    """A function running node/send.js with a spec; returns its JSON summary and exit status."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    assert node is not None, "the node tests need node on PATH"
    assert npm is not None, "the node tests need npm on PATH"
    if not (NODE_DIR / "node_modules" / "fluent-logger").is_dir():
        cmd = "ci" if (NODE_DIR / "package-lock.json").exists() else "install"
        subprocess.run(
            [npm, cmd, "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, capture_output=True, timeout=300
        )

    def run(spec: dict[str, Any], timeout: float = 60) -> tuple[dict[str, Any], int, str]:
        proc = subprocess.run(
            [node, str(NODE_DIR / "send.js"), json.dumps(spec)],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        lines = proc.stdout.strip().splitlines()
        assert lines, f"send.js printed nothing; stderr: {proc.stderr}"
        return json.loads(lines[-1]), proc.returncode, proc.stderr

    return run
