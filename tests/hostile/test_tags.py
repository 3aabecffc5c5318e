"""Tags that are not UTF-8 on every path that logs them (issue 14, item 2: logging never raises).

Each path gets an undecodable tag (a different one each, so that a line can be traced to its request):
rejected frames (unknown compression, a record that is not a map, a bad time, a frame over the limit), an
accepted chunk over the warning size, invalid entries inside an accepted chunk, a filter failing on a
record, a dead letter, delivery retries (the output's disk is full), a tag no route matches, a protocol
error, failed and successful handshakes with an undecodable hostname, and the counters at stop. The
requests that can be acked are pipelined on one connection: every owed ack must come back, in order, and
the connection must go on working; other connections must not notice (a well-behaved client runs
throughout, and a new connection works afterwards). Every line the daemon writes must be JSON: a log call
that raises ends up as asyncio's plain-text 'Fatal error: protocol.data_received() call failed'.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgpack

from forwardd.protocol.handshake import shared_key_digest
from forwardd.testing.client import AckError, ForwardClient
from tests.e2e.test_dead_output import fill, tmpfs
from tests.hostile.harness import (
    Daemon,
    base_config,
    check_delivered,
    dead_letters,
    raw_connection,
    read_records,
    steady,
    wait_until,
)
from tests.pipeline import mp

NOW = 1_700_000_000


def _config(tmp: Path, full: Path) -> dict[str, Any]:
    config = base_config(tmp, limits={"max_frame_size": "1MiB", "chunk_size_warn": "64KiB"})
    config["sources"] += [
        {"name": "secure", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False,
         "security": {"shared_key": "k", "self_hostname": "srv"}, "limits": {"handshake_timeout": "2s"}},
        {"name": "narrow", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False, "label": "@narrow"},
    ]  # fmt: skip
    config["routes"] = [
        # One-part tags (an undecodable tag is one part) go through a filter that reads record values.
        {"match": "*", "filters": [{"type": "record_modify", "set": {"x": "v=${record.a}"}}],
         "outputs": ["files", "full"]},
        {"match": "**", "outputs": ["files"]},
    ]  # fmt: skip
    config["labels"] = {"@narrow": [{"match": "steady.**", "outputs": ["files"]}]}
    config["outputs"]["full"] = {
        "type": "file",
        "path": str(full / "${tag}.log"),
        "buffer": {"retry": {"initial": "100ms", "max": "300ms"}},
    }
    return config


def _pipelined() -> tuple[bytes, list[str]]:
    """The ackable requests for one connection, and their chunk ids in order."""
    entries = mp.entry(NOW, {"k": 9}) + mp.entry(NOW, "not a map") + b"\x92\x00\x81\x80\x00"
    big = b"".join(mp.entry(NOW, {"k": 6, "pad": "p" * 200, "i": i}) for i in range(400))  # ~90 KiB
    requests = [
        ("a1", mp.message(b"\xff\xfe", NOW, {"k": 1}, chunk="a1")),
        ("a2", mp.packed_forward(b"\xff\x01", mp.entry(NOW, {"k": 2}), chunk="a2", compressed="bogus")),
        ("a3", mp.message(b"\xfe", NOW, "a record that is not a map", chunk="a3")),
        ("a4", mp.message(b"\xc3", True, {"k": 4}, chunk="a4")),  # a time of no time type
        ("a5", mp.packed_forward(b"\xe2\x82", os.urandom(1536 * 1024), chunk="a5")),  # over the 1 MiB limit
        ("a6", mp.packed_forward(b"\xed\xa0\x80", big, chunk="a6")),  # over the 64 KiB warning size
        ("a7", mp.message(b"\xff", NOW, {"k": 7, "a": mp.Deep(1000)}, chunk="a7")),  # the filter fails on it
        ("a8", mp.message(b"\xff\xfe\xfd", NOW, {"k": 8, "t": mp.Deep(600)}, chunk="a8")),  # no encoder can
        ("a9", mp.packed_forward(b"\xf0\x9f", entries, chunk="a9")),  # two invalid entries
        ("a11", mp.message(b"\xff\xfe", NOW, {"k": 11}, chunk="a11")),
    ]
    return b"".join(r for _, r in requests), [c for c, _ in requests]


def _ping(helo: Any, hostname: bytes, key: bytes) -> bytes:
    """A PING with a hostname that is not UTF-8 (the client library only takes text)."""
    nonce = helo[1][b"nonce"]
    salt = b"s" * 16
    digest = shared_key_digest(salt, hostname, nonce, key)
    return bytes(msgpack.packb([b"PING", hostname, salt, digest, b"", b""], use_bin_type=False))


class _Peer:
    """A raw connection that reads msgpack replies as they come (raw=True: bytes stay bytes)."""

    def __init__(self, port: int) -> None:
        self.sock = raw_connection(port)
        self._u = msgpack.Unpacker(raw=True)

    def read(self) -> Any:
        while True:
            for v in self._u:
                return v
            data = self.sock.recv(65536)
            if not data:
                raise AckError("the server closed the connection")
            self._u.feed(data)

    def handshake(self, hostname: bytes, key: bytes) -> Any:
        """Read the HELO, send a PING from ``hostname`` with ``key``; the PONG."""
        self.sock.sendall(_ping(self.read(), hostname, key))
        return self.read()


def test_undecodable_tags_on_every_path_that_logs(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "full", "4m") as full:
        filler = fill(full)
        config = _config(tmp_path, full)
        out = tmp_path / "out"
        with Daemon(tmp_path, config) as d:
            plain, secure, narrow = d.ports
            with steady(plain, tag="steady.client") as s:  # two parts: not routed to the full disk
                # The ackable requests, pipelined on one connection: every ack comes back, in order.
                stream, ids = _pipelined()
                with ForwardClient(port=plain, timeout=20) as a:
                    a.send(stream)
                    got: list[Any] = []
                    try:
                        for _ in ids:
                            got.append(a.read_value())
                    except (OSError, AckError) as exc:
                        raise AssertionError(f"owed acks {ids}, got {got} before {exc!r}") from None
                    assert got == [{"ack": c} for c in ids]
                    a.message("after.same.connection", {"k": 12}, ack=True)
                # A tag no route of its label matches.
                with ForwardClient(port=narrow, timeout=20) as b:
                    b.send(mp.message(b"\xff.x", NOW, {"k": 10}, chunk="b1"))
                    assert b.read_value() == {"ack": "b1"}
                    b.message("steady.narrow", {"k": 13}, ack=True)
                # A protocol error: what came before it is acked, then the connection is closed.
                with ForwardClient(port=plain, timeout=20) as c:
                    c.send(mp.message(b"\xfa\xfb", NOW, {"k": 14}, chunk="c1") + b"\xc1")
                    assert c.read_value() == {"ack": "c1"}
                    assert c.closed_by_server(10)
                # Handshakes: a wrong key, then a right one, both from an undecodable hostname.
                bad = _Peer(secure)
                assert bad.handshake(b"\xff\xfe-host", b"wrong")[1] is False
                bad.sock.close()
                good = _Peer(secure)
                assert good.handshake(b"\xff\xfe-host", b"k")[1] is True
                good.sock.sendall(mp.message(b"\xff", NOW, {"k": 15}, chunk="d1"))
                assert good.read() == {b"ack": b"d1"}
                good.sock.close()
                # The "full" output retries (its disk is full) and logs each retry with the tag.
                d.wait_lines("delivery.retry")
                os.unlink(filler)
                s.wait_acks(20)
            s.check_latency()
            check_delivered(out / "steady.client", s)
            with ForwardClient(port=plain, timeout=20) as e:  # a new connection works
                e.message("after.all", {"k": 16}, ack=True)

            # Delivered: every accepted event (k) to "files"; the filter's and the encoder's victims to
            # the files or the dead-letter folder, never lost.
            def delivered() -> set[int]:
                return {r["k"] for r in read_records(out) if isinstance(r.get("k"), int)}

            expected = {1, 6, 9, 11, 12, 13, 14, 15, 16}  # 10: no route (dropped, counted)
            assert wait_until(lambda: expected <= delivered(), f"k in {sorted(expected)} delivered")
            wait_until(lambda: bool(read_records(full)), "the full output's recovery")
            parked = {
                ev.record.get("k")
                for ch in dead_letters(tmp_path / "data" / "dead-letter")
                for ev in ch.events()
            }
            assert 8 in parked, "the record no encoder can represent is in the dead-letter folder"
            assert 7 in parked | delivered(), (
                "the record the filter failed on is neither delivered nor parked"
            )

            rejected = {line.get("reason") for line in d.lines("chunk.rejected")}
            assert {"unknown_compression", "bad_message", "bad_time", "frame_too_large"} <= rejected, rejected
            for event in ("chunk.large", "delivery.dead_letter", "conn.protocol_error", "handshake.failed",
                          "route.unmatched"):  # fmt: skip
                assert d.lines(event), f"no {event} line"
            assert d.lines(lambda line: "invalid" in str(line.get("event")) and line.get("tag")), (
                "invalid entries"
            )
            if 7 not in delivered():
                assert d.lines("filter.failed"), "the filter failed without a line"
            stats = d.stop()
            assert stats["source:in"]["invalid_entries"] >= 2
            assert {"source:in", "source:secure", "source:narrow", "output:files", "output:full"} <= set(
                stats
            )
            assert not d.not_json(), d.not_json()[:5]
