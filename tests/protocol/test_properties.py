"""Properties of the protocol core: the split of a byte stream into reads never changes what comes out,
and no input makes anything but ProtocolError escape (the h11 rule)."""

from __future__ import annotations

import itertools
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forwardd.model import decode_entries
from forwardd.protocol import (
    EntriesReceived,
    HandshakeCompleted,
    HandshakeFailed,
    Heartbeat,
    Limits,
    ProtocolError,
    Rejected,
    Security,
    ServerConnection,
)
from forwardd.protocol.encode import event_time, forward, message, packed_forward
from forwardd.protocol.entries import message_run
from forwardd.protocol.handshake import client_ping

from .violations import split_off

RECV = 1_700_000_000_000_000_000
NS = 1_000_000_000

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    text,
    st.binary(max_size=12),
)
values = st.recursive(
    leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=5
)
records = st.dictionaries(text, values, max_size=4)
times = st.one_of(
    st.integers(1, 2**32 - 1),
    st.integers(NS, 2**32 * NS - 1).map(event_time),
    st.floats(1.0, 4e9),
    st.just(0),
    st.none(),
    st.tuples(st.integers(1, 2**32 - 1), st.dictionaries(text, leaves, max_size=2)).map(list),
)
entries = st.lists(st.tuples(times, records), max_size=4)
chunk_ids = st.one_of(st.none(), text, st.binary(max_size=10))
tags = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=10)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    mode = draw(st.sampled_from(["message", "forward", "packed", "gzip", "zstd", "str32", "nil"]))
    if mode == "nil":
        return b"\xc0"
    tag, chunk = draw(tags), draw(chunk_ids)
    if mode == "message":
        return message(tag, draw(times), draw(records), chunk=chunk)
    if mode == "forward":
        return forward(tag, draw(entries), chunk=chunk)
    compressed = mode if mode in ("gzip", "zstd") else None
    return packed_forward(tag, draw(entries), chunk=chunk, compressed=compressed, as_str=mode == "str32")


def outcome(ev: Any) -> tuple[Any, ...]:
    if isinstance(ev, Heartbeat):
        return ("heartbeat",)
    if isinstance(ev, Rejected):
        return ("rejected", ev.reason, ev.tag, ev.ack, ev.size)
    if isinstance(ev, (HandshakeCompleted, HandshakeFailed)):
        return (type(ev).__name__, ev.reply)
    assert isinstance(ev, EntriesReceived)
    c = ev.chunk
    evs = [(e.time_ns, e.record, e.meta) for e in c.events()]
    return ("entries", c.tag, ev.mode, ev.ack, ev.size, c.count, c.invalid, evs)


def run(data: bytes, cuts: list[int], limits: Limits | None = None) -> tuple[list[Any], str | None]:
    conn = ServerConnection(limits=limits, clock_ns=lambda: RECV)
    # Request by request: how Message-mode requests are grouped depends on the reads by design; that the
    # grouping keeps every event and ack in order is test_message_merge's property.
    conn.decoder.merge_messages = False
    out: list[Any] = []
    bounds = [0, *sorted(set(cuts)), len(data)]
    for a, b in itertools.pairwise(bounds):
        events, broke = split_off(conn.receive_data(data[a:b]))
        out += [outcome(ev) for ev in events]
        if broke is not None:
            assert conn.receive_data(data[b:]) == []  # a broken stream reads nothing more
            return out, broke.reason
    return out, None


def cuts_for(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(data)), max_size=12) if data else st.just([])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames(), min_size=1, max_size=5), st.data())
def test_any_split_gives_the_same_events_and_acks(stream: list[bytes], data: st.DataObject) -> None:
    blob = b"".join(stream)
    whole, err = run(blob, [])
    assert err is None
    assert len(whole) == len(stream)
    assert run(blob, data.draw(cuts_for(blob))) == (whole, None)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames(), min_size=1, max_size=4), st.data())
def test_split_invariance_holds_across_the_frame_limit(stream: list[bytes], data: st.DataObject) -> None:
    """With a small frame limit some frames are over it: PackedForward ones are rejected (and acked),
    others close the connection, identically for every split."""
    limits = Limits(max_frame_size=160, max_option_size=256)
    blob = b"".join(stream)
    whole = run(blob, [], limits)
    assert run(blob, data.draw(cuts_for(blob)), limits) == whole
    assert run(blob, list(range(len(blob))), limits) == whole


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.data())
def test_arbitrary_bytes_give_events_or_protocol_error(blob: bytes, data: st.DataObject) -> None:
    whole = run(blob, [])
    assert run(blob, data.draw(cuts_for(blob))) == whole


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames(), min_size=1, max_size=3), st.data())
def test_mutated_streams_give_events_or_protocol_error(stream: list[bytes], data: st.DataObject) -> None:
    """Valid traffic with a few bytes overwritten reaches deeper than random bytes do."""
    blob = bytearray(b"".join(stream))
    for _ in range(data.draw(st.integers(1, 4))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    whole = run(bytes(blob), [], Limits(max_frame_size=200, max_option_size=64))
    cut = run(bytes(blob), data.draw(cuts_for(blob)), Limits(max_frame_size=200, max_option_size=64))
    assert cut == whole
    for ev in whole[0]:
        if ev[0] == "entries":
            assert len(ev[7]) <= ev[5]


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_arbitrary_bytes_during_a_handshake(blob: bytes, prefix_ping: bool) -> None:
    sec = Security(self_hostname="srv", shared_key="k")
    conn = ServerConnection(security=sec)
    helo = msgpack.unpackb(conn.initial_bytes(), raw=True)[1]
    data = (client_ping(helo, hostname="c", shared_key="k")[0] if prefix_ping else b"") + blob
    events, _ = split_off(conn.receive_data(data))
    if not prefix_ping:
        assert not any(isinstance(e, EntriesReceived) for e in events)
    for ev in events:
        outcome(ev)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_chunks_out_of_arbitrary_packed_payloads_decode_without_raising(payload: bytes) -> None:
    frame = packed_forward("t", payload)
    events, broke = split_off(ServerConnection().receive_data(frame))
    assert broke is None, "a well-framed PackedForward is never a protocol error"
    (ev,) = events
    if isinstance(ev, EntriesReceived):
        evs, invalid = decode_entries(ev.chunk.entries, RECV)
        assert len(evs) + invalid == ev.chunk.count
    else:
        assert ev.reason == "bad_entries"


# --- the single-message shortcut (Decoder.feed) ---------------------------------------------------------

option_maps = st.one_of(
    st.none(),
    st.just({}),
    st.builds(
        lambda c: {"chunk": c}, st.one_of(text, st.binary(max_size=10), st.integers(-5, 2**40), st.none())
    ),
    st.builds(lambda c, n: {"chunk": c, "size": n}, text, st.integers(0, 5)),
    st.builds(lambda n: {"size": n}, st.integers(0, 5)),
    st.just({"compressed": "gzip"}),
    st.dictionaries(text, leaves, max_size=2),
    leaves,
)
loose_tags = st.one_of(tags, st.binary(max_size=8), st.integers(-5, 2**40), st.just(b"\xff\xfe"))
#: The option maps real clients send besides {"chunk": id}: with "size" (Fluent Bit, fluent-logger), in
#: either order, and with keys that change what the request means.
chunk_and_size = st.one_of(
    st.builds(lambda c, n: {"size": n, "chunk": c}, text, st.integers(0, 5)),
    st.builds(
        lambda c, n: {"chunk": c, "size": n}, st.one_of(text, st.binary(max_size=6)), st.integers(0, 5)
    ),
    st.builds(lambda c: {"chunk": c, "fluent_signal": 1}, text),
    st.builds(lambda c: {"chunk": c, "metadata": {"k": "v"}}, text),
    st.builds(lambda c: {"chunk": c, "compressed": "gzip"}, text),
    st.builds(lambda c: {1: 2, "chunk": c}, text),
)


@st.composite
def message_like_frames(draw: st.DrawFn) -> bytes:
    """Arrays shaped like Message mode, with and without the option element (fluent-logger for Python sends
    none): mostly what the fast paths take, often one detail off."""
    if draw(st.integers(0, 3)) == 0:
        return message(draw(tags), draw(times), draw(records), chunk=draw(chunk_ids))
    tag = draw(tags) if draw(st.integers(0, 4)) else draw(loose_tags)
    good_time = st.one_of(
        st.integers(0, 2**32 - 1),
        st.integers(NS, 2**32 * NS - 1).map(event_time),
        st.floats(0, 4e9),
        st.none(),
    )
    time_value = draw(good_time) if draw(st.integers(0, 3)) else draw(st.one_of(times, text, leaves))
    body = draw(records) if draw(st.integers(0, 2)) else draw(st.one_of(leaves, st.lists(leaves, max_size=2)))
    elements = [tag, time_value, body]
    if draw(st.integers(0, 2)):
        elements.append(draw(st.one_of(option_maps, chunk_and_size)))
    return msgpack.packb(elements, use_bin_type=True, datetime=False)


def full_outcome(ev: Any) -> tuple[Any, ...]:
    if isinstance(ev, EntriesReceived):
        c = ev.chunk
        return (*outcome(ev), ev.requests, ev.acks, c.entries, c.received_ns)
    return outcome(ev)


def run_reads(
    reads: list[bytes], shortcut: bool, limits: Limits | None = None
) -> tuple[list[Any], str | None]:
    conn = ServerConnection(limits=limits, clock_ns=lambda: RECV)
    conn.decoder.merge_messages = False
    conn.decoder.single_message_shortcut = shortcut
    out: list[Any] = []
    for r in reads:
        events, broke = split_off(conn.receive_data(r))
        out += [full_outcome(ev) for ev in events]
        if broke is not None:
            return out, broke.reason
    return out, None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(message_like_frames(), frames()), min_size=1, max_size=6), st.data())
def test_single_message_shortcut_changes_nothing(stream: list[bytes], data: st.DataObject) -> None:
    """Reads of one whole request each (the shortcut's case), sometimes mutated, split or glued to the
    next: the events, acks, entry bytes and errors are those of the general path, byte for byte."""
    reads: list[bytes] = []
    for frame in stream:
        frame = bytearray(frame)
        if data.draw(st.integers(0, 4)) == 0:
            frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
        how = data.draw(st.sampled_from(["whole", "whole", "split", "glue"]))
        if how == "split" and len(frame) > 1:
            cut = data.draw(st.integers(1, len(frame) - 1))
            reads += [bytes(frame[:cut]), bytes(frame[cut:])]
        elif how == "glue" and reads:
            reads[-1] += bytes(frame)
        else:
            reads.append(bytes(frame))
    limits = data.draw(st.sampled_from([None, Limits(max_frame_size=120, max_tag_size=6)]))
    # Compared as text: a record may hold NaN, which is never equal to itself (the entry bytes, also in
    # the outcome, are what must match byte for byte).
    assert repr(run_reads(reads, True, limits)) == repr(run_reads(reads, False, limits))


@settings(max_examples=500, deadline=None)
@given(message_like_frames(), st.integers(0, 3), st.data())
def test_single_message_shortcut_judges_one_read_as_the_general_path(
    frame: bytes, mutate: int, data: st.DataObject
) -> None:
    """The shortcut's own case, concentrated: a read that is one whole request, intact or with a byte
    overwritten, then a second request to show the decoder's state is intact."""
    blob = bytearray(frame)
    if mutate == 0:
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    after = message("next", 1, {"k": "v"}, chunk="n")
    reads = [bytes(blob), after[:3], after[3:]]  # the second request goes the general way
    limits = data.draw(st.sampled_from([None, Limits(max_tag_size=6)]))
    # Compared as text: a record may hold NaN, which is never equal to itself (the entry bytes, also in
    # the outcome, are what must match byte for byte).
    assert repr(run_reads(reads, True, limits)) == repr(run_reads(reads, False, limits))


def test_single_message_shortcut_is_taken_for_docker_requests() -> None:
    """The shortcut must really run for what docker sends, or the property above proves nothing: it
    skips the framer, so the framer's offsets move only through the shortcut's bookkeeping."""
    rec = {"container_id": "c" * 64, "container_name": "/app", "source": "stdout", "log": "hello"}
    conn = ServerConnection(clock_ns=lambda: RECV)
    dec = conn.decoder
    frames_ = [message("docker.abc", event_time(NS + i), rec, chunk=f"id{i}") for i in range(3)]
    for f in frames_:
        (ev,) = conn.receive_data(f)
        assert isinstance(ev, EntriesReceived)
        assert ev.ack == b"\x81\xa3ack" + msgpack.packb(f"id{frames_.index(f)}")
    assert dec.framer.skipped_bytes == 0  # never fed: all three went the short way
    tail = message("docker.abc", event_time(NS), rec, chunk="last")
    assert conn.receive_data(tail[:5]) == []
    (ev,) = conn.receive_data(tail[5:])
    assert isinstance(ev, EntriesReceived)
    assert ev.chunk.count == 1
    assert dec.framer.skipped_bytes == len(tail)  # a split request goes the general way, offsets intact


# --- the Message fast path of runs of small frames (messages.py) --------------------------------------------


def general_outcomes(frame: bytes) -> list[Any]:
    """What the general path (the one that reads a big frame in a worker thread) makes of one frame."""
    from forwardd.protocol.decoder import Decoder

    dec = Decoder()
    dec.received_ns = RECV
    if not frame or frame[0] == 0xC0 or not 0x92 <= frame[0] <= 0x9F:
        return ["not read here"]
    try:
        return [full_outcome(ev) for ev in dec.read_frame(frame)]
    except ProtocolError as exc:
        return [("violation", exc.reason)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(message_like_frames(), min_size=1, max_size=6))
def test_the_fast_path_of_small_frames_gives_what_the_general_path_gives(stream: list[bytes]) -> None:
    """Message requests of every shape, read back to back in one read (request by request, no shortcut):
    each comes out byte for byte as the general path makes it."""
    conn = ServerConnection(clock_ns=lambda: RECV)
    conn.decoder.merge_messages = False
    conn.decoder.single_message_shortcut = False
    events, broke = split_off(conn.receive_data(b"".join(stream)))
    got = [full_outcome(ev) for ev in events] + ([("violation", broke.reason)] if broke else [])
    expected: list[Any] = []
    for frame in stream:
        out = general_outcomes(frame)
        if out == ["not read here"]:
            return  # a frame only the framer judges (not an array): nothing to compare
        expected += out
        if out and out[-1][0] == "violation":
            break
    assert got == expected


# --- the C loop of Message-mode runs (_entries.c message_run) against the Python loop -----------------------


@st.composite
def message_runs(draw: st.DrawFn) -> bytes:
    """Requests of a few tags, mostly docker's shapes (so runs of one tag are long and grouping is exercised),
    with the other shapes, heartbeats, other modes and loose requests in between."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return b"\xc0"
    if kind == 1:
        return draw(frames())
    if kind == 2:
        return draw(message_like_frames())
    tag = draw(st.sampled_from(["a", "b", "a" * 40, "é"]))
    t = draw(st.one_of(st.integers(0, 2**32 - 1), st.integers(NS, 2**32 * NS - 1).map(event_time), st.none()))
    record = draw(st.one_of(st.just({"log": "x"}), records))
    shape = draw(st.sampled_from(["3", "{}", "nil", "chunk", "chunk+size", "size", "array16"]))
    if shape == "3":
        return msgpack.packb([tag, t, record], use_bin_type=True)
    if shape == "array16":  # the same request with a 3-byte array header
        body = msgpack.packb([tag, t, record, {}], use_bin_type=True)[1:]
        return b"\xdc\x00\x04" + body
    option: Any = {
        "{}": {},
        "nil": None,
        "chunk": {"chunk": draw(chunk_ids)},
        "chunk+size": {"chunk": "c", "size": 1},
        "size": {"size": 1},
    }[shape]
    return msgpack.packb([tag, t, record, option], use_bin_type=True)


def run_loop(
    data: bytes, cuts: list[int], native: bool, merge: bool, limits: Limits
) -> tuple[list[Any], Any]:
    conn = ServerConnection(limits=limits, clock_ns=lambda: RECV)
    conn.decoder.native_messages = native
    conn.decoder.merge_messages = merge
    conn.decoder.single_message_shortcut = False
    out: list[Any] = []
    pos = 0
    for cut in [*sorted(cuts), len(data)]:
        events, broke = split_off(conn.receive_data(data[pos:cut]))
        pos = cut
        out += [full_outcome(ev) for ev in events]
        if broke is not None:
            return out, broke.reason
    return out, None


@pytest.mark.skipif(message_run is None, reason="the C extension is not built")
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(message_runs(), min_size=1, max_size=20), st.data())
def test_the_c_message_loop_gives_what_the_python_loop_gives(
    stream: list[bytes], data: st.DataObject
) -> None:
    """Events, groups, acks, counts and violations byte for byte, whatever the reads, the merging, the group
    size limit and a few overwritten bytes."""
    blob = bytearray(b"".join(stream))
    if data.draw(st.booleans()):
        for _ in range(data.draw(st.integers(1, 3))):
            blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    cuts = data.draw(cuts_for(bytes(blob)))
    merge = data.draw(st.booleans())
    limits = Limits(max_chunk_entries=data.draw(st.sampled_from([1, 2, 3, 8192])))
    native = run_loop(bytes(blob), cuts, True, merge, limits)
    python = run_loop(bytes(blob), cuts, False, merge, limits)
    assert repr(native) == repr(python)  # repr: a NaN in a decoded record is not equal to itself
