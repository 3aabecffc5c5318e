"""Every output format over hostile records: each either encodes, and decoding the output gives back the
documented value, or raises UnprocessableError for a documented reason; never anything else.

Records are generated as msgpack bytes a peer could send (packed by hand where msgpack's packer would
refuse: undecodable strings, nesting deeper than any encoder takes), then decoded as forwardd decodes
them, so every format is exercised on exactly what reaches it: the C transcoder and its fallbacks for
JSON lines, msgpack entries, Fluentd's format, the HTTP bodies and the Kafka values. Hostile means: deep
nesting (past orjson's 254 and msgpack's own limit), non-UTF-8 strings and keys, huge keys, non-string
keys (nil, booleans, integers, floats, bin, ext), NaN and infinities, ext types and EventTime, the largest
and smallest msgpack integers, bin values, and times no calendar holds.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import time
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from forwardd.errors import UnprocessableError
from forwardd.model import Chunk, Event, EventTime, decode_entries
from forwardd.outputs.formats import (
    MAX_JSON_DEPTH,
    encode_json_lines,
    fluentd_lines,
    json_lines,
    msgpack_entries,
    rfc3339_ns,
)
from forwardd.outputs.http import HttpOutput
from forwardd.outputs.kafka import KafkaOutput

TAGS = ["app.web", "d\u00e9j\u00e0", b"\xff\xfe.x".decode("utf-8", "surrogateescape"), "t\tab\nnl"]


class Deep:
    """A value nested ``depth`` lists deep around ``leaf``; packed by hand (too deep for the packer)."""

    def __init__(self, depth: int, leaf: Any) -> None:
        self.depth = depth
        self.leaf = leaf


class Raw:
    """A str that is no UTF-8 text (what a peer can send): packed as a msgpack str of these bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data


def pack(v: Any) -> bytes:
    """msgpack bytes of a generated value (containers by hand, so Deep and Raw can sit anywhere)."""
    if isinstance(v, Deep):
        return b"\x91" * v.depth + pack(v.leaf)
    if isinstance(v, Raw):
        n = len(v.data)
        head = bytes((0xA0 | n,)) if n < 32 else b"\xd9" + bytes((n,))
        return head + v.data
    if isinstance(v, EventTime):
        return msgpack.packb(v.to_ext())
    if isinstance(v, dict):
        items = list(v.items())
        n = len(items)
        head = bytes((0x80 | n,)) if n < 16 else b"\xde" + struct.pack(">H", n)
        return head + b"".join(pack(k) + pack(x) for k, x in items)
    if isinstance(v, list):
        n = len(v)
        head = bytes((0x90 | n,)) if n < 16 else b"\xdc" + struct.pack(">H", n)
        return head + b"".join(pack(x) for x in v)
    return msgpack.packb(v, use_bin_type=True)


_text = st.text(max_size=8) | st.binary(max_size=6).map(Raw)
_scalar = st.one_of(
    _text,
    st.binary(max_size=6),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),  # NaN and infinities included
    st.booleans(),
    st.none(),
    st.builds(msgpack.ExtType, st.integers(1, 127), st.binary(max_size=4)),
    st.builds(EventTime, st.integers(0, 2**32 - 1), st.integers(0, 10**9 - 1)),
)
_key = st.one_of(
    _text,
    st.binary(max_size=4),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.booleans(),
    st.none(),
    st.builds(msgpack.ExtType, st.integers(1, 127), st.binary(max_size=2)),
    st.just("k" * 100_000),  # a huge key
)
_deep = st.builds(Deep, st.sampled_from([1, 200, MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH, 600, 1000]), _scalar)
_value = st.recursive(
    _scalar | _deep,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_key, inner, max_size=3),
    max_leaves=10,
)
_record = st.dictionaries(_key, _value, max_size=5)
_time = st.one_of(
    st.builds(lambda s, n: EventTime(s, n), st.integers(0, 2**32 - 1), st.integers(0, 10**9 - 1)),
    st.integers(1, 2**64 - 1),  # whole seconds, up to times no calendar holds
    st.floats(0, 1e11),
    st.sampled_from([0, None]),
)


def chunk_of(tag: str, pairs: list[tuple[Any, dict[Any, Any]]]) -> Chunk:
    entries = b"".join(b"\x92" + pack(t) + pack(r) for t, r in pairs)
    return Chunk(tag, entries, len(pairs), 1_700_000_000_000_000_000)


# ------------------------------------------------------------------------------------ documented values


def fix(s: str) -> str:
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return s.encode("utf-8", "backslashreplace").decode("ascii")


def json_key(k: Any) -> str:
    t = type(k)
    if t is str:
        return fix(k)
    if t is bytes:
        return k.decode("utf-8", "backslashreplace")  # type: ignore[no-any-return]
    if k is None:
        return "null"
    if t is bool:
        return "true" if k else "false"
    if t is int:
        return str(k)
    if t is float:  # JSON text as orjson writes it (1e-05 reads 0.00001), NaN and infinities as null
        return orjson.dumps(k).decode()
    return fix(str(k))


def as_json(v: Any) -> Any:
    """What a decoded value reads as in the JSON formats (the module doc of forwardd.outputs.formats)."""
    t = type(v)
    if t is str:
        return fix(v)
    if t is bytes:
        return v.decode("utf-8", "backslashreplace")
    if t is EventTime:
        return rfc3339_ns(v.to_ns())
    if t is msgpack.ExtType:
        return {"ext": v.code, "data": base64.b64encode(v.data).decode()}
    if t is float:
        return v if math.isfinite(v) else None
    if t is dict:
        return {json_key(k): as_json(x) for k, x in v.items()}
    if t is list:
        return [as_json(x) for x in v]
    return v


def depth(v: Any) -> int:
    """Containers nested in ``v`` as JSON (a record counts itself, an ext value is written as a map)."""
    best, stack = 0, [(v, 1)]
    while stack:
        x, d = stack.pop()
        if type(x) is msgpack.ExtType:
            best = max(best, d)
        elif type(x) is dict:
            best = max(best, d)
            stack += [(y, d + 1) for y in x.values()]
        elif type(x) is list:
            best = max(best, d)
            stack += [(y, d + 1) for y in x]
    return best


def calendar_fails(ns: int) -> bool:
    try:
        time.strftime("%Y", time.gmtime(ns // 10**9))
    except (OverflowError, OSError, ValueError):
        return True
    return False


def may_refuse_json(events: list[Event]) -> bool:
    """Whether the documented reasons allow a JSON encoder to refuse these events."""
    return any(depth(e.record) > MAX_JSON_DEPTH or calendar_fails(e.time_ns) for e in events)


def canon(v: Any) -> bytes:
    """A comparable form of a decoded value: its msgpack bytes (NaN, even as a key, equals itself there;
    maps keep their order), without Python recursion (values nest up to a thousand deep)."""
    return msgpack.packb(
        v, use_bin_type=True, unicode_errors="surrogateescape",
        default=lambda o: o.to_ext() if type(o) is EventTime else o,
    )  # fmt: skip


def check_json_line(
    obj: dict[str, Any], ev: Event, tag: str, time_key: str | None, tag_key: str | None
) -> None:
    want = as_json(ev.record)
    if time_key is not None:
        assert obj.pop(time_key) == rfc3339_ns(ev.time_ns)
        want.pop(time_key, None)
    if tag_key is not None:
        assert obj.pop(tag_key) == fix(tag)
        want.pop(tag_key, None)
    assert obj == want


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(
    pairs=st.lists(st.tuples(_time, _record), min_size=1, max_size=4),
    tag=st.sampled_from(TAGS),
    keys=st.sampled_from([("time", "tag"), (None, None), ("log", None)]),
)
# Keys that only read as an injected key's name once sanitised: the injected value still wins, once.
@example(pairs=[(1_700_000_000, {b"time": 1, b"tag": 2, "a": b"x"})], tag="t", keys=("time", "tag"))
@example(pairs=[(2**62, {"a": 1})], tag="t", keys=("time", "tag"))  # no calendar holds that time
@example(pairs=[(1_700_000_000, {"log": Deep(MAX_JSON_DEPTH - 1, 1)})], tag="t", keys=(None, None))
def test_json_lines_from_the_chunk_bytes(
    pairs: list[tuple[Any, dict[Any, Any]]], tag: str, keys: Any
) -> None:
    """The file output's path: C transcoder, then msgspec's columns, then the general encoder."""
    chunk = chunk_of(tag, pairs)
    events, _ = decode_entries(chunk.entries, chunk.received_ns)
    try:
        data = encode_json_lines(chunk, *keys)
    except UnprocessableError:
        assert may_refuse_json(events), "refused a record that can be JSON"
        return
    lines = data.decode("utf-8").split("\n")  # strict UTF-8
    assert lines.pop() == ""
    assert len(lines) == len(events)
    for line, ev in zip(lines, events, strict=True):
        check_json_line(json.loads(line), ev, tag, *keys)


@SETTINGS
@given(pairs=st.lists(st.tuples(_time, _record), min_size=1, max_size=4), tag=st.sampled_from(TAGS))
def test_fluentd_lines(pairs: list[tuple[Any, dict[Any, Any]]], tag: str) -> None:
    chunk = chunk_of(tag, pairs)
    events = chunk.events()
    try:
        data = fluentd_lines(events, tag)
    except UnprocessableError:
        assert may_refuse_json(events)
        return
    lines = data.decode("utf-8").split("\n")
    assert lines.pop() == ""
    assert len(lines) == len(events)
    for line, ev in zip(lines, events, strict=True):
        when, got_tag, body = line.split("\t", 2)
        assert when == time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(ev.time_ns // 10**9))
        assert got_tag == fix(tag).replace("\t", "\\t").replace("\n", "\\n")
        assert json.loads(body) == as_json(ev.record)


@SETTINGS
@given(pairs=st.lists(st.tuples(_time, _record), min_size=1, max_size=4))
def test_msgpack_entries_round_trip(pairs: list[tuple[Any, dict[Any, Any]]]) -> None:
    chunk = chunk_of("t", pairs)
    events = chunk.events()
    data = msgpack_entries(events)  # whatever decoded from msgpack packs again: nothing to refuse
    back, invalid = decode_entries(data, 1)
    assert invalid == 0
    for ev, b in zip(events, back, strict=True):
        s = ev.time_ns // 10**9
        assert b.time_ns == (ev.time_ns if s <= 0xFFFFFFFF else s * 10**9)
        assert canon(b.record) == canon(ev.record)


@SETTINGS
@given(
    pairs=st.lists(st.tuples(_time, _record), min_size=1, max_size=4),
    tag=st.sampled_from(TAGS),
    fmt=st.sampled_from(["ndjson", "json_array", "msgpack"]),
)
@example(pairs=[(67_767_976_233_532_800, {})], tag="t", fmt="msgpack")  # no calendar holds that time
@example(pairs=[(1, {"": Deep(MAX_JSON_DEPTH - 1, msgpack.ExtType(1, b""))})], tag="t", fmt="ndjson")
def test_http_bodies(pairs: list[tuple[Any, dict[Any, Any]]], tag: str, fmt: Any) -> None:
    out = HttpOutput(name="h", endpoint="http://127.0.0.1:9/", format=fmt)
    chunk = chunk_of(tag, pairs)
    events = chunk.events()
    try:
        items, _ = out._encode(events, tag)
    except UnprocessableError:
        # The msgpack body packs whatever decoded from msgpack; only its time text can fail.
        assert may_refuse_json(events) if fmt != "msgpack" else any(calendar_fails(e.time_ns) for e in events)
        return
    body = out._body(items, len(events))
    if fmt == "msgpack":
        maps = msgpack.unpackb(body, raw=False, strict_map_key=False, unicode_errors="surrogateescape",
                               ext_hook=lambda c, d: msgpack.ExtType(c, d))  # fmt: skip
        for m, ev in zip(maps, events, strict=True):
            assert m.pop("time") == rfc3339_ns(ev.time_ns)
            assert m.pop("tag") == tag
            want = {k: v for k, v in ev.record.items() if k not in ("time", "tag")}
            assert canon(m) == canon(want)
        return
    objs = json.loads(body) if fmt == "json_array" else [json.loads(x) for x in body.splitlines()]
    for obj, ev in zip(objs, events, strict=True):
        check_json_line(obj, ev, tag, "time", "tag")


@SETTINGS
@given(
    pairs=st.lists(st.tuples(_time, _record), min_size=1, max_size=4),
    tag=st.sampled_from(TAGS),
    fmt=st.sampled_from(["json", "msgpack"]),
)
def test_kafka_values(pairs: list[tuple[Any, dict[Any, Any]]], tag: str, fmt: str) -> None:
    out = KafkaOutput(name="k", brokers=["127.0.0.1:9"], topic="t", format=fmt, message_key="k")
    chunk = chunk_of(tag, pairs)
    events, _ = decode_entries(chunk.entries, chunk.received_ns)
    try:
        records, values = out._encode(chunk)
    except UnprocessableError:
        assert may_refuse_json(events) if fmt == "json" else any(calendar_fails(e.time_ns) for e in events)
        return
    assert len(values) == len(records) == len(events)
    for value, ev in zip(values, events, strict=True):
        if fmt == "json":
            check_json_line(json.loads(value), ev, tag, "time", "tag")
        else:
            m = msgpack.unpackb(value, raw=False, strict_map_key=False, unicode_errors="surrogateescape",
                                ext_hook=lambda c, d: msgpack.ExtType(c, d))  # fmt: skip
            assert m.pop("time") == rfc3339_ns(ev.time_ns)
            assert m.pop("tag") == tag
            want = {k: v for k, v in ev.record.items() if k not in ("time", "tag")}
            assert canon(m) == canon(want)


def test_the_reported_record_is_refused_with_the_documented_error_by_every_json_encoder() -> None:
    chunk = chunk_of(TAGS[2], [(1_700_000_000, {"log": Deep(600, "x")})])
    events = chunk.events()
    for encode in (
        lambda: encode_json_lines(chunk),
        lambda: json_lines(events, chunk.tag),
        lambda: fluentd_lines(events, chunk.tag),
        lambda: HttpOutput(name="h", endpoint="http://127.0.0.1:9/")._encode(events, chunk.tag),
        lambda: KafkaOutput(name="k", brokers=["127.0.0.1:9"], topic="t")._encode(chunk),
    ):
        with pytest.raises(UnprocessableError, match="254 containers"):
            encode()
