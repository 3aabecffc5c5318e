"""One server-side forward-protocol connection, sans I/O: bytes in, events out.

Its state is explicit, as h11's is: :class:`ConnState`, moved only by the events it hands out, as
:data:`TRANSITIONS` says. The optional handshake comes first (as wsproto runs its handshake before framing):
while it is pending, the only acceptable request is a PING; anything else earns a failure PONG and a close
(spec item 40). A protocol violation, or a refused PING, closes it: nothing more is read.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping

import msgpack

from forwardd.protocol.decoder import Decoder
from forwardd.protocol.errors import ProtocolError
from forwardd.protocol.events import (
    EntriesReceived,
    Event,
    HandshakeCompleted,
    HandshakeFailed,
    Heartbeat,
    PayloadReceived,
    ProtocolViolation,
    RawFrame,
    Rejected,
)
from forwardd.protocol.handshake import Security, ServerHandshake
from forwardd.protocol.jsonmode import JsonFramer, json_replies
from forwardd.protocol.limits import Limits

__all__ = ["ALLOWED", "TRANSITIONS", "ConnState", "ServerConnection"]


class ConnState(enum.Enum):
    """Where a connection stands."""

    #: Security is on and the PING has not come: heartbeats may, anything else fails the handshake.
    HANDSHAKE = "handshake"
    #: Requests come and go.
    ESTABLISHED = "established"
    #: Broken (a protocol violation) or refused (a failed handshake): nothing more is read.
    CLOSED = "closed"


_H, _E, _C = ConnState.HANDSHAKE, ConnState.ESTABLISHED, ConnState.CLOSED

#: (state, kind of event handed out) -> the state after it; any other event leaves the state as it is.
TRANSITIONS: Mapping[tuple[ConnState, type], ConnState] = {
    (_H, HandshakeCompleted): _E,
    (_H, HandshakeFailed): _C,
    (_H, ProtocolViolation): _C,
    (_E, ProtocolViolation): _C,
}

#: TRANSITIONS by state, keyed by the kind of event alone (an Enum hashes in Python: too slow per event).
_MOVES_IN_HANDSHAKE = {kind: to for (state, kind), to in TRANSITIONS.items() if state is _H}
_MOVES_WHEN_ESTABLISHED = {kind: to for (state, kind), to in TRANSITIONS.items() if state is _E}

#: The events that can come out in each state (checked as they do).
ALLOWED: Mapping[ConnState, frozenset[type]] = {
    _H: frozenset({HandshakeCompleted, HandshakeFailed, ProtocolViolation}),
    _E: frozenset({EntriesReceived, Rejected, Heartbeat, PayloadReceived, ProtocolViolation}),
    _C: frozenset(),
}


class ServerConnection:
    """Feed it what the peer sent; it returns events. Replies to send are in the events (acks, PONGs)
    and in :meth:`initial_bytes` (the HELO)."""

    __slots__ = (
        "__weakref__", "_clock_ns", "_first", "_json", "_json_allowed", "decoder", "handshake",
        "peer_hostname", "state", "username",
    )  # fmt: skip

    def __init__(
        self,
        *,
        limits: Limits | None = None,
        security: Security | None = None,
        peer_address: str | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        json_mode: bool = False,
    ) -> None:
        self.decoder = Decoder(limits)
        #: JSON mode (see :mod:`forwardd.protocol.jsonmode`): allowed, then decided by the first byte.
        self._json_allowed = json_mode and security is None
        self._json: JsonFramer | None = None
        self._first = True
        self._clock_ns = clock_ns
        self.handshake = ServerHandshake(security, peer_address) if security is not None else None
        self.state = ConnState.ESTABLISHED if self.handshake is None else ConnState.HANDSHAKE
        if self.state is ConnState.HANDSHAKE:  # an unauthenticated peer gets a PING's worth of frame
            self.decoder.expect_raw_frame = True
            limits = self.decoder.limits
            self.decoder.framer.frame_limit = min(limits.max_handshake_frame_size, limits.max_frame_size)
        self.peer_hostname: str | None = None
        self.username: str | None = None

    @property
    def established(self) -> bool:
        return self.state is _E

    def initial_bytes(self) -> bytes:
        """What the server says first: the HELO when security is on, else nothing."""
        return self.handshake.helo() if self.handshake is not None else b""

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held (bounded by the frame limit), JSON mode included."""
        return self.decoder.buffered + (self._json.buffered if self._json is not None else 0)

    @property
    def json(self) -> bool:
        """Whether this connection speaks JSON (its first byte was ``[`` or ``{`` and JSON mode is on)."""
        return self._json is not None

    def receive_data(self, data: bytes) -> list[Event]:
        """Events completed by ``data``. A :class:`ProtocolViolation`, always last, means the connection
        must be closed (after handling the events before it)."""
        state: ConnState = self.state
        if state is _C:
            return []
        if self._first and data:
            self._first = False
            if self._json_allowed and data[:1] in (b"[", b"{"):
                self._json = JsonFramer(self.decoder.limits.max_frame_size)
                self.decoder.json = True
        if self._json is not None:
            events = self._receive_json(data)
        else:
            events = self.decoder.feed(data, self._clock_ns())
        # The state follows what is handed out, as TRANSITIONS says. Once established, only a violation
        # moves it, and a violation is always the last event: the last one is all there is to look at.
        if state is _H:
            if events:
                events = self._handshake(events)
            for ev in events:
                state = (_MOVES_IN_HANDSHAKE if state is _H else _MOVES_WHEN_ESTABLISHED).get(type(ev), state)
        elif events and type(events[-1]) in _MOVES_WHEN_ESTABLISHED:
            state = _MOVES_WHEN_ESTABLISHED[type(events[-1])]
        else:
            return events
        if state is not self.state:
            self.state = state
            if state is _C:
                self._release()
        return events

    def _receive_json(self, data: bytes) -> list[Event]:
        assert self._json is not None
        values, error = self._json.feed(data)
        violation = ProtocolViolation(error.reason, error.detail) if error is not None else None
        requests: list[bytes] = []
        for value in values:
            try:
                requests.append(JsonFramer.to_msgpack(value))
            except ProtocolError as exc:
                violation = ProtocolViolation(exc.reason, exc.detail)
                break
        events = self.decoder.feed(b"".join(requests), self._clock_ns()) if requests else []
        json_replies(events)
        if violation is not None and not (events and type(events[-1]) is ProtocolViolation):
            events.append(violation)  # what came whole before it is still handed on
        return events

    def _release(self) -> None:
        """Nothing more is read: what the decoders hold is worthless now."""
        self.decoder = Decoder(self.decoder.limits)
        if self._json is not None:
            self._json = JsonFramer(self.decoder.limits.max_frame_size)

    def _handshake(self, events: list[Event]) -> list[Event]:
        """The events of a read while the PING is awaited, as the handshake turns them: heartbeats are
        dropped, the PING becomes HandshakeCompleted or HandshakeFailed, anything else before it fails the
        handshake; what follows a good PING in the same read goes on as requests."""
        hs = self.handshake
        assert hs is not None
        out: list[Event] = []
        for i, ev in enumerate(events):
            if isinstance(ev, Heartbeat):
                continue
            if isinstance(ev, ProtocolViolation):
                out.append(ev)
                return out
            if not isinstance(ev, RawFrame):
                reason = "PING expected before any event"
                out.append(HandshakeFailed(reason, _pong_failure(reason)))
                return out
            try:
                ping = msgpack.unpackb(ev.data, raw=True)
            except (ValueError, msgpack.UnpackException):
                ping = None
            verdict = hs.check_ping(ping)
            if not verdict.ok:
                out.append(HandshakeFailed(verdict.reason, verdict.reply))
                return out
            self.peer_hostname = verdict.hostname
            self.username = verdict.username
            out.append(HandshakeCompleted(verdict.hostname, verdict.username, verdict.reply))
            out.extend(events[i + 1 :])
            return out
        return out


def _pong_failure(reason: str) -> bytes:
    return bytes(msgpack.packb(["PONG", False, reason, "", ""]))
