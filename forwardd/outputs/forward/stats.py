"""The forward output's counters, in a module of their own because every part of the output moves them:
the connection pool (connects, stale connections), failover (failures by stage, heartbeats), the cutting
of a chunk into requests (invalid entries, rewritten times) and the sending and ack matching (requests,
events, acks, what was sent again)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ForwardStats"]


@dataclass(slots=True)
class ForwardStats:
    """Counters of one forward output. ``events`` were acked (written, without acks); ``bytes`` are
    request bytes as sent (after compression)."""

    requests: int = 0
    events: int = 0
    bytes: int = 0
    acks: int = 0
    #: Events sent whose ack never came (connection lost, ack timeout): each was sent again, so this
    #: bounds the duplicates a receiver can see. It counts what *may* have arrived: when a connection
    #: ends after a request was written to it and before its ack, the request may have been read (the
    #: receiver died before acking) or not (the connection was gone already and the request only drew
    #: its reset); from this side the two look the same, so both count.
    unacked_events: int = 0
    #: Events sent again within one write, to another endpoint or on a new connection: those counted in
    #: unacked_events, and those of a request whose own send failed.
    resent_events: int = 0
    #: Writes that moved on from an endpoint that failed to another one.
    failovers: int = 0
    #: Connections opened for writes (heartbeat probes not included).
    connects: int = 0
    #: Connection failures by stage: connect, tls, handshake, refused, send_timeout, ack_timeout, lost,
    #: protocol.
    failures: dict[str, int] = field(default_factory=dict)
    #: Kept-alive connections the receiver had ended while they were idle (its restart, its idle timeout),
    #: replaced by a new one with nothing marked down. Most are found before a request is written to
    #: them (their socket shows the end): a reconnect, nothing more. One whose end only comes back in
    #: answer to a request (a FIN still on its way, a middlebox that forgot the connection) is found
    #: after it: that request also counts in unacked_events and resent_events, since it may have been
    #: read (see unacked_events).
    stale_connections: int = 0
    heartbeats: int = 0
    heartbeat_failures: int = 0
    #: Entries dropped because they are no event (see wire_entries), and chunks (writes: a chunk cut into
    #: several requests counts once) whose times were rewritten.
    invalid_entries: int = 0
    rewritten_chunks: int = 0
    #: Each endpoint's state: "up" or "down (reason)".
    servers: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int | float | str | None]:
        """Flat, for reports and metrics: ``failures`` is their total, ``failures.connect`` ... the parts,
        ``servers.<server>`` each endpoint's state, ``servers_up`` how many are up."""
        out: dict[str, int | float | str | None] = {
            f: getattr(self, f) for f in self.__slots__ if f not in ("failures", "servers")
        }
        out["failures"] = sum(self.failures.values())
        for kind, n in sorted(self.failures.items()):
            out[f"failures.{kind}"] = n
        out["servers_up"] = sum(1 for state in self.servers.values() if state == "up")
        for key, state in self.servers.items():
            out[f"servers.{key}"] = state
        return out
