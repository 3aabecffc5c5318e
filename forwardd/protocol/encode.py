"""The client side of the wire format: forwardd's own encoder, for tests, the load generator and anyone
who wants to speak the protocol from Python without fluent-logger's limits (it has no PackedForward)."""

from __future__ import annotations

import gzip
import os
from base64 import b64encode
from collections.abc import Iterable, Mapping
from typing import Any

import msgpack
import zstandard

from forwardd.constants import EVENT_TIME_EXT, NS
from forwardd.model import msgpack_default

__all__ = ["event_time", "forward", "message", "new_chunk_id", "packed_entries", "packed_forward"]

_packer = msgpack.Packer(use_bin_type=True, default=msgpack_default)


def event_time(ns: int) -> msgpack.ExtType:
    s, n = divmod(ns, NS)
    return msgpack.ExtType(EVENT_TIME_EXT, s.to_bytes(4, "big") + n.to_bytes(4, "big"))


def new_chunk_id() -> str:
    """A chunk id as fluent-logger-golang makes it: base64 of 16 random bytes."""
    return b64encode(os.urandom(16)).decode()


def _options(chunk: str | bytes | None, extra: Mapping[str, Any] | None) -> dict[str, Any] | None:
    opts: dict[str, Any] = dict(extra or {})
    if chunk is not None:
        opts["chunk"] = chunk
    return opts


def message(
    tag: str,
    time: Any,
    record: Mapping[Any, Any],
    *,
    chunk: str | bytes | None = None,
    options: Mapping[str, Any] | None = None,
) -> bytes:
    """``[tag, time, record, option]``: docker's and fluent-logger's mode."""
    return bytes(_packer.pack([tag, time, record, _options(chunk, options)]))


def forward(
    tag: str,
    entries: Iterable[tuple[Any, Mapping[Any, Any]]],
    *,
    chunk: str | bytes | None = None,
    options: Mapping[str, Any] | None = None,
) -> bytes:
    """``[tag, [[time, record], ...], option]``: Fluent Bit's default mode."""
    return bytes(_packer.pack([tag, [list(e) for e in entries], _options(chunk, options)]))


def packed_entries(entries: Iterable[tuple[Any, Mapping[Any, Any]]]) -> bytes:
    return b"".join(_packer.pack(list(e)) for e in entries)


def packed_forward(
    tag: str,
    entries: Iterable[tuple[Any, Mapping[Any, Any]]] | bytes,
    *,
    chunk: str | bytes | None = None,
    compressed: str | None = None,
    options: Mapping[str, Any] | None = None,
    as_str: bool = False,
) -> bytes:
    """``[tag, entries-as-bin, option]``, optionally gzip- or zstd-compressed (CompressedPackedForward).

    ``as_str`` sends the payload as str32 holding binary, as Fluentd's out_forward does."""
    payload = entries if isinstance(entries, bytes) else packed_entries(entries)
    opts = _options(chunk, options) or {}
    if compressed == "gzip":
        payload = gzip.compress(payload)
        opts["compressed"] = "gzip"
    elif compressed == "zstd":
        payload = zstandard.ZstdCompressor().compress(payload)
        opts["compressed"] = "zstd"
    elif compressed is not None:
        opts["compressed"] = compressed
    if as_str:
        body = b"\xdb" + len(payload).to_bytes(4, "big") + payload
        return b"\x93" + bytes(_packer.pack(tag)) + body + bytes(_packer.pack(opts))
    return bytes(_packer.pack([tag, payload, opts]))
