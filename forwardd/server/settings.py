"""What a listener tells each of its sessions, and the hook through which forwardd.testing injects faults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from forwardd.protocol import Limits, Security, ServerConnection

__all__ = ["SessionHooks", "SessionSettings"]


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """What a listener tells each of its sessions."""

    listener: str
    limits: Limits
    security: Security | None = None
    max_inflight: int = 64
    handshake_timeout: float = 10.0
    idle_timeout: float = 0.0
    deny_keepalive: bool = False
    #: Fluentd's JSON convenience mode (a connection whose first byte is "[" or "{"); no handshake.
    json_mode: bool = False
    tag: str | None = None
    add_tag_prefix: str | None = None
    source_address_key: str | None = None
    source_hostname_key: str | None = None
    #: forwardd.testing's faults for the clients under test; None in production.
    hooks: SessionHooks | None = None


class SessionHooks(Protocol):
    """How the embedded test server injects faults (forwardd.testing.faults): the server and the protocol
    core know nothing of them."""

    def begun(self, conn: ServerConnection) -> None:
        """A connection's protocol core, before it says anything: to adjust it (refuse its PING, say)."""
        ...

    def closes_after(self, requests: int) -> bool:
        """Whether the connection closes, after acking what it owes, once it has taken ``requests``."""
        ...
