"""The client side of the forward protocol, sans I/O: what forwardd's ``forward`` output says to a receiver.

:class:`ClientConnection` is one connection's state, as h2's connection is: bytes from the receiver go in
(:meth:`~ClientConnection.receive_data`), events come out (:class:`HandshakeDone`, :class:`Acked`), bytes
to send come from :meth:`~ClientConnection.data_to_send` and :meth:`~ClientConnection.request`. Sockets,
timeouts and retries belong to the caller (``forwardd.outputs.forward``).

What goes on the wire is what Fluentd's ``out_forward`` sends, byte for byte where it can be (the golden
tests replay its captures): a PackedForward ``[tag, str32 entries, {"size", "compressed", "chunk"}]``,
``compressed: "text"`` when not compressing, and with a shared key the PING Fluentd computes (a salt of 32
hex characters, the password digest whenever the HELO carries an auth salt). Fluentd's gzip payload is one
gzip member per event; ours is one member for the whole message, which every receiver accepts. Chunk ids
are 24 base64 characters of 16 random bytes, without the trailing newline Ruby's ``Base64.encode64`` adds.

Entries are the chunk's msgpack bytes as they came (:func:`wire_entries`); only time shapes a receiver may
not take are rewritten, and only when some entry has one.
"""

from __future__ import annotations

import base64
import gzip
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgpack
import msgspec
import zstandard

from forwardd.model import decode_entries, pack_event_time
from forwardd.pieces import entry_ends
from forwardd.protocol.handshake import password_digest, shared_key_digest, verify_pong

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

Compression = Literal["text", "gzip", "zstd"]
#: ``event_time``: integer seconds and EventTime go as they are, every other shape (float, nil or 0, the
#: v1.5 ``[time, {metadata}]`` wrapper, ext8) becomes EventTime, so Fluentd <= 1.19.2 and Vector take it.
#: ``integer``: every time becomes integer seconds (Fluentd's ``time_as_integer``, for v0.12 receivers).
#: ``as_received``: the bytes go untouched, wrapper included (forwardd and Fluent Bit receivers).
TimeFormat = Literal["event_time", "integer", "as_received"]

_NS = 1_000_000_000
#: The most a receiver may send us that is not yet a whole reply (a HELO, a PONG, an ack are < 1 KiB).
_MAX_REPLY = 64 * 1024
_pack = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape").pack
_ARRAY32 = struct.Struct(">BI")


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


def encode_request(
    tag: str, payload: bytes, count: int, *, compressed: Compression = "text", chunk_id: bytes | None = None
) -> list[bytes]:
    """``[tag, str32 payload, {"size": count, "compressed": ..., "chunk": id}]`` in three parts, the
    option keys in Fluentd's order. The payload is str32 (holding binary) as Fluentd sends it: every
    receiver accepts that, as the spec asks of them."""
    opts: dict[str, Any] = {"size": count, "compressed": compressed}
    if chunk_id is not None:
        opts["chunk"] = chunk_id.decode("ascii")
    head = b"\x93" + bytes(_pack(tag)) + b"\xdb" + len(payload).to_bytes(4, "big")
    return [head, payload, bytes(_pack(opts))]


def compress_entries(entries: bytes, compression: Compression) -> bytes:
    """The payload for ``compression`` (zlib and zstd release the GIL: callers may run this in a thread)."""
    if compression == "gzip":
        return gzip.compress(entries, compresslevel=6, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(entries)
    return entries


# --- the entries as they go out -------------------------------------------------------------------------

_PAIRS = msgspec.msgpack.Decoder(list[tuple[msgspec.Raw, msgspec.Raw]])
_POSITIVE_INT_TIMES = msgspec.msgpack.Decoder(
    list[tuple[Annotated[int, msgspec.Meta(gt=0, le=0xFFFFFFFFFFFF)], msgspec.Raw]]
)
_PAIR = msgspec.msgpack.Decoder(tuple[msgspec.Raw, msgspec.Raw])
_MAP_FIRST = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])
_EMPTY_MAP = b"\x80"


def _all_event_time(pairs: list[tuple[msgspec.Raw, msgspec.Raw]]) -> bool:
    """Every time is an EventTime in its fixext8 form (ten bytes ``d7 00 ...``), checked without a
    Python step per entry beyond the join."""
    n = len(pairs)
    times = b"".join([t for t, _ in pairs])  # Raw is a buffer
    return len(times) == 10 * n and times[0::10] == b"\xd7" * n and times[1::10] == b"\x00" * n


def wire_entries(
    entries: bytes, count: int, received_ns: int, time_format: TimeFormat = "event_time"
) -> tuple[bytes, int, int]:
    """The entries to send for a chunk's ``entries``: ``(payload, events, dropped)``.

    The chunk's bytes themselves whenever every time already has a shape ``time_format`` allows (what
    docker, fluent-logger, Fluentd and Fluent Bit < 5 send): checked in one msgspec call, records never
    decoded. Otherwise each entry's time is rewritten and its record bytes kept as they are. A time of
    ``0`` or ``nil`` becomes the chunk's receive time (what the receiver would otherwise stamp, later).
    Entries that are no event (not a 2-array, record not a map, no time at all) are dropped and counted,
    as every forwardd output skips them.
    """
    if time_format == "as_received" or not entries:
        return entries, count, 0
    framed = _ARRAY32.pack(0xDD, count) + entries if 0 <= count <= 0xFFFFFFFF else b""
    if time_format == "event_time":
        try:
            if _all_event_time(_PAIRS.decode(framed)):
                return entries, count, 0
        except msgspec.DecodeError:
            pass
    try:
        _POSITIVE_INT_TIMES.decode(framed)
    except msgspec.DecodeError:
        pass
    else:
        return entries, count, 0
    return _rewrite(entries, received_ns, time_format)


def _rewrite(entries: bytes, received_ns: int, time_format: TimeFormat) -> tuple[bytes, int, int]:
    out: list[bytes] = []
    dropped = 0
    start = 0
    for end in entry_ends(entries):
        raw = entries[start:end]
        start = end
        try:
            t_raw, rec_raw = _PAIR.decode(raw)
        except msgspec.DecodeError:
            dropped += 1
            continue
        rec = bytes(rec_raw)  # Raw is a buffer
        t = bytes(t_raw)
        if not rec or rec[0] not in _MAP_FIRST:
            dropped += 1
            continue
        new_t = _wire_time(t, received_ns, time_format)
        if new_t is None:
            dropped += 1
            continue
        out.append(b"\x92" + new_t + rec)
    return b"".join(out), len(out), dropped


def _wire_time(t: bytes, received_ns: int, time_format: TimeFormat) -> bytes | None:
    """The bytes of one entry's time as ``time_format`` wants it; None when it is no time at all."""
    b0 = t[0]
    if time_format == "event_time":
        if len(t) == 10 and b0 == 0xD7 and t[1] == 0:
            return t
        if (0x01 <= b0 <= 0x7F or b0 in (0xCC, 0xCD, 0xCE, 0xCF)) and msgpack.unpackb(t) > 0:
            return t
    # The model's own reading of a time (every shape a client may send), on an entry with an empty record.
    events, _ = decode_entries(b"\x92" + t + _EMPTY_MAP, received_ns)
    if not events:
        return None
    ns = events[0].time_ns
    if ns < 0:
        return None
    if time_format == "integer":
        return bytes(_pack(ns // _NS))
    if ns // _NS > 0xFFFFFFFF:  # past 2106: EventTime holds 32-bit seconds
        return bytes(_pack(ns // _NS))
    return pack_event_time(ns)
