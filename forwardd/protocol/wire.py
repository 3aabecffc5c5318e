"""msgpack as the protocol core reads it without decoding: the kind of a value from its first byte, and the
length headers of str, bin and array values."""

from __future__ import annotations

import struct

__all__ = [
    "ACK_PREFIX",
    "ARRAY",
    "BIN",
    "EXT",
    "FLOAT",
    "INT",
    "KIND",
    "MAP",
    "NIL",
    "OTHER",
    "STR",
    "ack_reply",
    "header",
]

ACK_PREFIX = b"\x81\xa3ack"  # fixmap(1){"ack": <the chunk value's bytes, echoed as they came>}

# Type of the first byte of a msgpack value, as far as mode detection needs it.
ARRAY, MAP, STR, BIN, INT, FLOAT, EXT, NIL, OTHER = range(9)
_kind = [OTHER] * 256
for _b in range(0x00, 0x80):
    _kind[_b] = INT
for _b in range(0xE0, 0x100):
    _kind[_b] = INT
for _b in (0xCC, 0xCD, 0xCE, 0xCF, 0xD0, 0xD1, 0xD2, 0xD3):
    _kind[_b] = INT
for _b in range(0x80, 0x90):
    _kind[_b] = MAP
for _b in range(0x90, 0xA0):
    _kind[_b] = ARRAY
for _b in range(0xA0, 0xC0):
    _kind[_b] = STR
_kind[0xC0] = NIL
_kind[0xC4] = _kind[0xC5] = _kind[0xC6] = BIN
_kind[0xC7] = _kind[0xC8] = _kind[0xC9] = EXT
_kind[0xCA] = _kind[0xCB] = FLOAT
for _b in range(0xD4, 0xD9):
    _kind[_b] = EXT
_kind[0xD9] = _kind[0xDA] = _kind[0xDB] = STR
_kind[0xDC] = _kind[0xDD] = ARRAY
_kind[0xDE] = _kind[0xDF] = MAP
#: KIND[first byte] is the kind of the value it starts.
KIND = bytes(_kind)

_LEN_HEADERS = {
    0xD9: (1, "B"), 0xDA: (2, ">H"), 0xDB: (4, ">I"),
    0xC4: (1, "B"), 0xC5: (2, ">H"), 0xC6: (4, ">I"),
    0xDC: (2, ">H"), 0xDD: (4, ">I"),
}  # fmt: skip


def ack_reply(chunk_value: bytes) -> bytes:
    """The ``{"ack": chunk}`` reply for the raw msgpack bytes of a chunk option value."""
    return ACK_PREFIX + chunk_value


def header(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int, int] | None:
    """(kind, length, header size) of the str/bin/array header at ``pos``, None if not all there yet;
    length is -1 for a value of any other kind."""
    if pos >= len(buf):
        return None
    b = buf[pos]
    kind = KIND[b]
    if 0xA0 <= b <= 0xBF:
        return kind, b & 0x1F, 1
    if 0x90 <= b <= 0x9F:
        return kind, b & 0x0F, 1
    spec = _LEN_HEADERS.get(b)
    if spec is None:
        return kind, -1, 1
    size, fmt = spec
    if pos + 1 + size > len(buf):
        return None
    (n,) = struct.unpack_from(fmt, buf, pos + 1)
    return kind, n, 1 + size
