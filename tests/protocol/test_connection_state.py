"""The connection's state machine (h11's shape): HANDSHAKE -> ESTABLISHED -> CLOSED, moved only by the
events handed out, as forwardd.protocol.connection.TRANSITIONS says; in each state only the events of
ALLOWED come out, and once CLOSED nothing more does."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forwardd.protocol import (
    HandshakeCompleted,
    HandshakeFailed,
    Limits,
    ProtocolViolation,
    Security,
    ServerConnection,
)
from forwardd.protocol.connection import ALLOWED, TRANSITIONS, ConnState
from forwardd.protocol.encode import message, packed_forward
from forwardd.protocol.handshake import ServerHandshake, client_ping

from .test_properties import cuts_for, frames

SEC = Security(self_hostname="srv", shared_key="k")
NONCE = b"n" * 16
PING = client_ping({b"nonce": NONCE, b"auth": NONCE}, hostname="c", shared_key="k", salt=b"s" * 16)[0]
BAD_PING = client_ping({b"nonce": NONCE, b"auth": NONCE}, hostname="c", shared_key="nope", salt=b"s" * 16)[0]
SMALL = Limits(inline_request_size=200)  # so that big requests (PayloadReceived) come out too
BIG = packed_forward("t", [(1, {"pad": "x" * 300})], chunk="b")


def connection(secure: bool) -> ServerConnection:
    conn = ServerConnection(limits=SMALL, security=SEC if secure else None)
    if secure:
        conn.handshake = ServerHandshake(SEC, "127.0.0.1", urandom=lambda n: NONCE)
    return conn


def drive(conn: ServerConnection, reads: list[bytes]) -> list[tuple[ConnState, Any, ConnState]]:
    """Feed the reads; check each event against the machine; return (state before, event, state after)."""
    seen = []
    for data in reads:
        before = conn.state
        events = conn.receive_data(data)
        state = before
        for ev in events:
            assert type(ev) in ALLOWED[state], (state, ev)
            after = TRANSITIONS.get((state, type(ev)), state)
            seen.append((state, type(ev), after))
            state = after
        assert conn.state is state  # the connection moved exactly as the table says
        if before is ConnState.CLOSED:
            assert events == []
    return seen


CASES: dict[str, tuple[bool, list[bytes]]] = {
    "handshake-ok": (True, [PING]),
    "handshake-ok-then-requests": (True, [PING + message("t", 1, {}, chunk="a"), b"\xc0", BIG, b"\xc1"]),
    "handshake-refused": (True, [BAD_PING, message("t", 1, {})]),
    "request-before-ping": (True, [message("t", 1, {})]),
    "garbage-before-ping": (True, [b"\xc0\xc1", PING]),
    "requests": (False, [message("t", 1, {}), packed_forward("t", [(1, {})], compressed="lz4"), BIG]),
    "garbage": (False, [message("t", 1, {}) + b"\x81\xa1a\x01", message("t", 1, {})]),
}


def test_every_transition_and_every_allowed_event_is_reachable() -> None:
    """The table is not bigger than what a peer can do: each entry is taken by some input."""
    taken: set[tuple[ConnState, type]] = set()
    for secure, reads in CASES.values():
        taken |= {(before, kind) for before, kind, _ in drive(connection(secure), reads)}
    assert set(TRANSITIONS) <= taken
    assert {(s, kind) for s, kinds in ALLOWED.items() for kind in kinds} == taken
    assert ALLOWED[ConnState.CLOSED] == frozenset()


@pytest.mark.parametrize("name", list(CASES))
def test_each_case_ends_where_the_table_says(name: str) -> None:
    secure, reads = CASES[name]
    conn = connection(secure)
    seen = drive(conn, reads)
    expected = {
        "handshake-ok": ConnState.ESTABLISHED,
        "requests": ConnState.ESTABLISHED,
    }.get(name, ConnState.CLOSED)
    assert conn.state is expected
    assert conn.established is (expected is ConnState.ESTABLISHED)
    assert sum(kind is HandshakeCompleted for _, kind, _ in seen) <= 1


@st.composite
def streams(draw: st.DrawFn) -> tuple[bool, bytes]:
    secure = draw(st.booleans())
    parts = draw(
        st.lists(st.one_of(frames(), st.sampled_from([PING, BAD_PING, BIG, b"\xc1", b"\xc0"])), max_size=6)
    )
    if secure and draw(st.booleans()):
        parts.insert(0, PING)
    return secure, b"".join(parts)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.data())
def test_any_stream_moves_the_state_only_as_the_table_says(stream: tuple[bool, bytes], data: Any) -> None:
    secure, blob = stream
    cuts = sorted(set(data.draw(cuts_for(blob))))
    reads = [blob[a:b] for a, b in itertools.pairwise([0, *cuts, len(blob)])]
    conn = connection(secure)
    seen = drive(conn, [*reads, b"\xc0"])  # one more read: nothing comes out of a closed connection
    kinds = [kind for _, kind, _ in seen]
    assert kinds.count(ProtocolViolation) + kinds.count(HandshakeFailed) <= 1
    assert kinds.count(HandshakeCompleted) <= (1 if secure else 0)
    if conn.state is ConnState.CLOSED:  # and what closed it was the last thing said
        assert kinds[-1] in (ProtocolViolation, HandshakeFailed)
