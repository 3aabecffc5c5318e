"""The server side of the forward protocol's security handshake (HELO / PING / PONG).

The server speaks first with ``["HELO", {nonce, auth, keepalive}]``; the client answers
``["PING", hostname, shared_key_salt, sha512_hex(salt + hostname + nonce + key), username, password_digest]``;
the server checks it and answers ``["PONG", ok, reason, server_hostname, sha512_hex(salt + server_hostname +
nonce + key)]``. Digests are over raw bytes as received: Fluent Bit sends its salt as a str of random bytes.

Per-client policy (Fluentd's ``<client host|network shared_key users>``): the peer's address chooses the
shared key and the users allowed; peers that match no client are refused when anonymous sources are not
allowed. With user auth off, username and password are ignored (Fluentd clients still send them).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

__all__ = [
    "ClientPolicy",
    "PingVerdict",
    "Security",
    "ServerHandshake",
    "User",
    "client_ping",
    "shared_key_digest",
]

_pack = msgpack.Packer(use_bin_type=True).pack


@dataclass(frozen=True, slots=True)
class User:
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    """Who a peer is (an exact host address or a network) and what it may use."""

    host: str | None = None
    network: str | None = None
    shared_key: str | None = None
    users: tuple[str, ...] = ()

    def matches(self, address: str | None) -> bool:
        if address is None:
            return False
        if self.host is not None and address == self.host:
            return True
        if self.network is not None:
            try:
                return ipaddress.ip_address(address) in ipaddress.ip_network(self.network, strict=False)
            except ValueError:
                return False
        return False


@dataclass(frozen=True, slots=True)
class Security:
    """Settings of the handshake, as Fluentd's ``<security>`` section."""

    self_hostname: str
    shared_key: str
    user_auth: bool = False
    allow_anonymous_source: bool = True
    users: tuple[User, ...] = ()
    clients: tuple[ClientPolicy, ...] = ()
    deny_keepalive: bool = False
    _users_by_name: dict[str, User] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._users_by_name.update({u.username: u for u in self.users})

    def user(self, name: str) -> User | None:
        return self._users_by_name.get(name)


@dataclass(frozen=True, slots=True)
class PingVerdict:
    """What the server makes of a PING: ``ok`` or not and why (``reason``), the PONG to send (``reply``),
    and who the client says it is."""

    ok: bool
    reason: str
    reply: bytes
    hostname: str = ""
    username: str = ""


def shared_key_digest(salt: bytes, hostname: bytes, nonce: bytes, key: bytes) -> str:
    return hashlib.sha512(salt + hostname + nonce + key).hexdigest()


def password_digest(auth_salt: bytes, username: bytes, password: bytes) -> str:
    return hashlib.sha512(auth_salt + username + password).hexdigest()


def _b(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    raise TypeError(type(value).__name__)


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


class ServerHandshake:
    """One connection's handshake. Pure: random bytes come from ``urandom``, replies are returned."""

    def __init__(self, security: Security, peer_address: str | None, urandom: Any = os.urandom) -> None:
        self.security = security
        self.peer_address = peer_address
        self.nonce: bytes = urandom(16)
        self.auth_salt: bytes = urandom(16)
        self._policy = next((c for c in security.clients if c.matches(peer_address)), None)

    def helo(self) -> bytes:
        # Fluentd always sends an auth salt when security is on; clients compute a digest with it.
        opts = {"nonce": self.nonce, "auth": self.auth_salt, "keepalive": not self.security.deny_keepalive}
        return bytes(_pack(["HELO", opts]))

    def _fail(self, reason: str) -> PingVerdict:
        return PingVerdict(False, reason, _pack(["PONG", False, reason, "", ""]))

    def check_ping(self, msg: Any) -> PingVerdict:
        """The verdict on a decoded (raw=True) PING."""
        if not isinstance(msg, list) or len(msg) != 6 or msg[0] != b"PING":
            return self._fail("PING message is malformed")
        try:
            hostname, salt, digest, username, pw_digest = (_b(x) for x in msg[1:])
        except TypeError:
            return self._fail("PING message is malformed")
        sec = self.security
        if self._policy is None and sec.clients and not sec.allow_anonymous_source:
            return self._fail(f"anonymous source host '{self.peer_address}' denied")
        key = _b(self._policy.shared_key if self._policy and self._policy.shared_key else sec.shared_key)
        expected = shared_key_digest(salt, hostname, self.nonce, key)
        if not hmac.compare_digest(expected.encode(), digest.lower()):
            return self._fail("shared_key mismatch")
        if sec.user_auth:
            user = sec.user(_text(username))
            allowed = self._policy.users if self._policy and self._policy.users else None
            if user is None or (allowed is not None and user.username not in allowed):
                return self._fail("username/password mismatch")
            want = password_digest(self.auth_salt, username, user.password.encode())
            if not hmac.compare_digest(want.encode(), pw_digest.lower()):
                return self._fail("username/password mismatch")
        me = sec.self_hostname.encode()
        reply = _pack(["PONG", True, "", sec.self_hostname, shared_key_digest(salt, me, self.nonce, key)])
        return PingVerdict(True, "", reply, _text(hostname), _text(username))


def client_ping(
    helo: dict[Any, Any],
    *,
    hostname: str,
    shared_key: str,
    username: str = "",
    password: str = "",
    salt: bytes | None = None,
) -> tuple[bytes, bytes]:
    """The client's PING for a HELO's options (raw keys or str keys); returns (ping bytes, salt).

    Used by forwardd's own test client and by tests: the same arithmetic a real client does.
    """
    opts = {(k.decode() if isinstance(k, bytes) else k): v for k, v in helo.items()}
    nonce = _b(opts["nonce"])
    auth = _b(opts.get("auth") or b"")
    salt = salt if salt is not None else os.urandom(16).hex().encode()
    digest = shared_key_digest(salt, hostname.encode(), nonce, shared_key.encode())
    pw = password_digest(auth, username.encode(), password.encode()) if username else ""
    return _pack(["PING", hostname, salt, digest, username, pw]), salt


def verify_pong(pong: Sequence[Any], *, salt: bytes, nonce: bytes, shared_key: str) -> bool:
    """Client-side check of a success PONG's digest (mutual authentication)."""
    if len(pong) != 5 or not pong[1]:
        return False
    server = _b(pong[3])
    return bool(_b(pong[4]).decode() == shared_key_digest(salt, server, nonce, shared_key.encode()))
