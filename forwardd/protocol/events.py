"""What the protocol core hands to its caller: plain, slotted classes, one per kind of happening."""

from __future__ import annotations

from dataclasses import dataclass

from forwardd.model import Chunk

__all__ = [
    "EntriesReceived",
    "Event",
    "HandshakeCompleted",
    "HandshakeFailed",
    "Heartbeat",
    "RawFrame",
    "Rejected",
]


@dataclass(slots=True)
class EntriesReceived:
    """A chunk of events arrived. ``ack`` is the reply to send once the chunk is accepted (None: none is
    due); ``mode`` names the carrier mode for metrics; ``size`` is the frames' size on the wire.

    ``requests`` counts the requests merged into this chunk (consecutive Message-mode requests of one tag
    in one read, see the decoder) and ``acks`` how many of them asked for an ack: ``ack`` is then their
    acks, back to back, in request order.
    """

    chunk: Chunk
    ack: bytes | None
    mode: str
    size: int
    requests: int = 1
    acks: int = 1


@dataclass(slots=True)
class Rejected:
    """A well-framed request that can never be accepted (unknown compression, a body that is not a map,
    an oversized frame). ``ack`` is set when the client asked for one: it is sent anyway so the client
    stops resending what no retry can fix; the caller logs and counts the loss."""

    reason: str
    detail: str
    tag: str | None
    ack: bytes | None
    size: int


@dataclass(slots=True)
class Heartbeat:
    """A top-level ``nil``: the peer checks that we are alive; nothing is sent back."""


@dataclass(slots=True)
class HandshakeCompleted:
    """The PING was good; ``reply`` (the PONG) must be sent."""

    hostname: str
    username: str
    reply: bytes


@dataclass(slots=True)
class HandshakeFailed:
    """The PING was bad; ``reply`` (a failure PONG) must be flushed, then the connection closed."""

    reason: str
    reply: bytes


@dataclass(slots=True)
class RawFrame:
    """A whole top-level array, not interpreted: the PING while a handshake is pending."""

    data: bytes


Event = EntriesReceived | Rejected | Heartbeat | HandshakeCompleted | HandshakeFailed | RawFrame
