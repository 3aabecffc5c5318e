"""Golden tests from real client traffic (tests/data/wire-samples): every capture is fed to our protocol
core, as the client's reads came and one byte at a time; the events must be the ones the capture lists
and our acks/PONGs the reference receiver's bytes, byte for byte.

Handshake captures are replayed with the capture's own nonce and auth salt (``urandom`` injected) and
the secrets the clients used: Fluentd ``secret-key`` (user alice/``wonderland``), Fluent Bit
``secret-shared-key``, node ``s3cr3t``; those were recovered by checking the captured PING digests, which
this file does again. The passwords of the Fluent Bit and node user captures are unknown, so those two
are replayed with ``user_auth`` off (the spec then ignores username and password): the shared-key digest
and our PONG are still checked byte for byte.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any

import msgpack
import pytest

from forwardd.protocol import (
    EntriesReceived,
    HandshakeCompleted,
    Security,
    ServerConnection,
    User,
)
from forwardd.protocol.handshake import ServerHandshake
from tests.protocol.wire import (
    CLIENT_NAMES,
    CLIENTS,
    FLUENT_BIT_STEMS,
    FLUENTD_VARIANTS,
    Conn,
    Expected,
    as_json_line,
    client_capture,
    fluent_bit_capture,
    fluentd_capture,
    read_xxd,
)

from .violations import violation

RECEIVED_NS = 1_000_000_000_000_000_000

FLUENTD_SECURITY = Security(
    self_hostname="fluentd-server", shared_key="secret-key", users=(User("alice", "wonderland"),)
)
FLUENT_BIT_SECURITY = Security(self_hostname="flb-server", shared_key="secret-shared-key")
NODE_SECURITY = Security(self_hostname="refrecv.localdomain", shared_key="s3cr3t")


def byte_by_byte(pieces: Iterable[bytes]) -> list[bytes]:
    data = b"".join(pieces)
    return [data[i : i + 1] for i in range(len(data))]


SPLITS: dict[str, Callable[[list[bytes]], list[bytes]]] = {"as_read": list, "byte_by_byte": byte_by_byte}


def _messages(data: bytes) -> list[bytes]:
    u = msgpack.Unpacker(None, raw=True)
    u.feed(data)
    out, pos = [], 0
    for _ in u:
        out.append(data[pos : u.tell()])
        pos = u.tell()
    return out


def replay(
    cap: Conn, split: str, security: Security | None = None, user_auth: bool = False
) -> tuple[list[Any], bytes, bytes]:
    """Feed a capture; returns (events, what we would send first, every reply we would send)."""
    conn = ServerConnection(security=security, peer_address="127.0.0.1", clock_ns=lambda: RECEIVED_NS)
    if security is not None:
        helo = msgpack.unpackb(cap.s2c[0], raw=True)[1]
        randoms = iter([helo[b"nonce"], helo[b"auth"]])
        sec = Security(
            self_hostname=security.self_hostname,
            shared_key=security.shared_key,
            users=security.users,
            user_auth=user_auth,
        )
        conn.handshake = ServerHandshake(sec, "127.0.0.1", urandom=lambda _n: next(randoms))
    events: list[Any] = []
    for piece in SPLITS[split](cap.c2s):
        events += conn.receive_data(piece)
    replies = b"".join(
        ev.reply if isinstance(ev, HandshakeCompleted) else (ev.ack or b"")
        for ev in events
        if isinstance(ev, (HandshakeCompleted, EntriesReceived))
    )
    return events, conn.initial_bytes(), replies


def decoded(events: list[Any]) -> list[tuple[str, int, dict[Any, Any], Any]]:
    out = []
    for ev in events:
        if isinstance(ev, EntriesReceived):
            evs = ev.chunk.events()
            assert ev.chunk.invalid == 0
            assert ev.chunk.count == len(evs)
            out += [(ev.chunk.tag, e.time_ns, e.record, e.meta) for e in evs]
    return out


def assert_matches(got: list[tuple[str, int, dict[Any, Any], Any]], expected: list[Expected]) -> None:
    for (tag, ns, record, _meta), exp in zip(got, expected, strict=False):
        if exp.json_prefix is not None:
            assert as_json_line(tag, ns, record).startswith(exp.json_prefix)
            continue
        if exp.tag is not None:
            assert tag == exp.tag
        assert record == exp.record
        if exp.time_ns is not None:
            assert ns == exp.time_ns
        else:
            assert ns / 1e9 == pytest.approx(exp.time_s, abs=1e-6)


# --- clients/: docker, fluent-logger for Go, node, Python ---------------------------------------------

PLAIN_CLIENTS = [n for n in CLIENT_NAMES if n not in ("go-json-ack", "node-handshake-packedforward-ack")]


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("name", PLAIN_CLIENTS)
def test_client_capture_decodes_and_acks_like_the_reference(name: str, split: str) -> None:
    cap = client_capture(name)
    events, first, replies = replay(cap, split)
    assert first == b""
    got = decoded(events)
    if cap.events:
        assert len(got) == len(cap.events)
        assert_matches(got, cap.events)
    if cap.event_times_ns:
        assert [ns for _, ns, _, _ in got] == cap.event_times_ns
    assert replies == b"".join(cap.s2c)


def test_docker_swarm_service_tags_with_dots_and_colons_are_kept() -> None:
    cap = client_capture("dockerd-swarm-service")
    got = decoded(replay(cap, "as_read")[0])
    assert [r["log"] for _, _, r, _ in got] == ["1", "2"]
    assert all(t.startswith("swarm.kit-busybox:latest.kitsvc2.1.") for t, _, _, _ in got)
    assert [ns for _, ns, _, _ in got] == [1795402647_856440860, 1795402647_856623100]
    assert got[0][2]["com.docker.swarm.service.id"] == "jo1hlw3a59in3di7iij5kc42v"


def test_docker_sends_int_times_string_values_and_empty_options() -> None:
    cap = client_capture("dockerd-default")
    assert all(m.endswith(b"\x80") and m[0] == 0x94 for m in cap.c2s)  # [tag, int, {...}, {}]
    got = decoded(replay(cap, "as_read")[0])
    assert all(isinstance(v, str) for _, _, r, _ in got for v in r.values())
    assert all(ns % 1_000_000_000 == 0 for _, ns, _, _ in got)


def test_json_mode_is_off_by_default() -> None:
    """JSON mode (item 7) is optional and off unless a source asks for it: ``[`` is then not msgpack."""
    cap = client_capture("go-json-ack")
    assert cap.client_bytes.startswith(b'["kit.go",')
    assert violation(ServerConnection().receive_data(cap.client_bytes)).reason == "not_an_array"


@pytest.mark.parametrize("split", SPLITS)
def test_json_mode_of_fluent_logger_golang_decodes_and_acks_as_fluentd_did(split: str) -> None:
    """fluent-logger-golang with MarshalAsJSON and RequestAck, against json_mode: the events the capture
    lists, and acks in JSON byte for byte as Fluentd sent them (items 7 and 29)."""
    cap = client_capture("go-json-ack")
    conn = ServerConnection(json_mode=True, clock_ns=lambda: RECEIVED_NS)
    events: list[Any] = []
    for piece in SPLITS[split](cap.c2s):
        events += conn.receive_data(piece)
    assert conn.json
    got = [(t, ns, r) for t, ns, r, _ in decoded(events)]
    assert got == [(e.tag, int(e.time_s * 1e9) if e.time_s else None, e.record) for e in cap.events]
    replies = b"".join(ev.ack for ev in events if isinstance(ev, EntriesReceived) and ev.ack)
    assert replies == read_xxd(CLIENTS / "go-json-ack.s2c.hex")


@pytest.mark.parametrize("split", SPLITS)
def test_node_handshake_user_packedforward_ack(split: str) -> None:
    cap = client_capture("node-handshake-packedforward-ack")
    ref = cap.s2c  # HELO, PONG, ack
    ping = msgpack.unpackb(cap.c2s[0], raw=True)
    nonce = msgpack.unpackb(ref[0], raw=True)[1][b"nonce"]
    assert hashlib.sha512(ping[2] + ping[1] + nonce + b"s3cr3t").hexdigest().encode() == ping[3]
    events, helo, replies = replay(cap, split, NODE_SECURITY)
    assert helo == ref[0]  # same HELO bytes: bin nonce and auth, keepalive true
    assert isinstance(events[0], HandshakeCompleted)
    assert (events[0].hostname, events[0].username) == ("forwardd-kit-node.localdomain", "alice")
    assert replies == ref[1] + ref[2]
    got = decoded(events)
    assert len(got) == 2
    assert_matches(got, cap.events)


# --- Fluentd 1.18 out_forward -------------------------------------------------------------------------

FLUENTD_CONNS = [c for v in FLUENTD_VARIANTS for c in fluentd_capture(v)]


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("cap", FLUENTD_CONNS, ids=lambda c: c.name)
def test_fluentd_capture(cap: Conn, split: str) -> None:
    handshake = bool(cap.s2c) and cap.s2c[0].startswith(b"\x92\xa4HELO")
    user_auth = handshake and msgpack.unpackb(cap.c2s[0], raw=True)[4] == b"alice"
    events, first, replies = replay(cap, split, FLUENTD_SECURITY if handshake else None, user_auth)
    if handshake:
        assert first == cap.s2c[0]
        assert isinstance(events[0], HandshakeCompleted)
        assert events[0].username == ("alice" if user_auth else "")
    else:
        assert first == b""
    assert replies == b"".join(cap.s2c[1:] if handshake else cap.s2c)
    got = decoded(events)
    assert len(got) == len(cap.events)
    assert_matches(got, cap.events)
    assert all(tag == "test.fwd" for tag, _, _, _ in got)


def test_fluentd_sends_str32_entries_text_compression_and_newline_chunk_ids() -> None:
    cap = fluentd_capture("ack")[0]
    assert cap.c2s[0][10] == 0xDB  # str32 payload
    assert b"\xaacompressed\xa4text" in cap.c2s[0]
    events, _, replies = replay(cap, "as_read")
    assert events[0].mode == "packed_forward"
    assert replies.endswith(b"==\n")


def test_fluentd_gzip_payload_is_several_members() -> None:
    cap = fluentd_capture("gzip")[0]
    assert cap.c2s[0].count(b"\x1f\x8b\x08") == 2
    events, _, _ = replay(cap, "as_read")
    assert events[0].mode == "compressed_packed_forward"
    assert [r["seq"] for _, _, r, _ in decoded(events)] == [1, 2]


def test_fluentd_wrong_shared_key_is_refused_with_a_failure_pong() -> None:
    cap = fluentd_capture("sk")[0]
    wrong = Security(self_hostname="fluentd-server", shared_key="not-the-key")
    events, _, _ = replay(cap, "as_read", wrong)
    assert events[0].reason == "shared_key mismatch"
    assert msgpack.unpackb(events[0].reply) == ["PONG", False, "shared_key mismatch", "", ""]
    assert not any(isinstance(e, EntriesReceived) for e in events)


def test_fluentd_wrong_password_is_refused() -> None:
    cap = fluentd_capture("user")[0]
    wrong = Security(self_hostname="fluentd-server", shared_key="secret-key", users=(User("alice", "x"),))
    events, _, _ = replay(cap, "as_read", wrong, user_auth=True)
    assert events[0].reason == "username/password mismatch"
    # The events fed after the failure (a later read) never come out as events.
    assert not any(isinstance(e, EntriesReceived) for e in events)


# --- Fluent Bit 4.2.8 out_forward ---------------------------------------------------------------------


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("stem", FLUENT_BIT_STEMS)
def test_fluent_bit_capture(stem: str, split: str) -> None:
    cap = fluent_bit_capture(stem)
    handshake = bool(cap.s2c) and cap.s2c[0].startswith(b"\x92\xa4HELO")
    events, _, replies = replay(cap, split, FLUENT_BIT_SECURITY if handshake else None)
    if handshake:
        u = msgpack.Unpacker(raw=True)
        u.feed(cap.client_bytes)
        ping = next(u)
        nonce = msgpack.unpackb(cap.s2c[0], raw=True)[1][b"nonce"]
        assert cap.client_bytes[cap.client_bytes.index(ping[1]) + len(ping[1])] == 0xB0  # salt: fixstr(16)
        assert len(ping[2]) == 16  # of raw random bytes
        key = b"secret-shared-key"
        assert hashlib.sha512(ping[2] + ping[1] + nonce + key).hexdigest().encode() == ping[3]
        assert isinstance(events[0], HandshakeCompleted)
    assert replies == b"".join(cap.s2c[1:] if handshake else cap.s2c)
    got = decoded(events)
    assert len(got) == cap.entry_count
    assert_matches(got, cap.events)
    variant = stem.split("-n")[0]
    assert all(tag == ("fbmsg." if variant.startswith("message") else "fb.") + variant for tag, *_ in got)
    assert [r["seq"] for _, _, r, _ in got] == list(range(cap.entry_count or 0))
    if variant == "retain":
        assert all(meta == {} for *_, meta in got)
    else:
        assert all(meta is None for *_, meta in got)


def test_fluent_bit_uses_non_minimal_headers_and_the_same_chunk_id_per_message() -> None:
    plain = fluent_bit_capture("plain-n2-conn1").client_bytes
    assert plain.startswith(b"\x92\xa8fb.plain\x92\xdd\x00\x00\x00\x02")  # array32 entries
    msg = fluent_bit_capture("message-ack-n3-conn1")
    events, _, _ = replay(msg, "as_read")
    assert len({e.ack for e in events}) == 1
    assert all(e.mode == "message" for e in events)
