"""Which receiver the next write goes to: servers, their resolved addresses, and whether each is up.

Pure state with an injected clock; the asyncio parts (connections, heartbeats, DNS) only report to it.

An :class:`Endpoint` is one address of one configured server: a host name that resolves to several
addresses (``tasks.<service>`` on Swarm) gives one endpoint per replica, each with the server's weight, so
the replicas share the load. Endpoints of the servers that are not ``standby`` take the writes, by smooth
weighted round robin (nginx's: over any window the shares follow the weights, with no bursts), among those
that are up; standby servers take them only while no regular one can (Fluentd's ``standby``). A weight of
0 keeps a server out of the rotation.

Up and down, as Fluentd's out_forward: every endpoint starts up. A failed connect, handshake, send or ack
marks it down at once. With heartbeats, a down endpoint comes back when a heartbeat succeeds and
``recover_wait`` has passed since it went down (so a receiver that accepts connections but never acks is
not tried again at every heartbeat), and an up endpoint that nobody writes to goes down once
``hard_timeout`` has passed without a successful heartbeat (not at the first lost probe: UDP heartbeats
get lost under load, and flapping is what users of Fluentd complain about). Without heartbeats, a down
endpoint is tried again once ``recover_wait`` has passed: the write itself is the probe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from forwardd.outputs.forward.connection import Connection

__all__ = ["Balancer", "Endpoint", "ServerSpec"]


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One configured server (Fluentd's ``<server>``)."""

    host: str
    port: int = 24224
    weight: int = 60
    standby: bool = False
    name: str | None = None

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class Endpoint:
    """One address of one server: what is balanced over, connected to and probed."""

    __slots__ = (
        "address",
        "current",
        "down_since",
        "idle",
        "last_ok",
        "probing",
        "reason",
        "retry_at",
        "server",
        "up",
    )

    def __init__(self, server: ServerSpec, address: str, now: float) -> None:
        self.server = server
        self.address = address
        self.up = True
        self.reason = ""
        self.last_ok = now
        self.down_since: float | None = None
        self.retry_at = 0.0
        #: Smooth weighted round robin's running score.
        self.current = 0
        #: Kept-alive connections waiting for the next writes, the most recently used last.
        self.idle: list[Connection] = []
        #: A heartbeat probe of this endpoint is in flight.
        self.probing = False

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def key(self) -> str:
        """How logs and stats name it: the server, plus the address when the name resolved to it."""
        label = self.server.label
        return label if self.address == self.server.host else f"{label}@{self.address}"

    def __repr__(self) -> str:
        return f"Endpoint({self.key}, {'up' if self.up else 'down'})"


class Balancer:
    """Endpoints of every server and their health; picks the next one for a write."""

    def __init__(
        self,
        servers: Sequence[ServerSpec],
        *,
        recover_wait: float = 10.0,
        hard_timeout: float = 60.0,
        heartbeats: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not servers:
            raise ValueError("a forward output needs at least one server")
        self.servers = tuple(servers)
        self.recover_wait = recover_wait
        self.hard_timeout = hard_timeout
        self.heartbeats = heartbeats
        self.clock = clock
        #: Endpoints per server (index into ``servers``), in the order their addresses resolved.
        self._by_server: list[list[Endpoint]] = [[] for _ in self.servers]

    @property
    def endpoints(self) -> list[Endpoint]:
        return [ep for eps in self._by_server for ep in eps]

    def endpoints_of(self, index: int) -> list[Endpoint]:
        return list(self._by_server[index])

    def set_addresses(self, index: int, addresses: Iterable[str]) -> tuple[list[Endpoint], list[Endpoint]]:
        """The addresses server ``index`` resolves to now; endpoints of addresses that stay keep their
        state. Returns the endpoints added and removed (the caller closes the removed ones' connections)."""
        server = self.servers[index]
        now = self.clock()
        old = {ep.address: ep for ep in self._by_server[index]}
        new: list[Endpoint] = []
        added: list[Endpoint] = []
        for address in dict.fromkeys(addresses):
            ep = old.pop(address, None)
            if ep is None:
                ep = Endpoint(server, address, now)
                added.append(ep)
            new.append(ep)
        self._by_server[index] = new
        return added, list(old.values())

    def eligible(self, ep: Endpoint, now: float | None = None) -> bool:
        """Whether a write may go to ``ep`` now."""
        if ep.up:
            return True
        if self.heartbeats:
            return False
        return (self.clock() if now is None else now) >= ep.retry_at

    def pick(self, exclude: Iterable[Endpoint] = ()) -> Endpoint | None:
        """The endpoint for the next write: regular servers first, standby ones when no regular one is
        eligible; None when nothing is."""
        now = self.clock()
        skip = set(map(id, exclude))
        regular: list[Endpoint] = []
        standby: list[Endpoint] = []
        for ep in self.endpoints:
            if ep.server.weight <= 0 or id(ep) in skip or not self.eligible(ep, now):
                continue
            (standby if ep.server.standby else regular).append(ep)
        return _smooth_weighted(regular or standby)

    def failed(self, ep: Endpoint, reason: str) -> bool:
        """A connect, handshake, send or ack failed: down now; True when it was up."""
        was_up = ep.up
        now = self.clock()
        ep.up = False
        ep.reason = reason
        ep.retry_at = now + self.recover_wait
        if was_up:
            ep.down_since = now
        return was_up

    def succeeded(self, ep: Endpoint) -> bool:
        """A write went through: up (it was on trial); True when it was down."""
        was_down = not ep.up
        ep.up = True
        ep.reason = ""
        ep.down_since = None
        ep.last_ok = self.clock()
        return was_down

    def heartbeat(self, ep: Endpoint, ok: bool, reason: str = "heartbeat failed") -> bool | None:
        """A heartbeat's outcome; returns True when it brought ``ep`` up, False when it took it down,
        None when its state did not change."""
        now = self.clock()
        if ok:
            ep.last_ok = now
            if not ep.up and now >= ep.retry_at:
                ep.up = True
                ep.reason = ""
                ep.down_since = None
                return True
            return None
        if ep.up and now - ep.last_ok >= self.hard_timeout:
            ep.up = False
            ep.reason = reason
            ep.down_since = now
            ep.retry_at = now + self.recover_wait
            return False
        return None

    def next_chance(self) -> float | None:
        """Seconds until a down endpoint may be tried (without heartbeats), None if never by itself."""
        if self.heartbeats:
            return None
        now = self.clock()
        waits = [max(0.0, ep.retry_at - now) for ep in self.endpoints if not ep.up and ep.server.weight > 0]
        return min(waits) if waits else None

    def describe(self) -> dict[str, str]:
        """Each endpoint's state for stats and error messages: "up", or "down (reason)"."""
        return {ep.key: "up" if ep.up else f"down ({ep.reason})" for ep in self.endpoints}


def _smooth_weighted(candidates: list[Endpoint]) -> Endpoint | None:
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    total = 0
    best: Endpoint | None = None
    for ep in candidates:
        w = ep.server.weight
        ep.current += w
        total += w
        if best is None or ep.current > best.current:
            best = ep
    assert best is not None
    best.current -= total
    return best
