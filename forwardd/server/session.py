"""One client connection: socket bytes → protocol core → ingest → acks in request order.

The session is an ``asyncio.Protocol`` (callbacks, no task per connection): it feeds what it reads to the
sans-IO :class:`~forwardd.protocol.ServerConnection`, hands each chunk to its source's ingest and keeps, in
request order, what it owes the client. An ack is written only when the ingest's awaitable has resolved
(the chunk is committed where it was routed), and never before the acks of earlier requests.

Back-pressure: while more than ``max_inflight`` chunks wait for acceptance, or the peer does not read
what we write, the session stops reading the socket. The kernel's buffers fill and the client blocks; no
memory grows here and nothing is dropped.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from forwardd.errors import ChunkRejected
from forwardd.model import Chunk
from forwardd.protocol import (
    EntriesReceived,
    Event,
    HandshakeCompleted,
    HandshakeFailed,
    Heartbeat,
    PayloadReceived,
    ProtocolViolation,
    Rejected,
    ServerConnection,
)
from forwardd.server.acks import AckFlow, Pending, retrieve
from forwardd.server.budget import BufferBudget
from forwardd.server.logs import EdgeLog
from forwardd.server.offload import CHUNK_WEIGHT, TURN_BUDGET, Offload
from forwardd.server.settings import SessionHooks, SessionSettings
from forwardd.server.stats import SourceStats
from forwardd.server.tls import handshake_failure, run_now
from forwardd.sink import Ingest

__all__ = ["Session", "SessionHooks", "SessionSettings"]

#: Events that are no request: deny_keepalive waits for a request's response before it closes.
_NOT_REQUESTS = (HandshakeCompleted, Heartbeat)


#: The longest a stopping session reads on, waiting for its peer to pause (see Session.drain).
DRAIN_READ_ON = 1.0


class Session(AckFlow, Offload, asyncio.Protocol):
    """A forward-protocol connection."""

    # Thousands of them sit idle on an aggregator: slots keep each small (and their memory comes back
    # whole when they close, with less left scattered between the objects that stay).
    __slots__ = (
        "__weakref__", "_backlog", "_budget", "_budget_told", "_budget_wait", "_bytes_in", "_closing",
        "_drained", "_draining", "_early", "_job", "_job_bytes", "_last_activity", "_log", "_lost",
        "_on_close", "_paused_reading", "_paused_writing", "_pending", "_requests", "_resolver",
        "_responded", "_timer", "_tls", "_tls_started", "_tls_step", "_transform", "conn", "ingest", "peer",
        "peer_address", "peer_hostname", "settings", "stats", "transport",
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
        self._last_activity = time.monotonic()
        # Requests completed before a violation in the same read are still handed on and acked.
        events = conn.receive_data(data)
        self.stats.bytes += len(data)
        if self._job is not None or self._backlog:
            self._backlog += events  # they wait for the request before them
        else:
            self._handle(events)
        self._account()

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

    def _handle(self, events: list[Event]) -> None:
        """Handle events in request order. A big request goes to a worker thread; the events after it
        wait in the backlog until its own events are handled (acks and chunks keep their order)."""
        stats = self.stats
        pending = self._pending
        hooks = self.settings.hooks
        warn_size = self.settings.limits.chunk_size_warn
        received = self._last_activity  # the read that completed these requests (ack latency)
        spent = 0
        for i, ev in enumerate(events):
            if type(ev) is EntriesReceived:
                if self._draining:
                    break  # closing after a fault: what follows is not read, not acked, resent
                chunk = ev.chunk
                if spent >= TURN_BUDGET:
                    self._backlog = events[i:]  # the rest in the next turns of the loop
                    asyncio.get_running_loop().call_soon(self._continue)
                    self._update_reading()
                    break
                spent += len(chunk.entries) + CHUNK_WEIGHT
                stats.chunks += ev.requests
                self._requests += ev.requests
                if hooks is not None and hooks.closes_after(self._requests):
                    self._draining = True
                    self._closing = True
                    if self.transport is not None:
                        self.transport.pause_reading()
                stats.events += chunk.count
                if ev.invalid is not None:
                    self._invalid_entries(ev)
                    if not chunk.count:  # nothing in it could be delivered: acked and dropped (counted)
                        if ev.ack is not None:
                            pending.append(Pending(None, ev.ack, chunk.tag, 0, ev.acks, received))
                        continue
                if self._transform:
                    chunk = self._transformed(chunk)
                try:
                    waiter = self.ingest(chunk)
                except ChunkRejected as exc:
                    self._rejected_by_pipeline(exc, chunk.tag, chunk.count, ev.ack)
                    continue
                if waiter is None:
                    if ev.ack is not None:
                        pending.append(Pending(None, ev.ack, chunk.tag, chunk.count, ev.acks, received))
                else:
                    fut = waiter if isinstance(waiter, asyncio.Future) else asyncio.ensure_future(waiter)
                    pending.append(Pending(fut, ev.ack, chunk.tag, chunk.count, ev.acks, received))
                if ev.size > warn_size:
                    self._log.limited(
                        "warning",
                        "chunk.large",
                        listener=self.settings.listener,
                        peer=self.peer,
                        tag=chunk.tag,
                        size=ev.size,
                    )
            elif type(ev) is PayloadReceived:
                if self._draining:
                    break
                self._start_job(ev)
                self._backlog = events[i + 1 :]
                break
            elif type(ev) is Heartbeat:
                stats.heartbeats += 1
            elif type(ev) is Rejected:
                self._rejected(ev)
            elif type(ev) is HandshakeCompleted:
                self._handshake_completed(ev)
            elif type(ev) is HandshakeFailed:
                self._handshake_failed(ev)
                return
            elif type(ev) is ProtocolViolation:
                self._protocol_error(ev)
                return
        if pending:
            self._flush_acks()
        elif self._idle_after(events):
            self._close_after_response()

    def _idle_after(self, events: list[Event]) -> bool:
        """Whether, nothing being owed, the connection is to close after these events."""
        if self._job is not None or self._backlog:
            return False
        if self._draining:
            return True
        # deny_keepalive closes after the first request's response; the PONG (or a heartbeat) is none.
        return self.settings.deny_keepalive and any(type(ev) not in _NOT_REQUESTS for ev in events)

    def eof_received(self) -> bool | None:
        # Half-close: the client is done sending but may still wait for acks.
        if self._pending or self._job is not None or self._backlog:
            self._draining = True
            return True
        return None

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None:
            return
        want_pause = (
            self._paused_writing
            or len(self._pending) >= self.settings.max_inflight
            or self._job is not None
            or bool(self._backlog)  # a big request's chunks still being handed on
            or self._budget_wait
        )
        if want_pause and not self._paused_reading:
            self._paused_reading = True
            self.stats.backpressure_pauses += 1
            transport.pause_reading()
        elif not want_pause and self._paused_reading and not self._closing:
            self._paused_reading = False
            transport.resume_reading()

    # --- events other than entries -------------------------------------------------------------------

    def _rejected(self, ev: Rejected) -> None:
        self.stats.rejected += 1
        self._log.limited(
            "warning",
            "chunk.rejected",
            listener=self.settings.listener,
            peer=self.peer,
            tag=ev.tag,
            reason=ev.reason,
            detail=ev.detail,
            size=ev.size,
            acked=ev.ack is not None,
        )
        if ev.ack is not None:
            # Acked and dropped: no retry can make it valid, and an unacked client resends forever.
            self._pending.append(Pending(None, ev.ack, ev.tag or "", 0))

    def _invalid_entries(self, ev: EntriesReceived) -> None:
        """Entries that decoding will drop: counted and shown (with a sample) where the peer is known."""
        bad = ev.invalid
        assert bad is not None
        self.stats.invalid_entries += bad.count
        self.stats.invalid_times += bad.bad_times
        self._log.limited(
            "warning",
            "chunk.invalid_entries",
            listener=self.settings.listener,
            peer=self.peer,
            tag=ev.chunk.tag,
            invalid=bad.count,
            bad_times=bad.bad_times,
            events=ev.chunk.count,
            reason=bad.reason,
            sample=bad.sample,
        )

    def _handshake_completed(self, ev: HandshakeCompleted) -> None:
        assert self.transport is not None
        self.transport.write(ev.reply)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.settings.idle_timeout > 0:
            self._timer = asyncio.get_running_loop().call_later(self.settings.idle_timeout, self._idle_check)
        self._log.log(
            "debug",
            "handshake.ok",
            listener=self.settings.listener,
            peer=self.peer,
            hostname=ev.hostname,
            username=ev.username or None,
        )

    def _handshake_failed(self, ev: HandshakeFailed) -> None:
        self.stats.handshake_failures += 1
        self._log.limited(
            "warning", "handshake.failed", listener=self.settings.listener, peer=self.peer, reason=ev.reason
        )
        if self.transport is not None:
            self.transport.write(ev.reply)
        self._close_after_response()

    def _protocol_error(self, exc: ProtocolViolation) -> None:
        self.stats.protocol_errors += 1
        self._log.limited(
            "warning",
            "conn.protocol_error",
            listener=self.settings.listener,
            peer=self.peer,
            reason=exc.reason,
            detail=exc.detail,
            bytes_received=self._bytes_in,
        )
        if self.transport is not None:
            if exc.reply:
                self.transport.write(exc.reply)
            # Acks already owed for chunks accepted before the error still go out.
            self._closing = True
            self._draining = True
            if not self._pending:
                self._close_after_response()
            else:
                self.transport.pause_reading()
                self._flush_acks()

    def _close_after_response(self) -> None:
        """Close once what was written is flushed (the failure PONG must reach the client)."""
        self._closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _handshake_timeout(self) -> None:
        if self.conn is not None and not self.conn.established and self.transport is not None:
            self._log.limited(
                "warning",
                "handshake.timeout",
                listener=self.settings.listener,
                peer=self.peer,
                timeout=self.settings.handshake_timeout,
            )
            self.transport.abort()

    def _idle_check(self) -> None:
        if self.transport is None:
            return
        idle = self.settings.idle_timeout
        quiet = time.monotonic() - self._last_activity
        if quiet >= idle and not self._pending:
            self._log.limited(
                "info", "conn.idle_timeout", listener=self.settings.listener, peer=self.peer, idle=idle
            )
            self.transport.close()
            return
        self._timer = asyncio.get_running_loop().call_later(max(idle - quiet, 0.05), self._idle_check)

    # --- per-connection record changes ----------------------------------------------------------------

    def _transformed(self, chunk: Chunk) -> Chunk:
        s = self.settings
        if s.tag is not None:
            chunk = chunk.with_tag(s.tag)
        elif s.add_tag_prefix:
            chunk = chunk.with_tag(f"{s.add_tag_prefix}.{chunk.tag}")
        extra: dict[str, Any] = {}
        if s.source_address_key:
            extra[s.source_address_key] = self.peer_address or self.peer
        if s.source_hostname_key:
            extra[s.source_hostname_key] = self.peer_hostname or self.peer_address or self.peer
        if extra:
            chunk = chunk.map_records(lambda r: {**r, **extra})
        return chunk

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
