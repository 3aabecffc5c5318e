"""No log line at the edge can take a connection down, whatever bytes a peer put in its tags.

Tags are decoded with surrogateescape, so that they go out again as they came; a JSON renderer cannot
encode the surrogates and raised, out of a log call in data_received: the transport was aborted, the request
before was committed but never acked, the one after never read. Here every path that logs at the edge is
taken with an undecodable tag, under a renderer that raises on surrogates (orjson, as the daemon's JSON
logs) and under one that raises on everything: the connection goes on and acks what it owes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import msgpack
import orjson
import pytest
import structlog

from forwardd.errors import ChunkRejected
from forwardd.model import Chunk
from forwardd.protocol import Limits, Security
from forwardd.protocol.handshake import client_ping
from forwardd.testing import CaptureSink

from .support import wait_until

BAD = b"\xff\xfe-tag"  # not UTF-8: the tag is "\udcff\udcfe-tag" inside forwardd
BAD_ENTRY = bytes.fromhex("92 00 81 80 00")  # [0, {{}: 0}]


def raw_packed(tag: bytes, payload: bytes, chunk: str, **options: Any) -> bytes:
    """A PackedForward whose tag is a msgpack str of the bytes ``tag`` (its payload a str, as Fluentd's)."""
    return msgpack.packb([tag, payload, {"chunk": chunk, **options}], use_bin_type=False)


def raw_message(tag: bytes, record: dict[str, Any], chunk: str) -> bytes:
    return msgpack.packb([tag, 1_700_000_000, record, {"chunk": chunk}], use_bin_type=False)


@pytest.fixture(params=["strict-json", "always-raises"])
def renderer(request: pytest.FixtureRequest) -> Iterator[list[bytes]]:
    """structlog rendering to a list, with a renderer that raises on surrogates or on everything."""
    lines: list[bytes] = []
    out = io.BytesIO()

    def strict_json(_logger: Any, _name: str, event: dict[str, Any]) -> bytes:
        data = orjson.dumps(event)  # raises on a str holding surrogates, as the daemon's renderer did
        lines.append(data)
        return data

    def always_raises(_logger: Any, _name: str, event: dict[str, Any]) -> bytes:
        raise RuntimeError("the log is broken")

    old = structlog.get_config()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            strict_json if request.param == "strict-json" else always_raises,
        ],
        logger_factory=structlog.BytesLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    try:
        yield lines
    finally:
        structlog.configure(**old)


def test_every_path_that_logs_at_the_edge_survives_an_undecodable_tag(serve, lt, renderer):
    sink = CaptureSink()

    def ingest(chunk: Chunk) -> Any:
        if chunk.tag.startswith("\udcff") and chunk.count == 2:
            raise ChunkRejected("refused for good", permanent=True)  # -> chunk.dropped
        return sink.submit(chunk)

    served = serve(ingest, limits=Limits(max_frame_size=64 * 1024, chunk_size_warn=1024))
    entry = msgpack.packb([1_700_000_000, {"k": "v"}])
    requests = [
        raw_packed(BAD, entry, "r1", compressed="lz4"),  # chunk.rejected (unknown compression)
        raw_packed(BAD, entry + BAD_ENTRY, "r2"),  # chunk.invalid_entries
        raw_packed(BAD, entry * 100, "r3"),  # chunk.large (over chunk_size_warn)
        raw_packed(BAD, entry * 8000, "r4"),  # chunk.rejected (frame_too_large, streamed by)
        raw_packed(BAD, entry * 2, "r5"),  # chunk.dropped (refused by the pipeline)
        raw_message(BAD, {"n": 1}, "r6"),  # Message mode, the shortcut
    ]
    with served.client() as c:
        for i, req in enumerate(requests, 1):
            c.send(req)
            assert c.read_value() == {"ack": f"r{i}"}
        c.message("after", {"still": "here"}, ack=True)
    with served.client() as c:  # a protocol error after a request: acked, then closed
        c.send(raw_message(BAD, {"n": 2}, "p1") + b"\xc1")
        assert c.read_value() == {"ack": "p1"}
        assert c.closed_by_server(5)
    with served.client() as c:  # closed by the client mid-frame
        c.send(raw_packed(BAD, entry * 100, "x")[:500])
    wait_until(lambda: served.stats.connections == 3 and not served.listener.sessions, what="the last close")
    assert [e.record for e in sink.events if e.tag == "after"] == [{"still": "here"}]
    assert served.stats.rejected == 2
    assert served.stats.invalid_entries == 1
    assert served.stats.dropped_events == 2
    if renderer:  # the strict renderer: the lines went out, the tag escaped, not lost
        events = [json.loads(line) for line in renderer]
        tagged = {e["event"] for e in events if e.get("tag", "").startswith("\\xff\\xfe-tag")}
        assert {"chunk.rejected", "chunk.invalid_entries", "chunk.large", "chunk.dropped"} <= tagged


def test_a_handshake_with_undecodable_names_survives_the_log(serve, lt, renderer):
    served = serve(security=Security(self_hostname="srv", shared_key="k"))
    with served.client() as c:
        helo = msgpack.unpackb(msgpack.packb(c.read_value()), raw=True)[1]
        ping = client_ping(helo, hostname="h", shared_key="k")[0]
        fields = msgpack.unpackb(ping, raw=True)
        fields[1] = b"\xff\xfe-host"  # the digest no longer matches: a failure PONG, logged, then closed
        c.send(msgpack.packb(fields, use_bin_type=True))
        pong = c.read_value()
        assert pong[:2] == ["PONG", False]
        assert c.closed_by_server(5)
    assert served.stats.handshake_failures == 1
