"""The forward protocol, sans I/O: no sockets, no asyncio. Feed bytes, get events and replies."""

from forwardd.protocol.connection import ServerConnection
from forwardd.protocol.decoder import Decoder, ack_reply
from forwardd.protocol.errors import FrameTooLarge, ProtocolError
from forwardd.protocol.events import (
    EntriesReceived,
    Event,
    HandshakeCompleted,
    HandshakeFailed,
    Heartbeat,
    InvalidEntries,
    PayloadReceived,
    ProtocolViolation,
    RawFrame,
    Rejected,
)
from forwardd.protocol.handshake import ClientPolicy, Security, User
from forwardd.protocol.jobs import finish_payload
from forwardd.protocol.limits import Limits

__all__ = [
    "ClientPolicy",
    "Decoder",
    "EntriesReceived",
    "Event",
    "FrameTooLarge",
    "HandshakeCompleted",
    "HandshakeFailed",
    "Heartbeat",
    "InvalidEntries",
    "Limits",
    "PayloadReceived",
    "ProtocolError",
    "ProtocolViolation",
    "RawFrame",
    "Rejected",
    "Security",
    "ServerConnection",
    "User",
    "ack_reply",
    "finish_payload",
]
