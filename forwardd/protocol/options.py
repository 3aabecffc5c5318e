"""The option element of a request (``{"chunk": id, "size": n, "compressed": "gzip", ...}``), read without
trusting it: only the keys forwardd acts on are built, and the chunk id is kept as the bytes it came in, to
be echoed byte for byte in the ack."""

from __future__ import annotations

from typing import Any

import msgpack

from forwardd.protocol.events import Rejected
from forwardd.protocol.walker import Walker
from forwardd.protocol.wire import KIND, MAP, STR

__all__ = ["UNREADABLE", "read_options", "read_options_from", "signal_rejection"]

UNREADABLE = "<unreadable>"  # an option value that could not be built

Options = dict[bytes, Any]


def read_options(
    walker: Walker, buf: bytes | bytearray, delta: int, remaining: int
) -> tuple[Options | None, bytes | None]:
    """Read an option element with ``walker`` (whose offset 0 is ``buf[delta]``), skipping ``remaining-1``
    extra elements after it. Returns the options it cares about and the chunk value's raw bytes, which
    are echoed byte for byte in the ack (str or bin, trailing newline and all)."""
    if remaining <= 0:
        return None, None
    options: Options | None = None
    chunk_raw: bytes | None = None
    if KIND[buf[delta + walker.tell()]] == MAP:
        options = {}
        for _ in range(walker.read_map_header()):
            # Keys and values are built only when they are what we look for, and never by the walker:
            # building any value can raise (an ext type < 0, a map used as a map key) and leave the
            # walker mid-value. A value that cannot be built is UNREADABLE, which no check accepts.
            if KIND[buf[delta + walker.tell()]] != STR:
                walker.skip()
                walker.skip()
                continue
            key = walker.unpack()
            s = delta + walker.tell()
            walker.skip()
            if key == b"chunk":
                chunk_raw = bytes(buf[s : delta + walker.tell()])
            elif key in (b"compressed", b"fluent_signal", b"metadata"):
                value = buf[s : delta + walker.tell()]
                try:
                    options[key] = msgpack.unpackb(value, raw=True, strict_map_key=False)
                except (ValueError, TypeError):
                    options[key] = UNREADABLE
            # size and unknown keys: advisory only, never trusted
    else:
        walker.skip()  # nil, or a non-map option: no options
    for _ in range(remaining - 1):
        walker.skip()
    return options, chunk_raw


def read_options_from(data: bytes, remaining: int) -> tuple[Options | None, bytes | None]:
    """The options in ``data``, which holds exactly the ``remaining`` last elements of a request."""
    walker = msgpack.Unpacker(None, raw=True, max_buffer_size=max(len(data), 1), strict_map_key=False)
    walker.feed(data)
    return read_options(walker, data, 0, remaining)


def signal_rejection(options: Options | None, tag: str, ack: bytes | None, size: int) -> Rejected | None:
    """The rejection of a request that carries a ``fluent_signal`` forwardd does not implement."""
    if options:
        signal = options.get(b"fluent_signal", 0)
        if signal not in (0, None):
            return Rejected("unsupported_signal", f"fluent_signal={signal!r}", tag, ack, size)
    return None
