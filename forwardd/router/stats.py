"""The router's counters and its rate-limited logging, shared by the walk, the isolation of failing
filters and the router itself (each counts what it decides)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import structlog

__all__ = ["RouterStats", "log", "rate_limited"]


def log() -> structlog.typing.FilteringBoundLogger:
    """A fresh logger per (rare, rate-limited) line, so a later structlog configuration applies to it."""
    return structlog.get_logger("forwardd.router")  # type: ignore[no-any-return]


def rate_limited(count: int) -> bool:
    """Log at 1, 2, 4, ... 256, then every 512 (Fluentd's NoMatchMatch): an unthrottled warning on the
    hot path is a denial of service."""
    return (count & (count - 1)) == 0 if count < 512 else count % 512 == 0


@dataclass(slots=True)
class RouterStats:
    """Counters since start. ``routed`` counts chunks that matched a route in a label (a relabelled chunk
    counts once per label); ``held_rejected`` counts expired or drained chunks a sink refused."""

    routed: int = 0
    unmatched: int = 0
    #: Chunks on which a filter raised, and the events isolated as making it raise.
    filter_errors: int = 0
    filter_failed_events: int = 0
    #: Of those events: written to a filter's dead-letter folder, or dropped (no error label, no folder).
    filter_dead_lettered: int = 0
    filter_dropped: int = 0
    to_error_label: int = 0
    held_rejected: int = 0
    #: Times the chunks kept during a reload passed their bound and the gate shut (connections owing acks
    #: stopped reading until the pile came down; see Router.hold).
    parked_limit_reached: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters by name, for the ``router.stats`` log line."""
        return asdict(self)
