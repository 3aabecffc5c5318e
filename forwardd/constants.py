"""The numbers of the wire format and of time, written once for every layer.

The bottom layer (it imports nothing of forwardd), so that the protocol core, the model, the formats and
the outputs agree on them without importing one another.
"""

from __future__ import annotations

import struct

__all__ = ["EVENT_TIME_EXT", "MAX_SECONDS", "NS", "U32", "UINT32_PAIR"]

#: Nanoseconds per second: event times are integers of nanoseconds everywhere inside forwardd.
NS = 1_000_000_000
#: msgpack ext type code of the forward protocol's EventTime (not msgpack's own Timestamp, which is -1).
EVENT_TIME_EXT = 0
#: EventTime's payload: seconds and nanoseconds, two big-endian 32-bit unsigned integers.
UINT32_PAIR = struct.Struct(">II")
#: The largest 32-bit unsigned value (EventTime's seconds end in 2106).
U32 = 0xFFFFFFFF
#: The last whole second of an event time forwardd accepts from a client: 9999-12-31T23:59:59Z, the end of
#: four-digit years (RFC 3339, Python's datetime, the JSON formats' text). Also in _entries.c and _jsonl.c.
MAX_SECONDS = 253_402_300_799
