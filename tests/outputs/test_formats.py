"""Record encoders: golden bytes for every time shape and awkward value, and properties for any record."""

from __future__ import annotations

import base64
import io
import json
import time
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwardd.model import Chunk, Event, EventTime, decode_entries, pack_event_time
from forwardd.outputs.debug import NullOutput, StdoutOutput
from forwardd.outputs.formats import (
    encode_fluentd_line,
    encode_fluentd_lines,
    encode_json,
    encode_json_lines,
    encode_msgpack,
    encode_msgpack_entries,
    json_lines,
    make_encoder,
    make_plain_encoder,
    plain_json_lines,
    rfc3339_ns,
)

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
RECEIVED = 1_600_000_000_000_000_042  # 2020-09-13T12:26:40.000000042Z


def _ext8(seconds: int, nanos: int) -> bytes:
    return b"\xc7\x08\x00" + seconds.to_bytes(4, "big") + nanos.to_bytes(4, "big")


def every_time_shape() -> Chunk:
    entries = b"".join(
        [
            msgpack.packb([T0, {"k": "int"}]),
            b"\x92" + pack_event_time(T0 * 10**9 + 123_456_789) + msgpack.packb({"k": "fixext8"}),
            b"\x92" + _ext8(T0 + 1, 5) + msgpack.packb({"k": "ext8"}),
            msgpack.packb([T0 + 2.5, {"k": "float"}]),
            msgpack.packb([[T0 + 3, {"m": 1}], {"k": "wrapped"}]),
            msgpack.packb([0, {"k": "zero"}]),
            msgpack.packb([None, {"k": "nil"}]),
        ]
    )
    return Chunk("app.web", entries, 7, RECEIVED)


def chunk_of(*records: dict[Any, Any], tag: str = "t") -> Chunk:
    return Chunk.from_events(tag, [Event(T0 * 10**9 + i, r) for i, r in enumerate(records)], RECEIVED)


def test_json_lines_golden_for_every_time_shape():
    assert encode_json_lines(every_time_shape()) == (
        b'{"time":"2023-11-14T22:13:20.000000000Z","tag":"app.web","k":"int"}\n'
        b'{"time":"2023-11-14T22:13:20.123456789Z","tag":"app.web","k":"fixext8"}\n'
        b'{"time":"2023-11-14T22:13:21.000000005Z","tag":"app.web","k":"ext8"}\n'
        b'{"time":"2023-11-14T22:13:22.500000000Z","tag":"app.web","k":"float"}\n'
        b'{"time":"2023-11-14T22:13:23.000000000Z","tag":"app.web","k":"wrapped"}\n'
        b'{"time":"2020-09-13T12:26:40.000000042Z","tag":"app.web","k":"zero"}\n'
        b'{"time":"2020-09-13T12:26:40.000000042Z","tag":"app.web","k":"nil"}\n'
    )


def test_fluentd_lines_golden_for_every_time_shape():
    assert encode_fluentd_lines(every_time_shape()) == (
        b'2023-11-14T22:13:20+00:00\tapp.web\t{"k":"int"}\n'
        b'2023-11-14T22:13:20+00:00\tapp.web\t{"k":"fixext8"}\n'
        b'2023-11-14T22:13:21+00:00\tapp.web\t{"k":"ext8"}\n'
        b'2023-11-14T22:13:22+00:00\tapp.web\t{"k":"float"}\n'
        b'2023-11-14T22:13:23+00:00\tapp.web\t{"k":"wrapped"}\n'
        b'2020-09-13T12:26:40+00:00\tapp.web\t{"k":"zero"}\n'
        b'2020-09-13T12:26:40+00:00\tapp.web\t{"k":"nil"}\n'
    )


def test_msgpack_entries_are_packed_forward_entries_with_event_time():
    chunk = every_time_shape()
    data = encode_msgpack_entries(chunk)
    assert data.startswith(b"\x92\xd7\x00" + T0.to_bytes(4, "big") + b"\x00\x00\x00\x00\x81\xa1k\xa3int")
    events, invalid = decode_entries(data, received_ns=1)
    assert invalid == 0
    assert [(e.time_ns, e.record) for e in events] == [(e.time_ns, e.record) for e in chunk.events()]
    assert all(e.meta is None for e in events)  # the v1.5 wrapper is not written


def test_msgpack_time_past_2106_falls_back_to_integer_seconds():
    ev = Event(2**33 * 10**9 + 5, {"a": 1})
    data = encode_msgpack(ev)
    assert data == b"\x92" + msgpack.packb(2**33) + b"\x81\xa1a\x01"
    [back], _ = decode_entries(data, 1)
    assert back.time_ns == 2**33 * 10**9  # whole seconds: the fraction cannot be carried


def test_awkward_values_golden():
    # A str with invalid UTF-8, a bin, a nested EventTime, an unknown ext, an int key, a bin key with an
    # undecodable byte, a nested list/map holding invalid UTF-8 again, an empty map.
    record = (
        b"\x88"
        + b"\xa3str\xa4ok\xff\xfe"
        + b"\xa3bin\xc4\x03a\x00\xff"
        + b"\xa2et"
        + pack_event_time((T0 + 60) * 10**9 + 7)
        + b"\xa3ext\xd4\x05\x01"
        + b"\x01\xa3int"
        + b"\xc4\x02k\xff\xa7bin key"
        + b"\xa4deep\x91\x81\xa1x\xa2\xc3\x28"
        + b"\xa5empty\x80"
    )
    chunk = Chunk("t", b"\x92" + msgpack.packb(T0) + record, 1, RECEIVED)
    assert chunk.events()[0].record[b"k\xff"] == "bin key"
    assert encode_json_lines(chunk, time_key=None, tag_key=None) == (
        b'{"str":"ok\\\\xff\\\\xfe","bin":"a\\u0000\\\\xff","et":"2023-11-14T22:14:20.000000007Z",'
        b'"ext":{"ext":5,"data":"AQ=="},"1":"int","k\\\\xff":"bin key","deep":[{"x":"\\\\xc3("}],'
        b'"empty":{}}\n'
    )


def test_bin_values_valid_utf8_stay_text_and_fast_path_handles_them():
    chunk = chunk_of({"b": b"hello", "et": EventTime(T0, 1)})
    assert encode_json_lines(chunk, tag_key=None) == (
        b'{"time":"2023-11-14T22:13:20.000000000Z","b":"hello","et":"2023-11-14T22:13:20.000000001Z"}\n'
    )


def test_integers_beyond_64_bits_become_strings():
    line = encode_json(
        Event(T0 * 10**9, {"big": 2**70, "neg": -(2**63), "max": 2**64 - 1}), "t", time_key=None
    )
    assert json.loads(line) == {"tag": "t", "big": str(2**70), "neg": -(2**63), "max": 2**64 - 1}


def test_injected_keys_win_and_appear_once():
    chunk = chunk_of({"time": "record's", "tag": "record's", "a": 1})
    assert encode_json_lines(chunk) == b'{"time":"2023-11-14T22:13:20.000000000Z","tag":"t","a":1}\n'
    # with injection off the record's own keys stay
    assert (
        encode_json_lines(chunk, time_key=None, tag_key=None)
        == b'{"time":"record\'s","tag":"record\'s","a":1}\n'
    )


@pytest.mark.parametrize(
    ("time_key", "tag_key", "expected"),
    [
        (
            "@t",
            "_tag",
            b'{"@t":"2023-11-14T22:13:20.000000000Z","_tag":"t","a":1}\n{"@t":"2023-11-14T22:13:20.000000001Z","_tag":"t"}\n',
        ),
        (
            "time",
            None,
            b'{"time":"2023-11-14T22:13:20.000000000Z","a":1}\n{"time":"2023-11-14T22:13:20.000000001Z"}\n',
        ),
        (None, "tag", b'{"tag":"t","a":1}\n{"tag":"t"}\n'),
        (None, None, b'{"a":1}\n{}\n'),
    ],
)
def test_key_options_and_empty_records(time_key, tag_key, expected):
    assert encode_json_lines(chunk_of({"a": 1}, {}), time_key, tag_key) == expected


def test_tag_with_invalid_utf8_and_tabs():
    tag = b"a\tb\nc\xff".decode("utf-8", "surrogateescape")
    ev = Event(T0 * 10**9, {"a": 1})
    assert encode_json(ev, tag, time_key=None) == b'{"tag":"a\\tb\\nc\\\\xff","a":1}'
    assert encode_fluentd_line(ev, tag) == b'2023-11-14T22:13:20+00:00\ta\\tb\\nc\\xff\t{"a":1}\n'


def test_fluentd_local_time_uses_the_local_offset(monkeypatch):
    monkeypatch.setenv("TZ", "JST-9")
    time.tzset()
    try:
        line = encode_fluentd_line(Event(T0 * 10**9, {}), "t", utc=False)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert line == b"2023-11-15T07:13:20+09:00\tt\t{}\n"


def test_per_event_encoders_match_the_batch_ones():
    chunk = every_time_shape()
    events = chunk.events()
    assert b"".join(encode_json(e, chunk.tag, newline=True) for e in events) == encode_json_lines(chunk)
    assert b"".join(encode_msgpack(e, chunk.tag) for e in events) == encode_msgpack_entries(chunk)
    assert b"".join(encode_fluentd_line(e, chunk.tag) for e in events) == encode_fluentd_lines(chunk)


def test_make_encoder():
    chunk = every_time_shape()
    assert make_encoder("json", tag_key=None)(chunk.events(), "x") == encode_json_lines(chunk, tag_key=None)
    assert make_encoder("msgpack")(chunk.events(), "x") == encode_msgpack_entries(chunk)
    assert make_encoder("fluentd")(chunk.events(), "app.web") == encode_fluentd_lines(chunk)
    with pytest.raises(ValueError, match="unknown format"):
        make_encoder("csv")


def test_rfc3339_is_fixed_width():
    assert rfc3339_ns(0) == "1970-01-01T00:00:00.000000000Z"
    assert rfc3339_ns(T0 * 10**9 + 1) == "2023-11-14T22:13:20.000000001Z"


# What a msgpack record can hold after decoding with surrogateescape.
_text = st.binary(max_size=12).map(lambda b: b.decode("utf-8", "surrogateescape")) | st.text(max_size=12)
_scalar = (
    _text
    | st.binary(max_size=8)
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans()
    | st.none()
    | st.builds(EventTime, st.integers(0, 2**32 - 1), st.integers(0, 10**9 - 1))
)
_value = st.recursive(
    _scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_record = st.dictionaries(_text | st.integers(-5, 5), _value, max_size=6)


@settings(max_examples=40, deadline=None)
@given(records=st.lists(_record, min_size=1, max_size=5), tag=_text)
def test_any_record_gives_one_valid_json_line_each(records, tag):
    events = [Event(T0 * 10**9 + i * 999_999_999, r) for i, r in enumerate(records)]
    data = json_lines(events, tag)
    text = data.decode("utf-8")  # strict: valid UTF-8 whatever the input held
    lines = text.split("\n")
    assert lines[-1] == ""
    assert len(lines) - 1 == len(records)
    for ev, line in zip(events, lines, strict=False):
        obj = json.loads(line)
        assert obj["time"] == rfc3339_ns(ev.time_ns)
        assert list(obj)[:2] == ["time", "tag"]
        assert isinstance(obj["tag"], str)


@settings(max_examples=30, deadline=None)
@given(records=st.lists(_record, min_size=1, max_size=4))
def test_any_record_round_trips_through_msgpack(records):
    events = [Event(T0 * 10**9 + i, r) for i, r in enumerate(records)]
    data = b"".join(encode_msgpack(e) for e in events)
    decoded, invalid = decode_entries(data, 1)
    assert invalid == 0
    assert [(e.time_ns, e.record) for e in decoded] == [(e.time_ns, e.record) for e in events]


async def test_stdout_output_writes_json_lines_per_chunk():
    stream = io.BytesIO()
    out = StdoutOutput(name="s", stream=stream, tag_key=None)
    await out.write(chunk_of({"a": 1}, {"b": 2}))
    assert stream.getvalue() == (
        b'{"time":"2023-11-14T22:13:20.000000000Z","a":1}\n{"time":"2023-11-14T22:13:20.000000001Z","b":2}\n'
    )


async def test_null_output_counts():
    out = NullOutput(decode=True)
    await out.write(chunk_of({"a": 1}, {"b": 2}))
    await out.write(every_time_shape())
    assert (out.chunks, out.events) == (2, 9)


# --- plain chunks (decoded on the fast path) take a faster JSON encoder; same lines ---------------------

_plain_scalar = st.text(max_size=10) | st.integers(-(2**63), 2**64 - 1) | st.booleans() | st.none()
_plain_value = st.recursive(
    _plain_scalar | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
_key_names = st.sampled_from(["time", "tag", "@t", "a", "log"])


def _decoded(records: list[dict[str, Any]], times: list[int]) -> Chunk:
    entries = b"".join(
        b"\x92" + pack_event_time(t) + msgpack.packb(r) for t, r in zip(times, records, strict=True)
    )
    return Chunk("docker.web", entries, len(records), RECEIVED)


@settings(max_examples=300, deadline=None)
@given(
    records=st.lists(
        st.dictionaries(_key_names | st.text(max_size=4), _plain_value, max_size=5), min_size=1, max_size=5
    ),
    seconds=st.lists(st.integers(0, 2**32 - 1), min_size=5, max_size=5),
    nanos=st.integers(0, 10**9 - 1),
    time_key=st.sampled_from(["time", "@t", None]),
    tag_key=st.sampled_from(["tag", "time", None]),
)
def test_plain_json_lines_match_the_general_encoder(records, seconds, nanos, time_key, tag_key):
    chunk = _decoded(records, [s * 10**9 + nanos for s in seconds[: len(records)]])
    plain = chunk.plain_entries()
    assert plain is not None
    assert chunk.plain
    fast = plain_json_lines(plain, chunk.tag, time_key=time_key, tag_key=tag_key)
    slow = json_lines(chunk.events(), chunk.tag, time_key=time_key, tag_key=tag_key)
    assert make_plain_encoder("json", time_key=time_key, tag_key=tag_key)(plain, chunk.tag) == fast
    # The one textual difference allowed is exponent floats written 1e16 instead of 1e+16: byte for byte
    # wherever the general text has no "e+" at all, the same values everywhere.
    if b"e+" not in slow:
        assert fast == slow
    assert [json.loads(x) for x in fast.splitlines()] == [json.loads(x) for x in slow.splitlines()]


def test_plain_json_lines_golden():
    chunk = _decoded([{"log": "a", "tag": "mine", "time": 1}, {}], [T0 * 10**9 + 5, (T0 + 1) * 10**9])
    assert encode_json_lines(chunk) == (
        b'{"time":"2023-11-14T22:13:20.000000005Z","tag":"docker.web","log":"a"}\n'
        b'{"time":"2023-11-14T22:13:21.000000000Z","tag":"docker.web"}\n'
    )
    assert (
        encode_json_lines(chunk, time_key=None)
        == b'{"tag":"docker.web","log":"a","time":1}\n{"tag":"docker.web"}\n'
    )
    assert encode_json_lines(chunk, tag_key=None) == (
        b'{"time":"2023-11-14T22:13:20.000000005Z","log":"a","tag":"mine"}\n'
        b'{"time":"2023-11-14T22:13:21.000000000Z"}\n'
    )
    assert encode_json_lines(chunk, None, None) == b'{"log":"a","tag":"mine","time":1}\n{}\n'


def test_a_chunk_with_bin_values_is_not_plain_and_keeps_its_text_form():
    entries = msgpack.packb([T0, {"b": b"\xffok"}], use_bin_type=True)
    chunk = Chunk("t", entries, 1, RECEIVED)
    assert chunk.plain_entries() is None
    assert (
        encode_json_lines(chunk) == b'{"time":"2023-11-14T22:13:20.000000000Z","tag":"t","b":"\\\\xffok"}\n'
    )
    assert not chunk.plain
    assert make_plain_encoder("msgpack") is None
    assert make_plain_encoder("fluentd") is None


@pytest.mark.parametrize(
    ("ext", "expected"),
    [
        (b"\xd6\xff\x00\x00\x00\x01", "1970-01-01T00:00:01.000000000Z"),  # timestamp 32
        (b"\xd7\xff" + (5 << 34 | 1_700_000_000).to_bytes(8, "big"), "2023-11-14T22:13:20.000000005Z"),
    ],
)
def test_a_msgpack_timestamp_in_a_record_is_rfc3339_text(ext: bytes, expected: str) -> None:
    """msgpack's own timestamp (ext -1) is valid in a record; it was refused as 'not JSON serializable'
    and the event dead-lettered."""
    chunk = Chunk("app", b"\x92\x01\x81\xa1t" + ext, 1, 1)
    [line] = encode_json_lines(chunk).splitlines()
    assert json.loads(line)["t"] == expected


def test_a_msgpack_timestamp_gmtime_cannot_write_keeps_its_bytes() -> None:
    raw = b"\xc7\x0c\xff" + (0).to_bytes(4, "big") + (2**62).to_bytes(8, "big")  # timestamp 96, year ~1e11
    [line] = encode_json_lines(Chunk("app", b"\x92\x01\x81\xa1t" + raw, 1, 1)).splitlines()
    value = json.loads(line)["t"]
    assert value["ext"] == -1
    assert base64.b64decode(value["data"]) == raw[3:]
