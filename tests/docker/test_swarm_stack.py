"""deploy/swarm/stack.yml deployed with `docker stack deploy` on the real single-node swarm, with forwardd's
image (tests/docker/image.py): its TLS material and shared key are Docker secrets (a TLS client with the
key is accepted, one with a wrong key is not), and a Swarm service logs to it through docker's fluentd
driver with fluentd-request-ack=true over the node's Unix socket while forwardd's service is updated
(`docker service update --force`: a rolling restart, stop-first). Every line arrives at least once, the
duplicates are counted, the old task stopped cleanly (exit 0) and the new one took over the same storage.

The logger is driven through a bind-mounted directory, not timed: it logs until told to stop, then logs
"last N" and waits to be told to exit. Docker gives a container's log copier 10 s after the container
exits and then drops what is left ("Logger didn't exit in time: logs may be truncated"), so a logger that
exits with lines still queued in the driver would lose them on docker's side, whatever the receiver does.
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trustme

from forwardd.testing import ForwardClient
from tests.conftest import ROOT
from tests.docker.conftest import Docker
from tests.docker.test_image import UID, free_port, wait

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(600)]

STACK = "fwdstack"
SERVICE = f"{STACK}_forwardd"
LOGGER = "fwdstack-logger"
SECRETS = ("forwardd_shared_key", "forwardd_tls_cert", "forwardd_tls_key")
LABELS = ",".join(f"com.docker.swarm.{x}" for x in ("service.name", "task.name", "task.id", "node.id"))
#: Lines until /ctl/stop, a pause every ten (about 150 a second, a fraction of what the driver's acks allow,
#: so the backlog left by forwardd's restart drains), then "last N", then wait for /ctl/exit.
SCRIPT = (
    "i=0; while [ ! -e /ctl/stop ]; do i=$((i+1)); echo $i; [ $((i % 10)) = 0 ] && sleep 0.05; done; "
    'echo "last $i"; while [ ! -e /ctl/exit ]; do sleep 0.1; done'
)


def records(data: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted((data / "logs").rglob("*.log")):
        for text in path.read_text().split("\n"):
            if text.strip():
                try:
                    out.append(json.loads(text))
                except ValueError:  # the line being written right now
                    pass
    return out


def instant(rfc3339: str) -> tuple[str, str]:
    """Docker's RFC 3339 time (nanoseconds, trailing zeros cut) in a form that sorts."""
    whole, _, frac = rfc3339.strip().rstrip("Z").partition(".")
    return whole, frac.ljust(9, "0")


def forwardd_container(docker: Docker) -> str:
    """The id of the service's running, healthy task container ("" while there is none)."""
    ids = docker.cli(
        "ps",
        "-q",
        "--no-trunc",
        "-f",
        f"label=com.docker.swarm.service.name={SERVICE}",
        "-f",
        "health=healthy",
    ).split()
    return ids[0] if len(ids) == 1 else ""


def test_stack_rolling_update_while_a_service_logs(
    docker: Docker, forwardd_image: str, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    port = free_port()
    sock_dir, ctl = tmp_path / "sock", tmp_path / "ctl"
    for d in (sock_dir, ctl):
        d.mkdir()
    os.chown(sock_dir, UID, UID)  # what the stack file asks of every node: install -d -o 10001 /run/forwardd
    ca = trustme.CA()
    cert = ca.issue_cert("forwardd.test")
    files = {"forwardd_tls_cert": tmp_path / "server.crt", "forwardd_tls_key": tmp_path / "server.key"}
    cert.cert_chain_pems[0].write_to_path(str(files["forwardd_tls_cert"]))
    cert.private_key_pem.write_to_path(str(files["forwardd_tls_key"]))
    key = secrets.token_hex(16)
    files["forwardd_shared_key"] = tmp_path / "shared_key"
    files["forwardd_shared_key"].write_text(key + "\n")  # as `echo` makes it: the newline is not the key

    docker.swarm_init()
    env = dict(
        docker.cli_env,
        FORWARDD_IMAGE=forwardd_image,
        FORWARDD_PORT=str(port),
        FORWARDD_SOCKET_DIR=str(sock_dir),
    )
    logger: dict[str, str] = {}
    thread = threading.Thread(target=lambda: None)
    first = ""
    try:
        for name, path in files.items():
            docker.cli("secret", "create", name, str(path))
        deploy = docker.cli_with(
            env,
            "stack",
            "deploy",
            "--resolve-image",
            "never",
            "-c",
            str(ROOT / "deploy/swarm/stack.yml"),
            STACK,
        )
        wait(lambda: forwardd_container(docker) != "", 120, f"a healthy forwardd task ({deploy})")
        first = forwardd_container(docker)
        data = Path(docker.cli("volume", "inspect", "-f", "{{.Mountpoint}}", f"{STACK}_data").strip())
        deployed = time.monotonic()

        # The secrets: a client with the CA and the shared key is accepted; a wrong key is refused.
        tls = ssl.create_default_context()
        ca.configure_trust(tls)
        peer = {"ssl_context": tls, "server_hostname": "forwardd.test"}
        with ForwardClient("127.0.0.1", port, shared_key=key, **peer) as c:
            c.message("remote.tls", {"msg": "over TLS with the shared key"}, ack=True)
        with ForwardClient("127.0.0.1", port, shared_key="not the key", **peer) as bad:
            assert bad.pong is not None
            assert bad.pong[1] is False, bad.pong  # PONG: authentication refused
            assert bad.closed_by_server(10)

        def run_logger() -> None:
            logger["out"] = docker.service(
                LOGGER,
                "--mount", f"type=bind,src={ctl},dst=/ctl",
                "--log-opt", f"fluentd-address=unix://{sock_dir}/forwardd.sock",
                "--log-opt", "fluentd-request-ack=true",
                "--log-opt", "tag=swarm.{{.Name}}",
                "--log-opt", f"labels={LABELS}",
                cmd=["sh", "-c", SCRIPT],
                timeout=400,
            )  # fmt: skip

        thread = threading.Thread(target=run_logger)
        thread.start()
        lines = lambda: [r for r in records(data) if r.get("service") == LOGGER]  # noqa: E731
        wait(lambda: len(lines()) >= 300 or not thread.is_alive(), 120, "the first lines")
        assert thread.is_alive(), logger

        # The rolling restart, while the service logs: stop-first (the old task exits before the new one
        # starts), the new one must become healthy. The update then watches it for update_config.monitor
        # before it is complete: the logging goes on meanwhile, and completion is checked at the end.
        before = len(lines())
        updating = time.monotonic()
        docker.cli_with(env, "service", "update", "--force", "--detach", SERVICE)
        exited = lambda: docker.cli("inspect", "-f", "{{.State.Status}}", first).strip() == "exited"  # noqa: E731
        wait(lambda: exited() and forwardd_container(docker) not in ("", first), 180, "a new healthy task")
        updated = time.monotonic()
        second = forwardd_container(docker)
        assert docker.cli("inspect", "-f", "{{.State.ExitCode}}", first).strip() == "0", "a clean stop"
        started = instant(docker.cli("inspect", "-f", "{{.State.StartedAt}}", second))
        finished = instant(docker.cli("inspect", "-f", "{{.State.FinishedAt}}", first))
        assert finished < started, "stop-first: the old task was gone before the new one started"
        # Lines written through the new task: logging went on through the restart.
        at_update = len(lines())
        wait(lambda: len(lines()) >= at_update + 300, 120, "lines through the new task")
        state = lambda: docker.cli("service", "inspect", "-f", "{{.UpdateStatus.State}}", SERVICE).strip()  # noqa: E731
        wait(lambda: state() == "completed", 120, "the update complete")
        (ctl / "stop").touch()
        wait(lambda: any(r["log"].startswith("last ") for r in lines()), 120, "the last line")
        (ctl / "exit").touch()
        thread.join(120)
        assert not thread.is_alive()
        assert "Complete" in logger["out"], logger
        got = lines()
        remote = [r for r in records(data) if r.get("msg") == "over TLS with the shared key"]
    finally:
        (ctl / "stop").touch()
        (ctl / "exit").touch()
        if thread.ident is not None:
            thread.join(120)
        stack_logs = docker.logs(first) if first else ""
        docker.cli("stack", "rm", STACK, check=False)
        wait(lambda: not docker.cli("ps", "-aq", "-f", f"label=com.docker.stack.namespace={STACK}"), 120,
             "the stack's containers gone")  # fmt: skip
        docker.cli("volume", "rm", f"{STACK}_data", check=False)
        for name in SECRETS:
            docker.cli("secret", "rm", name, check=False)
    done = time.monotonic()

    counts = Counter(r["log"] for r in got)
    [last] = [k for k in counts if k.startswith("last ")]
    n = int(last.split()[1])
    want = {str(i) for i in range(1, n + 1)} | {last}
    assert set(counts) == want, f"missing: {sorted(want - set(counts), key=len)[:20]}"
    duplicates = sum(counts.values()) - len(counts)
    print(
        f"swarm stack: {n} lines, {duplicates} duplicates ({[k for k, v in counts.items() if v > 1]}), "
        f"{before} before the update; deploy {deployed - t0:.1f}s, update {updated - updating:.1f}s, "
        f"whole {done - t0:.1f}s"
    )
    # One connection, one line in flight: a restart can cut off at most the ack of the line in flight.
    assert duplicates <= 2, counts.most_common(5)
    assert len(remote) == 1
    for r in got:
        assert (r["service"], r["slot"], len(r["node"])) == (LOGGER, "1", 25)
        assert not any(k.startswith("com.docker.swarm.") for k in r)
    assert '"event":"forwardd.stopped"' in stack_logs.replace(" ", "")
