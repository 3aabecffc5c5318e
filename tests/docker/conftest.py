"""The real Docker engine (Debian's docker.io, started by scripts/docker/realdocker.sh) for tests of what
`docker run --log-driver=fluentd` sends. One dockerd per test session, stopped at the end."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import DOCKER_SCRIPT


@dataclass
class Docker:
    script: Path
    env: dict[str, str]

    def run(self, name: str, *args: str, cmd: list[str], timeout: float = 180) -> str:
        """Run a container to completion with the fluentd log driver; returns the script's report."""
        r = subprocess.run(
            [str(self.script), "run", name, *args, "--", *cmd],
            env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert "exit status 0" in r.stdout, (r.stdout, r.stderr)
        return r.stdout

    @property
    def cli_env(self) -> dict[str, str]:
        """The environment for running `docker` itself against this engine."""
        return dict(self.env, DOCKER_HOST=f"unix://{self.env['DK']}/docker.sock")

    def cli(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        """`docker ARGS` against this engine; its stdout (a failure shows both streams)."""
        r = subprocess.run(
            ["docker", *args], env=self.cli_env, capture_output=True, text=True, timeout=timeout, check=False
        )
        assert r.returncode == 0 or not check, (args, r.stdout, r.stderr)
        return r.stdout

    def cli_with(self, env: dict[str, str], *args: str, timeout: float = 120) -> str:
        """`docker ARGS` with this environment (`docker stack deploy` reads its variables from it)."""
        r = subprocess.run(
            ["docker", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r.stdout + r.stderr

    def logs(self, container: str) -> str:
        """What the container wrote (forwardd logs on stderr)."""
        r = subprocess.run(
            ["docker", "logs", container], env=self.cli_env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, timeout=60, check=False,
        )  # fmt: skip
        return r.stdout

    def swarm_init(self) -> None:
        """Make this engine a single-node swarm (left again at the end of the session)."""
        r = subprocess.run(
            [str(self.script), "swarm-init"], env=self.env, capture_output=True, text=True, timeout=90,
            check=False,
        )  # fmt: skip
        assert r.returncode == 0, (r.stdout, r.stderr)

    def service(self, name: str, *args: str, cmd: list[str], timeout: float = 240) -> str:
        r = subprocess.run(
            [str(self.script), "service", name, *args, "--", *cmd],
            env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        assert r.returncode == 0, (r.stdout, r.stderr)
        return r.stdout


@pytest.fixture(scope="session")
def docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Docker]:
    script = DOCKER_SCRIPT
    assert shutil.which("dockerd"), "dockerd is not installed (scripts/test installs docker.io)"
    dk = tmp_path_factory.mktemp("dockerd")
    env = dict(os.environ, DK=str(dk), WAIT_S="120")
    env.pop("DOCKER_HOST", None)
    start = subprocess.run(
        [str(script), "start"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert start.returncode == 0, (start.stdout, start.stderr)
    try:
        image = subprocess.run(
            [str(script), "image"], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert image.returncode == 0, (image.stdout, image.stderr)
        yield Docker(script, env)
    finally:
        subprocess.run([str(script), "swarm-leave"], env=env, capture_output=True, timeout=90, check=False)
        subprocess.run([str(script), "stop"], env=env, capture_output=True, timeout=60, check=False)


@pytest.fixture(scope="session")
def forwardd_image(docker: Docker, tmp_path_factory: pytest.TempPathFactory) -> str:
    """forwardd's image (tests/docker/image.py), built once a session; its tag."""
    from tests.docker import image

    took = image.build(docker.cli_env, tmp_path_factory.mktemp("image"))
    print("forwardd image: " + ", ".join(f"{k} at {v:.1f}s" for k, v in took.items()))
    return image.IMAGE_TAG
