"""A ``type: forward`` output's settings (Fluentd's out_forward: ``<server>``, ``<security>``, TLS), as
:meth:`ForwardOutput.from_settings` reads them."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from forwardd.config.types import Frozen, Name, NonEmpty, PositiveDuration, Problems, TlsVersion
from forwardd.config.units import Duration, Size

__all__ = ["MAX_IN_FLIGHT", "ForwardSecurity", "ForwardServer", "ForwardSettings", "ForwardTls"]

#: Most chunks a forward output may have in flight at once (as the HTTP output's ``in_flight``).
MAX_IN_FLIGHT = 64


class ForwardServer(Frozen):
    """One receiver of a forward output (Fluentd's ``<server>``)."""

    host: NonEmpty
    port: Annotated[int, Field(ge=1, le=65535)] = 24224
    #: Share of the writes among the regular servers that are up; 0 keeps it out of the rotation.
    weight: Annotated[int, Field(ge=0, le=10000)] = 60
    #: Used only while no regular server is up.
    standby: bool = False
    #: How logs and stats name it (default host:port).
    name: Name | None = None


class ForwardTls(Frozen):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    key_password: str | None = Field(default=None, repr=False)
    verify: bool = True
    #: The name the server certificate must carry (default: each server's host).
    server_name: str | None = None
    min_version: TlsVersion = "1.2"


class ForwardSecurity(Frozen):
    """The client side of the secure-forward handshake (Fluentd's out_forward ``<security>``)."""

    self_hostname: str = Field(default_factory=socket.gethostname)
    shared_key: str = Field(repr=False)
    username: str = ""
    password: str = Field(default="", repr=False)


class ForwardSettings(Frozen):
    servers: Annotated[tuple[ForwardServer, ...], Field(min_length=1)]
    #: Wait for the receiver's ack before a chunk leaves the buffer (off: delivered once written).
    require_ack_response: bool = True
    ack_response_timeout: PositiveDuration = 30.0
    compress: Literal["none", "gzip", "zstd"] = "none"
    #: Entry bytes per request (before compression); a bigger chunk goes as several pipelined requests.
    max_message_size: Annotated[Size, Field(ge=1)] = 1024**2
    #: event_time: odd time shapes become EventTime; integer: Fluentd's time_as_integer; as_received.
    time_format: Literal["event_time", "integer", "as_received"] = "event_time"
    keepalive: bool = True
    keepalive_timeout: PositiveDuration = 60.0
    connect_timeout: PositiveDuration = 10.0
    send_timeout: PositiveDuration = 60.0
    heartbeat_type: Literal["transport", "udp", "none"] = "transport"
    heartbeat_interval: PositiveDuration = 1.0
    #: An up server with no successful heartbeat for this long is marked down.
    hard_timeout: PositiveDuration = 60.0
    #: A server marked down is not used again for this long.
    recover_wait: Duration = 10.0
    #: Host names are resolved again this often (0 = only at start and when no server is left).
    dns_refresh: Duration = 30.0
    #: Chunks written at once (the output's ``concurrent_writes``), each over a connection of its own. 1
    #: keeps the order of requests at the receivers; more gives it up across chunks (see
    #: :mod:`forwardd.outputs.forward.output`).
    in_flight: Annotated[int, Field(ge=1, le=MAX_IN_FLIGHT)] = 1
    tls: ForwardTls | None = None
    security: ForwardSecurity | None = None

    def problems(self) -> Problems:
        regular = [srv for srv in self.servers if not srv.standby]
        if not regular:
            yield ("servers",), "every server is standby: at least one must take writes"
        elif not any(srv.weight > 0 for srv in regular):
            yield ("servers",), "every regular server has weight 0: nothing would be sent"
        names: dict[str, int] = {}
        for i, srv in enumerate(self.servers):
            label = srv.name or f"{srv.host}:{srv.port}"
            if label in names:
                yield ("servers", i), f"server {label} is already servers[{names[label]}]"
            names.setdefault(label, i)
        if self.tls is not None and bool(self.tls.cert_file) != bool(self.tls.key_file):
            yield ("tls",), "cert_file and key_file go together"
        if self.security is not None and self.security.password and not self.security.username:
            yield ("security", "password"), "a password needs a username"

    def describe(self) -> str:
        servers = ", ".join(
            f"{srv.host}:{srv.port}" + (" (standby)" if srv.standby else "") + f" w{srv.weight}"
            for srv in self.servers
        )
        ack = "acked" if self.require_ack_response else "no acks"
        text = f"forward {servers} {ack} compress={self.compress} heartbeat={self.heartbeat_type}"
        return text + (f" in_flight={self.in_flight}" if self.in_flight > 1 else "")
