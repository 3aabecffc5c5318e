"""The one shape every component's counters export in: a flat map of plain values.

Sources (:class:`~forwardd.server.stats.SourceStats`), buffers (:class:`~forwardd.buffer.SinkStats`), the
router (:class:`~forwardd.router.stats.RouterStats`), each output's own counters and each stateful filter's
(:class:`~forwardd.filters.docker_partial.DockerPartialStats`) all have ``as_dict()``,
so that the daemon's report, and a metrics endpoint, read every one of them the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

__all__ = ["StatValue", "Stats"]

#: What a counter exports as: numbers, a text (the last error), or None (not known yet).
StatValue = int | float | str | None


class Stats(Protocol):
    """Counters of one component, exported in one flat shape."""

    def as_dict(self) -> Mapping[str, StatValue]:
        """Every counter by name: plain values only, no nesting, a fresh map each call."""
        ...
