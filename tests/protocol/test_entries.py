"""The edge's scan of entries (forwardd/protocol/entries.py and its C twin _entries.c).

What it must keep: the native scan gives exactly what the reference gives for any bytes (count, end, tail,
invalid entries and their reason, slices), and the reference counts as invalid exactly the entries that
``decode_entries`` drops, plus the integer times past year 9999 that decoding still reads from an older
queue (tests/protocol/test_event_time_range.py), so the edge's counters say what it leaves out.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from forwardd.model import INVALID_REASONS, MAX_TIME_NS, decode_entries, entry_problem
from forwardd.protocol import entries as entries_mod
from forwardd.protocol.entries import (
    NATIVE,
    frame_ends,
    frame_ends_py,
    sample,
    scan_entries,
    scan_entries_py,
)
from tests.depth import examples

RECV = 1_700_000_000_000_000_000
T = 1_700_000_000
BAD_KEY = bytes.fromhex("92 00 81 80 00")  # [0, {{}: 0}]


def test_the_extension_is_built() -> None:
    """Without it the edge scans in Python: several times slower on every PackedForward chunk."""
    assert NATIVE, "forwardd.protocol._entries was not built: see the C compiler output of `pip install`"


def pack(*items: Any) -> bytes:
    return b"".join(msgpack.packb(i, use_bin_type=True, datetime=False) for i in items)


def ext(code: int, data: bytes) -> bytes:
    return msgpack.packb(msgpack.ExtType(code, data)) if code >= 0 else _neg_ext(code, data)


def _neg_ext(code: int, data: bytes) -> bytes:
    n = len(data)
    fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
    head = bytes([fixed[n]]) if n in fixed else b"\xc7" + bytes([n])
    return head + struct.pack("b", code) + data


ET = msgpack.ExtType(0, struct.pack(">II", T, 5))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(width=32),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.just(ET),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=9)),
)


@st.composite
def raw_values(draw: st.DrawFn, depth: int = 0) -> bytes:
    """msgpack bytes of a value that may hold anything decoding trips on: containers as map keys, msgpack
    Timestamps of every length (some invalid), reserved ext types, every int width."""
    kind = draw(st.integers(0, 9 if depth < 3 else 4))
    if kind <= 2:
        return msgpack.packb(draw(scalars), use_bin_type=True)
    if kind == 3:  # msgpack Timestamp (ext -1), valid or not
        n = draw(st.sampled_from([0, 1, 4, 8, 12, 16]))
        if n == 8 and draw(st.booleans()):
            nsec = draw(st.sampled_from([0, 999_999_999, 1_000_000_000, 2**30 - 1]))
            return _neg_ext(-1, struct.pack(">Q", (nsec << 34) | draw(st.integers(0, 2**34 - 1))))
        if n == 12 and draw(st.booleans()):
            nsec = draw(st.sampled_from([0, 999_999_999, 1_000_000_000, 2**32 - 1]))
            return _neg_ext(-1, struct.pack(">Iq", nsec, draw(st.integers(-(2**63), 2**63 - 1))))
        return _neg_ext(-1, draw(st.binary(min_size=n, max_size=n)))
    if kind == 4:  # a reserved negative ext type, or a signed int of a chosen width
        if draw(st.booleans()):
            return _neg_ext(draw(st.integers(-128, -2)), draw(st.binary(min_size=1, max_size=1)))
        fmt = draw(st.sampled_from([("\xd0", "b"), ("\xd1", ">h"), ("\xd2", ">i"), ("\xd3", ">q")]))
        lo, hi = {"b": 7, ">h": 15, ">i": 31, ">q": 63}[fmt[1]], 0
        return fmt[0].encode("latin-1") + struct.pack(fmt[1], draw(st.integers(-(2**lo), 2**lo - 1 + hi)))
    items = draw(st.lists(raw_values(depth + 1), max_size=3))  # type: ignore[call-arg]
    if kind <= 6:
        return _array_header(len(items)) + b"".join(items)
    pairs = items[: len(items) // 2 * 2]
    return _map_header(len(pairs) // 2) + b"".join(pairs)


def _array_header(n: int) -> bytes:
    return bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack(">H", n)


def _map_header(n: int) -> bytes:
    return bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)


@st.composite
def raw_entries(draw: st.DrawFn) -> bytes:
    """Mostly [time, record] shaped, with every time shape and every way of being wrong."""
    shape = draw(st.integers(0, 5))
    if shape == 0:
        return draw(raw_values())
    time = draw(raw_values()) if draw(st.booleans()) else msgpack.packb(draw(scalars), use_bin_type=True)
    if shape == 1:  # v1.5 wrapped time
        inner = [time, *draw(st.lists(raw_values(), max_size=2))]
        time = _array_header(len(inner)) + b"".join(inner)
    record = draw(raw_values())
    if draw(st.booleans()):
        pairs = draw(st.lists(raw_values(), max_size=4))
        record = _map_header(len(pairs) // 2) + b"".join(pairs[: len(pairs) // 2 * 2])
    if shape == 2:
        return _array_header(3) + time + record + b"\xc0"
    return b"\x92" + time + record


def scan_all(fn: Any, data: bytes, **kw: Any) -> Any:
    return fn(data, **kw)


def in_a_map(value: bytes) -> bytes:
    """``[0, {"k": value}]``: an entry whose record holds the raw msgpack ``value``."""
    return b"\x92\x00\x81\xa1k" + value


#: Entries that take branches of the native scan random entries take only now and then (even 1500 of them
#: missed some in one run of two; measured with gcov): 32-bit bin, ext, map and array headers, a str8 key,
#: a str16 value, 64-bit integer times, float times (one before 1970), an ext8 EventTime, v1.5 times
#: wrapping nothing or an array, a record that is not a map, and the 32-bit ext length msgpack frames as a
#: header alone, after another bad ext.
RARE_SHAPES = [
    in_a_map(b"\xc6\x00\x00\x00\x01a"),
    in_a_map(b"\xc9\x00\x00\x00\x01\x05a"),
    in_a_map(b"\xdf\x00\x00\x00\x00"),
    in_a_map(b"\xdd\x00\x00\x00\x00"),
    in_a_map(b"\xda\x00\x03abc"),
    b"\x92\x00\x81\xd9\x02ab\x00",
    b"\x92\xcf" + bytes(8) + b"\x80",
    b"\x92\xd3" + bytes(8) + b"\x80",
    b"\x92\xcb" + struct.pack(">d", 1.5) + b"\x80",
    b"\x92\xcb" + struct.pack(">d", -1.0) + b"\x80",
    b"\x92\xc7\x08\x00" + struct.pack(">II", T, 0) + b"\x80",
    b"\x92\x90\x80",
    b"\x92\x92\x91\x00\x80\x80",
    b"\x92\x00\xa1x",
    b"\x92\x00\x80",
    b"\x92\x00\x82\xa1a\xd4\xff\x00\xa1b\xc9\xff\xff\xff\xff",
]

cuts = st.fixed_dictionaries({"slice_bytes": st.integers(0, 40), "slice_entries": st.integers(0, 4)})


@examples(ci=200, deep=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(raw_entries(), max_size=8), cuts)
@example([b"\x92\x00\x81\x80\x00"] * 3, None)  # the map-as-key entry of issue 14
@example(RARE_SHAPES, {"slice_bytes": 0, "slice_entries": 1})  # a slice ended by an invalid entry, too
@example(RARE_SHAPES, {"slice_bytes": 40, "slice_entries": 4})  # runs of valid entries within a slice
def test_native_scan_equals_the_reference_and_decode_entries(
    items: list[bytes], cut_or_none: dict[str, int] | None
) -> None:
    cut = cut_or_none if cut_or_none is not None else {}
    blob = b"".join(items)
    ref = scan_entries_py(blob, **cut)
    assert scan_entries(blob, **cut) == ref
    count, good_end, broken, invalid, *_, slices = ref
    assert (count, good_end, broken) == (len(items), len(blob), False)
    events, dropped = decode_entries(blob, RECV)
    # Integer seconds past year 9999: decoding still reads them (from a queue an older forwardd wrote),
    # the edge leaves them out; every other entry the edge leaves out is one decoding drops.
    past = sum(e.time_ns > MAX_TIME_NS for e in events)
    assert (invalid, len(events) - past) == (dropped + past, count - invalid)
    if slices is not None:  # the slices hold the valid entries, all of them, within their bounds
        pieces = [slice_data(blob, piece) for piece in slices]
        assert b"".join(pieces) == b"".join(item for item in items if not entry_problem(item))
        expected = [(piece[0], len(p), False, 0) for p, piece in zip(pieces, slices, strict=True)]
        assert [scan_entries(p)[:4] for p in pieces] == expected
        for piece, data_ in zip(slices, pieces, strict=True):
            assert piece[0] <= cut["slice_entries"] or not cut["slice_entries"]
            assert len(data_) <= cut["slice_bytes"] or not cut["slice_bytes"] or piece[0] == 1


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=120), st.integers(0, 5), st.integers(0, 1000))
def test_native_framing_equals_the_reference(blob: bytes, start: int, shift: int) -> None:
    start = min(start, len(blob))
    assert frame_ends(blob, start, shift) == frame_ends_py(blob, start, shift)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=120), st.integers(0, 5), st.integers(-1, 6))
@example(b"\x92\x00\x81\xd9", 0, -1)  # cut short inside a container: a str8 header,
@example(b"\x92\x00\x81\xd9\x05abc", 0, -1)  # a str8,
@example(b"\x92\x00\x81\xd7\x00abc", 0, -1)  # a fixext8,
@example(in_a_map(b"\xda\x00"), 0, -1)  # a str16 header
def test_native_scan_equals_the_reference_on_any_bytes(blob: bytes, start: int, max_entries: int) -> None:
    start = min(start, len(blob))
    assert scan_entries(blob, start, -1, max_entries) == scan_entries_py(blob, start, -1, max_entries)


@examples(ci=150, deep=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(raw_entries(), min_size=1, max_size=5), st.data())
def test_native_scan_equals_the_reference_on_mutated_entries(items: list[bytes], data: Any) -> None:
    blob = bytearray(b"".join(items))
    for _ in range(data.draw(st.integers(1, 3))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, 30))
    assert scan_entries(bytes(blob), slice_bytes=cut) == scan_entries_py(bytes(blob), slice_bytes=cut)


@pytest.mark.parametrize("depth", [1022, 1023, 1024, 1025])
@pytest.mark.parametrize("empty", [True, False])
def test_nesting_frames_as_far_as_msgpack_does(depth: int, empty: bool) -> None:
    """msgpack refuses a container opened inside 1024 open ones (StackError), empty or not."""
    inner = b"\x90" if empty else b"\x91\x00"
    entry = b"\x92\x01\x81\xa1k" + b"\x91" * depth + inner
    blob = entry + pack([T, {}])
    assert scan_entries(blob) == scan_entries_py(blob)
    assert scan_entries(blob)[2] is (depth + 3 > 1024)


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (pack([T, {}]), ""),
        (pack([T]), "not_a_pair"),
        (pack([T, "x"]), "record_not_a_map"),
        (pack([-1, {}]), "bad_time"),
        (pack([math.nan, {}]), "bad_time"),
        (pack([1e12, {}]), "bad_time"),
        (pack([True, {}]), "bad_time"),
        (pack([msgpack.ExtType(1, bytes(8)), {}]), "bad_time"),
        (pack([[T, 1], {}]), "bad_time"),
        (bytes.fromhex("92 00 81 80 00"), "unhashable_key"),
        (bytes.fromhex("92 00 81 91 00 00"), "unhashable_key"),
        (bytes.fromhex("92 00 81 a1 65 d4 ff 00"), "bad_ext"),
        (b"\x92\x00\x81\xa1e" + _neg_ext(-1, struct.pack(">Q", 10**9 << 34)), "bad_ext"),
        (bytes.fromhex("92 00 81 a1 65 c9 ff ff ff ff"), "bad_ext"),  # msgpack frames it as 5 bytes
    ],
    ids=repr,
)
def test_reasons(entry: bytes, reason: str) -> None:
    scan = scan_entries(entry)
    assert INVALID_REASONS[scan[7]] == reason
    assert scan[3] == (1 if reason else 0)
    assert scan[4] == (1 if reason == "bad_time" else 0)
    if reason:
        assert (scan[5], scan[6]) == (0, len(entry))


def test_slices_bound_bytes_and_entries() -> None:
    entry = pack([T, {"k": "v" * 10}])
    n = len(entry)
    blob = entry * 10
    assert scan_entries(blob, slice_entries=4)[8] == [(4, 0, 4 * n), (4, 4 * n, 8 * n), (2, 8 * n, 10 * n)]
    assert scan_entries(blob, slice_bytes=3 * n)[8] == [
        (3, 0, 3 * n), (3, 3 * n, 6 * n), (3, 6 * n, 9 * n), (1, 9 * n, 10 * n),
    ]  # fmt: skip
    assert scan_entries(blob, slice_bytes=1)[8] == [(1, i * n, (i + 1) * n) for i in range(10)]
    assert scan_entries(blob)[8] is None
    assert scan_entries(b"", slice_entries=4)[8] == []


def test_slices_leave_the_invalid_entries_out() -> None:
    good = pack([T, {"k": "v"}])
    n, m = len(good), len(BAD_KEY)
    blob = good + BAD_KEY + good + good + BAD_KEY + BAD_KEY + good
    runs = (0, n, n + m, 3 * n + m, 3 * n + 3 * m, 4 * n + 3 * m)
    assert scan_entries(blob, slice_entries=10)[8] == [(4, *runs)]
    assert scan_entries(blob, slice_entries=2)[8] == [
        (2, 0, n, n + m, 2 * n + m), (2, 2 * n + m, 3 * n + m, 3 * n + 3 * m, 4 * n + 3 * m),
    ]  # fmt: skip
    assert scan_entries(BAD_KEY * 3, slice_entries=2)[8] == []


def slice_data(blob: bytes, piece: tuple[int, ...]) -> bytes:
    """The entries of one slice: its runs, glued."""
    return b"".join(blob[piece[k] : piece[k + 1]] for k in range(1, len(piece), 2))


def test_sample_is_hex_and_bounded() -> None:
    data = b"\xff\xfe" + bytes(100)
    assert sample(data, 0, 2) == "ff fe"
    assert sample(data, 0, 100, limit=4) == "ff fe 00 00 ..."


def test_the_module_uses_the_native_scan() -> None:
    assert entries_mod.scan_entries is not scan_entries_py


# --- at the edge: what the decoder hands on ---------------------------------------------------------------

from forwardd.protocol import EntriesReceived, ServerConnection, encode  # noqa: E402


@pytest.mark.parametrize("compressed", [None, "gzip", "zstd"])
def test_packed_forward_reports_the_entries_decoding_will_drop(compressed: str | None) -> None:
    good = pack([T, {"k": "v"}])
    payload = good + BAD_KEY + pack([-5, {}]) + good + b"\xc1"
    (ev,) = ServerConnection().receive_data(encode.packed_forward("t", payload, compressed=compressed))
    assert isinstance(ev, EntriesReceived)
    assert ev.invalid is not None
    assert (ev.invalid.count, ev.invalid.bad_times, ev.invalid.reason) == (3, 1, "unhashable_key")
    assert ev.invalid.sample == BAD_KEY.hex(" ")
    # They are left out here, counted as decoding would have counted them (with the broken tail).
    assert (ev.chunk.entries, ev.chunk.count, ev.chunk.invalid) == (good + good, 2, 3)
    assert len(ev.chunk.events()) == 2
    assert ev.chunk.invalid == 3


def test_a_broken_tail_alone_is_reported() -> None:
    (ev,) = ServerConnection().receive_data(encode.packed_forward("t", pack([T, {}]) + b"\x92\xc1"))
    assert ev.invalid is not None
    assert (ev.invalid.count, ev.invalid.reason, ev.invalid.sample) == (1, "broken_tail", "92 c1")


def test_forward_and_message_modes_report_them_too() -> None:
    conn = ServerConnection()
    fwd = encode.forward("t", [(T, {"a": 1}), (-1, {"b": 2})])
    msgs = encode.message("m", -1, {"k": "v"}) + encode.message("m", T, {"k": "v"})
    one_bad_record = b"\x94\xa1m\x01\x81\x80\x00\xc0"  # [m, 1, {{}: 0}, nil]
    evs = conn.receive_data(fwd) + conn.receive_data(msgs) + conn.receive_data(one_bad_record)
    assert [(e.chunk.tag, e.invalid.count, e.invalid.reason) for e in evs if e.invalid] == [
        ("t", 1, "bad_time"), ("m", 1, "bad_time"), ("m", 1, "unhashable_key"),
    ]  # fmt: skip
    assert [(e.chunk.count, e.chunk.invalid, e.requests) for e in evs] == [(1, 1, 1), (1, 1, 2), (0, 1, 1)]


def test_good_chunks_carry_no_report() -> None:
    (ev,) = ServerConnection().receive_data(encode.packed_forward("t", pack([T, {}]) * 3))
    assert ev.invalid is None
