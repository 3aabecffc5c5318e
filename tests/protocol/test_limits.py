"""Robustness limits (section a, G: items 43-47): what one peer can make us allocate, and what happens to
frames over the limits. Memory is measured with tracemalloc, which sees msgpack's and zlib's Python-side
buffers."""

from __future__ import annotations

import gzip
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgpack
import pytest

from forwardd.protocol import (
    EntriesReceived,
    Limits,
    PayloadReceived,
    Rejected,
    ServerConnection,
    finish_payload,
)
from forwardd.protocol.compression import DecompressionError, decompress
from forwardd.protocol.encode import forward, message, packed_forward

from .violations import violation

MiB = 1 << 20
SMALL = Limits(max_frame_size=64 * 1024, max_decompressed_size=4 * MiB, max_option_size=1024)


def peak_bytes(fn: Callable[[], Any]) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def feed_all(conn: ServerConnection, reads: Iterable[bytes]) -> list[Any]:
    return [ev for data in reads for ev in conn.receive_data(data)]


def finished(events: list[Any]) -> list[Any]:
    """The events with each big request finished, as the session does it in a worker thread."""
    return [e for ev in events for e in (finish_payload(ev) if isinstance(ev, PayloadReceived) else [ev])]


@pytest.mark.parametrize(
    "frame",
    [
        "93 a1 74 dd 01 00 00 00 92",  # Forward declaring 2^24 entries (the otel#49231 PoC)
        "93 a1 74 c6 ff ff ff ff 00",  # PackedForward bin32 declaring 4 GiB
        "93 db ff ff ff ff 74 74 74",  # tag str32 declaring 4 GiB
        "94 a1 74 01 df ff ff ff ff",  # record map32 declaring 2^32-1 pairs
        "dd ff ff ff ff a1 74 01 80",  # top-level array32 of 2^32-1 elements
    ],
)
def test_length_headers_never_drive_allocation(frame: str) -> None:
    conn = ServerConnection()
    events, peak = peak_bytes(lambda: conn.receive_data(bytes.fromhex(frame)))
    assert events == []
    assert conn.buffered == 9
    assert peak < 4 * MiB


def test_forward_of_2_24_entries_closes_when_it_outgrows_the_frame_limit() -> None:
    conn = ServerConnection(limits=SMALL)
    conn.receive_data(bytes.fromhex("93 a1 74 dd 01 00 00 00"))
    entry = bytes.fromhex("92 01 80")
    reads = [entry * 100] * (SMALL.max_frame_size // (len(entry) * 100) + 2)
    assert violation(feed_all(conn, reads)).reason == "frame_too_large"
    assert conn.buffered <= SMALL.max_frame_size + 300


def _gzip_bomb(mib: int) -> bytes:
    """A valid gzip member of ``mib`` MiB of zeros (~1 KB per MiB), built from one full-flushed deflate
    block repeated, so that the test does not spend seconds compressing."""
    zeros = bytes(MiB)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    trailer = struct.pack("<II", crc, (mib * MiB) & 0xFFFFFFFF)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + block * mib + c.flush() + trailer


@pytest.fixture(scope="module")
def bomb() -> bytes:
    data = _gzip_bomb(300)
    assert len(data) < 400_000
    return data


def test_decompression_bomb_is_rejected_quickly_with_bounded_memory(bomb: bytes) -> None:
    limits = Limits(max_decompressed_size=16 * MiB)
    conn = ServerConnection(limits=limits)
    frame = packed_forward("t", bomb, chunk="c", options={"compressed": "gzip"})
    t0 = time.monotonic()
    events, peak = peak_bytes(lambda: finished(conn.receive_data(frame)))
    elapsed = time.monotonic() - t0
    assert [(type(e), e.reason, e.ack) for e in events] == [
        (Rejected, "decompressed_too_large", b"\x81\xa3ack\xa1c")
    ]
    assert peak < 16 * MiB + 8 * MiB
    assert elapsed < 5
    # The connection goes on.
    (ev,) = conn.receive_data(message("t", 1, {"k": "v"}))
    assert isinstance(ev, EntriesReceived)


def test_zstd_bomb_is_bounded_too() -> None:
    import zstandard

    data = zstandard.ZstdCompressor().compress(bytes(64 * MiB))

    def attempt() -> str:
        try:
            decompress("zstd", data, 8 * MiB)
        except DecompressionError as exc:
            return exc.reason
        return "no error"

    reason, peak = peak_bytes(attempt)
    assert reason == "decompressed_too_large"
    assert peak < 8 * MiB + 4 * MiB


def test_decompressed_size_exactly_at_the_limit_passes() -> None:
    import gzip

    data = bytes(range(256)) * 64
    assert decompress("gzip", gzip.compress(data), len(data)) == data
    with pytest.raises(DecompressionError):
        decompress("gzip", gzip.compress(data), len(data) - 1)


def test_gzip_member_cut_short_and_trailing_garbage() -> None:
    import gzip

    g = gzip.compress(b"\x92\x01\x80")
    with pytest.raises(DecompressionError) as info:
        decompress("gzip", g[:-6], MiB)
    assert info.value.reason == "bad_gzip"
    assert decompress("gzip", g + b"\x00\x00", MiB) == b"\x92\x01\x80"  # zero padding, as gzip(1)
    with pytest.raises(DecompressionError):
        decompress("gzip", g + b"garbage!", MiB)


@pytest.mark.parametrize("as_str", [False, True], ids=["bin32", "str32"])
@pytest.mark.parametrize("piece", [1000, 4096, 65536 + 7])
def test_oversized_packedforward_is_streamed_through_rejected_and_acked(as_str: bool, piece: int) -> None:
    entries = msgpack.packb([1, {"pad": "x" * 1000}]) * 200  # ~200 KB, over the 64 KiB limit
    big = packed_forward("big", entries, chunk="id-1", as_str=as_str)
    after = message("t", 1, {"k": "v"}, chunk="id-2")
    conn = ServerConnection(limits=SMALL)
    events: list[Any] = []
    most = 0
    for p in pieces(big + after, piece):
        events += conn.receive_data(p)
        most = max(most, conn.buffered)
    assert most <= SMALL.max_frame_size + piece
    assert [type(e) for e in events] == [Rejected, EntriesReceived]
    rej = events[0]
    assert (rej.reason, rej.tag, rej.ack) == ("frame_too_large", "big", b"\x81\xa3ack\xa4id-1")
    assert events[1].ack == b"\x81\xa3ack\xa4id-2"
    assert events[1].chunk.events()[0].record == {"k": "v"}


def test_oversized_packedforward_fed_whole_then_more_frames() -> None:
    entries = msgpack.packb([1, {"pad": "x" * 1000}]) * 100
    data = packed_forward("big", entries) + message("t", 1, {"k": "v"}) + b"\xc0"
    events = ServerConnection(limits=SMALL).receive_data(data)
    assert [type(e).__name__ for e in events] == ["Rejected", "EntriesReceived", "Heartbeat"]
    assert events[0].ack is None


def test_oversized_packedforward_with_a_huge_option_map_closes() -> None:
    """The option map after a discarded payload is buffered only up to ``max_option_size``."""
    data = packed_forward("big", b"\x92\x01\x80" * 30_000, options={"pad": "y" * 5000})
    conn = ServerConnection(limits=SMALL)
    assert violation(feed_all(conn, pieces(data, 4096))).reason == "frame_too_large"


@pytest.mark.parametrize(
    "frame",
    [
        message("t", 1, {"log": "x" * 100_000}),
        forward("t", [(1, {"log": "x" * 1000})] * 100),
        msgpack.packb(["t", 1, {"log": "x" * 100_000}, {}])[:-1] + b"\x80",
    ],
    ids=["message", "forward", "message_fixarray"],
)
def test_oversized_frame_of_other_modes_is_frame_too_large(frame: bytes) -> None:
    conn = ServerConnection(limits=SMALL)
    assert violation(feed_all(conn, pieces(frame, 8192))).reason == "frame_too_large"


def test_frame_exactly_at_the_limit_is_accepted() -> None:
    limit = SMALL.max_frame_size
    base = message("t", 1, {"log": ""})
    pad = limit - len(base) - 2  # the str header grows from fixstr to str16
    frame = message("t", 1, {"log": "x" * pad})
    assert len(frame) == limit
    (ev,) = ServerConnection(limits=SMALL).receive_data(frame)
    assert ev.size == limit


def test_tag_over_the_tag_limit_is_refused() -> None:
    limits = Limits(max_tag_size=16)
    (ev,) = ServerConnection(limits=limits).receive_data(message("a" * 16, 1, {}))
    assert ev.chunk.tag == "a" * 16
    assert (
        violation(ServerConnection(limits=limits).receive_data(message("a" * 17, 1, {}))).reason == "bad_tag"
    )


def test_size_reports_the_frame_bytes_for_the_warn_threshold() -> None:
    frames = [message("t", 1, {"k": "v"}), forward("t", [(1, {})]), packed_forward("t", [(1, {})])]
    events = ServerConnection().receive_data(b"".join(frames))
    assert [e.size for e in events] == [len(f) for f in frames]


# --- what one frame costs -------------------------------------------------------------------------------

_REC = msgpack.packb([msgpack.ExtType(0, struct.pack(">II", 1_700_000_000, 5)), {"log": "x" * 200}])


def _received(frame: bytes) -> list[Any]:
    """A frame fed as the session reads it (256 KiB at a time), big requests finished as it does."""
    conn = ServerConnection()
    events: list[Any] = []
    for i in range(0, len(frame), 256 * 1024):
        events += conn.receive_data(frame[i : i + 256 * 1024])
    return finished(events)


@pytest.mark.parametrize(
    ("make", "size_of", "bound"),
    [
        (lambda: packed_forward("t", _REC * (16 * MiB // len(_REC)), chunk="c"), len, 2.2),
        (lambda: forward("t", [(1, {"log": "x" * 200})] * (16 * MiB // 220), chunk="c"), len, 2.2),
        (  # the bound is on what it decompresses to
            lambda: packed_forward(
                "t",
                gzip.compress(_REC * (16 * MiB // len(_REC)), 1),
                chunk="c",
                options={"compressed": "gzip"},
            ),
            lambda frame: 16 * MiB,
            2.2,
        ),
        # One 16 MiB string: the skipper Unpacker must hold it whole (it doubles its buffer to do so).
        (lambda: message("t", 1, {"log": "x" * (16 * MiB)}, chunk="c"), len, 3.2),
    ],
    ids=["packed", "forward", "gzip-packed", "message"],
)
def test_one_frame_costs_about_twice_its_size_at_its_peak(make: Any, size_of: Any, bound: float) -> None:
    """A frame near the limit cost 4-5x its size (the buffer, two Unpackers' copies, the payload): the
    payload now streams into one buffer, and each copy is made once, into the chunks handed on."""
    frame = make()
    events, peak = peak_bytes(lambda: _received(frame))
    assert all(isinstance(e, EntriesReceived) for e in events)
    assert peak <= bound * size_of(frame), (peak / MiB, size_of(frame) / MiB)
