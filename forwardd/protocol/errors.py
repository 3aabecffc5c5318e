"""The one error a peer can cause: :class:`ProtocolError`. Any other exception out of the protocol core is
a bug (the h11 rule), which the fuzz target and the property tests hold us to."""

from __future__ import annotations

from typing import Any

__all__ = ["FrameTooLarge", "ProtocolError"]


class ProtocolError(Exception):
    """The peer broke the protocol so badly that the connection must be closed.

    ``reason`` is a stable short code for logs and counters (``not_an_array``, ``bad_msgpack``, ...);
    ``reply`` is what to flush to the peer before closing (a failure PONG), if anything.
    ``events`` are the events completed by the same read before the broken bytes: handle (and ack) them
    before closing, or what arrived intact is lost only because garbage followed it in one read.
    """

    def __init__(self, reason: str, detail: str = "", *, reply: bytes = b"") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.reply = reply
        self.events: list[Any] = []


class FrameTooLarge(ProtocolError):
    """A frame grew past the frame limit and could not be skipped safely."""
