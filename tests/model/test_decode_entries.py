"""forwardd.model: lazy decoding of PackedForward entries with every time shape, and the Chunk API."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwardd.model import Chunk, Event, EventTime, decode_entries, pack_entries, pack_event_time

NS = 1_000_000_000
RECV = 1_700_000_000_000_000_007
T = 1441588984
ET = msgpack.ExtType(0, (T).to_bytes(4, "big") + (500_000_000).to_bytes(4, "big"))


def entries(*items: Any) -> bytes:
    return b"".join(msgpack.packb(i, use_bin_type=True) for i in items)


@pytest.mark.parametrize(
    ("time", "ns"),
    [
        (T, T * NS),
        (ET, T * NS + 500_000_000),
        (1441588984.25, T * NS + 250_000_000),
        (0, RECV),
        (0.0, RECV),
        (None, RECV),
        (2**32 - 1, (2**32 - 1) * NS),
        (2**40, 2**40 * NS),  # integer seconds are not capped (unlike floats)
    ],
)
def test_time_shapes(time: Any, ns: int) -> None:
    events, invalid = decode_entries(entries([time, {"k": "v"}]), RECV)
    assert invalid == 0
    assert [(e.time_ns, e.record, e.meta) for e in events] == [(ns, {"k": "v"}, None)]


def test_eventtime_as_ext8_is_the_same_time() -> None:
    fixext8 = b"\x92" + pack_event_time(T * NS + 5) + b"\x80"
    ext8 = b"\x92\xc7\x08\x00" + pack_event_time(T * NS + 5)[2:] + b"\x80"
    assert (
        decode_entries(fixext8, RECV)[0][0].time_ns == decode_entries(ext8, RECV)[0][0].time_ns == T * NS + 5
    )


@pytest.mark.parametrize(
    "time",
    [
        -1,
        -1.5,
        math.nan,
        math.inf,
        1e12,
        "1441588984",
        b"x",
        True,
        {},
        msgpack.ExtType(0, b"\x00" * 4),  # ext 0 of the wrong length
        msgpack.ExtType(0, b"\x00" * 12),
        msgpack.ExtType(1, b"\x00" * 8),
        [],  # wrapped: empty
        [T, 1],  # wrapped: metadata not a map
        [[T, {}], {}],  # wrapped twice
    ],
    ids=repr,
)
def test_times_of_no_known_shape_are_invalid_entries(time: Any) -> None:
    data = entries([T, {"a": 1}], [time, {"k": "v"}], [T, {"b": 2}])
    events, invalid = decode_entries(data, RECV)
    assert invalid == 1
    assert [e.record for e in events] == [{"a": 1}, {"b": 2}]


def test_msgpack_timestamp_ext_minus_1_is_not_eventtime() -> None:
    raw = b"\x92\xd7\xff" + bytes(4) + T.to_bytes(4, "big") + b"\x80"
    assert decode_entries(raw, RECV) == ([], 1)


@pytest.mark.parametrize(
    ("wrapped", "ns", "meta"),
    [
        ([T, {}], T * NS, {}),
        ([ET, {"m": 1}], T * NS + 500_000_000, {"m": 1}),
        ([T], T * NS, {}),
        ([T, {"m": 1}, {"n": 2}], T * NS, {"m": 1}),  # the grammar allows more maps: the first is kept
        ([None, {}], RECV, {}),
        ([0, {"m": 1}], RECV, {"m": 1}),
    ],
)
def test_wrapped_time(wrapped: list[Any], ns: int, meta: dict[str, Any]) -> None:
    (ev,), invalid = decode_entries(entries([wrapped, {"k": "v"}]), RECV)
    assert (ev.time_ns, ev.record, ev.meta, invalid) == (ns, {"k": "v"}, meta, 0)


@pytest.mark.parametrize(
    "entry", [[T], [T, {}, {}], [T, "not a map"], [T, [1]], "str", 5, None, {"k": "v"}], ids=repr
)
def test_entries_that_are_not_time_record_pairs_are_invalid(entry: Any) -> None:
    events, invalid = decode_entries(entries(entry, [T, {}]), RECV)
    assert (len(events), invalid) == (1, 1)


def test_corrupt_tail_keeps_what_decoded() -> None:
    good = entries([T, {"k": "v"}])
    events, invalid = decode_entries(good + b"\xc1", RECV)
    assert (len(events), invalid) == (1, 1)
    events, invalid = decode_entries(good + b"\x92\xce\x00", RECV)  # cut short: not an error either
    assert len(events) == 1


def test_empty_entries() -> None:
    assert decode_entries(b"", RECV) == ([], 0)


def test_records_keep_non_utf8_bin_big_ints_ext_and_non_str_keys() -> None:
    raw = bytes.fromhex(
        "92 01 85"
        "a1 73 a1 ff"  # "s": str holding the invalid UTF-8 byte ff
        "01 a7 69 6e 74 20 6b 65 79"  # 1: "int key"
        "a1 62 c4 02 00 ff"  # "b": bin
        "a1 75 cf ff ff ff ff ff ff ff ff"  # "u": 2**64-1
        "a1 65 d7 00 55 ec e6 f8 1d cd 65 00"  # "e": an EventTime inside the record
    )
    (ev,), invalid = decode_entries(raw, RECV)
    assert invalid == 0
    assert ev.record == {
        "s": "\udcff",
        1: "int key",
        "b": b"\x00\xff",
        "u": 2**64 - 1,
        "e": EventTime(T, 5 * 10**8),
    }
    assert ev.record["s"].encode("utf-8", "surrogateescape") == b"\xff"  # the byte survives
    assert pack_entries([ev])[0][-34:] == raw[-34:]  # and goes out again as it came


def test_pack_entries_is_lossless_for_records_with_eventtime_and_surrogates() -> None:
    evs = [
        Event(T * NS + 1, {"k": "\udcff", "t": EventTime(1, 2), "x": msgpack.ExtType(9, b"z")}),
        Event(T * NS, {"k": "v"}, {"m": 1}),
    ]
    data, n = pack_entries(evs)
    assert n == 2
    back, invalid = decode_entries(data, RECV)
    assert invalid == 0
    assert back == evs
    assert data.startswith(b"\x92\xd7\x00")  # EventTime as fixext8, as Fluentd writes it


def test_event_time_value() -> None:
    et = EventTime.from_ns(T * NS + 7)
    assert (et.seconds, et.nanoseconds, et.to_ns()) == (T, 7, T * NS + 7)
    assert et == EventTime(T, 7)
    assert et != EventTime(T, 8)
    assert et != (T, 7)
    assert hash(et) == hash(EventTime(T, 7))
    assert repr(et) == f"EventTime({T}, 7)"
    assert pack_event_time(T * NS + 7) == b"\xd7\x00" + T.to_bytes(4, "big") + (7).to_bytes(4, "big")


# --- Chunk -------------------------------------------------------------------------------------------


def test_chunk_decodes_once_and_caches() -> None:
    chunk = Chunk("t", entries([T, {"k": "v"}], [T, "bad"]), 2, RECV)
    assert not chunk.decoded
    first = chunk.events()
    assert chunk.decoded
    assert chunk.invalid == 1
    assert chunk.events() is first
    assert chunk.invalid == 1  # not counted twice
    assert chunk.nbytes == len(chunk.entries)
    assert "count=2" in repr(chunk)


def test_chunk_adds_decode_invalids_to_those_counted_at_the_edge() -> None:
    """The decoder counts a broken tail it cut off (chunk.invalid = 1) before anyone decodes: decoding
    must add to it, not overwrite it (it did overwrite: the broken tail vanished from the counters)."""
    chunk = Chunk("t", entries([T, {"k": "v"}], [T, "bad"]), 2, RECV)
    chunk.invalid = 1
    chunk.events()
    assert chunk.invalid == 2


def test_with_tag_shares_bytes_and_decoded_events() -> None:
    chunk = Chunk("a", entries([T, {"k": "v"}]), 1, RECV)
    chunk.events()
    other = chunk.with_tag("b")
    assert (other.tag, other.entries, other.count, other.received_ns) == ("b", chunk.entries, 1, RECV)
    assert other.events() is chunk.events()


def test_from_events_replace_events_and_map_records() -> None:
    chunk = Chunk.from_events("t", [Event(T * NS, {"k": "v"})], RECV)
    assert chunk.decoded
    assert chunk.count == 1
    assert decode_entries(chunk.entries, RECV)[0] == chunk.events()
    mapped = chunk.map_records(lambda r: {**r, "x": 1})
    assert (mapped.tag, mapped.received_ns) == ("t", RECV)
    assert decode_entries(mapped.entries, RECV)[0][0].record == {"k": "v", "x": 1}
    renamed = chunk.replace_events([Event(1, {})], tag="u")
    assert (renamed.tag, renamed.count) == ("u", 1)


# --- properties ----------------------------------------------------------------------------------------

keys = st.one_of(st.text(max_size=8), st.integers(-5, 5))
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=6,
)
records = st.dictionaries(keys, values, max_size=6)
events_st = st.lists(
    st.builds(
        Event,
        st.integers(NS, 2**32 * NS - 1),
        records,
        st.one_of(st.none(), st.dictionaries(st.text(max_size=5), values, max_size=3)),
    ),
    max_size=8,
)


@settings(max_examples=40, deadline=None)
@given(events_st)
def test_pack_then_decode_round_trips(evs: list[Event]) -> None:
    data, n = pack_entries(evs)
    back, invalid = decode_entries(data, RECV)
    assert (n, invalid) == (len(evs), 0)
    assert back == evs


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_decode_entries_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    events, invalid = decode_entries(data, RECV)
    assert all(type(e.record) is dict and isinstance(e.time_ns, int) for e in events)
    assert invalid >= 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(values, st.tuples(values, values).map(list)), max_size=8))
def test_decode_entries_counts_every_value_as_an_event_or_an_invalid(items: list[Any]) -> None:
    data = b"".join(msgpack.packb(i, use_bin_type=True) for i in items)
    events, invalid = decode_entries(data, RECV)
    assert len(events) + invalid == len(items)


@pytest.mark.parametrize(
    "bad",
    [
        "92 01 81 90 01",  # record key is an array: unhashable, raised TypeError out of decode_entries
        "92 01 81 80 01",  # record key is a map
        "92 01 81 a1 65 d4 ff 00",  # msgpack Timestamp (ext -1) of 1 byte: ValueError
        "92 01 81 a1 65 d4 ff 00 92 01 81 a1 65 d4 ff 00",  # two of them in a row
    ],
)
def test_an_entry_that_cannot_be_built_does_not_poison_the_chunk(bad: str) -> None:
    raw = bytes.fromhex("92 02 80") + bytes.fromhex(bad) + bytes.fromhex("92 03 80")
    events, invalid = decode_entries(raw, RECV)
    assert [e.time_ns for e in events] == [2 * NS, 3 * NS]
    assert invalid == bad.count("92 01")


def test_reserved_negative_ext_types_are_kept_and_re_encoded_as_they_came() -> None:
    raw = bytes.fromhex("92 01 81 a1 65 d4 80 00 92 02 80")  # {"e": ext type -128}
    events, invalid = decode_entries(raw, RECV)
    assert (len(events), invalid) == (2, 0)
    assert events[0].record["e"].code == -128
    assert pack_entries(events[:1])[0].endswith(bytes.fromhex("81 a1 65 d4 80 00"))


# --- the plain-entries fast path ---------------------------------------------------------------------------

plain_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=12),
)
times = st.one_of(
    st.integers(-3, 2**33),
    st.floats(-1.0, 2e11),
    st.none(),
    st.booleans(),
    st.builds(
        lambda s, n: msgpack.ExtType(0, s.to_bytes(4, "big") + n.to_bytes(4, "big")),
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
    ),
    st.builds(msgpack.ExtType, st.integers(1, 127), st.binary(max_size=9)),
    st.just(msgpack.ExtType(0, b"1234")),
    st.lists(st.integers(0, 10), max_size=2),
)
entry_values = st.recursive(
    st.one_of(plain_leaves, st.binary(max_size=4), st.just(ET)),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.one_of(st.text(max_size=4), st.integers(0, 3)), inner, max_size=3)
    ),
    max_leaves=8,
)
entry_shapes = st.one_of(
    st.tuples(times, st.dictionaries(st.text(max_size=6), entry_values, max_size=4)).map(list),
    st.tuples(times, st.dictionaries(st.text(max_size=6), plain_leaves, max_size=4)).map(list),
    entry_values,  # not an entry at all
)


def as_chunk_decodes(data: bytes, count: int) -> tuple[list[Event], int]:
    """What Chunk.events gives (the plain fast path when the framed count fits), as decode_entries does."""
    chunk = Chunk("t", data, count, RECV)
    return chunk.events(), chunk.invalid


@settings(max_examples=600, deadline=None)
@given(st.lists(entry_shapes, min_size=1, max_size=6), st.integers(-1, 1))
def test_the_fast_path_gives_exactly_what_the_general_decoder_gives(items: list[Any], skew: int) -> None:
    """Whatever the entries, passing the framed count (the fast path) changes nothing in the result; a
    wrong count only sends the chunk down the general path."""
    data = b"".join(msgpack.packb(i, use_bin_type=True) for i in items)
    assert as_chunk_decodes(data, len(items) + skew) == decode_entries(data, RECV)


def test_plain_docker_entries_take_the_fast_path() -> None:
    """Guards the speed: docker-shaped entries must not fall back to the general decoder."""
    from forwardd.model.plain import decode_plain

    rec = {"container_id": "ab" * 32, "container_name": "/web", "source": "stdout", "log": "héllo\x00"}
    data = entries([ET, rec], [T, {"n": [1, 2.5, {"x": None, "y": True}]}], [1441588984.25, {}], [None, {}])
    fast = decode_plain(data, 4, RECV)
    assert fast is not None
    assert fast.events() == decode_entries(data, RECV)[0]
    assert [e.time_ns for e in fast.events()] == [T * NS + 500_000_000, T * NS, T * NS + 250_000_000, RECV]
    # the two columnar shortcuts: all EventTime, all integer seconds
    for times, ns in (([ET, ET], T * NS + 500_000_000), ([T, T], T * NS)):
        data = entries(*([t, rec] for t in times))
        cols = decode_plain(data, 2, RECV)
        assert cols is not None
        assert [e.time_ns for e in cols.events()] == [ns, ns]
        assert cols.events() == decode_entries(data, RECV)[0]


def test_duplicate_keys_and_invalid_utf8_agree_with_the_general_path() -> None:
    dup = bytes.fromhex("92 01 82 a1 6b 01 a1 6b 02")  # {"k": 1, "k": 2}
    bad_utf8 = bytes.fromhex("92 01 81 a1 6b a2 ff fe")
    for raw in (dup, bad_utf8, dup + bad_utf8):
        n = raw.count(b"\x92\x01")
        assert as_chunk_decodes(raw, n) == decode_entries(raw, RECV)


def test_event_time_with_a_fraction_of_a_second_or_more_agrees_with_the_general_path() -> None:
    over = msgpack.ExtType(0, (T).to_bytes(4, "big") + (1_500_000_000).to_bytes(4, "big"))
    data = entries([over, {}], [ET, {}])
    assert as_chunk_decodes(data, 2) == decode_entries(data, RECV)
    assert decode_entries(data, RECV)[0][0].time_ns == T * NS + 1_500_000_000


def test_chunk_caches_its_plain_columns_and_shares_them_with_a_retagged_copy() -> None:
    chunk = Chunk("a", entries([T, {"k": "v"}]), 1, RECV)
    plain = chunk.plain_entries()
    assert plain is not None
    assert chunk.plain_entries() is plain
    assert chunk.plain
    again = chunk.with_tag("b")
    assert again.plain_entries() is plain
    assert chunk.events() == [Event(T * NS, {"k": "v"})]
    assert not Chunk.from_events("a", chunk.events(), RECV).plain  # re-encoded by a filter: general path


@pytest.mark.parametrize("seconds", [2**32, 2**33 + 5, 2**62])
def test_events_past_2106_re_encode_as_integer_seconds(seconds: int) -> None:
    """EventTime holds 32-bit seconds; a filter that re-encodes an event sent with integer seconds past
    2106 must not fail on it (it raised struct.error): the time is kept as whole seconds."""
    chunk = Chunk("t", msgpack.packb([seconds, {"a": 1}]), 1, 1)
    again = chunk.replace_events(chunk.events())
    [event] = again.events()
    assert event.time_ns == seconds * 1_000_000_000
    assert event.record == {"a": 1}


# --- cost ---------------------------------------------------------------------------------------------------


def _seconds(fn: Any) -> float:
    """The best of three runs, the cycle collector off (its passes over every live object are noise here:
    the test is about the decoder's own work)."""
    import gc
    import time

    best = math.inf
    gc.disable()
    try:
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
    finally:
        gc.enable()
    return best


@pytest.mark.parametrize(
    "mix",
    [
        [bytes.fromhex("92 00 81 80 00")],  # a map used as a map key: cannot be built (issue 14)
        [bytes.fromhex("92 00 81 80 00"), entries([T, {"k": "v"}])],
        [entries([T, {"k": "v"}])] * 9 + [bytes.fromhex("92 01 81 a1 65 d4 ff 00")],
    ],
    ids=["all-bad", "every-other", "one-in-ten"],
)
def test_decoding_is_linear_whatever_the_mix_of_good_and_bad_entries(mix: list[bytes]) -> None:
    """Each entry that could not be built used to copy the rest of the chunk: 200k of them took 17 s."""
    unit = b"".join(mix)
    small, big = unit * (16_000 // len(mix)), unit * (128_000 // len(mix))
    events, invalid = decode_entries(big, RECV)
    assert len(events) + invalid == 128_000 // len(mix) * len(mix)
    t_small = _seconds(lambda: decode_entries(small, RECV))
    t_big = _seconds(lambda: decode_entries(big, RECV))
    assert t_big < 4.0
    assert t_big < 30 * t_small  # 8x the entries: linear is ~8x, quadratic 64x
