from __future__ import annotations

import io
import random
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwardd.filters import DockerPartial, StatefulFilter
from forwardd.model import Chunk
from tests.conftest import WIRE_SAMPLES

from .helpers import make_chunk, records

SAMPLES = WIRE_SAMPLES / "clients"
CID = "c" * 64


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def xxd_bytes(path: Path) -> bytes:
    """The bytes of an ``xxd`` dump (what ``xxd -r`` gives)."""
    out = bytearray()
    for line in path.read_text().splitlines():
        if line.strip():
            out += bytes.fromhex(line[10:49].replace(" ", ""))
    return bytes(out)


def message_chunks(raw: bytes) -> list[Chunk]:
    """One chunk per Message-mode message, its entry cut from the wire bytes: as the server hands them on."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(raw)
    chunks = []
    while unpacker.tell() < len(raw):
        assert unpacker.read_array_header() == 4
        tag = unpacker.unpack()
        start = unpacker.tell()
        unpacker.skip()  # time
        unpacker.skip()  # record
        end = unpacker.tell()
        unpacker.skip()  # option
        chunks.append(Chunk(tag, b"\x92" + raw[start:end], 1, 0))
    return chunks


def piece(pid, ordinal, last, log, cid=CID, **extra):
    return {
        "container_id": cid,
        "container_name": "/web",
        "source": "stdout",
        "log": log,
        "partial_message": "true",
        "partial_id": pid,
        "partial_ordinal": str(ordinal),
        "partial_last": "true" if last else "false",
        **extra,
    }


def plain(log, cid=CID):
    return {"container_id": cid, "container_name": "/web", "source": "stdout", "log": log}


@pytest.mark.parametrize(
    ("capture", "xs"),
    [
        ("dockerd-partial", 17000),  # the real engine; the container printed "1 " and 17000 x's
        ("dockerdrv-partial", 16998),  # the driver code fed a 17000-byte line directly
    ],
)
def test_golden_real_docker_line_comes_out_whole_byte_for_byte(capture, xs):
    raw = xxd_bytes(SAMPLES / f"{capture}.c2s.hex")
    messages = list(msgpack.Unpacker(io.BytesIO(raw), raw=True))
    wire_logs = [m[2][b"log"] for m in messages]  # the log bytes exactly as docker sent them
    chunks = message_chunks(raw)
    assert len(chunks) == 2
    f = DockerPartial()
    assert f(chunks[0]) is None
    assert f.pending == 1
    out = f(chunks[1])
    assert f.pending == 0
    assert out is not None
    assert out.tag == chunks[0].tag
    (ev,) = out.events()
    (line,) = records(out)
    assert line["log"].encode() == b"".join(wire_logs)
    assert line["log"] == "1 " + "x" * xs
    first = chunks[0].events()[0]
    assert line == {k: v for k, v in first.record.items() if not k.startswith("partial_")} | {
        "log": line["log"]
    }
    assert set(line) == {"container_id", "container_name", "source", "log"}
    assert ev.time_ns == first.time_ns == messages[0][1] * 10**9


def test_golden_pieces_in_one_chunk_with_other_events_around():
    chunks = message_chunks(xxd_bytes(SAMPLES / "dockerd-partial.c2s.hex"))
    p1, p2 = (c.events()[0].record for c in chunks)
    chunk = make_chunk(chunks[0].tag, [plain("before"), p1, plain("between"), p2, plain("after")])
    out = DockerPartial()(chunk)
    assert [r["log"][:8] for r in records(out)] == ["before", "between", "1 xxxxxx", "after"]


def test_chunk_without_pieces_is_returned_untouched_and_undecoded():
    chunk = make_chunk("t", [plain("a"), plain("b")])
    f = DockerPartial()
    assert f(chunk) is chunk
    assert not chunk.decoded


def test_partial_message_not_true_is_not_a_piece():
    chunk = make_chunk("t", [{"log": "x", "partial_message": "false"}])
    assert DockerPartial()(chunk) is chunk


def test_out_of_order_and_duplicate_pieces():
    f = DockerPartial()
    assert f(make_chunk("t", [piece("p", 3, True, "C")])) is None
    assert f(make_chunk("t", [piece("p", 1, False, "A", extra="first")], times=[5])) is None
    assert f(make_chunk("t", [piece("p", 3, True, "C")])) is None  # resent
    out = f(make_chunk("t", [piece("p", 2, False, "B")]))
    (ev,) = out.events()
    assert ev.record == plain("ABC") | {"extra": "first"}
    assert ev.time_ns == 5 * 10**9
    assert f.duplicates == 1


def test_lines_of_other_containers_and_ids_interleave():
    f = DockerPartial()
    seq = [
        piece("p1", 1, False, "a1", cid="A"),
        piece("p2", 1, False, "b1", cid="B"),
        piece("p1", 1, False, "x1", cid="B"),  # same partial_id, other container: another line
        piece("p2", 2, True, "b2", cid="B"),
        piece("p1", 2, True, "x2", cid="B"),
        piece("p1", 2, True, "a2", cid="A"),
    ]
    logs = [r["log"] for rec in seq for r in records(f(make_chunk("t", [rec])))]
    assert logs == ["b1b2", "x1x2", "a1a2"]
    assert f.pending == 0


def test_expire_emits_held_pieces_after_flush_timeout():
    clock = Clock()
    f = DockerPartial(flush_timeout=5, clock=clock)
    assert isinstance(f, StatefulFilter)
    f(make_chunk("t", [piece("old", 1, False, "o1"), piece("old", 3, False, "o3")]))
    clock.now += 3
    f(make_chunk("u", [piece("new", 1, False, "n1")]))
    assert f.expire(clock.now + 1.9) == []
    (chunk,) = f.expire(1005.0)
    assert chunk.tag == "t"
    assert records(chunk) == [plain("o1o3") | {"partial_id": "old", "partial_incomplete": "true"}]
    assert f.pending == 1
    (chunk,) = f.expire(1008.0)
    assert records(chunk)[0]["log"] == "n1"
    assert f.pending == 0
    assert f.incomplete == 2
    # A piece arriving after its line was flushed starts a new fragment.
    f(make_chunk("t", [piece("old", 4, True, "o4")]))
    assert [r["log"] for c in f.drain() for r in records(c)] == ["o4"]


def test_max_size_emits_segments():
    f = DockerPartial(max_size=10)
    outs = [f(make_chunk("t", [piece("p", i, i == 7, f"{i:04d}")])) for i in range(1, 8)]
    segs = [r for o in outs for r in records(o)]
    assert [r["log"] for r in segs] == ["00010002", "00030004", "00050006", "0007"]
    assert all(r["partial_incomplete"] == "true" and r["partial_id"] == "p" for r in segs)
    assert f.pending == 0


def test_max_pending_evicts_the_oldest():
    f = DockerPartial(max_pending=2)
    assert f(make_chunk("other", [piece("a", 1, False, "A")])) is None
    assert f(make_chunk("t", [piece("b", 1, False, "B")])) is None
    # a third line evicts "a" (another tag: handed out by expire) ...
    assert f(make_chunk("t", [piece("c", 1, False, "C")])) is None
    # ... and a fourth evicts "b", same tag: it comes out right here.
    out = f(make_chunk("t", [piece("d", 1, False, "D")]))
    assert [r["log"] for r in records(out)] == ["B"]
    (chunk,) = f.expire(0.0)
    assert (chunk.tag, records(chunk)[0]["log"]) == ("other", "A")
    assert f.pending == 2
    assert sorted(r["log"] for c in f.drain() for r in records(c)) == ["C", "D"]
    assert f.pending == 0
    assert f.drain() == []


def test_old_docker_format_without_ids():
    f = DockerPartial()
    old = {"container_id": "A", "source": "stdout", "partial_message": "true"}
    assert f(make_chunk("t", [old | {"log": "a1"}], times=[7])) is None
    assert f(make_chunk("t", [old | {"container_id": "B", "log": "b1"}, old | {"log": "a2"}])) is None
    # The line ends with the next record of that container without the flag, in a chunk of its own
    # (which holds no "partial_message" bytes at all).
    out = f(
        make_chunk(
            "t", [{"container_id": "C", "log": "c"}, {"container_id": "A", "source": "x", "log": "a3"}]
        )
    )
    assert records(out) == [
        {"container_id": "C", "log": "c"},
        {"container_id": "A", "source": "stdout", "log": "a1a2a3"},
    ]
    assert out.events()[1].time_ns == 7 * 10**9
    (rest,) = f.drain()
    assert records(rest) == [
        {"container_id": "B", "source": "stdout", "log": "b1", "partial_incomplete": "true"}
    ]


def test_malformed_pieces_pass_as_they_are():
    bad = [
        piece("p", "x", True, "bad ordinal"),
        piece("p", 0, True, "zero"),
        piece(7, 1, True, "id not text"),
        piece("p", 1, True, None),
    ]
    chunk = make_chunk("t", bad)
    assert DockerPartial()(chunk) is chunk


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"flush_timeout": 0}, "flush_timeout"),
        ({"flush_timeout": "5"}, "flush_timeout"),
        ({"max_size": 0}, "max_size"),
        ({"max_size": True}, "max_size"),
        ({"flush_timeout": float("nan")}, "flush_timeout"),
        ({"max_pending": -1}, "max_pending"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DockerPartial(**kwargs)


@st.composite
def split_lines(draw):
    """Lines cut into pieces at random points, all pieces shuffled, plus plain events, grouped in chunks."""
    n = draw(st.integers(1, 5))
    lines = {}
    items = []
    for i in range(n):
        text = draw(st.text(alphabet="abcé€😀\n ", min_size=1, max_size=40))
        cuts = sorted(draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=5)) - {len(text)})
        parts = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        cid = draw(st.sampled_from(["A", "B"]))
        pid = f"id{i}"
        lines[(cid, pid)] = text
        items += [piece(pid, k + 1, k == len(parts) - 1, p, cid=cid, seq=str(i)) for k, p in enumerate(parts)]
    items += [plain(f"plain{j}") for j in range(draw(st.integers(0, 4)))]
    order = draw(st.permutations(items))
    sizes = draw(st.lists(st.integers(1, 4), min_size=len(order), max_size=len(order)))
    chunks, pos = [], 0
    for size in sizes:
        if pos >= len(order):
            break
        chunks.append(order[pos : pos + size])
        pos += size
    return lines, chunks


@settings(max_examples=100, deadline=None)
@given(case=split_lines())
def test_any_split_any_interleaving_joins_each_line_exactly_once(case):
    lines, chunks = case
    f = DockerPartial()
    out = [r for c in chunks for r in records(f(make_chunk("t", c)))]
    joined = {(r["container_id"], r["seq"]): r["log"] for r in out if "seq" in r}
    assert len(joined) == len([r for r in out if "seq" in r]) == len(lines)
    assert joined == {(cid, pid[2:]): text for (cid, pid), text in lines.items()}
    assert not any(k.startswith("partial_") for r in out for k in r)
    plains = [r["log"] for r in out if "seq" not in r]
    assert plains == [r["log"] for c in chunks for r in c if "partial_message" not in r]
    assert f.pending == 0
    assert f.drain() == []


@settings(max_examples=50, deadline=None)
@given(text=st.text(min_size=1, max_size=200), cut=st.integers(1, 50), max_size=st.integers(1, 60))
def test_segments_concatenate_to_the_line(text, cut, max_size):
    parts = [text[i : i + cut] for i in range(0, len(text), cut)]
    f = DockerPartial(max_size=max_size)
    out = [
        r
        for k, p in enumerate(parts)
        for r in records(f(make_chunk("t", [piece("p", k + 1, k == len(parts) - 1, p)])))
    ]
    assert "".join(r["log"] for r in out) == text
    for r in out:
        assert len(r["log"].encode("utf-8", "surrogateescape")) <= max(max_size, 4 * cut)
    assert f.pending == 0


def test_many_pieces_delivered_in_random_order_one_per_chunk():
    rng = random.Random(7)
    text = "".join(rng.choice("0123456789abcdef") for _ in range(16384 * 5 + 100))
    parts = [text[i : i + 16384] for i in range(0, len(text), 16384)]
    chunks = [make_chunk("t", [piece("big", k + 1, k == len(parts) - 1, p)]) for k, p in enumerate(parts)]
    rng.shuffle(chunks)
    f = DockerPartial()
    outs = [o for c in chunks if (o := f(c)) is not None]
    assert len(outs) == 1
    assert records(outs[0])[0]["log"] == text
