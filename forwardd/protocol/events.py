"""What the protocol core hands to its caller: plain, slotted classes, one per kind of happening."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from forwardd.model import Chunk
from forwardd.protocol.limits import Limits

__all__ = [
    "EntriesReceived",
    "Event",
    "HandshakeCompleted",
    "HandshakeFailed",
    "Heartbeat",
    "InvalidEntries",
    "PayloadReceived",
    "ProtocolViolation",
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
    acks: int = 0
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


@dataclass(slots=True)
class PayloadReceived:
    """A request too big to finish on the event loop (over ``limits.inline_request_size`` on the wire, or
    once decompressed). Hand it to :func:`forwardd.protocol.finish_payload` in a worker thread: that pure
    function returns the events it stands for, exactly those an inline decoder would have returned, cut
    into chunks of bounded size (the last one carrying the ack). Until they are handled, the events that
    followed it must wait, so that acks and chunks keep their order.

    ``data`` is the whole frame, or (``tag`` set) the payload of a PackedForward whose options were read
    already (``options``, ``chunk_raw``: the raw chunk id); ``size`` is the request's size on the wire.
    """

    data: bytes | bytearray
    size: int
    received_ns: int
    limits: Limits
    tag: str | None = None
    options: dict[bytes, Any] | None = None
    chunk_raw: bytes | None = None
    json: bool = False


@dataclass(slots=True)
class ProtocolViolation:
    """The peer broke the protocol so badly that the connection must close; always the last event.

    ``reason`` is a stable short code for logs and counters (``not_an_array``, ``bad_msgpack``, ...);
    ``reply`` is what to flush to the peer before closing (a failure PONG), if anything. The events before
    it came whole before the broken bytes: they are handled (and acked) before the close.
    """

    reason: str
    detail: str
    reply: bytes = b""


Event = (
    EntriesReceived
    | Rejected
    | Heartbeat
    | HandshakeCompleted
    | HandshakeFailed
    | RawFrame
    | PayloadReceived
    | ProtocolViolation
)
