"""The range of event times the edge accepts: from the epoch to 9999-12-31T23:59:59.999999999Z, for every
shape of time (integer seconds of every msgpack width, float64 and float32 seconds, EventTime as fixext8
and ext8, each inside the v1.5 wrapper too). Past it an entry is left out at the edge, counted as a bad
time and reported, where before it was acked and then dead-lettered by the output that could not format
it (2**62 s). Before 1970 (a negative integer or float) and a msgpack Timestamp (ext -1) stay refused.

Each edge goes through the C scan and its Python reference (they must agree), decoding (the accepted
times, to the nanosecond, on the fast and the general path) and the protocol core in every mode.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import msgpack
import pytest

from forwardd.constants import MAX_SECONDS, NS
from forwardd.model import INVALID_REASONS, MAX_TIME_NS, Chunk, decode_entries, entry_problem
from forwardd.protocol import EntriesReceived, ServerConnection, encode
from forwardd.protocol.entries import NATIVE, scan_entries, scan_entries_py

RECV = 1_700_000_000_000_000_000
RECORD = b"\x81\xa1k\xa1v"  # {"k": "v"}
#: The largest float64 below the end of year 9999 (floats there are 2**-15 s apart).
LAST_FLOAT = math.nextafter(float(MAX_SECONDS + 1), 0.0)
#: float32 values there are 16384 s apart: the last one below the end and the first one past it.
LAST_F32 = (MAX_SECONDS + 1) // 16384 * 16384
FIRST_F32_PAST = LAST_F32 + 16384


def u64(v: int) -> bytes:
    return b"\xcf" + struct.pack(">Q", v)


def i64(v: int) -> bytes:
    return b"\xd3" + struct.pack(">q", v)


def f64(v: float) -> bytes:
    return b"\xcb" + struct.pack(">d", v)


def f32(v: float) -> bytes:
    return b"\xca" + struct.pack(">f", v)


def event_time(s: int, n: int, ext8: bool = False) -> bytes:
    return (b"\xc7\x08\x00" if ext8 else b"\xd7\x00") + struct.pack(">II", s, n)


def timestamp(s: int, n: int = 0) -> bytes:
    """msgpack's own Timestamp (ext -1), in its 12-byte form."""
    return b"\xc7\x0c\xff" + struct.pack(">Iq", n, s)


#: (name, time bytes, nanoseconds it decodes to): within the range, at its edges.
ACCEPTED: list[tuple[str, bytes, int]] = [
    ("fixint-1", b"\x01", NS),
    ("uint32-max", b"\xce\xff\xff\xff\xff", (2**32 - 1) * NS),
    ("uint64-last-second", u64(MAX_SECONDS), MAX_SECONDS * NS),
    ("int64-last-second", i64(MAX_SECONDS), MAX_SECONDS * NS),
    ("int64-1", i64(1), NS),
    ("uint64-0-is-received", u64(0), RECV),
    ("zero-is-received", b"\x00", RECV),
    ("nil-is-received", b"\xc0", RECV),
    ("float-last-below-10000", f64(LAST_FLOAT), MAX_SECONDS * NS + round((LAST_FLOAT - MAX_SECONDS) * NS)),
    ("float-1e11-once-the-cap", f64(1e11), 10**11 * NS),
    ("float-smallest", f64(5e-324), 0),
    ("float-0-is-received", f64(0.0), RECV),
    ("float-minus-0-is-received", f64(-0.0), RECV),
    ("float32-last-below-10000", f32(LAST_F32), LAST_F32 * NS),
    ("eventtime-max", event_time(2**32 - 1, 999_999_999), (2**32 - 1) * NS + 999_999_999),
    ("eventtime-ext8-max", event_time(2**32 - 1, 999_999_999, ext8=True), (2**32 - 1) * NS + 999_999_999),
    ("eventtime-nanos-carry", event_time(2**32 - 1, 2**32 - 1), (2**32 - 1) * NS + 2**32 - 1),
    ("eventtime-epoch", event_time(0, 0), 0),
    ("wrapped-last-second", b"\x92" + u64(MAX_SECONDS) + b"\x80", MAX_SECONDS * NS),
]

#: (name, time bytes): a shape of time, past the range or before it, or no event time at all.
REFUSED: list[tuple[str, bytes]] = [
    ("uint64-first-past", u64(MAX_SECONDS + 1)),
    ("uint64-2**62", u64(2**62)),
    ("uint64-max", u64(2**64 - 1)),
    ("int64-first-past", i64(MAX_SECONDS + 1)),
    ("int64-max", i64(2**63 - 1)),
    ("int64-minus-1", i64(-1)),
    ("int64-min", i64(-(2**63))),
    ("fixint-minus-1", b"\xff"),
    ("int8-minus-1", b"\xd0\xff"),
    ("int32-min", b"\xd2\x80\x00\x00\x00"),
    ("float-end-of-9999", f64(float(MAX_SECONDS + 1))),
    ("float-1e12", f64(1e12)),
    ("float-max", f64(1.7976931348623157e308)),
    ("float-inf", f64(math.inf)),
    ("float-minus-inf", f64(-math.inf)),
    ("float-nan", f64(math.nan)),
    ("float-minus-smallest", f64(-5e-324)),
    ("float32-first-past", f32(FIRST_F32_PAST)),
    ("float32-inf", f32(math.inf)),
    ("timestamp-2024", timestamp(1_700_000_000)),
    ("timestamp-fixext4", b"\xd6\xff" + struct.pack(">I", 1_700_000_000)),
    ("timestamp-2**62", timestamp(2**62)),
    ("wrapped-first-past", b"\x92" + u64(MAX_SECONDS + 1) + b"\x80"),
    ("wrapped-negative", b"\x92\xff\x80"),
]


def entry(time: bytes) -> bytes:
    return b"\x92" + time + RECORD


def test_the_range_is_the_end_of_year_9999() -> None:
    assert MAX_TIME_NS == 253_402_300_800 * NS - 1
    assert struct.unpack(">f", struct.pack(">f", LAST_F32))[0] == LAST_F32 < MAX_SECONDS + 1
    assert struct.unpack(">f", struct.pack(">f", FIRST_F32_PAST))[0] == FIRST_F32_PAST > MAX_SECONDS


@pytest.mark.parametrize(("name", "time", "ns"), ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_times_within_the_range_are_kept_by_both_scans(name: str, time: bytes, ns: int) -> None:
    raw = entry(time)
    assert NATIVE
    assert scan_entries(raw) == scan_entries_py(raw) == (1, len(raw), False, 0, 0, -1, -1, 0, None)
    assert entry_problem(raw) == 0
    assert ns <= MAX_TIME_NS
    [ev], invalid = decode_entries(raw, RECV)
    assert (ev.time_ns, ev.record, invalid) == (ns, {"k": "v"}, 0)
    chunk = Chunk("t", raw * 2, 2, RECV)  # the fast path, where it applies, reads the same time
    assert [e.time_ns for e in chunk.events()] == [ns, ns]


@pytest.mark.parametrize(("name", "time"), REFUSED, ids=[r[0] for r in REFUSED])
def test_times_outside_the_range_are_bad_times_for_both_scans(name: str, time: bytes) -> None:
    good = entry(b"\x01")
    raw = good + entry(time) + good
    bad_start, bad_end = len(good), len(raw) - len(good)
    expected = (3, len(raw), False, 1, 1, bad_start, bad_end, INVALID_REASONS.index("bad_time"))
    assert scan_entries(raw)[:8] == scan_entries_py(raw)[:8] == expected
    # Cut into slices, the bad entry is left out and both good ones are kept.
    slices = scan_entries(raw, slice_entries=10)[8]
    assert slices == scan_entries_py(raw, slice_entries=10)[8] == [(2, 0, bad_start, bad_end, len(raw))]


@pytest.mark.parametrize(
    "time",
    [u64(MAX_SECONDS + 1), u64(2**62), u64(2**64 - 1), i64(2**63 - 1)],
    ids=["first-past", "2**62", "u64-max", "i64-max"],
)
def test_decoding_still_reads_integer_seconds_past_the_range_from_an_older_queue(time: bytes) -> None:
    """A forwardd before this rule acked such entries into its disk queues: they are still events when
    an upgraded one delivers them (an acked event never vanishes), and the outputs write or dead-letter
    them as before. Only the edge refuses them."""
    raw = entry(time)
    seconds = msgpack.unpackb(time)
    [ev], invalid = decode_entries(raw, RECV)
    assert (ev.time_ns, invalid) == (seconds * NS, 0)
    assert Chunk("t", raw, 1, RECV).events()[0].time_ns == seconds * NS
    assert entry_problem(raw) == INVALID_REASONS.index("bad_time")


def _time_value(time: bytes) -> Any:
    return msgpack.unpackb(time, ext_hook=lambda code, data: msgpack.ExtType(code, data), timestamp=0)


@pytest.mark.parametrize(
    "time",
    [u64(MAX_SECONDS + 1), u64(2**62), f64(float(MAX_SECONDS + 1)), f64(math.inf), b"\xff", timestamp(1)],
    ids=["int-first-past", "int-2**62", "float-end", "float-inf", "negative", "timestamp"],
)
@pytest.mark.parametrize("mode", ["message", "message-in-a-read", "forward", "packed", "gzip"])
def test_every_mode_leaves_the_entry_out_and_reports_it(time: bytes, mode: str) -> None:
    good = entry(b"\x01")
    bad = entry(time)
    if mode.startswith("message"):
        head = b"\x94\xa1t" + time + RECORD
        frames = head + b"\x81\xa5chunk\xa2c1"
        if mode == "message-in-a-read":  # the general path, not the one-request shortcut
            frames = b"\xc0" + frames
        events = ServerConnection().receive_data(frames)
        evs = [e for e in events if isinstance(e, EntriesReceived)]
        assert len(evs) == 1
        (ev,) = evs
        assert (ev.chunk.count, ev.chunk.entries, ev.ack) == (0, b"", msgpack.packb({"ack": "c1"}))
    else:
        payload = good + bad + good
        if mode == "forward":
            request = b"\x93\xa1t\x93" + payload + b"\x81\xa5chunk\xa2c1"
        else:
            compressed = "gzip" if mode == "gzip" else None
            request = encode.packed_forward("t", payload, chunk="c1", compressed=compressed)
        (ev,) = ServerConnection().receive_data(request)
        assert isinstance(ev, EntriesReceived)
        assert (ev.chunk.count, ev.chunk.entries) == (2, good + good)
        assert [e.time_ns for e in ev.chunk.events()] == [NS, NS]
    assert ev.invalid is not None
    assert (ev.invalid.count, ev.invalid.bad_times, ev.invalid.reason) == (1, 1, "bad_time")
    assert ev.invalid.sample == bad.hex(" ")
    assert ev.chunk.invalid == 1


def test_json_mode_float_and_integer_times_past_the_range_are_left_out() -> None:
    conn = ServerConnection(json_mode=True)
    events = conn.receive_data(
        b'["t", [[1, {"n": 1}], [253402300800, {"n": 2}], [253402300800.0, {"n": 3}], '
        b'[253402300799.5, {"n": 4}]], {"chunk": "c1"}]'
    )
    (ev,) = [e for e in events if isinstance(e, EntriesReceived)]
    assert [(e.time_ns, e.record["n"]) for e in ev.chunk.events()] == [
        (NS, 1), (MAX_SECONDS * NS + 500_000_000, 4),
    ]  # fmt: skip
    assert ev.invalid is not None
    assert (ev.invalid.count, ev.invalid.bad_times) == (2, 2)


def test_the_message_time_value_is_what_the_client_sent() -> None:
    """The refused times above are the values their names say (the bytes are packed by hand)."""
    assert _time_value(u64(2**62)) == 2**62
    assert _time_value(i64(-(2**63))) == -(2**63)
    assert _time_value(f32(FIRST_F32_PAST)) == FIRST_F32_PAST
    assert isinstance(_time_value(timestamp(1)), msgpack.Timestamp)
