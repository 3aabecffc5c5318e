"""Reading what ends a stream of events: a ProtocolViolation, always last, when the peer broke the
protocol (the connection then closes after handling the events before it)."""

from __future__ import annotations

from typing import Any

from forwardd.protocol import ProtocolViolation


def split_off(events: list[Any]) -> tuple[list[Any], ProtocolViolation | None]:
    """The events before the violation, and the violation (None if the stream is fine)."""
    if events and isinstance(events[-1], ProtocolViolation):
        return events[:-1], events[-1]
    assert not any(isinstance(e, ProtocolViolation) for e in events), "a violation is always last"
    return events, None


def violation(events: list[Any]) -> ProtocolViolation:
    """The violation that ends ``events``; fails if there is none."""
    _, v = split_off(events)
    assert v is not None, f"no protocol violation in {events!r}"
    return v
