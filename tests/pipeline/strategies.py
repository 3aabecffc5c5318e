"""Hypothesis strategies for hostile peers: tags, records, times, entries and whole requests that a client in
any language can put on the wire, including what msgpack-python itself would refuse to write (see mp.py).

Hostile tags: not UTF-8, empty, huge, control characters, ``%`` and ``${tag}`` (template syntax), ``/`` and
``..`` (paths). Hostile records: nesting of lists and maps up to 1000 deep, strings that are not UTF-8 and
bin values, huge keys, keys that are maps, arrays, None, floats, NaN and infinities, ext types of every
code (negative ones and EventTime ext 0 of right and wrong length, msgpack timestamps), integers at the
64-bit edges. Integers past 64 bits cannot be put in msgpack at all; the one path that could make them, the
parser filter reading JSON text such as ``{"big": 123456789012345678901234567890}``, is fed such text (orjson
reads it as a float).
Records favour the keys the pipeline's filters and outputs read (see harness.pipeline_config).
"""

from __future__ import annotations

import gzip
import math
import struct
from typing import Any

import zstandard
from hypothesis import strategies as st

from tests.pipeline import mp

NOW_S = 1_700_000_000

# --- tags ---------------------------------------------------------------------------------------------------

_TAG_WORDS = [
    "app",
    "docker",
    "web",
    "%Y",
    "%",
    "${tag}",
    "${record.x}",
    "$1",
    "/",
    "..",
    ".",
    "",
    "*",
    "**",
    "{a,b}",
    "\\",
    "\t",
    "\n",
    "\x00",
    "\x7f",
    "é",
    "日本",
    "\u202e",
    "\ufeff",
]

tag_bytes: st.SearchStrategy[bytes] = st.one_of(
    st.sampled_from(
        [
            b"\xff\xfe",
            b"\xc3",
            b"\xed\xa0\x80",
            b"",
            b".",
            b"..",
            b"../..",
            b"a/../../etc",
            b"%s%n%Y",
            b"${tag}",
            b"\x00",
            b"app.\xff.web",
            b"docker.\xe2\x82",
        ]
    ),
    st.lists(st.sampled_from(_TAG_WORDS), min_size=1, max_size=5).map(lambda ws: ".".join(ws).encode()),
    st.binary(min_size=1, max_size=24),
    st.text(max_size=16).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.sampled_from(
        [b"t" * 300, b"a." * 200, b"\xff" * 1000, b"x" * 70_000]
    ),  # long; the last is over 64 KiB
)

# --- values -------------------------------------------------------------------------------------------------

_KEYS = [
    "log",
    "msg",
    "line",
    "level",
    "a",
    "b",
    "key",
    "topic",
    "time",
    "tag",
    "container_id",
    "partial_message",
    "partial_id",
    "partial_ordinal",
    "partial_last",
    "source",
    "kind",
    "parsed",
]

hostile_str: st.SearchStrategy[Any] = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        [
            "",
            "\x00",
            "\udcff",
            "%Y%m",
            "${tag}",
            "../../x",
            "drop",
            "info",
            "a.b",
            "\n\t\r",
            "true",
            "1",
            "é" * 40,
        ]
    ),
    st.binary(max_size=12).map(mp.BadStr),
    st.sampled_from([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]).map(mp.BadStr),
)

# Text a parser filter reads: JSON, logfmt and regex lines, several of them hostile to the parsers.
parser_text: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(
        [
            '{"level": "info", "kind": "x"}',
            '{"kind": "\\ud800"}',
            '{"a": 1e999}',
            "{" * 3000,
            '{"a":' * 600,
            '{"big": 123456789012345678901234567890}',
            '{"neg": -123456789012345678901234567890}',
            '{"f": 1.5e308, "g": -0.0}',
            '{"": {"": {"": []}}}',
            '{"level": "drop"}',
            '{"kind": "../x"}',
            "[" * 1000 + "]" * 1000,
            '{"a": NaN}',
            "{}",
            '{"\\u0000": 1}',
            '{"k": "\\udcff"}',
            'a=1 b="two" c',
            'k="\\ud800"',
            'x="unterminated',
            "=",
            "level=info msg=hello",
            "INFO hello world",
            "WARN ",
            "  ",
            "drop it",
        ]
    ),
    st.text(max_size=30),
)

ints = st.one_of(
    st.sampled_from([0, 1, -1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)]),
    st.integers(-(2**63), 2**64 - 1),
)
floats = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324, 1e16, -1e16]),
    st.floats(allow_nan=True, allow_infinity=True),
)


def _ext_of(code: int, n: int) -> st.SearchStrategy[mp.Ext]:
    return st.binary(min_size=n, max_size=n).map(lambda d: mp.Ext(code, d))


exts = st.one_of(
    st.builds(mp.Ext, st.integers(-128, 127), st.binary(max_size=20)),
    _ext_of(0, 8),  # EventTime (nanoseconds may be >= 1e9)
    st.builds(mp.Ext, st.just(0), st.binary(max_size=12)),  # EventTime of a wrong length
    st.sampled_from([4, 8, 12, 3, 0]).flatmap(lambda n: _ext_of(-1, n)),  # msgpack Timestamp, good and bad
    st.just(mp.Ext(-1, struct.pack(">I", 0xFFFFFFFF) + struct.pack(">q", 2**62))),  # year far past 9999
)

leaves: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), ints, floats, hostile_str, st.binary(max_size=16), exts
)

deep = st.builds(
    mp.Deep,
    st.one_of(st.integers(1, 40), st.sampled_from([100, 255, 256, 500, 511, 512, 600, 700, 900, 1000, 1023])),
    st.sampled_from(["array", "map"]),
    st.one_of(st.none(), st.just(mp.Map(((mp.Map(()), 0),))), st.just(mp.BadStr(b"\xff"))),
)

hostile_keys: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(_KEYS),
    hostile_str,
    st.none(),
    st.booleans(),
    ints,
    floats,
    st.binary(max_size=8),
    exts,
    st.just(mp.Map(())),
    st.just(mp.Map((("k", 1),))),
    st.just([]),
    st.just([1, [2]]),
    st.sampled_from(["k" * 70_000, "\udcff" * 300]),
)


def _maps(
    keys: st.SearchStrategy[Any], values: st.SearchStrategy[Any], max_size: int
) -> st.SearchStrategy[Any]:
    return st.lists(st.tuples(keys, values), max_size=max_size).map(lambda kv: mp.Map(tuple(kv)))


values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(leaves, deep),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        _maps(hostile_keys, inner, 4),
        _maps(st.sampled_from(_KEYS), inner, 4),
    ),
    max_leaves=12,
)


def _docker_piece(draw: st.DrawFn) -> mp.Map:
    """A docker partial-line piece, its partial_* fields hostile half of the time."""
    odd = draw(st.booleans())
    field = values if odd else st.sampled_from(["1", "2", "3"])
    return mp.Map(
        (
            ("container_id", draw(st.one_of(st.just("c" * 64), hostile_str))),
            ("log", draw(st.one_of(st.text(max_size=20), hostile_str))),
            ("partial_message", draw(values if odd else st.just("true"))),
            ("partial_id", draw(st.one_of(st.just("p1"), hostile_str))),
            ("partial_ordinal", draw(field)),
            ("partial_last", draw(values if odd else st.sampled_from(["true", "false"]))),
        )
    )


@st.composite
def records(draw: st.DrawFn) -> Any:
    """A record: usually a map with the keys filters read (values hostile), sometimes not a map at all."""
    kind = draw(st.sampled_from(["filtered", "filtered", "filtered", "free", "docker", "not_a_map"]))
    if kind == "not_a_map":
        return draw(values)
    if kind == "docker":
        return _docker_piece(draw)
    if kind == "free":
        return draw(_maps(hostile_keys, values, 6))
    pairs: list[tuple[Any, Any]] = []
    for key, strategy in (
        ("log", parser_text),
        ("msg", parser_text),
        ("line", parser_text),
        ("level", st.one_of(hostile_str, values)),
        ("a", st.one_of(_maps(st.just("b"), values, 1), values)),
        ("key", values),
        ("topic", st.one_of(hostile_str, values)),
    ):
        if draw(st.booleans()):
            pairs.append((key, draw(st.one_of(strategy, values))))
    pairs += draw(st.lists(st.tuples(hostile_keys, values), max_size=3))
    return mp.Map(tuple(draw(st.permutations(pairs))))


times: st.SearchStrategy[Any] = st.one_of(
    st.integers(NOW_S - 10**6, NOW_S + 10**6),
    ints,
    floats,
    _ext_of(0, 8),
    st.builds(mp.Ext, st.integers(-128, 127), st.binary(max_size=12)),
    st.none(),
    hostile_str,
    st.booleans(),
    st.tuples(st.integers(0, 2**32), st.one_of(_maps(hostile_keys, values, 2), values)).map(list),
    st.just([]),
)


@st.composite
def entries(draw: st.DrawFn) -> bytes:
    """One PackedForward entry as bytes: ``[time, record]`` mostly, anything now and then."""
    shape = draw(st.sampled_from(["entry"] * 8 + ["value", "triple", "wrapped"]))
    if shape == "value":
        return mp.pack(draw(values))
    if shape == "triple":
        return mp.pack([draw(times), draw(records()), draw(values)])
    if shape == "wrapped":
        return (
            b"\x92" + mp.pack([draw(times), draw(_maps(hostile_keys, values, 2))]) + mp.pack(draw(records()))
        )
    return mp.entry(draw(times), draw(records()))


chunk_ids = st.one_of(st.none(), st.text(max_size=8), st.just("c1"))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """One forward-protocol request in any mode, hostile inside."""
    mode = draw(st.sampled_from(["message", "message", "forward", "packed", "gzip", "zstd", "codec", "str"]))
    tag = draw(tag_bytes)
    chunk = draw(chunk_ids)
    if mode == "message":
        return mp.message(tag, draw(times), draw(records()), chunk=chunk)
    body = draw(st.lists(entries(), min_size=0, max_size=5))
    if draw(st.integers(0, 9)) == 0:  # a broken tail: entries cut in the middle of a value
        body.append(mp.entry(NOW_S, {"cut": "x" * 40})[:-7])
    if mode == "forward":
        return mp.forward(tag, body, chunk=chunk)
    payload = b"".join(body)
    if mode == "gzip":
        return mp.packed_forward(tag, gzip.compress(payload, mtime=0), chunk=chunk, compressed="gzip")
    if mode == "zstd":
        return mp.packed_forward(tag, zstandard.compress(payload), chunk=chunk, compressed="zstd")
    if mode == "codec":  # an unknown or mistyped codec, or a compressed flag on plain bytes
        codec = draw(st.one_of(st.sampled_from(["lz4", "GZIP", "", "text"]), hostile_keys))
        return mp.packed_forward(tag, payload, chunk=chunk, compressed=codec)
    return mp.packed_forward(tag, payload, chunk=chunk, as_str=mode == "str")


streams = st.lists(requests(), min_size=1, max_size=3).map(b"".join)


@st.composite
def cuts(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut into reads at drawn offsets."""
    points = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    out, last = [], 0
    for p in [*points, len(data)]:
        out.append(data[last:p])
        last = p
    return [p for p in out if p]
