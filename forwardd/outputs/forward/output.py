"""The ``forward`` output: chunks to Fluentd, Fluent Bit or forwardd receivers over the forward protocol.

This module is the output and its write path; the parts it drives each have a module: :mod:`.messages`
(the chunk cut into requests, as they go on the wire), :mod:`.failover` (which endpoint next, up and down;
the pure state in :mod:`.balance`), :mod:`.pool` (connections kept alive between writes, on
:mod:`.connection`), :mod:`.acks` (requests sent and their acks matched), :mod:`.heartbeat` (probes),
:mod:`.dns` (names resolved to endpoints), :mod:`.stats` (the counters), :mod:`.settings` (the entry).

A write delivers one chunk (the delivery loop's batch for one tag) and returns only when every event of it
is through: with ``require_ack_response`` (the default) that means acked by a receiver, so a chunk leaves
forwardd's durable queue only once another durable queue has it. A chunk bigger than
``max_message_size`` goes as several requests, pipelined on one connection; they are acked one by one.

Where it goes (:mod:`.balance`): weighted round robin over the endpoints of the regular servers that are
up, standby servers while none is. When an endpoint fails (no connection, TLS or handshake refused, the
bytes do not leave within ``send_timeout``, no ack within ``ack_response_timeout``, the connection drops)
it is marked down and the same write goes on at once with the next endpoint: requests that were not acked
are sent again there (they may have arrived: at least once; ``unacked_events`` counts them, which bounds
the duplicates a receiver can see, and ``resent_events`` what was sent again within the write). An
endpoint that acked part of the write before its connection dropped (a receiver that closes after N
requests, or after each reply: ``deny_keepalive``) is retried on a new connection, without being marked
down. Only when no endpoint is left does the write fail: :class:`RetryableError`, or
:class:`PartialDelivery` naming the events that were acked, so the delivery loop backs off and sends only
the rest. Nothing here is ever permanent: a receiver that is down, refuses our key or acks nothing holds
the queue (back-pressure), it never costs events.

Writes in flight: by default (``in_flight: 1``) the delivery loop hands over one chunk at a time and
waits for its ack before the next, so every tag of a batch costs a round trip to the receiver (per-
container tags: one chunk per tag per batch). ``in_flight: N`` (up to 64; the output's
:attr:`~forwardd.outputs.base.Output.concurrent_writes`) lets the loop write N chunks at once. Each write
is independent of the others: it takes a connection of its own from the pool (an idle one, or a new one;
up to N are kept per endpoint), its acks are matched on that connection alone, and it fails over, is
retried and is counted by itself, so its outcome (delivered, :class:`PartialDelivery` of its own
events, :class:`RetryableError`) concerns its own chunk only: a connection that fails aborts only the
write on it, and the endpoint it marks down is left by the other writes at their next pick (a write
already in flight there finishes or fails on its own; one that succeeds later marks it up again: each
outcome is news of the endpoint). It gives up order across chunks: requests of different chunks travel
on different connections, possibly to different servers, and may reach a receiver out of order, and on
a retry a later chunk may land before an earlier one. Events within one request, and the requests of
one chunk, stay in order.

Connections are kept alive between writes (``keepalive``; an idle connection older than
``keepalive_timeout`` is replaced) and one that the receiver closed while idle is replaced without marking
anything down: before anything is written to it when its socket shows the end already, else once, after
the write it failed (see :class:`~.stats.ForwardStats` for what each case counts). Host names are
resolved at start and every ``dns_refresh`` seconds (and when no endpoint is left), through ``resolver``
(injectable); a name resolving to several addresses gives one endpoint each, which is how
``tasks.<service>`` spreads over a Swarm service's replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable, Sequence
from os import PathLike
from typing import Literal

import structlog

from forwardd.errors import PartialDelivery, RetryableError
from forwardd.model import Chunk
from forwardd.outputs.base import Output
from forwardd.outputs.forward.acks import Sender
from forwardd.outputs.forward.balance import Balancer, Endpoint, ServerSpec
from forwardd.outputs.forward.connection import ConnectionFailed, client_tls_context
from forwardd.outputs.forward.dns import Resolution, Resolver, system_resolver
from forwardd.outputs.forward.failover import Failover
from forwardd.outputs.forward.heartbeat import Heartbeats, HeartbeatType
from forwardd.outputs.forward.messages import Message, messages_of
from forwardd.outputs.forward.pool import Pool
from forwardd.outputs.forward.settings import MAX_IN_FLIGHT, ForwardSettings
from forwardd.outputs.forward.stats import ForwardStats
from forwardd.protocol.client import ClientSecurity, Compression, TimeFormat

__all__ = ["ForwardOutput"]

log = structlog.get_logger("forwardd.forward")

#: Times one write may go back to an endpoint that made progress but whose connection ended.
_PROGRESS_RETRIES = 1000


class ForwardOutput(Output):
    """See the module doc. ``resolver`` and ``clock`` are injectable for tests."""

    def __init__(
        self,
        *,
        name: str = "forward",
        servers: Sequence[ServerSpec],
        require_ack_response: bool = True,
        ack_response_timeout: float = 30.0,
        compress: Literal["none", "gzip", "zstd"] = "none",
        max_message_size: int = 1024**2,
        time_format: TimeFormat = "event_time",
        keepalive: bool = True,
        keepalive_timeout: float = 60.0,
        connect_timeout: float = 10.0,
        send_timeout: float = 60.0,
        heartbeat_type: HeartbeatType = "transport",
        heartbeat_interval: float = 1.0,
        hard_timeout: float = 60.0,
        recover_wait: float = 10.0,
        dns_refresh: float = 30.0,
        in_flight: int = 1,
        ssl_context: ssl.SSLContext | None = None,
        tls_server_name: str | None = None,
        security: ClientSecurity | None = None,
        resolver: Resolver = system_resolver,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_message_size < 1:
            raise ValueError("max_message_size must be positive")
        if not any(s.weight > 0 for s in servers):
            raise ValueError("every server has weight 0: nothing could be sent")
        if not 1 <= in_flight <= MAX_IN_FLIGHT:
            raise ValueError(f"in_flight must be between 1 and {MAX_IN_FLIGHT}, got {in_flight}")
        self.name = name
        self.require_ack = require_ack_response
        self.ack_timeout = ack_response_timeout
        self.compression: Compression = "text" if compress == "none" else compress
        self.max_message_size = max_message_size
        self.time_format = time_format
        self.keepalive = keepalive
        self.keepalive_timeout = keepalive_timeout
        self.connect_timeout = connect_timeout
        self.send_timeout = send_timeout
        self.heartbeat_type = heartbeat_type
        self.heartbeat_interval = heartbeat_interval
        self.dns_refresh = dns_refresh
        #: Writes the delivery loop may have in flight at once: see the module doc (order).
        self.concurrent_writes = in_flight
        self.ssl_context = ssl_context
        self.tls_server_name = tls_server_name
        self.security = security
        self.resolver = resolver
        self.balancer = Balancer(
            servers,
            recover_wait=recover_wait,
            hard_timeout=hard_timeout,
            heartbeats=heartbeat_type != "none",
            clock=clock,
        )
        self._stats = ForwardStats()
        self._pool = Pool(
            self.balancer,
            self._stats,
            ssl_context=ssl_context,
            tls_server_name=tls_server_name,
            security=security,
            connect_timeout=connect_timeout,
            keepalive=keepalive,
            keepalive_timeout=keepalive_timeout,
            clock=clock,
            max_idle=in_flight,
        )
        self._dns = Resolution(name, self.balancer, resolver, clock, self._pool.drop_idle)
        self._failover = Failover(name, self.balancer, self._stats, self._dns, clock)
        self._sender = Sender(
            self._stats,
            compression=self.compression,
            require_ack=require_ack_response,
            send_timeout=send_timeout,
            ack_timeout=ack_response_timeout,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    @classmethod
    def from_settings(cls, name: str, s: ForwardSettings) -> ForwardOutput:
        """The output for one ``type: forward`` entry of the configuration."""
        ctx = None
        if s.tls is not None:
            t = s.tls
            ctx = client_tls_context(
                ca_file=_path(t.ca_file), cert_file=_path(t.cert_file), key_file=_path(t.key_file),
                key_password=t.key_password, verify=t.verify, min_version=t.min_version,
            )  # fmt: skip
        security = None
        if s.security is not None:
            sec = s.security
            security = ClientSecurity(sec.self_hostname, sec.shared_key, sec.username, sec.password)
        return cls(
            name=name,
            servers=[ServerSpec(v.host, v.port, v.weight, v.standby, v.name) for v in s.servers],
            require_ack_response=s.require_ack_response,
            ack_response_timeout=s.ack_response_timeout,
            compress=s.compress,
            max_message_size=s.max_message_size,
            time_format=s.time_format,
            keepalive=s.keepalive,
            keepalive_timeout=s.keepalive_timeout,
            connect_timeout=s.connect_timeout,
            send_timeout=s.send_timeout,
            heartbeat_type=s.heartbeat_type,
            heartbeat_interval=s.heartbeat_interval,
            hard_timeout=s.hard_timeout,
            recover_wait=s.recover_wait,
            dns_refresh=s.dns_refresh,
            in_flight=s.in_flight,
            ssl_context=ctx,
            tls_server_name=s.tls.server_name if s.tls is not None else None,
            security=security,
        )

    # --- lifecycle --------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._pool.closing = False
        self._dns.lock = asyncio.Lock()
        # Logged, not raised: this output is started already, and its refresh task is what retries.
        await self._dns.resolve_or_log(via="start")
        log.info(
            "forward.started",
            output=self.name,
            servers=self.balancer.describe(),
            ack=self.require_ack,
            heartbeat=self.heartbeat_type,
            in_flight=self.concurrent_writes,
            tls=self.ssl_context is not None,
            handshake=self.security is not None,
        )
        if self.heartbeat_type != "none":
            beats = Heartbeats(
                self.heartbeat_type,
                self.heartbeat_interval,
                endpoints=lambda: self.balancer.endpoints,
                connect=self._pool.probe,
                report=self._failover.heartbeat,
            )
            self._tasks.append(asyncio.create_task(beats.run(), name=f"forward-heartbeats:{self.name}"))
        if self.dns_refresh > 0 and self._dns.has_names():
            refresh = self._dns.refresh_loop(self.dns_refresh)
            self._tasks.append(asyncio.create_task(refresh, name=f"forward-dns:{self.name}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._pool.closing = True  # a write still in flight closes its connection when it ends
        # At once: closing one may wait up to a second (a TLS receiver that does not answer close_notify),
        # and one after another they could take the daemon's whole stop deadline.
        await asyncio.gather(*(self._pool.drop_idle(ep) for ep in self.balancer.endpoints))
        self._started = False

    @property
    def stats(self) -> ForwardStats:
        s = self._stats
        copy = ForwardStats(**{f: getattr(s, f) for f in ForwardStats.__slots__})
        copy.failures = dict(s.failures)
        copy.servers = self.balancer.describe()
        return copy

    # --- write ------------------------------------------------------------------------------------------

    async def write(self, chunk: Chunk) -> None:
        if not self._started:
            # Retryable: the delivery loop would isolate and dead-letter events for any other exception.
            raise RetryableError(
                f"forward output {self.name}: not started (a write before start() or after stop())"
            )
        messages = await messages_of(
            chunk,
            name=self.name,
            max_message_size=self.max_message_size,
            time_format=self.time_format,
            compression=self.compression,
            stats=self._stats,
        )
        pending = [m for m in messages if m.events]
        if not pending:
            return
        tried: list[Endpoint] = []
        last: ConnectionFailed | None = None
        progress_retries = 0
        moving = False  # the last endpoint failed: the next one is a failover
        while pending:
            ep = await self._failover.pick(tried)
            if ep is None:
                break
            if moving:
                self._stats.failovers += 1
                moving = False
            progressed, failure = await self._attempt(ep, chunk.tag, pending)
            pending = [m for m in pending if not m.done]
            if failure is None:
                self._failover.succeeded(ep)
                continue
            last = failure
            if progressed and progress_retries < _PROGRESS_RETRIES:
                # It took some of it and then the connection ended (close after N, deny_keepalive): the
                # receiver is alive; go on with it on a new connection.
                progress_retries += 1
                self._failover.succeeded(ep)
                continue
            self._failover.failed(ep, failure)
            tried.append(ep)
            moving = True
        if not pending:
            return
        self._raise(chunk, messages, pending, last)

    def _raise(
        self, chunk: Chunk, messages: list[Message], pending: list[Message], last: ConnectionFailed | None
    ) -> None:
        servers = ", ".join(f"{k}: {v}" for k, v in self.balancer.describe().items()) or "none resolved"
        why = f"{last.kind}: {last}" if last is not None else "no server is up"
        cause = RetryableError(f"forward output {self.name}: {why} (servers: {servers})")
        delivered = sum(m.count for m in messages if m.done or not m.events)
        if not any(m.done for m in messages):
            raise cause
        entries = chunk.entries
        unsent = Chunk(
            chunk.tag,
            b"".join(entries[m.start : m.end] for m in pending),
            sum(m.count for m in pending),
            chunk.received_ns,
        )
        raise PartialDelivery(
            f"forward output {self.name}: {delivered} of {chunk.count} events acked before {why}",
            delivered=delivered,
            unsent=unsent,
            cause=cause,
        )

    async def _attempt(
        self, ep: Endpoint, tag: str, pending: list[Message]
    ) -> tuple[bool, ConnectionFailed | None]:
        """Send ``pending`` to ``ep`` over one connection (a kept-alive one found dead is replaced once);
        marks the messages that got through ``done``. Returns whether any did, and the failure if not all."""
        try:
            conn, reused = await self._pool.checkout(ep)
        except ConnectionFailed as refused:
            return False, refused
        progressed, failure = await self._sender.send(conn, tag, pending)
        if failure is not None and reused and not progressed and failure.kind == "lost":
            # The kept-alive connection ended under the request (checkout looked at its socket, so the
            # end came after, or only in answer to it): the receiver may be alive and have ended it while
            # idle, so this is not a failure of the endpoint. What was written on it stays counted as
            # unacked: it may also have been read by a receiver that died before acking (see stats).
            self._stats.stale_connections += 1
            try:
                conn = await self._pool.open(ep)
            except ConnectionFailed as again:
                return False, again
            progressed, failure = await self._sender.send(conn, tag, pending)
        if failure is None:
            await self._pool.checkin(ep, conn)
        return progressed, failure


def _path(p: PathLike[str] | str | None) -> str | None:
    return None if p is None else str(p)
