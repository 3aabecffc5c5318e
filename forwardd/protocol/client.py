"""The client side of the forward protocol, sans I/O: what forwardd's ``forward`` output says to a receiver.

:class:`ClientConnection` is one connection's state, as h2's connection is: bytes from the receiver go in
(:meth:`~ClientConnection.receive_data`), events come out (:class:`HandshakeDone`, :class:`Acked`), bytes
to send come from :meth:`~ClientConnection.data_to_send` and :meth:`~ClientConnection.request`. Sockets,
timeouts and retries belong to the caller (``forwardd.outputs.forward``).

With a shared key the PING is the one Fluentd's ``out_forward`` computes (a salt of 32 hex characters, the
password digest whenever the HELO carries an auth salt). Chunk ids are 24 base64 characters of 16 random
bytes, without the trailing newline Ruby's ``Base64.encode64`` adds.

What a request holds (PackedForward framing, compression, the entries' times) is
:mod:`forwardd.protocol.outgoing`, re-exported here: the forward output imports both from this module.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from forwardd.protocol.handshake import password_digest, shared_key_digest, verify_pong
from forwardd.protocol.outgoing import (
    Compression,
    TimeFormat,
    compress_entries,
    encode_request,
    wire_entries,
)

__all__ = [
    "HEARTBEAT",
    "Acked",
    "ClientConnection",
    "ClientProtocolError",
    "ClientSecurity",
    "Compression",
    "HandshakeDone",
    "HandshakeRefused",
    "TimeFormat",
    "compress_entries",
    "encode_request",
    "new_chunk_id",
    "ping",
    "wire_entries",
]

#: The UDP heartbeat: Fluentd's out_forward sends one zero byte; in_forward answers any datagram with one.
HEARTBEAT = b"\x00"


#: The most a receiver may send us that is not yet a whole reply (a HELO, a PONG, an ack are < 1 KiB).
_MAX_REPLY = 64 * 1024
_pack = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape").pack


class ClientProtocolError(Exception):
    """The receiver said something that does not fit the protocol: garbage, a HELO when no handshake is
    configured, an ack for a chunk never sent, a map without ``ack`` (Vector's refusal). The connection
    cannot be trusted any more; what was sent on it and not acked must be sent again."""


class HandshakeRefused(ClientProtocolError):
    """The receiver refused the PING (wrong shared key, user or password) or its PONG does not prove that
    it knows the shared key."""


@dataclass(frozen=True, slots=True)
class ClientSecurity:
    """Fluentd's ``<security>`` of out_forward: who we say we are and the secrets we prove we know."""

    self_hostname: str
    shared_key: str
    username: str = ""
    password: str = ""


@dataclass(frozen=True, slots=True)
class HandshakeDone:
    """The PONG was good: requests may go. ``keepalive`` False means the receiver closes the connection
    after its first reply (Fluentd's ``deny_keepalive``)."""

    server_hostname: str
    keepalive: bool


@dataclass(frozen=True, slots=True)
class Acked:
    """The receiver acked the request with this chunk id (it has accepted the request's events)."""

    chunk_id: bytes


ClientEvent = HandshakeDone | Acked


def new_chunk_id(urandom: Callable[[int], bytes] = os.urandom) -> bytes:
    """24 base64 characters of 16 random bytes, as Fluent Bit and fluent-logger-golang make them."""
    return base64.b64encode(urandom(16))


def _salt(urandom: Callable[[int], bytes] = os.urandom) -> bytes:
    # Fluentd's generate_salt: SecureRandom.hex(16), 32 hex characters.
    return urandom(16).hex().encode()


def _b(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    raise ClientProtocolError(f"expected a string, got {type(value).__name__}")


def ping(security: ClientSecurity, nonce: bytes, auth_salt: bytes, salt: bytes) -> bytes:
    """The PING for a HELO's nonce and auth salt, exactly as Fluentd's out_forward builds it: the user and
    password digest whenever the receiver sent an auth salt (Fluentd's in_forward always does), empty
    strings otherwise."""
    host = security.self_hostname.encode()
    digest = shared_key_digest(salt, host, nonce, security.shared_key.encode())
    if auth_salt:
        user = security.username
        pw = password_digest(auth_salt, user.encode(), security.password.encode())
    else:
        user, pw = "", ""
    # The salt goes as a str holding its bytes, as both Fluentd (hex) and Fluent Bit (raw bytes) send it.
    head = b"\x96" + bytes(_pack("PING")) + bytes(_pack(security.self_hostname)) + _str_of(salt)
    return head + b"".join(bytes(_pack(v)) for v in (digest, user, pw))


def _str_of(data: bytes) -> bytes:
    """``data`` as a msgpack str (whatever its bytes), with the smallest header, as msgpack-ruby packs."""
    n = len(data)
    if n < 32:
        return bytes([0xA0 | n]) + data
    if n < 0x100:
        return b"\xd9" + bytes([n]) + data
    if n < 0x10000:
        return b"\xda" + n.to_bytes(2, "big") + data
    return b"\xdb" + n.to_bytes(4, "big") + data


class ClientConnection:
    """One connection, client side: the handshake (when ``security`` is set), then requests and acks.

    ``salt`` and ``urandom`` are injected so that tests can replay captured handshakes exactly.
    """

    def __init__(
        self,
        security: ClientSecurity | None = None,
        *,
        salt: Callable[[], bytes] = _salt,
        urandom: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.security = security
        #: "helo" (waiting for it), "pong" (PING sent), "ready", or "failed".
        self.state = "helo" if security is not None else "ready"
        #: False once the receiver's HELO said it closes after one reply.
        self.keepalive = True
        self.server_hostname = ""
        self._salt = salt
        self._urandom = urandom
        self._sent_salt = b""
        self._nonce = b""
        self._out: list[bytes] = []
        #: Chunk ids sent and not acked yet, with their event counts.
        self._pending: dict[bytes, int] = {}
        self._unpacker = msgpack.Unpacker(raw=True, max_buffer_size=_MAX_REPLY, strict_map_key=False)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def awaiting(self) -> int:
        """Requests sent whose ack has not come."""
        return len(self._pending)

    def data_to_send(self) -> bytes:
        out, self._out = self._out, []
        return b"".join(out)

    def receive_data(self, data: bytes) -> list[ClientEvent]:
        """Feed what the receiver sent; returns what it means. Raises ClientProtocolError on anything that
        does not fit, after which the connection must be closed."""
        if self.state == "failed":
            raise ClientProtocolError("connection already failed")
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:
            self.state = "failed"
            raise ClientProtocolError(f"the receiver sent more than {_MAX_REPLY} bytes of no reply") from None
        events: list[ClientEvent] = []
        try:
            for msg in self._unpacker:
                ev = self._message(msg)
                if ev is not None:
                    events.append(ev)
        except ClientProtocolError:
            self.state = "failed"
            raise
        except (ValueError, msgpack.UnpackException) as exc:
            self.state = "failed"
            raise ClientProtocolError(f"the receiver sent bytes that are not msgpack: {exc}") from None
        return events

    def _message(self, msg: Any) -> ClientEvent | None:
        if self.state == "helo":
            self._helo(msg)
            return None
        if self.state == "pong":
            return self._pong(msg)
        if isinstance(msg, list) and msg and msg[0] in (b"HELO", b"PONG"):
            raise ClientProtocolError(f"unexpected {msg[0].decode()} after the handshake")
        if not isinstance(msg, dict):
            raise ClientProtocolError(f"expected an ack map, got {type(msg).__name__}")
        if b"ack" not in msg:
            # Vector answers {} (and closes) when it could not deliver: a refusal, not an ack.
            raise ClientProtocolError("the receiver answered without an ack (it refused the request)")
        chunk = msg[b"ack"]
        if not isinstance(chunk, bytes) or chunk not in self._pending:
            raise ClientProtocolError(f"ack for a chunk that was not sent: {chunk!r}")
        del self._pending[chunk]
        return Acked(chunk)

    def _helo(self, msg: Any) -> None:  # answers with a PING, returns no event
        if not (isinstance(msg, list) and len(msg) == 2 and msg[0] == b"HELO" and isinstance(msg[1], dict)):
            raise ClientProtocolError(f"expected HELO, got {_brief(msg)}")
        opts = {(k.decode("utf-8", "replace") if isinstance(k, bytes) else k): v for k, v in msg[1].items()}
        if "nonce" not in opts:
            raise ClientProtocolError("HELO without a nonce")
        self._nonce = _b(opts["nonce"])
        auth = _b(opts.get("auth") or b"")
        self.keepalive = opts.get("keepalive", True) is not False
        assert self.security is not None
        self._sent_salt = self._salt()
        self._out.append(ping(self.security, self._nonce, auth, self._sent_salt))
        self.state = "pong"

    def _pong(self, msg: Any) -> HandshakeDone:
        if not (isinstance(msg, list) and len(msg) == 5 and msg[0] == b"PONG"):
            raise ClientProtocolError(f"expected PONG, got {_brief(msg)}")
        assert self.security is not None
        if msg[1] is not True:
            reason = msg[2].decode("utf-8", "replace") if isinstance(msg[2], bytes) else str(msg[2])
            raise HandshakeRefused(f"the receiver refused the handshake: {reason}")
        try:
            proved = verify_pong(
                msg, salt=self._sent_salt, nonce=self._nonce, shared_key=self.security.shared_key
            )
        except (TypeError, ValueError, UnicodeDecodeError):
            proved = False
        if not proved:
            raise HandshakeRefused("the PONG's digest does not prove the shared key")
        self.server_hostname = _b(msg[3]).decode("utf-8", "replace")
        self.state = "ready"
        return HandshakeDone(self.server_hostname, self.keepalive)

    def request(
        self,
        tag: str,
        payload: bytes,
        count: int,
        *,
        compressed: Compression = "text",
        ack: bool = True,
    ) -> tuple[list[bytes], bytes | None]:
        """A PackedForward request for ``payload`` (entries, compressed already if ``compressed`` says so)
        of ``count`` events; returns its parts (to write in order, without joining a large payload) and
        its chunk id (None without ``ack``), which is then awaited."""
        if self.state != "ready":
            raise RuntimeError(f"request before the handshake completed (state {self.state})")
        chunk = new_chunk_id(self._urandom) if ack else None
        if chunk is not None:
            self._pending[chunk] = count
        return encode_request(tag, payload, count, compressed=compressed, chunk_id=chunk), chunk


def _brief(msg: Any) -> str:
    text = repr(msg)
    return text if len(text) <= 80 else text[:77] + "..."
