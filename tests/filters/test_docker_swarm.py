"""docker_swarm: service, task, slot or node from what docker sends for a Swarm task, including the real
record of tests/data/wire-samples/clients/dockerd-swarm-service (a capture from a real dockerd)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forwardd.filters import DockerSwarm
from forwardd.filters.docker_swarm import swarm_identity
from forwardd.model import Chunk
from forwardd.protocol import EntriesReceived, ServerConnection
from tests.protocol.wire import client_capture

from .helpers import make_chunk, records

TASK = "ni622j04jlivi19d2snj1ap3k"
NODE = "g1hfdktzvqmjjv0jrtv98rtfh"
CID = "59ccb814c2ab67728e7deeb15461675302a904bacc2ebbc333fe7bce19124c34"


def docker(name: str, **labels: str) -> dict[str, str]:
    return {"container_id": CID, "container_name": name, "source": "stdout", "log": "hello", **labels}


def captured_chunks() -> list[Chunk]:
    """The chunks forwardd's server core makes of the real dockerd's bytes."""
    conn = ServerConnection()
    out = []
    for ev in conn.receive_data(client_capture("dockerd-swarm-service").client_bytes):
        if isinstance(ev, EntriesReceived):
            out.append(ev.chunk)
    return out


def test_the_real_swarm_task_record() -> None:
    chunks = captured_chunks()
    assert chunks
    f = DockerSwarm()
    for c in chunks:
        for rec in records(f(c)):
            assert rec["service"] == "kitsvc2"
            assert rec["task"] == TASK
            assert rec["slot"] == "1"
            assert rec["node"] == NODE, "the node.id label was passed"
            assert rec["log"].isdigit()
            assert rec["container_name"] == f"/kitsvc2.1.{TASK}"


def test_replicated_task_without_labels_from_the_container_name() -> None:
    (rec,) = records(DockerSwarm()(make_chunk("t", [docker(f"/web.3.{TASK}")])))
    assert {k: rec[k] for k in ("service", "task", "slot")} == {"service": "web", "task": TASK, "slot": "3"}
    assert "node" not in rec, "a replicated task's name does not say where it runs"


def test_global_task_carries_the_node_instead_of_a_slot() -> None:
    (rec,) = records(DockerSwarm()(make_chunk("t", [docker(f"/agent.{NODE}.{TASK}")])))
    assert (rec["service"], rec["task"], rec["node"]) == ("agent", TASK, NODE)
    assert "slot" not in rec


def test_stack_service_names_and_labels_win_over_the_name() -> None:
    labels = {
        "com.docker.swarm.service.name": "shop_web",
        "com.docker.swarm.task.id": TASK,
        "com.docker.swarm.node.id": NODE,
    }
    (rec,) = records(DockerSwarm()(make_chunk("t", [docker("/renamed-by-hand", **labels)])))
    assert (rec["service"], rec["task"], rec["node"]) == ("shop_web", TASK, NODE)
    assert "slot" not in rec
    (rec,) = records(DockerSwarm()(make_chunk("t", [docker(f"/shop_web.2.{TASK}")])))
    assert (rec["service"], rec["slot"]) == ("shop_web", "2")


@pytest.mark.parametrize(
    "name",
    [
        "/web",  # a plain container
        "/my.app.1",  # dots, but no 25-character task id
        f"/web.0.{TASK}",  # slots start at 1
        f"/web.x.{TASK}",
        f"/.1.{TASK}",
        f"/web.1.{TASK.upper()}",
        f"web.1.{TASK}x",
    ],
)
def test_not_a_swarm_task_is_left_alone(name: str) -> None:
    c = make_chunk("t", [docker(name)])
    assert DockerSwarm()(c) is c


def test_unchanged_chunks_keep_their_bytes_and_are_not_decoded() -> None:
    c = make_chunk("t", [{"log": "no docker fields here"}, {"a": 1}])
    assert DockerSwarm()(c) is c
    assert not c.decoded, "no container_name and no swarm label in the bytes: nothing to decode"
    plain = make_chunk("t", [docker("/web")])
    assert DockerSwarm()(plain) is plain


def test_only_changed_records_are_copied_and_the_input_is_not_touched() -> None:
    original = docker(f"/web.1.{TASK}")
    c = make_chunk("t", [docker("/web"), original, {"other": True}])
    before = [dict(e.record) for e in c.events()]
    out = DockerSwarm()(c)
    assert out is not c
    assert [e.record for e in c.events()] == before, "the chunk's own events may be shared with another route"
    recs = records(out)
    assert recs[0] == before[0]
    assert recs[2] == before[2]
    assert recs[1]["service"] == "web"
    assert [e.time_ns for e in out.events()] == [e.time_ns for e in c.events()]


def test_existing_fields_are_kept_unless_overwrite() -> None:
    rec = docker(f"/web.1.{TASK}", service="mine")
    (kept,) = records(DockerSwarm()(make_chunk("t", [rec])))
    assert kept["service"] == "mine"
    assert kept["task"] == TASK
    (over,) = records(DockerSwarm(overwrite=True)(make_chunk("t", [rec])))
    assert over["service"] == "web"
    complete = docker(f"/web.1.{TASK}", service="web", task=TASK, slot="1")
    c = make_chunk("t", [complete])
    assert DockerSwarm(overwrite=True)(c) is c, "nothing to change"


def test_field_names_and_remove_labels() -> None:
    labels = {"com.docker.swarm.service.name": "web", "com.docker.swarm.task.name": f"web.4.{TASK}"}
    f = DockerSwarm(service_key="svc", task_key=None, slot_key="replica", node_key=None, remove_labels=True)
    (rec,) = records(f(make_chunk("t", [docker("/x", **labels)])))
    assert rec == {"container_id": CID, "container_name": "/x", "source": "stdout", "log": "hello",
                   "svc": "web", "replica": "4"}  # fmt: skip


def test_a_field_named_like_a_label_survives_remove_labels() -> None:
    f = DockerSwarm(service_key="com.docker.swarm.service.name", remove_labels=True)
    (rec,) = records(
        f(make_chunk("t", [docker(f"/web.1.{TASK}", **{"com.docker.swarm.service.name": "web"})]))
    )
    assert rec["com.docker.swarm.service.name"] == "web"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"service_key": ""}, "service_key"),
        ({"task_key": "service"}, "must differ"),
        ({"service_key": None, "task_key": None, "slot_key": None, "node_key": None}, "does nothing"),
    ],
)
def test_bad_settings(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DockerSwarm(**kwargs)


def test_odd_values_never_raise() -> None:
    odd = [
        {"container_name": 5},
        {"container_name": None, "com.docker.swarm.service.name": ["x"]},
        {"container_name": b"/web.1." + TASK.encode()},
        {1: 2, (1, 2): "x", "com.docker.swarm.task.name": {"a": 1}},
        {"com.docker.swarm.task.id": TASK},
        {"container_name": "/" * 1000 + f"web.1.{TASK}"},
        {"container_name": "\udcff.1." + TASK},
    ]
    for rec in odd:
        ident = swarm_identity(rec)
        assert ident is None or isinstance(ident, dict)
    assert swarm_identity({"com.docker.swarm.task.id": TASK}) == {"task": TASK}


_ints = st.integers(-(2**63), 2**64 - 1)
_values = st.one_of(
    st.none(), st.booleans(), _ints, st.floats(), st.text(max_size=40), st.binary(max_size=10),
    st.lists(_ints, max_size=2), st.dictionaries(st.text(max_size=3), _ints, max_size=2),
    st.sampled_from([f"/web.1.{TASK}", f"web.{NODE}.{TASK}", TASK, NODE, "/web", ""]),
)  # fmt: skip
_keys = st.one_of(
    st.sampled_from(["container_name", "container_id", "service", "task", "slot", "node",
                     "com.docker.swarm.service.name", "com.docker.swarm.task.name",
                     "com.docker.swarm.task.id", "com.docker.swarm.node.id"]),
    st.text(max_size=8), _ints,
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.dictionaries(_keys, _values, max_size=8), max_size=6), st.booleans(), st.booleans())
def test_property_any_record_goes_through_with_its_other_fields(
    recs: list[dict[Any, Any]], overwrite: bool, remove: bool
) -> None:
    entries = b"".join(msgpack.packb([1_700_000_000, r], use_bin_type=True) for r in recs)
    c = Chunk("t", entries, len(recs), 0)
    out = DockerSwarm(overwrite=overwrite, remove_labels=remove)(c)
    got = records(out)
    want = records(c)
    assert len(got) == len(want)
    ours = {"service", "task", "slot", "node"}
    for before, after in zip(want, got, strict=True):
        for k, v in before.items():
            if k in ours and overwrite:
                continue
            if remove and isinstance(k, str) and k.startswith("com.docker.swarm."):
                continue
            assert after[k] == v or (v != v and after[k] != after[k]), k  # NaN is not equal to itself
