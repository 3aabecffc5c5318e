"""Names resolved again over time, and heartbeats marking servers up and down.

/etc/hosts is not ours to edit, so re-resolution is driven by a resolver hook (the output's ``resolver``
argument) whose answer the test changes, the way Swarm's DNS changes the answer for tasks.<service> when
replicas come and go. The addresses it returns are real: test servers listen on 127.0.0.2 and 127.0.0.3
(all of 127/8 is loopback) on the same port, as two replicas of one service would. The system resolver
itself is checked on ``localhost``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from forwardd.errors import RetryableError
from forwardd.outputs.forward import ForwardOutput, system_resolver
from forwardd.protocol.client import ClientSecurity
from forwardd.testing import TestServer
from tests.outputs.forward.helpers import chunk, output, restart, seqs, server, started, wait_until


class Dns:
    """A resolver hook: answers what the test says, counts questions, can fail."""

    def __init__(self, *addresses: str) -> None:
        self.answer = list(addresses)
        self.asked = 0
        self.fail = False

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked += 1
        if self.fail:
            raise OSError(-2, "Name or service not known")
        return list(self.answer)


@pytest.fixture
async def replicas() -> AsyncIterator[tuple[TestServer, TestServer]]:
    """Two receivers on one port, at 127.0.0.2 and 127.0.0.3."""
    a = await TestServer(host="127.0.0.2").start()
    b = await TestServer(host="127.0.0.3", port=a.port).start()
    try:
        yield a, b
    finally:
        await a.stop()
        await b.stop()


async def test_replicas_appear_and_disappear_with_the_dns_answer(
    replicas: tuple[TestServer, TestServer],
) -> None:
    a, b = replicas
    dns = Dns("127.0.0.2")
    spec = server(a.port, host="tasks.aggregator")
    async with started(output([spec], resolver=dns, dns_refresh=0.02)) as out:
        for i in range(4):
            await out.write(chunk("app", i, 1))
        assert (len(a.events), len(b.events)) == (4, 0)
        with capture_logs() as logs:
            dns.answer = ["127.0.0.2", "127.0.0.3"]  # a replica was added
            await wait_until(lambda: len(out.balancer.endpoints) == 2, what="the second replica")
        assert logs[0]["event"] == "forward.dns_changed"
        assert logs[0]["addresses"] == ["127.0.0.2", "127.0.0.3"]
        for i in range(4, 12):
            await out.write(chunk("app", i, 1))
        assert (len(a.events), len(b.events)) == (8, 4), "the replicas share the writes"
        dns.answer = ["127.0.0.3"]  # the first replica was rescheduled away
        await wait_until(lambda: [e.address for e in out.balancer.endpoints] == ["127.0.0.3"], what="removal")
        for i in range(12, 16):
            await out.write(chunk("app", i, 1))
        assert len(b.events) == 8
        assert len(a.events) == 8
        assert sorted(seqs(a.events) + seqs(b.events)) == list(range(16))
        assert set(out.stats.servers) == {f"tasks.aggregator:{a.port}@127.0.0.3"}


async def test_a_failed_resolution_keeps_the_addresses_it_had(
    replicas: tuple[TestServer, TestServer],
) -> None:
    a, _ = replicas
    dns = Dns("127.0.0.2")
    async with started(
        output([server(a.port, host="tasks.aggregator")], resolver=dns, dns_refresh=0.02)
    ) as out:
        with capture_logs() as logs:
            dns.fail = True
            asked = dns.asked
            await wait_until(lambda: dns.asked > asked + 1, what="two more resolutions")
        assert any(x["event"] == "forward.dns_failed" for x in logs)
        await out.write(chunk("app", 0, 3))
        assert seqs(a.events) == [0, 1, 2]


def addresses(out: ForwardOutput) -> list[str]:
    return [ep.address for ep in out.balancer.endpoints]


class BrokenResolver(Dns):
    """A resolver hook that raises what no resolver should (a bug in a custom one) while ``broken``."""

    def __init__(self, *addresses: str) -> None:
        super().__init__(*addresses)
        self.broken = False

    async def __call__(self, host: str, port: int) -> list[str]:
        if self.broken:
            self.asked += 1
            raise RuntimeError("resolver bug")
        return await super().__call__(host, port)


async def test_a_resolver_raising_anything_is_logged_and_refreshing_goes_on(
    replicas: tuple[TestServer, TestServer],
) -> None:
    a, b = replicas
    dns = BrokenResolver("127.0.0.2")
    spec = server(a.port, host="tasks.aggregator")
    async with started(output([spec], resolver=dns, dns_refresh=0.02)) as out:
        with capture_logs() as logs:
            dns.broken = True
            asked = dns.asked
            await wait_until(lambda: dns.asked > asked + 1, what="two failed resolutions")
            dns.broken = False
            dns.answer = ["127.0.0.3"]  # the refresh is still alive: it finds the replica that moved
            await wait_until(lambda: addresses(out) == ["127.0.0.3"], what="the move")
        failed = [x for x in logs if x["event"] == "forward.dns_failed"]
        assert failed, [x["event"] for x in logs]
        assert failed[0]["output"] == "fwd"
        assert failed[0]["server"] == f"tasks.aggregator:{a.port}"
        assert failed[0]["error"] == "RuntimeError: resolver bug"
        await out.write(chunk("app", 0, 2))
        assert seqs(b.events) == [0, 1]


async def test_a_crash_of_the_refresh_is_logged_and_refreshing_goes_on(
    replicas: tuple[TestServer, TestServer],
) -> None:
    """A bug past the resolver (here the balancer's update raises: a fault no real input makes, hence the
    patched method) must not end refreshing for good, silently."""
    a, b = replicas
    dns = Dns("127.0.0.2")
    spec = server(a.port, host="tasks.aggregator")
    async with started(output([spec], resolver=dns, dns_refresh=0.02)) as out:
        real = out.balancer.set_addresses
        crashes = [0]

        def broken(index: int, addresses: object) -> object:
            crashes[0] += 1
            raise KeyError("balancer bug")

        with capture_logs() as logs:
            out.balancer.set_addresses = broken  # type: ignore[assignment,method-assign]
            await wait_until(lambda: crashes[0] >= 2, what="two crashed refreshes")
            out.balancer.set_addresses = real  # type: ignore[method-assign]
            dns.answer = ["127.0.0.3"]
            await wait_until(lambda: addresses(out) == ["127.0.0.3"], what="the move")
        crashed = [x for x in logs if x["event"] == "forward.dns_refresh_failed"]
        assert len(crashed) >= 2
        assert crashed[0]["output"] == "fwd"
        assert crashed[0]["error"] == "KeyError: 'balancer bug'"
        assert crashed[0]["log_level"] == "error"
        await out.write(chunk("app", 0, 2))
        assert seqs(b.events) == [0, 1]


async def test_a_crash_of_the_resolution_a_write_asks_for_is_retryable(
    replicas: tuple[TestServer, TestServer],
) -> None:
    """A write that finds no endpoint resolves again; a bug there (the balancer's update raising, patched
    in as in the test above) must be a RetryableError, which backs off: any other exception makes the
    delivery loop isolate and dead-letter the chunk's events."""
    a, _ = replicas
    dns = Dns("127.0.0.2")
    now = [1000.0]
    opts = {"resolver": dns, "dns_refresh": 0, "recover_wait": 60, "clock": lambda: now[0]}
    async with started(output([server(a.port, host="tasks.aggregator")], **opts)) as out:
        await a.stop()
        with pytest.raises(RetryableError):
            await out.write(chunk("app", 0, 1))  # the endpoint goes down; too soon to resolve again

        def broken(index: int, addresses: object) -> object:
            raise KeyError("balancer bug")

        out.balancer.set_addresses = broken  # type: ignore[assignment,method-assign]
        now[0] += 2
        with capture_logs() as logs, pytest.raises(RetryableError, match="no server is up"):
            await out.write(chunk("app", 0, 1))
        crashed = [x for x in logs if x["event"] == "forward.dns_refresh_failed"]
        assert len(crashed) == 1
        assert crashed[0]["error"] == "KeyError: 'balancer bug'"


async def test_a_crash_of_the_first_resolution_leaves_the_output_started_and_refreshing(
    replicas: tuple[TestServer, TestServer],
) -> None:
    """start() set itself started before its first resolution: a failure there left an output that
    refused a second start() and had neither heartbeats nor refreshing, for good."""
    a, _ = replicas
    dns = Dns("127.0.0.2")
    out = output([server(a.port, host="tasks.aggregator")], resolver=dns, dns_refresh=0.02)
    real = out.balancer.set_addresses

    def broken(index: int, addresses: object) -> object:
        raise KeyError("balancer bug")

    out.balancer.set_addresses = broken  # type: ignore[assignment,method-assign]
    with capture_logs() as logs:
        await out.start()
    try:
        assert [x["via"] for x in logs if x["event"] == "forward.dns_refresh_failed"] == ["start"]
        out.balancer.set_addresses = real  # type: ignore[method-assign]
        await wait_until(lambda: addresses(out) == ["127.0.0.2"], what="the refresh resolving")
        await out.write(chunk("app", 0, 2))
        assert seqs(a.events) == [0, 1]
    finally:
        await out.stop()


async def test_when_every_endpoint_is_down_the_name_is_resolved_again(
    replicas: tuple[TestServer, TestServer],
) -> None:
    """The only replica moved: the write that finds nothing up asks DNS again and goes to the new one."""
    a, b = replicas
    dns = Dns("127.0.0.2")
    spec = server(a.port, host="tasks.aggregator")
    now = [1000.0]
    opts = {"resolver": dns, "dns_refresh": 0, "recover_wait": 60, "clock": lambda: now[0]}
    async with started(output([spec], **opts)) as out:
        await out.write(chunk("app", 0, 1))
        await a.stop()
        dns.answer = ["127.0.0.3"]
        now[0] += 0.5  # within a second of the last resolution, DNS is not asked again
        with pytest.raises(RetryableError):
            await out.write(chunk("app", 1, 1))
        asked = dns.asked
        now[0] += 1.0
        await out.write(chunk("app", 1, 1))
        assert dns.asked == asked + 1
        assert seqs(b.events) == [1]


async def test_system_resolver_on_localhost() -> None:
    assert "127.0.0.1" in await system_resolver("localhost", 24224)
    assert await system_resolver("127.0.0.5", 1) == ["127.0.0.5"]
    with pytest.raises(OSError):
        await system_resolver("name.that.does.not.exist.invalid", 1)


# --- heartbeats -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["transport", "udp"])
async def test_heartbeats_take_an_idle_server_down_and_bring_it_back(kind: str) -> None:
    srv = await TestServer(udp_heartbeat=kind == "udp").start()
    key = f"127.0.0.1:{srv.port}"
    opts = {"heartbeat_type": kind, "heartbeat_interval": 0.03, "hard_timeout": 0.2, "recover_wait": 0.1}
    async with started(output([server(srv.port)], **opts)) as out:
        await wait_until(lambda: out.stats.heartbeats >= 3, what="heartbeats")
        assert out.stats.connects == 0, "probes are counted as heartbeats, not as connections for writes"
        assert out.stats.heartbeat_failures == 0
        assert out.stats.servers[key] == "up"
        with capture_logs() as logs:
            await srv.stop()
            await wait_until(lambda: out.stats.servers[key] != "up", what="down by heartbeat")
        assert logs[-1]["event"] == "forward.server_down"
        assert "heartbeat" in logs[-1]["reason"]
        assert out.stats.events == 0, "no write was needed to find out"
        srv = await restart(srv, udp_heartbeat=kind == "udp")
        with capture_logs() as logs:
            await wait_until(lambda: out.stats.servers[key] == "up", what="up by heartbeat")
        assert logs[-1]["event"] == "forward.server_up"
        assert logs[-1]["via"] == "heartbeat"
        await out.write(chunk("app", 0, 2))
        assert seqs(srv.events) == [0, 1]
    if kind == "transport":
        assert srv.stats.connections >= 2, "each probe is a connection, like Fluentd's"
        assert srv.stats.protocol_errors == 0, "an empty connection is no error"
    else:
        assert srv.stats.connections == 1
    await srv.stop()


def udp_sockets_to(port: int) -> int:
    """This process's open UDP sockets connected to ``port`` (its fds' inodes, looked up in /proc/net)."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/self/net/udp", "/proc/self/net/udp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == port and fields[9] in inodes:
                    count += 1
    return count


async def move_to(out: ForwardOutput, dns: Dns, address: str, srv: TestServer) -> None:
    """The name now resolves to ``address`` alone: wait until the output knows and has probed it."""
    dns.answer = [address]
    await wait_until(lambda: addresses(out) == [address], what=f"the move to {address}")
    beats = srv.stats.heartbeats
    await wait_until(lambda: srv.stats.heartbeats >= beats + 2, what=f"heartbeats to {address}")


async def test_udp_heartbeat_sockets_of_addresses_gone_are_closed() -> None:
    """A Swarm service rescheduled again and again: each address DNS ever returned had a UDP socket
    until stop(). Only the addresses resolved now keep one."""
    a = await TestServer(host="127.0.0.2", udp_heartbeat=True).start()
    b = await TestServer(host="127.0.0.3", port=a.port, udp_heartbeat=True).start()
    c = await TestServer(host="127.0.0.4", port=a.port, udp_heartbeat=True).start()
    dns = Dns("127.0.0.2")
    opts = {"resolver": dns, "dns_refresh": 0.02, "heartbeat_type": "udp", "heartbeat_interval": 0.02}
    try:
        async with started(output([server(a.port, host="tasks.aggregator")], **opts)) as out:
            await wait_until(lambda: a.stats.heartbeats >= 2, what="heartbeats to the first replica")
            assert udp_sockets_to(a.port) == 1
            for address, srv in (("127.0.0.3", b), ("127.0.0.4", c)):
                await move_to(out, dns, address, srv)
                await wait_until(lambda: udp_sockets_to(a.port) == 1, timeout=2, what="one UDP socket left")
        assert udp_sockets_to(a.port) == 0, "stop closes the rest"
    finally:
        for srv in (a, b, c):
            await srv.stop()


async def test_transport_heartbeat_does_the_handshake_and_a_wrong_key_shows_before_any_write() -> None:
    async with TestServer(shared_key="right") as srv:
        opts = {"heartbeat_type": "transport", "heartbeat_interval": 0.03, "hard_timeout": 0.15}
        sec = ClientSecurity("agent", "wrong")
        async with started(output([server(srv.port)], security=sec, **opts)) as out:
            await wait_until(lambda: "refused" in out.stats.servers[f"127.0.0.1:{srv.port}"], what="down")
            assert out.stats.requests == 0
            assert srv.stats.handshake_failures >= 3


async def test_udp_heartbeat_to_a_receiver_without_udp_counts_as_failed() -> None:
    """Fluent Bit answers no UDP heartbeat: with heartbeat_type udp its servers would go down."""
    async with TestServer(udp_heartbeat=False) as srv:
        opts = {"heartbeat_type": "udp", "heartbeat_interval": 0.03, "hard_timeout": 10}
        async with started(output([server(srv.port)], **opts)) as out:
            await wait_until(lambda: out.stats.heartbeat_failures >= 2, what="failed probes")
            assert out.stats.servers[f"127.0.0.1:{srv.port}"] == "up", "not before hard_timeout"


async def test_stop_ends_the_probes() -> None:
    async with TestServer() as srv:
        out = output([server(srv.port)], heartbeat_type="transport", heartbeat_interval=0.02)
        await out.start()
        await wait_until(lambda: out.stats.heartbeats >= 1, what="a heartbeat")
        await out.stop()
        beats = out.stats.heartbeats
        await asyncio.sleep(0.1)  # several intervals: nothing may run any more
        assert out.stats.heartbeats == beats


async def test_transport_probe_is_an_empty_connection_as_fluentds() -> None:
    """Fluentd's heartbeat_type transport opens a connection and closes it without a byte (the
    hb-transport capture: "no payload either way"); without a handshake ours does the same."""
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read())  # until the client closes
        writer.close()

    listening = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    try:
        opts = {"heartbeat_type": "transport", "heartbeat_interval": 0.03}
        async with started(output([server(port)], **opts)):
            await wait_until(lambda: len(received) >= 3, what="three probes")
        assert set(received[:3]) == {b""}
    finally:
        listening.close()
