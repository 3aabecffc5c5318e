"""Big requests: streamed into one buffer, finished in a worker thread, cut into chunks of bounded size.

What must hold: none of it changes what a client's requests come to. Whatever the read boundaries, the
stream-mode threshold and the inline size, the events (finished by :func:`finish_payload` where the decoder
handed a request over) are those of the plain inline path; cut into chunks, a request keeps every entry, in
order, and its ack comes with its last chunk only.
"""

from __future__ import annotations

import itertools
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forwardd.protocol import (
    EntriesReceived,
    Limits,
    PayloadReceived,
    Rejected,
    ServerConnection,
    finish_payload,
)
from forwardd.protocol.encode import forward, message, packed_forward
from forwardd.protocol.framing import Framer, Streamed

from .test_properties import RECV, cuts_for, frames, outcome
from .violations import split_off, violation

T = 1_700_000_000


def finished(events: list[Any]) -> list[Any]:
    """The events with each big request finished, as the session does it in a worker thread."""
    return [e for ev in events for e in (finish_payload(ev) if isinstance(ev, PayloadReceived) else [ev])]


def run(data: bytes, cuts: list[int], limits: Limits | None = None) -> tuple[list[Any], str | None, int]:
    conn = ServerConnection(limits=limits, clock_ns=lambda: RECV)
    conn.decoder.merge_messages = False
    out: list[Any] = []
    jobs = 0
    bounds = [0, *sorted(set(cuts)), len(data)]
    for a, b in itertools.pairwise(bounds):
        events, broke = split_off(conn.receive_data(data[a:b]))
        jobs += sum(isinstance(e, PayloadReceived) for e in events)
        out += [outcome(ev) for ev in finished(events)]
        if broke is not None:
            return out, broke.reason, jobs
    return out, None, jobs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames(), min_size=1, max_size=5), st.data())
def test_streaming_and_worker_threads_change_no_event(stream: list[bytes], data: st.DataObject) -> None:
    blob = b"".join(stream)
    plain = run(blob, [])
    small = Limits(
        stream_from=data.draw(st.integers(1, 40)), inline_request_size=data.draw(st.integers(1, 60))
    )
    got = run(blob, data.draw(cuts_for(blob)), small)
    assert got[:2] == plain[:2]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames(), min_size=1, max_size=4), st.data())
def test_the_frame_limit_holds_the_same_in_stream_mode(stream: list[bytes], data: st.DataObject) -> None:
    """Over the limit, a PackedForward is rejected (and acked) and anything else closes the connection,
    whether or not its payload was streamed, for every split."""
    base = Limits(max_frame_size=160, max_option_size=256)
    blob = b"".join(stream)
    whole = run(blob, [], base)
    streamed = Limits(max_frame_size=160, max_option_size=256, stream_from=data.draw(st.integers(1, 160)))
    assert run(blob, data.draw(cuts_for(blob)), streamed)[:2] == whole[:2]


def test_a_big_request_is_handed_over_not_read_inline() -> None:
    limits = Limits(inline_request_size=1000)
    entries = [(T, {"pad": "x" * 100})] * 20
    small, big = packed_forward("t", entries[:2], chunk="a"), packed_forward("t", entries, chunk="b")
    events = ServerConnection(limits=limits).receive_data(small + big + message("t", T, {"k": 1}))
    assert [type(e) for e in events] == [EntriesReceived, PayloadReceived, EntriesReceived]
    job = events[1]
    assert job.size == len(big)
    [ev] = finish_payload(job)
    assert isinstance(ev, EntriesReceived)
    assert (ev.chunk.count, ev.ack, ev.size) == (20, b"\x81\xa3ack\xa1b", len(big))


def test_a_payload_that_decompresses_past_the_inline_size_is_handed_over() -> None:
    limits = Limits(inline_request_size=10_000)
    entries = [(T, {"pad": "x" * 1000})] * 50  # ~50 KB once decompressed, a few hundred bytes in gzip
    frame = packed_forward("t", entries, chunk="c", compressed="gzip")
    assert len(frame) < 10_000
    [job] = ServerConnection(limits=limits).receive_data(frame)
    assert isinstance(job, PayloadReceived)
    [ev] = finish_payload(job)
    assert (ev.mode, ev.chunk.count, ev.ack) == ("compressed_packed_forward", 50, b"\x81\xa3ack\xa1c")


@pytest.mark.parametrize("mode", ["packed", "gzip", "forward"])
@pytest.mark.parametrize("inline", [True, False])
def test_a_request_is_cut_into_chunks_with_its_ack_on_the_last(mode: str, inline: bool) -> None:
    entries = [(T + i, {"i": i, "pad": "y" * (i % 7)}) for i in range(1000)]
    if mode == "forward":
        frame = forward("t", entries, chunk="id")
    else:
        frame = packed_forward("t", entries, chunk="id", compressed="gzip" if mode == "gzip" else None)
    limits = Limits(max_chunk_entries=300, max_chunk_bytes=4000, inline_request_size=10**9 if inline else 1)
    events = finished(ServerConnection(limits=limits).receive_data(frame))
    assert all(isinstance(e, EntriesReceived) for e in events)
    assert len(events) > 1000 * 10 // 4000
    assert [e.chunk.count <= 300 and len(e.chunk.entries) <= 4000 for e in events] == [True] * len(events)
    decoded = [(ev.time_ns // 10**9, ev.record["i"]) for e in events for ev in e.chunk.events()]
    assert decoded == [(T + i, i) for i in range(1000)]
    assert [e.ack for e in events] == [None] * (len(events) - 1) + [b"\x81\xa3ack\xa2id"]
    assert [e.requests for e in events] == [0] * (len(events) - 1) + [1]
    assert [e.size for e in events] == [0] * (len(events) - 1) + [len(frame)]


def test_merged_messages_stop_at_the_chunk_entry_bound() -> None:
    data = b"".join(message("t", T, {"i": i}, chunk=f"c{i}") for i in range(10))
    events = ServerConnection(limits=Limits(max_chunk_entries=4)).receive_data(data)
    assert [(e.chunk.count, e.requests, e.acks) for e in events] == [(4, 4, 4), (4, 4, 4), (2, 2, 2)]


def test_a_big_frame_with_a_bad_head_breaks_the_connection_at_once() -> None:
    """The head of a frame read in a worker thread is checked here, as it would be inline."""
    limits = Limits(inline_request_size=100)
    bad = msgpack.packb([1, [[T, {"pad": "x" * 200}]]])  # the tag is not a string
    assert violation(ServerConnection(limits=limits).receive_data(bad)).reason == "bad_tag"


def test_a_rejected_big_request_keeps_its_ack() -> None:
    limits = Limits(inline_request_size=100)
    frame = packed_forward("t", [(T, {"pad": "x" * 200})], chunk="r", compressed="lz4")
    [job] = ServerConnection(limits=limits).receive_data(frame)
    [rej] = finish_payload(job)
    assert isinstance(rej, Rejected)
    assert (rej.reason, rej.ack) == ("unknown_compression", b"\x81\xa3ack\xa1r")


@pytest.mark.parametrize("view_held", [False, True])
def test_a_streamed_payload_is_taken_over_or_copied_while_a_view_of_its_buffer_lives(view_held: bool) -> None:
    """A streamed payload is the framer's own buffer with its prefix dropped, not a copy. Dropping it raises
    BufferError while the buffer is exported: ``Framer.buf`` is public (the decoder reads frames out of it
    through memoryviews), so a view of it may outlive a feed. Then the payload is copied, and the view
    still sees the bytes it saw."""
    entries = [(T, {"k": i, "pad": "x" * 20}) for i in range(50)]
    frame = packed_forward("t", entries, chunk="a")
    opts = msgpack.packb({"chunk": "a"})
    assert frame.endswith(opts)
    framer = Framer(Limits(stream_from=16, inline_request_size=64))
    items, broke, rest = framer.feed(frame[: -len(opts)])  # the head and the whole payload, no options
    assert (items, broke, bytes(rest)) == ([], None, b"")
    framer.consumed()
    buf = framer.buf
    view = memoryview(buf) if view_held else None
    seen = bytes(buf)
    items, broke, rest = framer.feed(opts)
    assert (broke, bytes(rest)) == (None, b"")
    [streamed] = items
    assert isinstance(streamed, Streamed)
    assert (streamed.tag, streamed.options, streamed.size) == (b"t", opts, len(frame))
    assert streamed.payload == msgpack.unpackb(frame)[1]
    if view is None:
        assert streamed.payload is buf  # taken over
    else:
        assert streamed.payload is not buf  # copied
        assert bytes(view) == seen
        view.release()
