"""The forward output's failover: picking the endpoint a write goes to next, and marking endpoints down
and up from what writes and heartbeats find, with the log lines and counters operators read.

:mod:`.balance` is the pure state (weights, up and down, ``recover_wait``, ``hard_timeout``); this is its
asyncio side, kept apart from the write path so that writes and heartbeats report to one place:
``forward.server_down`` and ``forward.server_up`` (with ``via`` write or heartbeat and how long it was
down) are logged here only, when the state changes. A write that finds no endpoint left asks
for the names to be resolved again (at most every :data:`_RESOLVE_ON_MISS` seconds): a Swarm service
rescheduled elsewhere is found without waiting for the next refresh.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from forwardd.outputs.forward.balance import Balancer, Endpoint
from forwardd.outputs.forward.connection import ConnectionFailed
from forwardd.outputs.forward.dns import Resolution
from forwardd.outputs.forward.stats import ForwardStats

__all__ = ["Failover"]

log = structlog.get_logger("forwardd.forward")

#: Least time between two resolutions a write asks for when it finds no endpoint.
_RESOLVE_ON_MISS = 1.0


class Failover:
    """Which endpoint is next, and what each outcome of a write or a heartbeat does to its state."""

    def __init__(
        self,
        name: str,
        balancer: Balancer,
        stats: ForwardStats,
        dns: Resolution,
        clock: Callable[[], float],
    ) -> None:
        self.name = name
        self.balancer = balancer
        self._stats = stats
        self._dns = dns
        self._clock = clock

    async def pick(self, tried: list[Endpoint]) -> Endpoint | None:
        ep = self.balancer.pick(exclude=tried)
        if ep is None and self._clock() - self._dns.resolved_at >= _RESOLVE_ON_MISS:
            # The names may point elsewhere now (a Swarm service rescheduled).
            await self._dns.resolve_or_log(via="write")
            ep = self.balancer.pick(exclude=tried)
        return ep

    def heartbeat(self, ep: Endpoint, ok: bool, why: str) -> None:
        stats = self._stats
        stats.heartbeats += 1
        if not ok:
            stats.heartbeat_failures += 1
        down_since = ep.down_since
        change = self.balancer.heartbeat(ep, ok, why)
        if change is True:
            log.info(
                "forward.server_up",
                output=self.name,
                server=ep.key,
                via="heartbeat",
                down_for=round(self._clock() - down_since, 3) if down_since is not None else None,
            )
        elif change is False:
            log.warning("forward.server_down", output=self.name, server=ep.key, reason=why)

    def failed(self, ep: Endpoint, failure: ConnectionFailed) -> None:
        stats = self._stats
        stats.failures[failure.kind] = stats.failures.get(failure.kind, 0) + 1
        reason = f"{failure.kind}: {failure}"
        if self.balancer.failed(ep, reason):
            log.warning("forward.server_down", output=self.name, server=ep.key, reason=reason)

    def succeeded(self, ep: Endpoint) -> None:
        down_since = ep.down_since
        if self.balancer.succeeded(ep):
            log.info(
                "forward.server_up",
                output=self.name,
                server=ep.key,
                via="write",
                down_for=round(self._clock() - down_since, 3) if down_since is not None else None,
            )
