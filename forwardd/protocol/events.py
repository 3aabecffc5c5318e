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
    "InvalidEntries",
    "RawFrame",
    "Rejected",
]


@dataclass(frozen=True, slots=True)
class InvalidEntries:
    """Entries of an accepted chunk that decoding will drop, found at the edge so that the loss is counted
    and logged where the peer is known: how many (``bad_times`` of them for their time), and the first one's
    reason and bytes (``sample``: hex, safe to log whatever they hold). A broken tail (bytes after the last
    whole entry) counts as one, with reason ``broken_tail``."""

    count: int
    bad_times: int
    reason: str
    sample: str


@dataclass(slots=True)
class EntriesReceived:
    """A chunk of events arrived. ``ack`` is the reply to send once the chunk is accepted (None: none is
    due); ``mode`` names the carrier mode for metrics; ``size`` is the frames' size on the wire.

    ``requests`` counts the requests merged into this chunk (consecutive Message-mode requests of one tag
    in one read, see the decoder) and ``acks`` how many of them asked for an ack: ``ack`` is then their
    acks, back to back, in request order. ``invalid`` is set when some entries will be dropped.
    """

    chunk: Chunk
    ack: bytes | None
    mode: str
    size: int
    requests: int = 1
    acks: int = 1
    invalid: InvalidEntries | None = None


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
