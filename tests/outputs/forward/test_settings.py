"""The forward output's and docker_swarm's settings: validated with a located message for each mistake,
and built into the objects the daemon runs (the shipped Swarm examples included)."""

from __future__ import annotations

from pathlib import Path

import pytest

from forwardd.app import build_output, build_routes, load_config, parse_config
from forwardd.config import ConfigError
from forwardd.filters import DockerSwarm
from forwardd.outputs.forward import ForwardOutput
from tests.conftest import ROOT

BASE = """\
sources: [{name: in, port: 0}]
routes: [{match: "**", outputs: [fwd]}]
outputs:
  fwd:
    type: forward
"""


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + text, "main.yaml", env={})
    return [f"{p.path}: {p.message}" for p in err.value.problems]


def test_defaults_and_what_the_output_gets() -> None:
    cfg = parse_config(BASE + "    servers: [{host: agg.internal}]\n", env={})
    o = cfg.outputs["fwd"]
    assert (o.require_ack_response, o.compress, o.heartbeat_type, o.time_format) == (
        True, "none", "transport", "event_time",
    )  # fmt: skip
    out = build_output("fwd", o)
    assert isinstance(out, ForwardOutput)
    (spec,) = out.balancer.servers
    assert (spec.host, spec.port, spec.weight, spec.standby) == ("agg.internal", 24224, 60, False)
    assert out.require_ack
    assert out.ack_timeout == 30.0
    assert out.ssl_context is None
    assert out.security is None
    assert "forward agg.internal:24224 w60 acked compress=none heartbeat=transport" in cfg.describe()


def test_in_flight_is_the_outputs_concurrent_writes() -> None:
    one = build_output("fwd", parse_config(BASE + "    servers: [{host: a}]\n", env={}).outputs["fwd"])
    assert isinstance(one, ForwardOutput)
    assert one.concurrent_writes == 1, "one write at a time unless asked: order kept"
    cfg = parse_config(BASE + "    servers: [{host: a}]\n    in_flight: 8\n", env={})
    out = build_output("fwd", cfg.outputs["fwd"])
    assert isinstance(out, ForwardOutput)
    assert out.concurrent_writes == 8
    assert "in_flight=8" in cfg.describe()
    with pytest.raises(ValueError, match="in_flight"):
        ForwardOutput(servers=out.balancer.servers, in_flight=0)


def test_tls_and_security_are_built(tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    text = f"""\
    servers: [{{host: a, port: 1, weight: 3}}, {{host: b, standby: true, name: spare}}]
    tls: {{ca_file: {tmp_path / "ca.pem"}, server_name: agg.internal, min_version: "1.3"}}
    security: {{self_hostname: agent-1, shared_key: k, username: u, password: p}}
    compress: zstd
    time_format: integer
"""
    o = parse_config(BASE + text, env={}).outputs["fwd"]
    out = build_output("fwd", o)
    assert isinstance(out, ForwardOutput)
    assert out.ssl_context is not None
    assert out.tls_server_name == "agg.internal"
    assert out.security is not None
    assert out.security.username == "u"
    assert [s.label for s in out.balancer.servers] == ["a:1", "spare"]
    assert out.compression == "zstd"
    assert out.time_format == "integer"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("    servers: []\n", "outputs.fwd.servers: "),
        ("    servers: [{host: a, standby: true}]\n", "every server is standby"),
        (
            "    servers: [{host: a, weight: 0}, {host: b, standby: true}]\n",
            "every regular server has weight 0",
        ),
        ("    servers: [{host: a}, {host: a, port: 24224}]\n", "server a:24224 is already servers[0]"),
        ("    servers: [{host: a, port: 0}]\n", "outputs.fwd.servers[0].port: expected a number >= 1"),
        ("    servers: [{host: a}]\n    tls: {cert_file: c.pem}\n", "cert_file and key_file go together"),
        (
            "    servers: [{host: a}]\n    security: {shared_key: k, password: p}\n",
            "a password needs a username",
        ),
        ("    servers: [{host: a}]\n    ack_response_timeout: 0s\n", "outputs.fwd.ack_response_timeout"),
        ("    servers: [{host: a}]\n    heartbeat_type: tcp\n", "outputs.fwd.heartbeat_type"),
        ("    servers: [{host: a}]\n    compress: lz4\n", "outputs.fwd.compress"),
        ("    servers: [{host: a}]\n    max_message_size: 0\n", "outputs.fwd.max_message_size"),
        ("    servers: [{host: a}]\n    in_flight: 0\n", "outputs.fwd.in_flight: expected a number >= 1"),
        ("    servers: [{host: a}]\n    in_flight: 65\n", "outputs.fwd.in_flight: expected a number <= 64"),
    ],
)
def test_mistakes_are_located(text: str, message: str) -> None:
    problems = errors(text)
    assert any(message in p for p in problems), problems


def test_shipped_swarm_examples_build(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"FORWARDD_SHARED_KEY": "k"}
    agent = load_config(ROOT / "conf" / "examples" / "swarm-node-agent.yaml", env=env)
    out = build_output("aggregators", agent.outputs["aggregators"])
    assert isinstance(out, ForwardOutput)
    assert [s.host for s in out.balancer.servers] == ["tasks.log-aggregator"]
    assert out.security is not None
    assert out.compression == "zstd"
    assert [f.type for f in agent.routes[0].filters] == ["docker_partial"]
    assert agent.sources[0].unix is not None
    aggregator = load_config(ROOT / "conf" / "examples" / "swarm-log-aggregator.yaml", env=env)
    (route, _) = build_routes(aggregator.routes)
    (swarm,) = route.filters
    assert isinstance(swarm, DockerSwarm)
    assert swarm.remove_labels
    assert aggregator.sources[0].security is not None


def test_docker_swarm_settings() -> None:
    text = """\
sources: [{name: in, port: 0}]
routes:
  - match: "**"
    filters: [{type: docker_swarm, slot_key: replica, node_key: null, overwrite: true}]
    outputs: [o]
outputs: {o: {type: null}}
"""
    (route,) = build_routes(parse_config(text, env={}).routes)
    (f,) = route.filters
    assert isinstance(f, DockerSwarm)
    assert f.overwrite
    assert f._keys == {"service": "service", "task": "task", "slot": "replica"}
    bad = text.replace("slot_key: replica", "slot_key: task")
    with pytest.raises(ConfigError, match="must differ"):
        parse_config(bad, env={})
