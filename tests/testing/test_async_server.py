"""The asynchronous test server, inside the test's own event loop."""

from __future__ import annotations

import asyncio

import msgpack
import pytest

from forwardd.protocol import encode
from forwardd.testing import TestServer


async def read_reply(reader: asyncio.StreamReader) -> object:
    unpacker = msgpack.Unpacker(raw=False)
    while True:
        for value in unpacker:
            return value
        data = await asyncio.wait_for(reader.read(4096), 5)
        assert data, "the server closed the connection"
        unpacker.feed(data)


async def test_async_server_acks_and_captures():
    async with TestServer() as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(encode.forward("async.t", [(1, {"n": 1}), (2, {"n": 2})], chunk="c"))
        assert await read_reply(reader) == {"ack": "c"}
        events = await server.wait_for(2)
        assert [(e.tag, e.time_ns, e.record) for e in events] == [
            ("async.t", 1_000_000_000, {"n": 1}),
            ("async.t", 2_000_000_000, {"n": 2}),
        ]
        writer.close()
        await writer.wait_closed()


async def test_async_wait_for_times_out_with_a_clear_message():
    async with TestServer() as server:
        with pytest.raises(AssertionError, match=r"expected 1 events within 0\.05s, got 0"):
            await server.wait_for(1, timeout=0.05)


async def test_async_withheld_acks_are_released():
    async with TestServer(withhold_acks=True) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(encode.message("t", 1, {"n": 1}, chunk="held"))
        await server.wait_for(1)
        reply = asyncio.ensure_future(read_reply(reader))
        done, _ = await asyncio.wait([reply], timeout=0.1)
        assert not done  # captured, but not acked
        server.release_acks()
        assert await reply == {"ack": "held"}
        writer.close()
        await writer.wait_closed()
