"""The sans-IO client (forwardd's forward output speaks through it), against the captures of Fluentd's and
Fluent Bit's own out_forward and against forwardd's own server core.

Golden: given the HELO a capture holds and the salt the client drew, our PING is Fluentd's PING byte for
byte; given the same entries and chunk id, our request is Fluentd's request byte for byte (str32 entries,
option keys size/compressed/chunk). Fluent Bit packs with non-minimal headers, so against its captures
the values are compared, and its digests are reproduced from the captured salts.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from typing import Any

import msgpack
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forwardd.model import EVENT_TIME_EXT, decode_entries, pack_event_time
from forwardd.protocol import EntriesReceived, HandshakeCompleted, Security, ServerConnection, User
from forwardd.protocol.client import (
    HEARTBEAT,
    Acked,
    ClientConnection,
    ClientProtocolError,
    ClientSecurity,
    HandshakeDone,
    HandshakeRefused,
    compress_entries,
    encode_request,
    new_chunk_id,
    wire_entries,
)
from tests.protocol.wire import FLUENTD, fluent_bit_capture, fluentd_capture

NS = 1_000_000_000
FLUENTD_SECURITY = ClientSecurity("fluentd-client", "secret-key")
FLUENTD_USER = ClientSecurity("fluentd-client", "secret-key", "alice", "wonderland")


def _raw(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=True, strict_map_key=False)


def _replay_handshake(conn_capture: Any, security: ClientSecurity) -> tuple[ClientConnection, bytes]:
    """Feed a captured HELO to a client that draws the captured salt; returns it and the PING it sent."""
    captured_ping = _raw(conn_capture.c2s[0])
    salt = captured_ping[2]
    client = ClientConnection(security, salt=lambda: salt)
    assert client.receive_data(conn_capture.s2c[0]) == []
    return client, client.data_to_send()


# --- golden: Fluentd 1.18 -----------------------------------------------------------------------------


@pytest.mark.parametrize(("variant", "security"), [("sk", FLUENTD_SECURITY), ("user", FLUENTD_USER)])
def test_ping_is_fluentds_byte_for_byte(variant: str, security: ClientSecurity) -> None:
    conns = [c for c in fluentd_capture(variant) if c.s2c]
    assert len(conns) >= 3
    for conn in conns:
        client, ping = _replay_handshake(conn, security)
        assert ping == conn.c2s[0], conn.name
        # The captured PONG proves the key: the handshake completes as it did for Fluentd.
        assert client.receive_data(conn.s2c[1]) == [HandshakeDone("fluentd-server", True)]
        assert client.ready


def test_wrong_key_does_not_reproduce_fluentds_ping() -> None:
    """The golden test above can fail: another key gives other bytes, and the PONG is not accepted."""
    conn = fluentd_capture("sk")[0]
    client, ping = _replay_handshake(conn, ClientSecurity("fluentd-client", "other-key"))
    assert ping != conn.c2s[0]
    with pytest.raises(HandshakeRefused, match="does not prove the shared key"):
        client.receive_data(conn.s2c[1])


@pytest.mark.parametrize("variant", ["ack", "plain", "keepalive", "hb-udp", "hb-transport", "timeint"])
def test_request_is_fluentds_byte_for_byte(variant: str) -> None:
    """Same tag, entries, count and chunk id in: Fluentd's request out, to the byte."""
    requests = [m for c in fluentd_capture(variant) for m in c.c2s]
    assert requests
    for data in requests:
        tag, entries, opts = _raw(data)
        chunk = opts.get(b"chunk")
        assert set(opts) <= {b"size", b"compressed", b"chunk"}
        parts = encode_request(tag.decode(), entries, opts[b"size"], chunk_id=chunk)
        assert b"".join(parts) == data
        # Its entries go as they are: EventTime (or integer seconds with time_as_integer).
        fmt = "integer" if variant == "timeint" else "event_time"
        out, n, dropped = wire_entries(entries, opts[b"size"], 0, fmt)
        assert out is entries
        assert n == opts[b"size"]
        assert dropped == 0


def test_gzip_request_has_fluentds_shape() -> None:
    """Fluentd gzips each event into its own member; ours is one member. Same options, same events."""
    for conn in fluentd_capture("gzip") + fluentd_capture("all"):
        for data in conn.c2s:
            value = _raw(data)
            if value[0] == b"PING":
                continue
            tag, payload, opts = value
            entries = gzip.decompress(payload)
            ours = b"".join(
                encode_request(
                    tag.decode(),
                    compress_entries(entries, "gzip"),
                    opts[b"size"],
                    compressed="gzip",
                    chunk_id=opts.get(b"chunk"),
                )
            )
            assert data[:1] == ours[:1] == b"\x93"
            o_tag, o_payload, o_opts = _raw(ours)
            assert o_tag == tag
            assert o_opts == opts
            assert list(o_opts) == list(opts), "option keys in Fluentd's order"
            assert gzip.decompress(o_payload) == entries
            assert ours[ours.index(o_payload) - 5] == 0xDB, "str32 payload, as Fluentd"


def test_udp_heartbeat_is_fluentds_datagram() -> None:
    text = (FLUENTD / "hb-udp.txt").read_text()
    sent = re.findall(r"^\+[\d.]+s c2s \S+ \d+\): hex (\S+)$", text, re.M)
    assert len(sent) >= 3
    assert {bytes.fromhex(h) for h in sent} == {HEARTBEAT}


# --- golden: Fluent Bit 4.2.8 -------------------------------------------------------------------------


@pytest.mark.parametrize("stem", ["sk-n2-conn1", "sk-n3-conn1"])
def test_fluent_bit_handshake_digests(stem: str) -> None:
    """Fluent Bit's salt is 16 raw bytes as a str; with it our PING carries Fluent Bit's digests."""
    conn = fluent_bit_capture(stem)
    helo = _raw(conn.s2c[0])
    captured = _raw(conn.c2s[0])
    salt = captured[2]
    client = ClientConnection(ClientSecurity("flb-client", "secret-shared-key"), salt=lambda: salt)
    u = msgpack.Unpacker(raw=True)
    u.feed(b"".join(conn.s2c))
    helo, pong = list(u)[:2]
    client.receive_data(msgpack.packb(helo))
    ours = _raw(client.data_to_send())
    assert ours == captured, "same six values: PING, host, salt, key digest, user '', password digest"
    assert client.receive_data(msgpack.packb(pong)) == [HandshakeDone("flb-server", True)]


def test_fluent_bit_option_keys_are_a_superset_of_ours() -> None:
    """Fluent Bit with acks sends chunk and size (plus fluent_signal, which a receiver may ignore)."""
    conn = fluent_bit_capture("ack-n2-conn1")
    _, _, opts = _raw(conn.c2s[0])
    ours = _raw(b"".join(encode_request("t", b"", 0, chunk_id=new_chunk_id())))[2]
    assert set(ours) - {b"compressed"} <= set(opts)
    assert len(opts[b"chunk"]) == len(ours[b"chunk"]) == 24, "16 random bytes, base64, no newline"


# --- against forwardd's own server core ---------------------------------------------------------------


def _pair(
    security: Security | None, client_security: ClientSecurity | None
) -> tuple[ServerConnection, ClientConnection]:
    server = ServerConnection(security=security, peer_address="127.0.0.1")
    client = ClientConnection(client_security)
    hello = server.initial_bytes()
    if hello:
        client.receive_data(hello)
    return server, client


def test_handshake_and_ack_with_forwardds_server() -> None:
    sec = Security(self_hostname="agg", shared_key="k", user_auth=True, users=(User("bob", "pw"),))
    server, client = _pair(sec, ClientSecurity("agent", "k", "bob", "pw"))
    (done,) = server.receive_data(client.data_to_send())
    assert isinstance(done, HandshakeCompleted)
    assert done.username == "bob"
    assert client.receive_data(done.reply) == [HandshakeDone("agg", True)]
    entries = b"".join(b"\x92" + pack_event_time(i * NS + 7) + msgpack.packb({"i": i}) for i in range(1, 4))
    parts, chunk = client.request("app.x", entries, 3)
    assert client.awaiting == 1
    (got,) = server.receive_data(b"".join(parts))
    assert isinstance(got, EntriesReceived)
    assert got.chunk.tag == "app.x"
    assert got.chunk.entries == entries
    assert got.chunk.count == 3
    assert got.ack is not None
    assert client.receive_data(got.ack) == [Acked(chunk)]  # type: ignore[arg-type]
    assert client.awaiting == 0


@pytest.mark.parametrize("compressed", ["gzip", "zstd"])
def test_compressed_requests_decode_in_forwardds_server(compressed: str) -> None:
    server, client = _pair(None, None)
    entries = b"".join(b"\x92" + pack_event_time(i * NS) + msgpack.packb({"i": i}) for i in range(1, 50))
    parts, _ = client.request("z", compress_entries(entries, compressed), 49, compressed=compressed)  # type: ignore[arg-type]
    (got,) = server.receive_data(b"".join(parts))
    assert isinstance(got, EntriesReceived)
    assert got.chunk.entries == entries
    assert got.chunk.count == 49


def test_zstd_payload_is_a_zstd_frame() -> None:
    assert zstandard.ZstdDecompressor().decompress(compress_entries(b"abc" * 100, "zstd")) == b"abc" * 100


def test_surrogate_tag_goes_as_its_bytes() -> None:
    """A tag that arrived as invalid UTF-8 (decoded with surrogateescape) leaves as the same bytes."""
    server, client = _pair(None, None)
    tag = b"bad.\xff\xfe".decode("utf-8", "surrogateescape")
    parts, _ = client.request(tag, b"\x92\x01\x80", 1)
    (got,) = server.receive_data(b"".join(parts))
    assert isinstance(got, EntriesReceived)
    assert got.chunk.tag == tag


# --- what the receiver may answer ---------------------------------------------------------------------


def test_helo_without_a_shared_key_is_an_error() -> None:
    client = ClientConnection(None)
    helo = msgpack.packb(["HELO", {"nonce": b"n" * 16, "auth": b"", "keepalive": True}])
    with pytest.raises(ClientProtocolError, match="unexpected HELO"):
        client.receive_data(helo)
    with pytest.raises(ClientProtocolError, match="already failed"):
        client.receive_data(b"")


def test_refused_pong_names_the_reason() -> None:
    sec = Security(self_hostname="agg", shared_key="right")
    server, client = _pair(sec, ClientSecurity("agent", "wrong"))
    (failed,) = server.receive_data(client.data_to_send())
    with pytest.raises(HandshakeRefused, match="shared_key mismatch"):
        client.receive_data(failed.reply)  # type: ignore[union-attr]


def test_pong_from_a_server_without_the_key_is_refused() -> None:
    """A receiver that says PONG true but cannot prove the key (a man in the middle) is not trusted."""
    client = ClientConnection(ClientSecurity("agent", "k"))
    client.receive_data(msgpack.packb(["HELO", {"nonce": b"n" * 16, "auth": b"a" * 16}]))
    client.data_to_send()
    with pytest.raises(HandshakeRefused):
        client.receive_data(msgpack.packb(["PONG", True, "", "evil", "0" * 128]))


def test_helo_without_keepalive_key_means_keepalive_and_false_means_one_reply() -> None:
    for opts, keepalive in (({"nonce": b"n"}, True), ({"nonce": b"n", "keepalive": False}, False)):
        client = ClientConnection(ClientSecurity("agent", "k"))
        client.receive_data(msgpack.packb(["HELO", opts]))
        assert client.keepalive is keepalive


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        ({}, "without an ack"),
        ({"ack": "never-sent"}, "not sent"),
        ([1, 2], "expected an ack map"),
        (["PONG", True, "", "x", "y"], "unexpected PONG"),
    ],
)
def test_unexpected_replies_fail_the_connection(reply: Any, match: str) -> None:
    client = ClientConnection(None)
    client.request("t", b"\x92\x01\x80", 1)
    with pytest.raises(ClientProtocolError, match=match):
        client.receive_data(msgpack.packb(reply))
    assert client.state == "failed"


def test_garbage_and_floods_fail_the_connection() -> None:
    with pytest.raises(ClientProtocolError, match="not msgpack"):
        ClientConnection(None).receive_data(b"\xc1")
    with pytest.raises(ClientProtocolError, match="no reply"):
        ClientConnection(None).receive_data(b"\xdb\x00\x10\x00\x00" + b"x" * 70000)


def test_acks_match_by_id_in_any_order_and_split_across_reads() -> None:
    client = ClientConnection(None)
    _, a = client.request("t", b"\x92\x01\x80", 1)
    _, b = client.request("t", b"\x92\x01\x80", 1)
    data = msgpack.packb({"ack": b.decode()}) + msgpack.packb({"ack": a.decode()})  # type: ignore[union-attr]
    events = [ev for byte in range(len(data)) for ev in client.receive_data(data[byte : byte + 1])]
    assert events == [Acked(b), Acked(a)]  # type: ignore[arg-type]


def test_no_request_before_the_handshake() -> None:
    with pytest.raises(RuntimeError, match="handshake"):
        ClientConnection(ClientSecurity("a", "k")).request("t", b"", 0)


def test_ping_without_auth_salt_sends_empty_user_fields() -> None:
    client = ClientConnection(ClientSecurity("agent", "k", "bob", "pw"), salt=lambda: b"s" * 32)
    client.receive_data(msgpack.packb(["HELO", {"nonce": b"n" * 16, "auth": b""}]))
    ping = _raw(client.data_to_send())
    assert ping[4:] == [b"", b""]
    assert ping[3].decode() == hashlib.sha512(b"s" * 32 + b"agent" + b"n" * 16 + b"k").hexdigest()


# --- entries as they go out ---------------------------------------------------------------------------


def _entry(t: bytes, record: dict[str, Any]) -> bytes:
    return b"\x92" + t + msgpack.packb(record)


RECEIVED = 1_700_000_000 * NS + 5


@pytest.mark.parametrize(
    ("time_bytes", "want_ns"),
    [
        (msgpack.packb(1_600_000_000), 1_600_000_000 * NS),
        (pack_event_time(1_600_000_000 * NS + 12), 1_600_000_000 * NS + 12),
        (msgpack.packb(1_600_000_000.25), 1_600_000_000 * NS + 250_000_000),
        (msgpack.packb(None), RECEIVED),
        (msgpack.packb(0), RECEIVED),
        (b"\x92" + pack_event_time(1_600_000_000 * NS + 3) + b"\x80", 1_600_000_000 * NS + 3),
        (b"\xc7\x08\x00" + pack_event_time(1_600_000_000 * NS + 9)[2:], 1_600_000_000 * NS + 9),
    ],
    ids=["int", "eventtime", "float", "nil", "zero", "wrapped", "ext8"],
)
def test_every_time_shape_goes_out_as_int_or_eventtime(time_bytes: bytes, want_ns: int) -> None:
    record = {"log": "x", "n": [1, {"a": b"\xff"}]}
    entries = _entry(time_bytes, record) + _entry(pack_event_time(2 * NS), {"b": 1})
    out, n, dropped = wire_entries(entries, 2, RECEIVED, "event_time")
    assert (n, dropped) == (2, 0)
    events, invalid = decode_entries(out, 0)
    assert invalid == 0
    assert [e.time_ns for e in events] == [want_ns, 2 * NS]
    assert [e.meta for e in events] == [None, None], "the v1.5 wrapper is taken off"
    assert msgpack.packb(record) in out, "record bytes untouched"
    u = msgpack.Unpacker(raw=True, strict_map_key=False)
    u.feed(out)
    first = next(u)[0]
    assert type(first) is int or (isinstance(first, msgpack.ExtType) and first.code == EVENT_TIME_EXT)
    ints, _, _ = wire_entries(entries, 2, RECEIVED, "integer")
    assert [e.time_ns for e in decode_entries(ints, 0)[0]] == [want_ns // NS * NS, 2 * NS]
    same, _, _ = wire_entries(entries, 2, RECEIVED, "as_received")
    assert same is entries


def test_entries_that_are_no_event_are_dropped_and_counted() -> None:
    good = _entry(pack_event_time(NS), {"a": 1})
    entries = (
        good
        + msgpack.packb([1, 2, 3])
        + _entry(msgpack.packb(1), [1])
        + _entry(msgpack.packb("t"), {})
        + good
    )
    out, n, dropped = wire_entries(entries, 5, RECEIVED, "event_time")
    assert (out, n, dropped) == (good + good, 2, 3)


def test_a_tail_that_does_not_frame_is_dropped() -> None:
    good = _entry(pack_event_time(NS), {"a": 1})
    out, n, dropped = wire_entries(good + b"\x92\xd7", 2, RECEIVED, "event_time")
    assert (out, n, dropped) == (good, 1, 1)


_times = st.one_of(
    st.integers(1, 2**32 - 1).map(msgpack.packb),
    st.integers(0, 2**32 * NS - 1).map(pack_event_time),
    st.floats(1, 4e9).map(msgpack.packb),
    st.just(msgpack.packb(None)),
    st.just(msgpack.packb(0)),
    st.integers(1, 2**32 - 1).map(lambda s: b"\x92" + pack_event_time(s * NS) + b"\x81\xa1m\x01"),
)
_records = st.dictionaries(
    st.text(max_size=5),
    st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(), st.binary(max_size=5)),
    max_size=4,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_times, _records), max_size=20))
def test_property_wire_entries_keep_every_event_and_its_time(
    items: list[tuple[bytes, dict[str, Any]]],
) -> None:
    entries = b"".join(_entry(t, r) for t, r in items)
    before, _ = decode_entries(entries, RECEIVED)
    for fmt in ("event_time", "integer"):
        out, n, dropped = wire_entries(entries, len(items), RECEIVED, fmt)  # type: ignore[arg-type]
        after, invalid = decode_entries(out, 0)
        assert (n, dropped, invalid) == (len(items), 0, 0)
        assert [e.record for e in after] == [e.record for e in before]
        if fmt == "event_time":
            assert [e.time_ns for e in after] == [e.time_ns for e in before]
        else:
            assert [e.time_ns for e in after] == [e.time_ns // NS * NS for e in before]
