"""The HELO/PING/PONG handshake (section a, items 34-40) driven through ServerConnection, with PINGs made
the way real clients make them (raw bytes, str or bin salts)."""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack
import pytest

from forwardd.protocol import (
    ClientPolicy,
    EntriesReceived,
    HandshakeCompleted,
    HandshakeFailed,
    Security,
    ServerConnection,
    User,
)
from forwardd.protocol.encode import message
from forwardd.protocol.handshake import ServerHandshake, client_ping, verify_pong

KEY = "k3y"
SEC = Security(self_hostname="srv", shared_key=KEY)
USERS = (User("alice", "pw-a"), User("bob", "pw-b"))
MSG = message("t", 1, {"k": "v"})


def connect(
    security: Security = SEC, peer: str | None = "127.0.0.1"
) -> tuple[ServerConnection, dict[Any, Any]]:
    conn = ServerConnection(security=security, peer_address=peer)
    helo = msgpack.unpackb(conn.initial_bytes(), raw=True)
    assert helo[0] == b"HELO"
    return conn, helo[1]


def ping(helo: dict[Any, Any], key: str = KEY, user: str = "", password: str = "", **kw: Any) -> bytes:
    return client_ping(helo, hostname="cli", shared_key=key, username=user, password=password, **kw)[0]


def test_helo_carries_16_random_bytes_of_nonce_and_auth_salt_and_keepalive() -> None:
    conn, opts = connect()
    _, opts2 = connect()
    assert set(opts) == {b"nonce", b"auth", b"keepalive"}
    assert len(opts[b"nonce"]) == len(opts[b"auth"]) == 16
    assert opts[b"nonce"] != opts2[b"nonce"]
    assert opts[b"keepalive"] is True
    assert conn.initial_bytes()[7:14] == b"\xa5nonce\xc4"  # bin, as Fluentd sends it


def test_deny_keepalive_is_announced_in_helo() -> None:
    _, opts = connect(Security(self_hostname="srv", shared_key=KEY, deny_keepalive=True))
    assert opts[b"keepalive"] is False


def test_good_ping_gets_a_pong_the_client_can_verify_and_events_follow_in_the_same_read() -> None:
    conn, helo = connect()
    data, salt = client_ping(helo, hostname="cli", shared_key=KEY)
    events = conn.receive_data(data + MSG)
    assert isinstance(events[0], HandshakeCompleted)
    assert (events[0].hostname, events[0].username) == ("cli", "")
    pong = msgpack.unpackb(events[0].reply, raw=True)
    assert pong[:4] == [b"PONG", True, b"", b"srv"]
    want = hashlib.sha512(salt + b"srv" + helo[b"nonce"] + KEY.encode()).hexdigest().encode()
    assert pong[4] == want
    assert verify_pong(pong, salt=salt, nonce=helo[b"nonce"], shared_key=KEY)
    assert not verify_pong(pong, salt=salt, nonce=helo[b"nonce"], shared_key="other")
    assert isinstance(events[1], EntriesReceived)
    assert conn.established


def test_ping_split_byte_by_byte_and_heartbeat_before_it() -> None:
    conn, helo = connect()
    data = b"\xc0" + ping(helo) + MSG
    events = [ev for i in range(len(data)) for ev in conn.receive_data(data[i : i + 1])]
    assert [type(e) for e in events] == [HandshakeCompleted, EntriesReceived]


def failure(events: list[Any]) -> str:
    assert len(events) == 1
    (ev,) = events
    assert isinstance(ev, HandshakeFailed)
    assert msgpack.unpackb(ev.reply) == ["PONG", False, ev.reason, "", ""]
    return ev.reason


def test_wrong_shared_key() -> None:
    conn, helo = connect()
    assert failure(conn.receive_data(ping(helo, key="nope") + MSG)) == "shared_key mismatch"
    assert not conn.established


def test_digest_over_another_nonce_is_refused() -> None:
    conn, _ = connect()
    assert failure(conn.receive_data(ping({b"nonce": b"x" * 16}))) == "shared_key mismatch"


@pytest.mark.parametrize(
    ("user", "password", "reason"),
    [
        ("alice", "pw-a", None),
        ("bob", "pw-b", None),
        ("alice", "pw-b", "username/password mismatch"),
        ("carol", "pw-a", "username/password mismatch"),
        ("", "", "username/password mismatch"),
    ],
)
def test_user_auth(user: str, password: str, reason: str | None) -> None:
    conn, helo = connect(Security(self_hostname="srv", shared_key=KEY, user_auth=True, users=USERS))
    events = conn.receive_data(ping(helo, user=user, password=password))
    if reason is None:
        assert isinstance(events[0], HandshakeCompleted)
        assert events[0].username == user
    else:
        assert failure(events) == reason


def test_without_user_auth_username_and_password_are_ignored() -> None:
    """Fluentd clients send '' and a digest (or a user and any digest) even when the server has no users."""
    conn, helo = connect()
    (ev,) = conn.receive_data(ping(helo, user="mallory", password="whatever"))
    assert isinstance(ev, HandshakeCompleted)


NETWORK_SEC = Security(
    self_hostname="srv",
    shared_key=KEY,
    user_auth=True,
    users=USERS,
    clients=(
        ClientPolicy(network="10.0.0.0/8", users=("bob",)),
        ClientPolicy(host="192.0.2.7", shared_key="host-key"),
    ),
)


@pytest.mark.parametrize(
    ("peer", "user", "password", "key", "ok"),
    [
        ("10.1.2.3", "bob", "pw-b", KEY, True),
        ("10.1.2.3", "alice", "pw-a", KEY, False),  # alice is not allowed from 10/8
        ("172.16.0.1", "alice", "pw-a", KEY, True),  # no policy, anonymous allowed: every user
        ("192.0.2.7", "alice", "pw-a", "host-key", True),  # the host's own key
        ("192.0.2.7", "alice", "pw-a", KEY, False),
    ],
)
def test_per_client_users_and_shared_key(peer: str, user: str, password: str, key: str, ok: bool) -> None:
    conn, helo = connect(NETWORK_SEC, peer)
    events = conn.receive_data(ping(helo, key=key, user=user, password=password))
    assert isinstance(events[0], HandshakeCompleted) is ok


def test_anonymous_source_refused() -> None:
    sec = Security(
        self_hostname="srv",
        shared_key=KEY,
        allow_anonymous_source=False,
        clients=(ClientPolicy(network="10.0.0.0/8"),),
    )
    conn, helo = connect(sec, "192.168.1.1")
    assert failure(conn.receive_data(ping(helo))).startswith("anonymous source host '192.168.1.1'")
    conn, helo = connect(sec, "10.0.0.9")
    assert isinstance(conn.receive_data(ping(helo))[0], HandshakeCompleted)
    conn, helo = connect(sec, None)  # a Unix socket peer has no address
    assert failure(conn.receive_data(ping(helo))).startswith("anonymous source host")


def test_event_before_ping_fails_and_is_never_an_event() -> None:
    """The first frame is taken as the PING: an event there is a malformed PING, and nothing fed later
    on that connection ever comes out as events."""
    conn, helo = connect()
    assert failure(conn.receive_data(MSG + ping(helo))) == "PING message is malformed"
    later = conn.receive_data(ping(helo) + MSG)
    assert not any(isinstance(e, (EntriesReceived, HandshakeCompleted)) for e in later)
    assert not conn.established


def test_packedforward_before_ping_is_not_taken_for_a_ping() -> None:
    conn, _ = connect()
    fake = msgpack.packb(["PING", "x" * 3, "salt", "d", "", ""][:2])  # [tag="PING", str]: PackedForward shape
    assert failure(conn.receive_data(fake + MSG)) == "PING message is malformed"


@pytest.mark.parametrize(
    "frame",
    [
        ["PING", "cli", "salt", "digest", ""],  # 5 elements
        ["PING", "cli", "salt", "digest", "", "", ""],  # 7 elements
        ["PONG", "cli", "salt", "digest", "", ""],
        ["PING", 1, "salt", "digest", "", ""],
        ["PING", "cli", None, "digest", "", ""],
    ],
    ids=["5_elements", "7_elements", "not_ping", "int_hostname", "nil_salt"],
)
def test_malformed_ping(frame: list[Any]) -> None:
    conn, _ = connect()
    assert failure(conn.receive_data(msgpack.packb(frame))) == "PING message is malformed"


@pytest.mark.parametrize("salt_type", ["str", "bin"])
@pytest.mark.parametrize("nonce_type", ["str", "bin"])
def test_salts_and_nonces_of_raw_bytes_as_str_or_bin(salt_type: str, nonce_type: str) -> None:
    """Fluent Bit sends its salt (and its HELO nonce) as str holding random bytes: digests are over the
    raw bytes whatever the msgpack type."""
    raw_nonce = bytes(range(240, 256))
    raw_salt = b"\xff\x00\xfe\x80" * 4
    randoms = iter([raw_nonce, b"\x01" * 16])
    conn = ServerConnection(security=SEC)
    conn.handshake = ServerHandshake(SEC, None, urandom=lambda _n: next(randoms))
    helo = msgpack.unpackb(conn.initial_bytes(), raw=True)[1]
    assert helo[b"nonce"] == raw_nonce
    digest = hashlib.sha512(raw_salt + b"cli" + raw_nonce + KEY.encode()).hexdigest()
    packer = msgpack.Packer(use_bin_type=salt_type == "bin")
    frame = b"\x96" + b"".join(packer.pack(x) for x in ("PING", "cli")) + packer.pack(raw_salt)
    frame += b"".join(packer.pack(x) for x in (digest, "", ""))
    (ev,) = conn.receive_data(frame)
    assert isinstance(ev, HandshakeCompleted)
    # The client-side helper takes a HELO decoded with str keys (raw=False) as well.
    conn = ServerConnection(security=SEC)
    randoms = iter([raw_nonce, b"\x01" * 16])
    conn.handshake = ServerHandshake(SEC, None, urandom=lambda _n: next(randoms))
    str_helo = msgpack.unpackb(conn.initial_bytes(), raw=False)[1]
    assert "nonce" in str_helo
    data, _ = client_ping(str_helo, hostname="cli", shared_key=KEY, salt=raw_salt)
    assert isinstance(conn.receive_data(data)[0], HandshakeCompleted)


def test_after_handshake_a_ping_shaped_frame_is_plain_data() -> None:
    conn, helo = connect()
    conn.receive_data(ping(helo))
    (ev,) = conn.receive_data(ping(helo))  # ["PING", "cli", salt-str, ...]: PackedForward of tag PING
    assert not isinstance(ev, (HandshakeCompleted, HandshakeFailed))


# --- the frame limit before the handshake ------------------------------------------------------------------

from forwardd.protocol import Limits, Rejected  # noqa: E402
from forwardd.protocol.encode import packed_forward  # noqa: E402

from .violations import violation  # noqa: E402


@pytest.mark.parametrize(
    ("big_ping", "ends_with"),
    [
        (msgpack.packb(["PING", "h" * 100_000, "s", "d", "", ""]), "frame_too_large"),  # framed as a payload
        (msgpack.packb(["PING", ["h"] * 100_000, "s", "d", "", ""]), "frame_too_large"),
    ],
    ids=["huge-hostname", "huge-array"],
)
def test_before_the_handshake_a_peer_gets_a_ping_s_worth_of_frame(big_ping: bytes, ends_with: Any) -> None:
    """An unauthenticated peer could make forwardd buffer a 64 MiB 'PING'; now 64 KiB at most."""
    conn, _ = connect()
    events: list[Any] = []
    held = 0
    for i in range(0, len(big_ping), 16 * 1024):
        events += conn.receive_data(big_ping[i : i + 16 * 1024])
        held = max(held, conn.buffered)
        if events:
            break
    assert violation(events).reason == ends_with
    assert held < 64 * 1024 + 16 * 1024
    assert conn.receive_data(big_ping[i:]) == []  # and nothing more is read


def test_a_big_packed_forward_before_the_handshake_fails_it_unbuffered() -> None:
    conn, _ = connect()
    frame = packed_forward("t", [(1, {"pad": "x" * 1000})] * 200, chunk="c")
    events: list[Any] = []
    for i in range(0, len(frame), 8192):
        events += conn.receive_data(frame[i : i + 8192])
        assert conn.buffered <= 64 * 1024 + 8192
    # Refused once the pre-handshake limit is read, not streamed past to its end: the peer is not trusted.
    assert violation(events).reason == "frame_too_large"
    assert len(events) == 1
    assert not any(isinstance(e, Rejected) for e in events)  # not acked: the peer is not authenticated


def test_the_limit_before_the_handshake_is_configurable() -> None:
    conn = ServerConnection(security=SEC, limits=Limits(max_handshake_frame_size=1000))
    events = conn.receive_data(msgpack.packb(["PING", ["h"] * 2000, "s", "d", "", ""]))
    assert violation(events).reason == "frame_too_large"
    ok, helo = connect()
    assert [type(e) for e in ok.receive_data(ping(helo))] == [HandshakeCompleted]


def test_what_follows_the_ping_in_the_same_read_gets_the_full_frame_limit() -> None:
    conn, helo = connect()
    big = packed_forward("t", [(1, {"pad": "x" * 1000})] * 200, chunk="c")  # ~200 KB, over 64 KiB
    events = conn.receive_data(ping(helo) + big)
    assert [type(e) for e in events] == [HandshakeCompleted, EntriesReceived]
    assert events[1].chunk.count == 200


def test_a_ping_announcing_a_payload_over_the_limit_fails_once_the_limit_is_read() -> None:
    # A PING whose second element is a 63 MiB bin: before the fix the framer streamed the announced payload
    # past (discard mode, made to ack oversized requests) and waited for the rest, so an unauthenticated
    # peer could hold the connection for the size it claimed and leave no line when it went.
    conn, _ = connect()
    head = b"\x96\xa4PING\xc6" + (63 * 1024 * 1024).to_bytes(4, "big")
    assert conn.receive_data(head) == []
    events: list[Any] = []
    fed = len(head)
    while not events:
        events = conn.receive_data(bytes(8192))
        fed += 8192
        assert fed <= 64 * 1024 + 8192 + len(head)
    assert violation(events).reason == "frame_too_large"
    assert conn.buffered == 0
