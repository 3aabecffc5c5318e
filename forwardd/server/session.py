"""One client connection: socket bytes → protocol core → ingest → acks in request order.

The session is an ``asyncio.Protocol`` (callbacks, no task per connection): it feeds what it reads to the
sans-IO :class:`~forwardd.protocol.ServerConnection`, hands each chunk to its source's ingest and keeps, in
request order, what it owes the client. An ack is written only when the ingest's awaitable has resolved
(the chunk is committed where it was routed), and never before the acks of earlier requests.

Back-pressure: while more than ``max_inflight`` chunks wait for acceptance, or the peer does not read
what we write, the session stops reading the socket. The kernel's buffers fill and the client blocks; no
memory grows here and nothing is dropped.

The session is one object (thousands sit idle on an aggregator: one slotted instance each) made of parts
by role, each a mixin in its own module: :mod:`~forwardd.server.requests` (what is read becomes ingest calls
and owed acks: the hot path), :mod:`~forwardd.server.acks` (acks in order), :mod:`~forwardd.server.offload`
(big requests in a worker thread), :mod:`~forwardd.server.control` (handshake outcome, protocol faults,
timeouts). This module is the connection's life: asyncio's callbacks, TLS, back-pressure, the stop.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from forwardd.protocol import Event, ServerConnection
from forwardd.server.acks import AckFlow, Pending, retrieve
from forwardd.server.budget import BufferBudget
from forwardd.server.control import Control
from forwardd.server.logs import EdgeLog
from forwardd.server.offload import Offload
from forwardd.server.requests import Requests
from forwardd.server.settings import SessionHooks, SessionSettings
from forwardd.server.stats import SourceStats
from forwardd.server.tls import handshake_failure, run_now
from forwardd.sink import Gate, Ingest

__all__ = ["Session", "SessionHooks", "SessionSettings"]

#: The longest a stopping session reads on, waiting for its peer to pause (see Session.drain).
DRAIN_READ_ON = 1.0
#: Bytes a connection reads before it lets the others have a turn of the loop (see Session._turn_over).
TURN_READ_BYTES = 256 * 1024


class Session(Requests, Control, AckFlow, Offload, asyncio.Protocol):
    """A forward-protocol connection: its life (TLS, the protocol core, reading or not, closing, the stop);
    what it reads is handled by :class:`Requests`, what ends it by :class:`Control`, its acks by
    :class:`AckFlow`, big requests by :class:`Offload`."""

    # Thousands of them sit idle on an aggregator: slots keep each small (and their memory comes back
    # whole when they close, with less left scattered between the objects that stay).
    __slots__ = (
        "__weakref__", "_backlog", "_budget", "_budget_told", "_budget_wait", "_bytes_in", "_closing",
        "_drained", "_draining", "_early", "_gate", "_gate_wait", "_job", "_job_bytes", "_last_activity",
        "_log", "_lost", "_on_close", "_paused_reading", "_paused_writing", "_pending", "_requests",
        "_resolver", "_responded", "_timer", "_tls", "_tls_started", "_tls_step", "_transform", "_turn_bytes",
        "_turn_wait", "_watched", "conn",
        "ingest", "peer", "peer_address", "peer_hostname", "settings", "stats", "transport",
    )  # fmt: skip

    def __init__(
        self,
        settings: SessionSettings,
        ingest: Ingest,
        stats: SourceStats,
        on_close: Callable[[Session], None],
        edgelog: EdgeLog,
        budget: BufferBudget | None = None,
        tls: ssl.SSLContext | None = None,
        gate: Gate | None = None,
    ) -> None:
        self.settings = settings
        self.ingest = ingest
        self.stats = stats
        self._on_close = on_close
        self._log = edgelog
        self.transport: asyncio.Transport | None = None
        self.peer = "unknown"
        self.peer_address: str | None = None
        self.peer_hostname: str | None = None
        self.conn: ServerConnection | None = None
        self._pending: deque[Pending] = deque()
        #: The waiter the ack flush is registered on (see AckFlow._flush_acks).
        self._watched: asyncio.Future[Any] | None = None
        self._paused_reading = False
        self._paused_writing = False
        self._closing = False
        self._draining = False
        self._bytes_in = 0
        self._requests = 0
        self._responded = False
        self._last_activity = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._resolver: asyncio.Task[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._lost: asyncio.Future[None] | None = None
        #: A big request being finished in a worker thread, and the events read after it, which wait.
        self._job: asyncio.Future[list[Event]] | None = None
        self._job_bytes = 0
        self._backlog: list[Event] = []
        #: The listener's budget of buffered bytes, and whether it asked this session to stop reading.
        self._budget = budget
        self._budget_wait = False
        self._budget_told = 0
        #: The ingest path's back-pressure across connections (see Gate), and whether it stops this one.
        self._gate = gate
        self._gate_wait = False
        #: Bytes read since this connection last let a turn of the loop go by, and whether it waits for one.
        self._turn_bytes = 0
        self._turn_wait = False
        #: TLS: the context, and the handshake in progress (the forward protocol begins after it).
        self._tls = tls
        self._tls_step: Callable[[], None] | None = None
        self._tls_started = 0.0
        self._early = b""  # what the TLS layer handed over before the forward protocol began
        s = settings
        #: Whether chunks are changed per connection (tag, source address or hostname in the records).
        self._transform = bool(s.tag or s.add_tag_prefix or s.source_address_key or s.source_hostname_key)
        # Nothing here may refer back to the session (no bound method, closure or exception kept in an
        # attribute): a closed session, and the buffers of its decoder, must go when it closes, not when the
        # cycle collector runs (tests/server/test_memory.py holds this with the collector off).

    # --- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport; they have its methods.
        self.transport = transport  # type: ignore[assignment]
        self.stats.connections += 1
        self.stats.open_connections += 1
        if self._closing:
            # The listener stopped between accepting this connection and now (drain() found no transport):
            # close it, or nothing ever will.
            transport.abort()  # type: ignore[attr-defined]
            return
        peername = transport.get_extra_info("peername")
        if isinstance(peername, tuple) and peername:
            self.peer_address = str(peername[0])
            self.peer = f"{peername[0]}:{peername[1]}"
        else:
            self.peer = f"unix:{transport.get_extra_info('sockname') or ''}"
        if self._tls is not None:
            # TLS is done here, not by the server: a handshake that fails or times out then surfaces as an
            # exception we can log and count (asyncio and uvloop only log it at debug level). start_tls
            # must take the transport over now: uvloop starts reading as soon as this method returns.
            loop = asyncio.get_running_loop()
            timeout = self.settings.handshake_timeout
            self._tls_started = loop.time()
            coro = loop.start_tls(
                transport,  # type: ignore[arg-type]
                self,
                self._tls,
                server_side=True,
                ssl_handshake_timeout=timeout if timeout > 0 else None,
            )
            self._tls_step = run_now(coro, self._tls_done)
            return
        self._begin()

    def _tls_done(self, secured: Any, failure: BaseException | None) -> None:
        self._tls_step = None
        alive = secured is not None and not secured.is_closing() and self.transport is not None
        if alive and not self._closing:
            self.transport = secured
            self._begin()
            if self._early:
                early, self._early = self._early, b""
                self.data_received(early)
            return
        if self.transport is not None:
            self.transport.close()
        if self._closing:
            return  # the listener stops: not the peer's doing
        loop = asyncio.get_running_loop()
        timeout = self.settings.handshake_timeout
        event, reason = handshake_failure(failure, loop.time() - self._tls_started, timeout)
        self.stats.tls_failures += 1
        self._log.limited("warning", event, listener=self.settings.listener, peer=self.peer, reason=reason)

    def _begin(self) -> None:
        """The forward protocol begins (after the TLS handshake, if any)."""
        transport = self.transport
        assert transport is not None
        s = self.settings
        self.conn = ServerConnection(
            limits=s.limits, security=s.security, peer_address=self.peer_address, json_mode=s.json_mode
        )
        if s.hooks is not None:
            s.hooks.begun(self.conn)
        hello = self.conn.initial_bytes()
        if hello:
            transport.write(hello)
        loop = asyncio.get_running_loop()
        if s.security is not None and s.handshake_timeout > 0:
            self._timer = loop.call_later(s.handshake_timeout, self._handshake_timeout)
        elif s.idle_timeout > 0:
            self._timer = loop.call_later(s.idle_timeout, self._idle_check)
        if s.source_hostname_key is not None and self.peer_address is not None:
            self._resolver = loop.create_task(self._resolve_hostname())

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.open_connections -= 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._resolver is not None:
            self._resolver.cancel()
            self._resolver = None
        if self.conn is None:
            pass  # it never began (TLS handshake not done, listener stopping): said elsewhere
        elif self._bytes_in == 0 and exc is None:
            # Fluentd's transport heartbeat: connect, close, nothing said. Not worth a log line.
            self.stats.heartbeats += 1
        elif self.conn.buffered:
            self._log.limited(
                "info",
                "conn.closed_mid_frame",
                listener=self.settings.listener,
                peer=self.peer,
                buffered_bytes=self.conn.buffered,
            )
        unacked = sum(1 for p in self._pending if p.ack is not None)
        if unacked:
            # The chunks stay with the outputs; the client will resend them (at-least-once).
            self._log.limited(
                "info",
                "conn.closed_with_unsent_acks",
                listener=self.settings.listener,
                peer=self.peer,
                unsent_acks=unacked,
            )
        for p in self._pending:
            if p.waiter is not None:
                # Nobody will read the outcome now; a rejection at shutdown is expected, not an error.
                # The waiter may outlive the connection (an output that is down): it must not keep the
                # session alive with it.
                p.waiter.remove_done_callback(self._flush_acks_cb)
                p.waiter.add_done_callback(retrieve)
        self._pending.clear()
        self._watched = None
        self._backlog = []
        if self._job is not None:
            self._job.remove_done_callback(self._job_done)  # its result is dropped: the client resends
            self._job = None
        self.transport = None
        self.conn = None  # the decoder and its buffers go now
        self._job_bytes = 0
        if self._budget is not None:
            self._budget.release(self)
        for fut in (self._drained, self._lost):
            if fut is not None and not fut.done():
                fut.set_result(None)
        self._drained = self._lost = None
        self._on_close(self)

    def pause_writing(self) -> None:
        # The peer does not read its acks: stop reading its requests until it does.
        self._paused_writing = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None or self._closing:
            if self._tls_step is not None and not self._closing:
                # A TLS 1.3 client sends its first request right after its Finished: the TLS layer hands
                # it over in the same read that completes the handshake, before _tls_done has run.
                self._early += data
            return
        self._bytes_in += len(data)
        self._turn_bytes += len(data)
        self._last_activity = time.monotonic()
        # Requests completed before a violation in the same read are still handed on and acked.
        events = conn.receive_data(data)
        self.stats.bytes += len(data)
        if self._job is not None or self._backlog:
            self._backlog += events  # they wait for the request before them
        else:
            self._handle(events)
        self._account()
        if self._turn_bytes >= TURN_READ_BYTES and not self._turn_wait:
            self._turn_wait = True
            asyncio.get_running_loop().call_soon(self._turn_over)
            self._update_reading()

    def _turn_over(self) -> None:
        """A turn of the loop went by: read again. libuv reads a readable socket up to 32 times (256 KiB
        each) before it serves the next: 20 peers streaming big frames made a turn of the loop 100-400 ms
        long (every other connection's acks waited that long). A connection now reads at most
        :data:`TURN_READ_BYTES` (then up to one read more) before the others have their turn."""
        self._turn_bytes = 0
        self._turn_wait = False
        self._update_reading()

    def _account(self) -> None:
        """Tell the listener's budget what this connection holds now; it may ask it to stop reading."""
        budget, conn = self._budget, self.conn
        if budget is None or conn is None:
            return
        framer = conn.decoder.framer
        # Between frames (requests that came whole, nearly always) it holds nothing: no need to ask more.
        held = self._job_bytes + (conn.buffered if framer.fed != framer.start or conn.json else 0)
        if held == self._budget_told:
            return  # nothing new to say (nearly always 0 and 0: requests that came whole)
        self._budget_told = held
        wait = not budget.update(self, held)
        if wait != self._budget_wait:
            self._budget_wait = wait
            self._update_reading()

    def budget_resumed(self) -> None:
        """The listener's budget has room again."""
        self._budget_wait = False
        self._update_reading()

    def eof_received(self) -> bool | None:
        # Half-close: the client is done sending but may still wait for acks.
        if self._pending or self._job is not None or self._backlog:
            self._draining = True
            return True
        return None

    def gate_opened(self) -> None:
        """The ingest path's gate is open again."""
        self._gate_wait = False
        self._update_reading()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None:
            return
        gate = self._gate
        if gate is not None and gate.closed and self._pending and not self._gate_wait:
            # Only a connection that owes acks waits: one that owes none has nothing parked to wait for.
            self._gate_wait = True
            gate.wait(self)
        want_pause = (
            self._paused_writing
            or len(self._pending) >= self.settings.max_inflight
            or self._job is not None
            or bool(self._backlog)  # a big request's chunks still being handed on
            or self._budget_wait
            or self._gate_wait
            or self._turn_wait
        )
        if want_pause and not self._paused_reading:
            self._paused_reading = True
            self.stats.backpressure_pauses += 1
            transport.pause_reading()
        elif not want_pause and self._paused_reading and not self._closing:
            self._paused_reading = False
            transport.resume_reading()

    # --- per-connection record changes (made in Requests._transformed) --------------------------------

    async def _resolve_hostname(self) -> None:
        if self.peer_address is None:
            return
        try:
            host, _ = await asyncio.get_running_loop().getnameinfo((self.peer_address, 0))
            self.peer_hostname = host
        except OSError:
            self.peer_hostname = self.peer_address

    # --- shutdown ---------------------------------------------------------------------------------------

    async def drain(self, quiet: float = 0.2, longest: float = DRAIN_READ_ON) -> None:
        """Read on until the peer has been quiet for ``quiet`` seconds (or has closed), for at most
        ``longest`` seconds, then stop reading, send the acks still owed as their chunks are accepted, and
        close.

        Reading on matters for clients that do not ask for acks: what they sent just before the stop is
        still in the socket buffer, and has no other way to be accepted. The bound matters for clients that
        never pause (a container that logs all the time, with acks): without it the stop read on until its
        deadline and then aborted the connection, cutting acks already owed (the client resent those
        events: duplicates). What such a client sends after the bound is not read, so not acked, and it
        sends it again wherever it reconnects.
        """
        until = time.monotonic() + longest
        while self.transport is not None and not self._closing:
            now = time.monotonic()
            idle = now - self._last_activity
            if idle >= quiet or now >= until:
                break
            await asyncio.sleep(min(quiet - idle, until - now))
        self._closing = True
        if self.transport is None:
            return
        self.transport.pause_reading()
        if self._pending or self._job is not None or self._backlog:
            self._drained = asyncio.get_running_loop().create_future()
            self._flush_acks()
            await self._drained
        if self.transport is not None:
            # close() flushes what is still buffered (the last acks) before the connection is lost: wait
            # for that, or the listener's abort after the drain would discard it.
            self._lost = asyncio.get_running_loop().create_future()
            self.transport.close()
            await self._lost

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
