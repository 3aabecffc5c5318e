"""Routing and filters end to end: PyPI's fluent-logger sends over a real socket, the daemon routes and
filters, the file outputs must hold exactly the expected records (checked after a graceful stop)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from fluent import sender

from forwardd.buffer import read_dead_letter
from forwardd.testing.daemon import RunningDaemon, run_daemon


def _config(tmp_path: Path, routes: list[dict[str, Any]], outputs: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "storage": {"path": str(tmp_path / "data")},
        "sources": [{"name": "in", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False}],
        "routes": routes,
        "outputs": {
            name: {"type": "file", "path": str(tmp_path / "out" / name / "${tag}.log")} for name in outputs
        },
        **extra,
    }


def _emit(d: RunningDaemon, tag: str, records: list[dict[str, Any]]) -> None:
    """Send with fluent-logger (which asks for no acks), then wait until the daemon has read them."""
    before = d.received()
    log = sender.FluentSender(tag, host="127.0.0.1", port=d.port(), nanosecond_precision=True)
    try:
        for r in records:
            assert log.emit(None, r), log.last_error
    finally:
        log.close()
    d.wait_received(before + len(records))


def _read(tmp_path: Path, output: str) -> dict[str, list[dict[str, Any]]]:
    """Records per tag in one output, with the added time key removed."""
    root = tmp_path / "out" / output
    got: dict[str, list[dict[str, Any]]] = {}
    if not root.exists():
        return got
    for f in sorted(root.iterdir()):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            rec.pop("time")
            got.setdefault(rec.pop("tag"), []).append(rec)
    return got


def test_first_match_continue_fanout_and_labels(tmp_path: Path) -> None:
    routes = [
        {"match": "app.audit", "relabel": "audit"},
        {"match": "app.*", "outputs": ["all", "app"], "continue": True},
        {"match": "app.{web,api}", "outputs": ["web"]},
        {"match": "**", "outputs": ["all"]},
    ]
    labels = {"audit": [{"match": "**", "outputs": ["audit"]}]}
    config = _config(tmp_path, routes, ["all", "app", "web", "audit"], labels=labels)
    with run_daemon(config) as d:
        _emit(d, "app.web", [{"n": 1}])
        _emit(d, "app.worker", [{"n": 2}])
        _emit(d, "app.audit", [{"n": 3}])
        _emit(d, "sys.kernel", [{"n": 4}])
    # app.* continues: later routes see its chunks too, and the first of them that matches wins: app.web
    # stops at app.{web,api}, app.worker goes on to ** and so reaches "all" a second time.
    assert _read(tmp_path, "all") == {
        "app.web": [{"n": 1}],
        "app.worker": [{"n": 2}, {"n": 2}],
        "sys.kernel": [{"n": 4}],
    }
    assert _read(tmp_path, "app") == {"app.web": [{"n": 1}], "app.worker": [{"n": 2}]}
    assert _read(tmp_path, "web") == {"app.web": [{"n": 1}]}
    assert _read(tmp_path, "audit") == {"app.audit": [{"n": 3}]}


def test_grep(tmp_path: Path) -> None:
    filters = [
        {
            "type": "grep",
            "regexp": [{"key": "level", "pattern": "^(error|warn)$"}],
            "exclude": [{"key": "msg", "pattern": "healthcheck"}],
        }
    ]
    config = _config(tmp_path, [{"match": "**", "filters": filters, "outputs": ["out"]}], ["out"])
    with run_daemon(config) as d:
        _emit(d, "app", [
            {"level": "error", "msg": "boom"},
            {"level": "info", "msg": "fine"},
            {"level": "warn", "msg": "healthcheck failed"},
            {"level": "warn", "msg": "disk"},
        ])  # fmt: skip
    assert _read(tmp_path, "out") == {
        "app": [{"level": "error", "msg": "boom"}, {"level": "warn", "msg": "disk"}]
    }


def test_record_modify(tmp_path: Path) -> None:
    filters = [
        {
            "type": "record_modify",
            "set": {"service": "${tag_parts[1]}", "host": "${hostname}"},
            "remove": ["secret"],
            "rename": {"msg": "message"},
        }
    ]
    config = _config(tmp_path, [{"match": "**", "filters": filters, "outputs": ["out"]}], ["out"])
    with run_daemon(config) as d:
        _emit(d, "app.billing", [{"msg": "paid", "secret": "x"}])
    assert _read(tmp_path, "out") == {
        "app.billing": [{"message": "paid", "service": "billing", "host": socket.gethostname()}]
    }


def test_parser_json_in_docker_log_field(tmp_path: Path) -> None:
    filters = [{"type": "parser", "key": "log", "format": "json", "remove_key_name_field": True}]
    config = _config(tmp_path, [{"match": "**", "filters": filters, "outputs": ["out"]}], ["out"])
    with run_daemon(config) as d:
        _emit(d, "docker.web", [
            {"log": '{"level": "info", "user": "alice"}', "source": "stdout"},
            {"log": "not json", "source": "stderr"},
        ])  # fmt: skip
    assert _read(tmp_path, "out") == {
        "docker.web": [
            {"level": "info", "user": "alice", "source": "stdout"},
            {"log": "not json", "source": "stderr"},  # kept as it was, and counted
        ]
    }


def test_tag_rewrite(tmp_path: Path) -> None:
    filters = [
        {"type": "tag_rewrite", "rules": [{"key": "level", "pattern": "^(error)$", "tag": "alert.$1"}]}
    ]
    config = _config(tmp_path, [{"match": "**", "filters": filters, "outputs": ["out"]}], ["out"])
    with run_daemon(config) as d:
        _emit(d, "app", [{"level": "error", "n": 1}, {"level": "info", "n": 2}])
    assert _read(tmp_path, "out") == {
        "alert.error": [{"level": "error", "n": 1}],
        "app": [{"level": "info", "n": 2}],
    }


def test_docker_partial_pieces_joined(tmp_path: Path) -> None:
    """A docker-shaped stream with a line split into partials (sent one per message, as docker does,
    interleaved with another container's line) comes out joined."""
    filters = [{"type": "docker_partial"}]
    config = _config(tmp_path, [{"match": "**", "filters": filters, "outputs": ["out"]}], ["out"])
    base = {"container_id": "c" * 64, "container_name": "/web", "source": "stdout"}
    pieces = ["a" * 16384, "b" * 16384, "tail"]
    msgs = [
        {**base, "log": p, "partial_message": "true", "partial_id": "pid1",
         "partial_ordinal": str(i + 1), "partial_last": "true" if i == 2 else "false"}
        for i, p in enumerate(pieces)
    ]  # fmt: skip
    other = {**base, "container_id": "d" * 64, "container_name": "/db", "log": "other line"}
    with run_daemon(config) as d:
        _emit(d, "docker", [msgs[0], other, msgs[1], msgs[2]])
    got = _read(tmp_path, "out")["docker"]
    assert got == [other, {**base, "log": "".join(pieces)}]


def test_error_label_receives_what_an_output_rejects_for_good(tmp_path: Path) -> None:
    """An output that can never write (its folder is a regular file: ENOTDIR, a permanent error) hands
    its chunks to the @ERROR routes, which commit them elsewhere; nothing goes to the dead-letter folder."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a regular file where the output wants a folder\n")
    config = _config(
        tmp_path,
        [{"match": "**", "outputs": ["broken"]}],
        ["errors"],
        labels={"@ERROR": [{"match": "**", "outputs": ["errors"]}]},
    )
    config["outputs"]["broken"] = {"type": "file", "path": str(blocker / "${tag}.log")}
    with run_daemon(config) as d:
        _emit(d, "app", [{"n": 1}, {"n": 2}])
    assert _read(tmp_path, "errors") == {"app": [{"n": 1}, {"n": 2}]}
    assert not list((tmp_path / "data" / "dead-letter").rglob("*.chunk"))


def test_without_an_error_label_rejected_chunks_go_to_the_dead_letter_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x\n")
    config = _config(tmp_path, [{"match": "**", "outputs": ["broken"]}], [])
    config["outputs"]["broken"] = {"type": "file", "path": str(blocker / "${tag}.log")}
    with run_daemon(config) as d:
        _emit(d, "app", [{"n": 1}])
    [parked] = list((tmp_path / "data" / "dead-letter" / "broken").glob("*.chunk"))
    assert [e.record for e in read_dead_letter(str(parked)).events()] == [{"n": 1}]
