"""JSON mode (items 7 and 29): framing a stream of JSON values, the connection switching on its first byte,
JSON acks, and errors that close the connection after handing on what came whole."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwardd.protocol.connection import ServerConnection
from forwardd.protocol.events import EntriesReceived, Rejected
from forwardd.protocol.handshake import Security
from forwardd.protocol.jsonmode import JsonFramer

from .violations import split_off, violation

T = 1_700_000_000

strings = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)  # quotes, backslashes, brackets, ...
records = st.dictionaries(
    strings, st.one_of(strings, st.integers(-(2**40), 2**40), st.booleans()), max_size=4
)


def message(tag: str, rec: dict[str, Any], chunk: str | None = None) -> bytes:
    return json.dumps([tag, T, rec, {"chunk": chunk} if chunk else {}]).encode()


def feed_all(conn: ServerConnection, pieces: list[bytes]) -> list[Any]:
    out: list[Any] = []
    for p in pieces:
        out += conn.receive_data(p)
    return out


records = st.dictionaries(
    strings, st.one_of(strings, st.integers(-(2**40), 2**40), st.booleans()), max_size=4
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(strings, records), min_size=1, max_size=5),
    st.lists(st.integers(0, 4000), max_size=8),
)
def test_any_split_of_a_json_stream_gives_the_same_events(msgs, cuts) -> None:
    """Whatever the reads, the same records and the same acks in the same order (how requests group into
    chunks depends on the reads, as in msgpack mode)."""
    data = b"\n ".join(message(tag or "t", rec, f"id{i}") for i, (tag, rec) in enumerate(msgs))
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    pieces = [data[a:b] for a, b in itertools.pairwise(points)]

    def flat(evs: list[Any]) -> tuple[list[tuple[str, dict[str, Any]]], bytes]:
        recs = [(e.chunk.tag, x.record) for e in evs for x in e.chunk.events()]
        return recs, b"".join(e.ack for e in evs)

    whole = flat(feed_all(ServerConnection(json_mode=True), [data]))
    assert flat(feed_all(ServerConnection(json_mode=True), pieces)) == whole
    assert whole[0] == [(tag or "t", rec) for tag, rec in msgs]
    assert whole[1] == b"".join(json.dumps({"ack": f"id{i}"}).encode() for i in range(len(msgs)))


def test_forward_mode_and_float_times_in_json() -> None:
    data = json.dumps(["app", [[T, {"a": 1}], [T + 0.5, {"a": 2}]], {"chunk": "c1"}]).encode()
    (ev,) = ServerConnection(json_mode=True).receive_data(data)
    assert isinstance(ev, EntriesReceived)
    assert [(e.time_ns, e.record) for e in ev.chunk.events()] == [
        (T * 10**9, {"a": 1}),
        (T * 10**9 + 500_000_000, {"a": 2}),
    ]
    assert ev.ack == b'{"ack": "c1"}'


def test_a_rejected_request_is_acked_in_json_too() -> None:
    (ev,) = ServerConnection(json_mode=True).receive_data(b'["app", true, {}, {"chunk": "c9"}]')
    assert isinstance(ev, Rejected)
    assert ev.ack == b'{"ack": "c9"}'


def test_msgpack_connections_are_unchanged_when_json_mode_is_on() -> None:
    import msgpack

    data = msgpack.packb(["app", T, {"k": "v"}, {"chunk": "m1"}])
    (ev,) = ServerConnection(json_mode=True).receive_data(data)
    assert ev.ack == b"\x81\xa3ack\xa2m1"


def test_json_mode_is_never_on_with_the_handshake() -> None:
    conn = ServerConnection(json_mode=True, security=Security(self_hostname="h", shared_key="k"))
    violation(conn.receive_data(message("app", {}, "x")))
    assert not conn.json


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        (b'"just a string"', "bad_json"),  # a top-level value must be an array (or an object)
        (b"[1, 2,, 3]", "bad_json"),  # framed, then not JSON
        (b'{"tag": "x"}', "not_an_array"),  # JSON, but not a request
        (b'["app", true, {}, {}]', "bad_time"),  # not a time: a bad request, acked and dropped, no close
    ],
)
def test_bad_json_after_good_requests_closes_but_hands_on_what_came_whole(tail: bytes, reason: str) -> None:
    good = message("app", {"n": 1}, "ok1")
    conn = ServerConnection(json_mode=True)
    if reason == "bad_time":
        evs = conn.receive_data(good + tail)
        assert [type(e) for e in evs] == [EntriesReceived, Rejected]
        return
    (ev, broke) = conn.receive_data(good + b" " + tail)
    assert violation([broke]).reason == reason
    assert [e.record for e in ev.chunk.events()] == [{"n": 1}]
    assert ev.ack == b'{"ack": "ok1"}'


def test_a_json_value_over_the_frame_limit_closes_without_buffering_it() -> None:
    from forwardd.protocol import Limits

    conn = ServerConnection(json_mode=True, limits=Limits(max_frame_size=1000))
    conn.receive_data(b'["app", 1, {"log": "' + b"x" * 900)  # still within the limit: waits for more
    assert violation(conn.receive_data(b"x" * 200)).reason == "frame_too_large"


def test_framer_keeps_no_more_than_the_value_in_progress() -> None:
    f = JsonFramer(1 << 20)
    values, err = f.feed(b'[1] [2] ["a\\"]b"')
    assert (values, err) == ([b"[1]", b"[2]"], None)
    values, err = f.feed(b"]")
    assert (values, err) == ([b'["a\\"]b"]'], None)
    assert len(f._buf) == 0


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 50))
def test_arbitrary_bytes_in_json_mode_give_events_or_the_protocol_error(data: bytes, step: int) -> None:
    conn = ServerConnection(json_mode=True)
    stream = b"[" + data
    for i in range(0, len(stream), step):
        _, broke = split_off(conn.receive_data(stream[i : i + step]))
        if broke is not None:
            break
