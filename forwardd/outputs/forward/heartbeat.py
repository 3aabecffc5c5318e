"""Heartbeats: probe every endpoint on a timer and report to the balancer (Fluentd's ``heartbeat_type``).

``transport`` (the default, as in Fluentd) opens a connection the way a write would (TLS and the HELO/PING/
PONG handshake included, so a wrong key shows before a write needs it) and closes it; ``udp`` sends one
zero byte to the same port and waits for any datagram back (forwardd's and Fluentd's in_forward answer;
Fluent Bit's does not). Probes of one endpoint never overlap: a probe still running at the next tick is
not started again. A ``udp`` probe keeps its socket for the next one, as long as the endpoint's address
is still resolved.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Literal, cast

from forwardd.outputs.forward.balance import Endpoint
from forwardd.protocol.client import HEARTBEAT

__all__ = ["HeartbeatType", "Heartbeats"]

HeartbeatType = Literal["transport", "udp", "none"]


class _UdpProbe(asyncio.DatagramProtocol):
    """A connected UDP socket to one endpoint; ``answered`` is set by any datagram, ``refused`` by an ICMP
    error (nothing listens on that port)."""

    def __init__(self) -> None:
        self.answered = asyncio.Event()
        self.refused: OSError | None = None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's own datagram transport does not subclass DatagramTransport (uvloop's does).
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.answered.set()

    def error_received(self, exc: Exception) -> None:
        self.refused = exc if isinstance(exc, OSError) else OSError(str(exc))
        self.answered.set()


class Heartbeats:
    """The probing task of one forward output."""

    def __init__(
        self,
        kind: HeartbeatType,
        interval: float,
        *,
        endpoints: Callable[[], list[Endpoint]],
        connect: Callable[[Endpoint], Awaitable[None]],
        report: Callable[[Endpoint, bool, str], None],
    ) -> None:
        self.kind = kind
        self.interval = interval
        self._endpoints = endpoints
        self._connect = connect
        self._report = report
        self._udp: dict[tuple[str, int], _UdpProbe] = {}
        self._probes: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval)
                endpoints = self._endpoints()
                self._forget_gone(endpoints)
                for ep in endpoints:
                    if ep.probing:
                        continue
                    ep.probing = True
                    task = asyncio.create_task(self._probe(ep), name=f"forward-heartbeat:{ep.key}")
                    self._probes.add(task)
                    task.add_done_callback(self._probes.discard)
        finally:
            for task in list(self._probes):
                task.cancel()
            for probe in self._udp.values():
                if probe.transport is not None:
                    probe.transport.close()
            self._udp.clear()

    def _forget_gone(self, endpoints: list[Endpoint]) -> None:
        """Close the UDP sockets of addresses no longer resolved: kept until stop(), a Swarm service whose
        tasks are rescheduled for days would leave one file descriptor behind per address it ever had."""
        live = {(ep.address, ep.port) for ep in endpoints}
        for key in [key for key in self._udp if key not in live]:
            probe = self._udp.pop(key)
            if probe.transport is not None:
                probe.transport.close()

    async def _probe(self, ep: Endpoint) -> None:
        try:
            try:
                if self.kind == "udp":
                    ok, why = await self._probe_udp(ep)
                else:
                    ok, why = await self._probe_transport(ep)
            except Exception as exc:  # a probe must never die silently: it is a failed heartbeat
                ok, why = False, f"heartbeat: {type(exc).__name__}: {exc}"
            self._report(ep, ok, why)
        finally:
            ep.probing = False

    async def _probe_transport(self, ep: Endpoint) -> tuple[bool, str]:
        try:
            await self._connect(ep)
        except Exception as exc:  # every way a connection can fail is a failed heartbeat
            return False, f"heartbeat: {exc}"
        return True, ""

    async def _probe_udp(self, ep: Endpoint) -> tuple[bool, str]:
        key = (ep.address, ep.port)
        probe = self._udp.get(key)
        if probe is None or probe.transport is None or probe.transport.is_closing():
            loop = asyncio.get_running_loop()
            try:
                _, probe = await loop.create_datagram_endpoint(_UdpProbe, remote_addr=key)
            except OSError as exc:
                return False, f"udp heartbeat: {exc}"
            self._udp[key] = probe
        probe.answered.clear()
        probe.refused = None
        assert probe.transport is not None
        probe.transport.sendto(HEARTBEAT)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.interval):
                await probe.answered.wait()
        if probe.refused is not None:
            probe.transport.close()  # a fresh socket next time: an ICMP error can stick to it
            return False, f"udp heartbeat: {probe.refused}"
        if not probe.answered.is_set():
            return False, f"udp heartbeat: no answer within {self.interval}s"
        return True, ""
