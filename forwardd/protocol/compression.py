"""Bounded decompression of CompressedPackedForward payloads.

gzip payloads may be several concatenated members (Fluentd writes one per flushed chunk piece), zstd
payloads several frames. Output is produced in slices and stops as soon as it passes the limit, so a
decompression bomb costs at most ``limit`` bytes, never what its headers promise.
"""

from __future__ import annotations

import io
import zlib

import zstandard

__all__ = ["DecompressionError", "decompress"]

_SLICE = 1 << 20
_ZSTD = zstandard.ZstdDecompressor()


class DecompressionError(ValueError):
    """The payload is corrupt, too large once decompressed, or uses an unknown codec."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _gunzip(data: bytes | bytearray, limit: int) -> bytearray:
    out = bytearray()  # grown in place: joining a list of pieces would cost twice the output at its end
    total = 0
    rest = data
    while rest:
        d = zlib.decompressobj(wbits=31)
        buf = rest
        while True:
            piece = d.decompress(buf, _SLICE)
            total += len(piece)
            if total > limit:
                raise DecompressionError("decompressed_too_large", f"more than {limit} bytes")
            out += piece
            if d.eof:
                break
            buf = d.unconsumed_tail
            if not buf:
                piece = d.flush()
                total += len(piece)
                out += piece
                if not d.eof:
                    raise DecompressionError("bad_gzip", "truncated gzip member")
                break
        rest = d.unused_data
        # Padding of zero bytes after the last member is tolerated, as gzip(1) does.
        if rest and not rest.strip(b"\x00"):
            break
    if total > limit:
        raise DecompressionError("decompressed_too_large", f"more than {limit} bytes")
    return out


def _unzstd(data: bytes | bytearray, limit: int) -> bytearray:
    reader = _ZSTD.stream_reader(io.BytesIO(data), read_across_frames=True)
    out = bytearray()
    total = 0
    while True:
        piece = reader.read(_SLICE)
        if not piece:
            break
        total += len(piece)
        if total > limit:
            raise DecompressionError("decompressed_too_large", f"more than {limit} bytes")
        out += piece
    return out


def decompress(codec: str, data: bytes | bytearray, limit: int) -> bytearray:
    """Decompress ``data`` with ``codec`` ("gzip" or "zstd"), producing at most ``limit`` bytes."""
    try:
        if codec == "gzip":
            return _gunzip(data, limit)
        if codec == "zstd":
            return _unzstd(data, limit)
    except zlib.error as exc:
        raise DecompressionError("bad_gzip", str(exc)) from None
    except zstandard.ZstdError as exc:
        raise DecompressionError("bad_zstd", str(exc)) from None
    raise DecompressionError("unknown_compression", repr(codec))
