"""Counters per source."""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["SourceStats"]


@dataclass(slots=True)
class SourceStats:
    """What one source has seen. Plain ints: cheap to bump on the hot path, easy to export."""

    connections: int = 0
    open_connections: int = 0
    refused_connections: int = 0
    bytes: int = 0
    chunks: int = 0
    events: int = 0
    acks: int = 0
    nacks: int = 0
    heartbeats: int = 0
    invalid_entries: int = 0
    invalid_times: int = 0
    rejected: int = 0
    dropped_events: int = 0
    protocol_errors: int = 0
    handshake_failures: int = 0
    tls_failures: int = 0
    backpressure_pauses: int = 0
    budget_pauses: int = 0
    offloaded: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
