"""Consecutive Message-mode requests of one tag in one read become one chunk, with their acks back to
back in request order; anything else in between ends the group, so replies keep their order."""

from __future__ import annotations

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from forwardd.protocol import EntriesReceived, Heartbeat, ServerConnection, encode

T = encode.event_time(1_700_000_000_000_000_000)


def msg(tag: str, i: int, chunk: str | None = None) -> bytes:
    return encode.message(tag, T, {"i": i}, chunk=chunk)


def test_same_tag_messages_in_one_read_are_one_chunk_with_their_acks_in_order() -> None:
    events = ServerConnection().receive_data(msg("a", 0, "c0") + msg("a", 1) + msg("a", 2, "c2"))
    [ev] = events
    assert isinstance(ev, EntriesReceived)
    assert (ev.requests, ev.acks, ev.chunk.count) == (3, 2, 3)
    assert [e.record["i"] for e in ev.chunk.events()] == [0, 1, 2]
    assert list(_feed(ev.ack)) == [{"ack": "c0"}, {"ack": "c2"}]


def test_another_tag_or_event_ends_the_group() -> None:
    data = msg("a", 0, "x") + msg("b", 1, "y") + msgpack.packb(None) + msg("b", 2, "z") + msg("b", 3)
    events = ServerConnection().receive_data(data)
    assert [type(e) for e in events] == [EntriesReceived, EntriesReceived, Heartbeat, EntriesReceived]
    assert [(e.chunk.tag, e.requests) for e in events if isinstance(e, EntriesReceived)] == [
        ("a", 1), ("b", 1), ("b", 2),
    ]  # fmt: skip


def test_merging_can_be_turned_off() -> None:
    conn = ServerConnection()
    conn.decoder.merge_messages = False
    events = conn.receive_data(msg("a", 0, "c0") + msg("a", 1, "c1"))
    assert [e.requests for e in events if isinstance(e, EntriesReceived)] == [1, 1]


@given(st.lists(st.tuples(st.sampled_from("ab"), st.booleans()), min_size=1, max_size=30), st.integers(1, 64))
def test_merged_or_not_the_events_and_acks_are_the_same_in_order(
    plan: list[tuple[str, bool]], cut: int
) -> None:
    """Whatever the grouping (which depends on read boundaries), the events and the acks in order are
    those of the requests one by one."""
    data = b"".join(msg(tag, i, f"k{i}" if ack else None) for i, (tag, ack) in enumerate(plan))
    conn = ServerConnection()
    got: list[tuple[str, int]] = []
    acks: list[str] = []
    for k in range(0, len(data), cut):
        for ev in conn.receive_data(data[k : k + cut]):
            assert isinstance(ev, EntriesReceived)
            got += [(ev.chunk.tag, e.record["i"]) for e in ev.chunk.events()]
            if ev.ack:
                acks += [a["ack"] for a in _feed(ev.ack)]
    assert got == [(tag, i) for i, (tag, _) in enumerate(plan)]
    assert acks == [f"k{i}" for i, (_, ack) in enumerate(plan) if ack]


def _feed(data: bytes | None) -> msgpack.Unpacker:
    u = msgpack.Unpacker()
    u.feed(data or b"")
    return u


# --- every Message shape on the fast path --------------------------------------------------------------


def shaped(tag: str, i: int, shape: str) -> bytes:
    """One request of ``shape``: what fluent-logger for Python (no option), docker and Fluent Bit send."""
    record = {"i": i}
    return {
        "3": msgpack.packb([tag, T, record], use_bin_type=True),
        "nil": msgpack.packb([tag, T, record, None], use_bin_type=True),
        "{}": msgpack.packb([tag, T, record, {}], use_bin_type=True),
        "chunk": msgpack.packb([tag, T, record, {"chunk": f"k{i}"}], use_bin_type=True),
        "size": msgpack.packb([tag, T, record, {"size": 1}], use_bin_type=True),
        "chunk+size": msgpack.packb([tag, T, record, {"chunk": f"k{i}", "size": 1}], use_bin_type=True),
        "size+chunk": msgpack.packb([tag, T, record, {"size": 1, "chunk": f"k{i}"}], use_bin_type=True),
        "int-time": msgpack.packb([tag, 1_700_000_000, record], use_bin_type=True),
        "float-time": msgpack.packb([tag, 1_700_000_000.5, record, {"chunk": f"k{i}"}], use_bin_type=True),
    }[shape]


SHAPES = ["3", "nil", "{}", "chunk", "size", "chunk+size", "size+chunk", "int-time", "float-time"]
ACKED = {"chunk", "chunk+size", "size+chunk", "float-time"}


def test_three_element_requests_are_merged_like_the_others() -> None:
    """fluent-logger for Python sends [tag, time, record]: one event per chunk made it 5x slower."""
    [ev] = ServerConnection().receive_data(b"".join(shaped("py", i, "3") for i in range(50)))
    assert isinstance(ev, EntriesReceived)
    assert (ev.requests, ev.acks, ev.ack, ev.chunk.count) == (50, 0, None, 50)


def test_requests_of_every_shape_and_one_tag_are_one_chunk_with_their_acks_in_order() -> None:
    data = b"".join(shaped("t", i, shape) for i, shape in enumerate(SHAPES))
    [ev] = ServerConnection().receive_data(data)
    assert isinstance(ev, EntriesReceived)
    assert (ev.requests, ev.chunk.count) == (len(SHAPES), len(SHAPES))
    assert [e.record["i"] for e in ev.chunk.events()] == list(range(len(SHAPES)))
    assert [a["ack"] for a in _feed(ev.ack)] == [f"k{i}" for i, s in enumerate(SHAPES) if s in ACKED]
    assert ev.acks == len(ACKED)


@given(
    st.lists(st.tuples(st.sampled_from("ab"), st.sampled_from(SHAPES)), min_size=1, max_size=30),
    st.integers(1, 64),
)
def test_merged_or_not_every_shape_gives_the_same_events_and_acks_in_order(
    plan: list[tuple[str, str]], cut: int
) -> None:
    data = b"".join(shaped(tag, i, shape) for i, (tag, shape) in enumerate(plan))
    conn = ServerConnection()
    got: list[tuple[str, int]] = []
    acks: list[str] = []
    for k in range(0, len(data), cut):
        for ev in conn.receive_data(data[k : k + cut]):
            assert isinstance(ev, EntriesReceived)
            got += [(ev.chunk.tag, e.record["i"]) for e in ev.chunk.events()]
            if ev.ack:
                acks += [a["ack"] for a in _feed(ev.ack)]
    assert got == [(tag, i) for i, (tag, _) in enumerate(plan)]
    assert acks == [f"k{i}" for i, (_, shape) in enumerate(plan) if shape in ACKED]
