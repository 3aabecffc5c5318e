"""Memory a connection holds is released when it closes, without waiting for the cycle collector.

Before, a session kept a bound method of itself (and with it its decoder's frame buffers) in a reference
cycle: three rounds of four unauthenticated ~63 MiB PING frames left RSS at 0.85, 1.57 and 2.37 GB. These
tests close connections in every way they can end, with the cycle collector off, and check that the
session, its protocol connection, its decoder and its framer are gone.
"""

from __future__ import annotations

import gc
import socket
import struct
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest

from forwardd.protocol import Limits, Security, encode

from .support import HeldIngest, Served, wait_until


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def refs_of_the_session(served: Served) -> list[weakref.ref[Any]]:
    def grab() -> list[weakref.ref[Any]]:
        [session] = served.listener.sessions
        conn = session.conn
        assert conn is not None
        return [weakref.ref(x) for x in (session, conn, conn.decoder, conn.decoder.framer)]

    return served.lt.call(grab)


def assert_freed(served: Served, refs: list[weakref.ref[Any]]) -> None:
    wait_until(lambda: not served.listener.sessions, what="the session to close")
    # The loop may still hold the session for a callback or two; it must not hold it for long.
    wait_until(lambda: all(r() is None for r in refs), timeout=5, what=f"{[r() for r in refs]} to be freed")


def wait_open(served: Served) -> None:
    wait_until(lambda: len(served.listener.sessions) == 1, what="the session")


def closed_by_the_client_mid_frame(served: Served) -> None:
    with served.client() as c:
        c.message("t", {"n": 1}, ack=True)
        wait_open(served)
        refs = refs_of_the_session(served)
        c.send(encode.message("t", 1, {"log": "x" * 100_000})[:60_000])  # half a frame, held
        wait_until(lambda: served.stats.bytes > 60_000, what="the half frame")
    assert_freed(served, refs)


def closed_after_a_protocol_error(served: Served) -> None:
    with served.client() as c:
        c.message("t", {"n": 1}, ack=True)
        wait_open(served)
        refs = refs_of_the_session(served)
        c.send(b"\xc1")
        assert c.closed_by_server(5)
    assert_freed(served, refs)


def closed_with_acks_owed(served: Served) -> None:
    ingest = served.listener.ingest
    assert isinstance(ingest, HeldIngest)
    with served.client() as c:
        c.send(encode.message("t", 1, {"n": 1}, chunk="never"))
        ingest.wait(1)
        refs = refs_of_the_session(served)
        # A reset, not a half-close (after which the session would wait to send the ack).
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert_freed(served, refs)  # the acceptance it waits on outlives it, and must not hold it
    assert not ingest.futures[0].done()


def closed_with_a_big_request_in_flight(served: Served) -> None:
    with served.client() as c:
        c.message("t", {"n": 1}, ack=True)
        wait_open(served)
        refs = refs_of_the_session(served)
        c.send(
            encode.packed_forward("t", bytes(8 * 1024 * 1024), chunk="big", options={"compressed": "gzip"})
        )
    assert_freed(served, refs)


def closed_by_a_failed_handshake(served: Served) -> None:
    with served.client() as c:
        wait_open(served)
        refs = refs_of_the_session(served)
        c.read_value()  # the HELO
        c.send(msgpack.packb(["PING", "h", "salt", "wrong digest", "", ""]))
        c.read_value()  # the failure PONG
        assert c.closed_by_server(5)
    assert_freed(served, refs)


CASES: dict[str, tuple[Callable[[Served], None], dict[str, Any]]] = {
    "mid-frame": (closed_by_the_client_mid_frame, {}),
    "protocol-error": (closed_after_a_protocol_error, {}),
    "acks-owed": (closed_with_acks_owed, {"held": True}),
    "big-request": (closed_with_a_big_request_in_flight, {"limits": Limits(inline_request_size=4096)}),
    "handshake": (closed_by_a_failed_handshake, {"security": Security(self_hostname="s", shared_key="k")}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_closed_session_is_freed_without_the_cycle_collector(serve, lt, no_gc, case: str) -> None:
    fn, kw = CASES[case]
    kw = dict(kw)
    ingest = HeldIngest(lt) if kw.pop("held", False) else None
    served = serve(ingest, **kw)
    fn(served)
