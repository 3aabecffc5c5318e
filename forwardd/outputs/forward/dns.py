"""The forward output's name resolution: which addresses each configured server stands for now.

Apart from the write path because it runs on its own (at start, every ``dns_refresh`` seconds, and when a
write finds no endpoint left) and changes what the balancer picks from: a name resolving to several
addresses gives one endpoint each, which is how ``tasks.<service>`` spreads over a Swarm service's
replicas, and an address that goes away takes its idle connection with it. The resolver is injectable so
that tests can move names around. A server whose name does not resolve, for whatever reason the resolver
gives, keeps the endpoints it had (``forward.dns_failed``), and a round of refreshing that fails past the
resolver is logged (``forward.dns_refresh_failed``) and followed by the next one: refreshing never ends
before the output stops. One that a write asks for fails the same way, and the write is retryable.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence

import structlog

from forwardd.outputs.forward.balance import Balancer, Endpoint

__all__ = ["Resolution", "Resolver", "is_ip", "system_resolver"]

log = structlog.get_logger("forwardd.forward")

#: Resolves a server's host name to the addresses to connect to.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (getaddrinfo, in its order); an IP literal is itself."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Resolution:
    """Keeps the balancer's endpoints at the addresses its servers' names resolve to. ``drop_idle`` closes
    the idle connection of an endpoint whose address went away. :attr:`lock` is made by the output's start
    (inside the event loop); :attr:`resolved_at` is when the last resolution began (``clock``)."""

    def __init__(
        self,
        name: str,
        balancer: Balancer,
        resolver: Resolver,
        clock: Callable[[], float],
        drop_idle: Callable[[Endpoint], Awaitable[None]],
    ) -> None:
        self.name = name
        self.balancer = balancer
        self.resolver = resolver
        self._clock = clock
        self._drop_idle = drop_idle
        self.resolved_at = -1e18
        self.lock: asyncio.Lock | None = None

    def has_names(self) -> bool:
        """Whether any server is a name (not an IP literal), i.e. whether refreshing can change anything."""
        return any(not is_ip(s.host) for s in self.balancer.servers)

    async def refresh_loop(self, every: float) -> None:
        """Resolve every ``every`` seconds, for as long as the output runs: a failure of one round (a bug
        here or in the balancer) is logged and the next round comes at the usual time, as a heartbeat
        probe's does; nobody awaits this task before stop(), so an exception ending it would go unseen."""
        while True:
            await asyncio.sleep(every)
            await self.resolve_or_log(via="refresh", retry_in=every)

    async def resolve_or_log(self, **context: object) -> None:
        """:meth:`resolve`, whose failure is logged (``forward.dns_refresh_failed`` with ``context``) and
        not raised: neither the refresh task nor a write that asks for a resolution may end on it (a write
        raising anything but RetryableError would have its events isolated and dead-lettered)."""
        try:
            await self.resolve()
        except Exception as exc:
            log.error(
                "forward.dns_refresh_failed",
                output=self.name,
                error=f"{type(exc).__name__}: {exc}",
                **context,
                exc_info=exc,
            )

    async def resolve(self) -> None:
        """Resolve every server again; an endpoint whose address stays keeps its state and connection."""
        assert self.lock is not None
        async with self.lock:
            self.resolved_at = self._clock()
            for i, server in enumerate(self.balancer.servers):
                try:
                    addresses = list(await self.resolver(server.host, server.port))
                except (OSError, UnicodeError) as exc:
                    log.warning("forward.dns_failed", output=self.name, server=server.label, error=str(exc))
                    continue
                except Exception as exc:  # a custom resolver's own failure: the server keeps its endpoints
                    log.error(
                        "forward.dns_failed",
                        output=self.name,
                        server=server.label,
                        error=f"{type(exc).__name__}: {exc}",
                        exc_info=exc,
                    )
                    continue
                if not addresses:
                    log.warning(
                        "forward.dns_failed", output=self.name, server=server.label, error="no address"
                    )
                    continue
                before = [ep.address for ep in self.balancer.endpoints_of(i)]
                added, removed = self.balancer.set_addresses(i, addresses)
                for ep in removed:
                    await self._drop_idle(ep)
                if before and (added or removed):
                    log.info(
                        "forward.dns_changed",
                        output=self.name,
                        server=server.label,
                        addresses=[ep.address for ep in self.balancer.endpoints_of(i)],
                        before=before,
                    )
