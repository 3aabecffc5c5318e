"""forwardd's image (the repository's Dockerfile, built by tests/docker/image.py from a Debian base with
no registry and no index) run on the real Docker engine: a real container logs to it through docker's
fluentd driver with acks, and the events are in the files of its data volume; the process runs as the
image's non-root user, the volume holds the storage (buffer, lock), the health check says healthy, and
`docker stop` is a clean stop (exit 0)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.docker.conftest import Docker

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(600)]

N = 400
UID = 10001  # the Dockerfile's forwardd user


def free_port() -> int:
    """A port nothing listens on now (the container shares the host's network: docker runs here with no
    bridge, and docker's fluentd driver dials from the host anyway)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def file_lines(directory: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(directory.rglob("*.log")):
        out += [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return out


def test_image_logs_to_its_volume_as_non_root_and_is_healthy(
    docker: Docker, forwardd_image: str, tmp_path: Path
) -> None:
    port, ops_port = free_port(), free_port()
    conf = tmp_path / "conf"
    conf.mkdir()
    # The image's environment gives the data directory; the test only moves the port off 24224.
    (conf / "forwardd.yaml").write_text(
        f"storage: {{path: '${{FORWARDD_DATA_DIR}}'}}\n"
        f"sources: [{{name: main, bind: 127.0.0.1, port: {port}}}]\n"
        f"http_server: {{port: {ops_port}}}\n"
        "routes: [{match: '**', outputs: [files]}]\n"
        "outputs: {files: {type: file, path: '${FORWARDD_DATA_DIR}/logs/${tag}.log'}}\n"
    )
    config = json.loads(docker.cli("image", "inspect", "-f", "{{json .Config}}", forwardd_image))
    assert config["User"] == "forwardd"
    assert list(config["Volumes"]) == ["/var/lib/forwardd"]
    assert config["Healthcheck"]["Test"] == ["CMD", "python3", "/usr/local/bin/forwardd-healthcheck"]
    assert config["Entrypoint"] == ["forwardd"]
    assert "FORWARDD_HEALTH=http://127.0.0.1:24220/health" in config["Env"], "the check asks /health"
    name, volume = "fwd-image", "fwd-image-data"
    docker.cli("rm", "-f", name, check=False)
    docker.cli("volume", "rm", "-f", volume, check=False)
    docker.cli("volume", "create", volume)
    try:
        docker.cli(
            "run", "-d", "--name", name, "--network", "host",
            "-v", f"{volume}:/var/lib/forwardd", "-v", f"{conf}:/etc/forwardd/test:ro",
            "-e", f"FORWARDD_HEALTH=http://127.0.0.1:{ops_port}/health",
            "--health-interval", "1s",  # the image's own check, probed sooner than its 10s
            forwardd_image, "run", "--config", "/etc/forwardd/test/forwardd.yaml",
        )  # fmt: skip
        health = lambda: json.loads(docker.cli("inspect", "-f", "{{json .State.Health}}", name))  # noqa: E731
        wait(lambda: health()["Status"] == "healthy", 60, "healthy")
        assert health()["Log"][-1]["ExitCode"] == 0

        docker.run(
            "fwd-image-logger",
            "--log-opt", f"fluentd-address=127.0.0.1:{port}",
            "--log-opt", "fluentd-request-ack=true",
            "--log-opt", "tag=image.{{.Name}}",
            cmd=["sh", "-c", f"seq 1 {N}"],
        )  # fmt: skip
        # Every line was acked before the logger exited: an ack means it is on the volume's disk buffer.
        data = Path(docker.cli("volume", "inspect", "-f", "{{.Mountpoint}}", volume).strip())
        wait(lambda: len(file_lines(data / "logs")) >= N, 30, "the lines in the volume's files")

        pid = int(docker.cli("inspect", "-f", "{{.State.Pid}}", name))
        uids = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Uid:"))
        assert uids.split()[1:] == [str(UID)] * 4, uids  # real, effective, saved, filesystem
        gids = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Gid:"))
        assert gids.split()[1:] == [str(UID)] * 4, gids
        assert (data / "forwardd.lock").exists(), "the storage (and its lock) is on the volume"
        assert (data / "buffer" / "files").is_dir()
        assert {p.stat().st_uid for p in data.rglob("*")} == {UID}, "all written by the non-root user"

        docker.cli("stop", name, timeout=60)
        assert docker.cli("inspect", "-f", "{{.State.ExitCode}}", name).strip() == "0"
    finally:
        logs = docker.logs(name)
        docker.cli("rm", "-f", name, check=False)

    lines = file_lines(data / "logs")
    assert sorted(int(r["log"]) for r in lines) == list(range(1, N + 1)), "every line exactly once"
    assert {r["container_name"] for r in lines} == {"/fwd-image-logger"}
    assert {r["tag"] for r in lines} == {"image.fwd-image-logger"}
    assert '"event":"forwardd.stopped"' in logs.replace(" ", "")
    docker.cli("volume", "rm", volume)
