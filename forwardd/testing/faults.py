"""Faults the embedded test server injects for the clients under test, through the session's hook
(:class:`forwardd.server.session.SessionHooks`): production sessions have no hook, and the protocol core and
the server know nothing of these faults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from forwardd.protocol import ServerConnection
from forwardd.protocol.handshake import PingVerdict, ServerHandshake

__all__ = ["Faults", "RefusingHandshake"]


class RefusingHandshake(ServerHandshake):
    """Answers every well-formed PING with a failure PONG ("refused by configuration")."""

    def check_ping(self, msg: Any) -> PingVerdict:
        verdict = super().check_ping(msg)
        if verdict.reason == "PING message is malformed":
            return verdict
        reason = "refused by configuration"
        return PingVerdict(False, reason, bytes(msgpack.packb(["PONG", False, reason, "", ""])))


@dataclass(frozen=True, slots=True)
class Faults:
    """``close_after``: close each connection after that many requests (after acking them);
    ``refuse_handshake``: answer every PING with a failure PONG."""

    close_after: int | None = None
    refuse_handshake: bool = False

    def begun(self, conn: ServerConnection) -> None:
        if self.close_after is not None:
            conn.decoder.merge_messages = False  # the fault counts requests one by one
        hs = conn.handshake
        if self.refuse_handshake and hs is not None:
            conn.handshake = RefusingHandshake(hs.security, hs.peer_address)

    def closes_after(self, requests: int) -> bool:
        return self.close_after is not None and requests >= self.close_after
