"""Docker-shaped chunks shared by the output benchmarks: entries as docker's fluentd driver sends them."""

from __future__ import annotations

import msgpack

from forwardd.model import pack_event_time

__all__ = ["EVENTS_PER_CHUNK", "T0", "docker_entries"]

EVENTS_PER_CHUNK = 1000
T0 = 1_700_000_000 * 10**9


def docker_entries(seed: int) -> bytes:
    """PackedForward entries (EventTime, four string fields), different per ``seed``."""
    parts = []
    for i in range(EVENTS_PER_CHUNK):
        record = {
            "container_id": f"{seed:08x}" * 8,
            "container_name": "/web-frontend-1",
            "source": "stdout",
            "log": f"10.0.0.{i % 250} - - GET /api/v1/items?page={i} HTTP/1.1 200 1532 0.004 curl/8.5",
        }
        parts.append(b"\x92" + pack_event_time(T0 + seed * 10**9 + i * 1000) + msgpack.packb(record))
    return b"".join(parts)
