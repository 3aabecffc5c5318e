"""A ``sources:`` entry of the configuration (type forward), and the listener settings it becomes.

The file's shape follows Fluentd's in_forward (``shared_key``, ``<client>``, ``add_tag_prefix``...);
:func:`listener_settings` turns it into what the listener, its sessions and the protocol core take.
Checks that span sources (names, ports and socket paths used twice) are :func:`source_problems`.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from forwardd.config.types import (
    Count,
    FileMode,
    Frozen,
    LabelName,
    Loc,
    Name,
    NonEmpty,
    Port,
    Problems,
    TlsVersion,
    unknown,
)
from forwardd.config.units import Duration, Size, show_value
from forwardd.protocol import ClientPolicy, Limits, Security, User
from forwardd.server.listener import ListenerSettings
from forwardd.server.settings import DEFAULT_MAX_INFLIGHT, SessionSettings
from forwardd.server.tls import TlsSettings

__all__ = [
    "ForwardSource",
    "SourceClient",
    "SourceLimits",
    "SourceSecurity",
    "SourceTls",
    "SourceUser",
    "UnixSocket",
    "listener_settings",
    "port_used",
    "source_problems",
]


class UnixSocket(Frozen):
    path: Path
    mode: FileMode = 0o660


class SourceTls(Frozen):
    cert_file: Path
    key_file: Path
    key_password: str | None = Field(default=None, repr=False)
    ca_file: Path | None = None
    client_auth: Literal["none", "optional", "required"] = "none"
    min_version: TlsVersion = "1.2"


class SourceUser(Frozen):
    username: NonEmpty
    password: str = Field(repr=False)


class SourceClient(Frozen):
    """Fluentd's ``<client>``: the peer's address picks the shared key and the users it may log in as."""

    host: str | None = None
    network: str | None = None
    shared_key: str | None = Field(default=None, repr=False)
    users: tuple[str, ...] = ()

    @field_validator("network")
    @classmethod
    def _network(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise PydanticCustomError(
                    "network", "expected a network like 10.0.0.0/8, got {got}", {"got": show_value(value)}
                ) from None
        return value


class SourceSecurity(Frozen):
    """The secure-forward handshake (HELO/PING/PONG); present means required for every connection."""

    self_hostname: str = Field(default_factory=socket.gethostname)
    shared_key: str = Field(repr=False)
    user_auth: bool = False
    allow_anonymous_source: bool = True
    users: tuple[SourceUser, ...] = ()
    clients: tuple[SourceClient, ...] = ()

    def problems(self) -> Problems:
        usernames = [u.username for u in self.users]
        if self.user_auth and not self.users:
            yield ("users",), "user_auth: true needs at least one user"
        for k, client in enumerate(self.clients):
            if (client.host is None) == (client.network is None):
                yield ("clients", k), "set exactly one of host or network"
            for m, user in enumerate(client.users):
                if user not in usernames:
                    yield ("clients", k, "users", m), unknown("user", user, usernames)


class SourceLimits(Frozen):
    max_frame_size: Size = 64 * 1024**2
    max_decompressed_size: Size = 256 * 1024**2
    chunk_size_warn: Size = 16 * 1024**2
    #: The frame limit before the handshake is done (security on): a PING is a few hundred bytes.
    max_handshake_frame_size: Size = 64 * 1024
    max_connections: Count = 10000
    #: Bytes all connections of the source may hold at once (frames not yet whole, big requests being
    #: finished); beyond it, connections holding some stop reading until it falls. 0 = no budget.
    max_buffered_size: Size = 256 * 1024**2
    handshake_timeout: Duration = 10.0
    #: 0 = never close an idle connection.
    idle_timeout: Duration = 0.0
    #: Chunks of one connection awaiting their ack at once; reading pauses beyond it.
    max_inflight: Count = DEFAULT_MAX_INFLIGHT


class ForwardSource(Frozen):
    name: Name
    type: Literal["forward"] = "forward"
    bind: str = "0.0.0.0"
    port: Port = 24224
    unix: UnixSocket | None = None
    udp_heartbeat: bool = True
    tls: SourceTls | None = None
    security: SourceSecurity | None = None
    limits: SourceLimits = Field(default_factory=SourceLimits)
    deny_keepalive: bool = False
    json_mode: bool = False
    tag: str | None = None
    add_tag_prefix: str | None = None
    source_address_key: str | None = None
    source_hostname_key: str | None = None
    #: Where its events go: a label's routes (default: the root routes).
    label: LabelName | None = None

    def address(self) -> str:
        if self.unix is not None:
            return f"unix:{self.unix.path}"
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"{'tls' if self.tls else 'tcp'}://{host}:{self.port}"

    def problems(self) -> Problems:
        if self.unix is not None:
            explicit = {"bind", "port"} & self.model_fields_set
            if explicit:
                yield (), f"set either unix or {'/'.join(sorted(explicit))}, not both"
        if self.tag is not None and self.add_tag_prefix is not None:
            yield (), "set either tag or add_tag_prefix, not both"
        if self.tls is not None and self.tls.client_auth != "none" and self.tls.ca_file is None:
            yield ("tls", "ca_file"), f"client_auth: {self.tls.client_auth} needs a ca_file"
        if self.security is not None:
            for loc, message in self.security.problems():
                yield ("security", *loc), message

    def describe(self) -> str:
        extras = []
        if self.unix is None and self.udp_heartbeat:
            extras.append("udp heartbeat")
        if self.tls is not None:
            extras.append(f"tls client_auth={self.tls.client_auth}")
        if self.security is not None:
            extras.append("shared_key" + (" + users" if self.security.user_auth else ""))
        if self.tag is not None:
            extras.append(f"tag={self.tag}")
        if self.add_tag_prefix is not None:
            extras.append(f"add_tag_prefix={self.add_tag_prefix}")
        more = f" ({', '.join(extras)})" if extras else ""
        return f"forward {self.address()}{more}"


def source_problems(sources: Sequence[ForwardSource]) -> list[tuple[Loc, str]]:
    """Each source's own mistakes, and what two sources cannot share: a name, a port, a socket path."""
    problems: list[tuple[Loc, str]] = []
    names: dict[str, int] = {}
    tcp: list[tuple[int, str, int]] = []
    unix: dict[str, int] = {}
    for i, src in enumerate(sources):
        loc: Loc = (i,)
        if src.name in names:
            problems.append(
                ((*loc, "name"), f"source name {src.name!r} is already used by sources[{names[src.name]}]")
            )
        names.setdefault(src.name, i)
        problems.extend(((*loc, *where), message) for where, message in src.problems())
        if src.unix is not None:
            key = os.path.normpath(src.unix.path)
            if key in unix:
                problems.append(
                    ((*loc, "unix", "path"), f"socket path {key} is already used by sources[{unix[key]}]")
                )
            unix.setdefault(key, i)
        elif src.port != 0:
            for j, bind, port in tcp:
                if port == src.port and (bind == src.bind or {bind, src.bind} & {"0.0.0.0", "::", ""}):
                    problems.append(
                        ((*loc, "port"), f"port {port} is already used by sources[{j}] ({bind}:{port})")
                    )
                    break
            tcp.append((i, src.bind, src.port))
    return problems


def port_used(sources: Sequence[ForwardSource], bind: str, port: int) -> str | None:
    """Why another listener (the operators' endpoint) cannot take ``bind:port``: the source that has it."""
    if port == 0:
        return None
    wildcard = {"0.0.0.0", "::", ""}
    for j, src in enumerate(sources):
        if src.unix is None and src.port == port and (src.bind == bind or {src.bind, bind} & wildcard):
            return f"port {port} is already used by sources[{j}] ({src.bind}:{port})"
    return None


def listener_settings(src: ForwardSource, *, reuse_port: bool = False) -> ListenerSettings:
    """What the listener, its sessions and their protocol cores take, from one source's settings."""
    lim = src.limits
    security = None
    if src.security is not None:
        s = src.security
        security = Security(
            self_hostname=s.self_hostname,
            shared_key=s.shared_key,
            user_auth=s.user_auth,
            allow_anonymous_source=s.allow_anonymous_source,
            users=tuple(User(u.username, u.password) for u in s.users),
            clients=tuple(
                ClientPolicy(host=c.host, network=c.network, shared_key=c.shared_key, users=tuple(c.users))
                for c in s.clients
            ),
            deny_keepalive=src.deny_keepalive,
        )
    session = SessionSettings(
        listener=src.name,
        limits=Limits(
            max_frame_size=lim.max_frame_size,
            max_decompressed_size=lim.max_decompressed_size,
            chunk_size_warn=lim.chunk_size_warn,
            max_handshake_frame_size=lim.max_handshake_frame_size,
        ),
        security=security,
        max_inflight=lim.max_inflight,
        handshake_timeout=lim.handshake_timeout,
        idle_timeout=lim.idle_timeout,
        deny_keepalive=src.deny_keepalive,
        json_mode=src.json_mode,
        tag=src.tag,
        add_tag_prefix=src.add_tag_prefix,
        source_address_key=src.source_address_key,
        source_hostname_key=src.source_hostname_key,
    )
    tls = None
    if src.tls is not None:
        t = src.tls
        tls = TlsSettings(
            cert_file=str(t.cert_file), key_file=str(t.key_file),
            ca_file=None if t.ca_file is None else str(t.ca_file),
            client_auth=t.client_auth, min_version=t.min_version, key_password=t.key_password,
        )  # fmt: skip
    return ListenerSettings(
        name=src.name,
        session=session,
        bind=src.bind,
        port=src.port,
        unix_path=None if src.unix is None else str(src.unix.path),
        unix_mode=src.unix.mode if src.unix is not None else 0o660,
        udp_heartbeat=src.udp_heartbeat and src.unix is None,
        tls=tls,
        max_connections=lim.max_connections,
        max_buffered_bytes=lim.max_buffered_size,
        reuse_port=reuse_port,
    )
