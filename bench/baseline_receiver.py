"""The ceiling for forwardd: a forward-protocol receiver that decodes framing, counts events and acks.

It does what any forward receiver must do and nothing more: split the stream into top-level msgpack
values, find the carrier mode, count PackedForward entries with ``Unpacker.skip()`` (records are never
built), decode Message-mode events as a plain Unpacker does, and echo ``{"ack": chunk}`` in request order,
all acks of one read in one write. No routing, no buffering, no output. forwardd's numbers are read
against this one, measured in the same run on the same machine.

Run as ``python -m bench.baseline_receiver --port 0`` (or ``--unix PATH``); it prints ``READY <port>``
(or ``READY <path>``) once listening, and ``STATS events=… messages=… acks=… connections=…`` on SIGTERM
or SIGINT before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import msgpack

__all__ = ["BaselineProtocol", "Stats", "count_entries", "main", "serve"]

_MAX_BUFFER = 64 * 1024 * 1024


@dataclass(slots=True)
class Stats:
    events: int = 0
    messages: int = 0
    acks: int = 0
    connections: int = 0
    bad: int = 0

    def line(self) -> str:
        return (
            f"STATS events={self.events} messages={self.messages} acks={self.acks} "
            f"connections={self.connections} bad={self.bad}"
        )


def count_entries(entries: bytes) -> int:
    """Number of msgpack values in a PackedForward payload, without building any of them."""
    up = msgpack.Unpacker(max_buffer_size=max(len(entries), 1))
    up.feed(entries)
    skip = up.skip
    n = 0
    while True:
        try:
            skip()
        except msgpack.OutOfData:
            return n
        n += 1


class BaselineProtocol(asyncio.Protocol):
    """One connection: feed, frame, count, ack. A malformed stream closes the connection."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.unpacker = msgpack.Unpacker(
            raw=False, unicode_errors="surrogateescape", strict_map_key=False, max_buffer_size=_MAX_BUFFER
        )
        self.pack = msgpack.Packer().pack

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only duck-typed ones.
        self.transport = cast(asyncio.Transport, transport)
        self.stats.connections += 1

    def data_received(self, data: bytes) -> None:
        stats = self.stats
        up = self.unpacker
        acks: list[bytes] = []
        try:
            up.feed(data)
            for msg in up:
                if type(msg) is not list or len(msg) < 2:
                    if msg is not None:  # nil is a heartbeat
                        stats.bad += 1
                    continue
                second = msg[1]
                kind = type(second)
                if kind is bytes or kind is str:
                    entries = second if kind is bytes else second.encode("utf-8", "surrogateescape")
                    n = count_entries(entries)
                    opt = msg[2] if len(msg) > 2 else None
                elif kind is list:
                    n = len(second)
                    opt = msg[2] if len(msg) > 2 else None
                else:
                    n = 1
                    opt = msg[3] if len(msg) > 3 else None
                stats.events += n
                stats.messages += 1
                if type(opt) is dict:
                    chunk = opt.get("chunk")
                    if chunk is not None:
                        acks.append(self.pack({"ack": chunk}))
        except (ValueError, msgpack.UnpackException):
            stats.bad += 1
            assert self.transport is not None
            self.transport.close()
            return
        if acks:
            stats.acks += len(acks)
            assert self.transport is not None
            self.transport.write(b"".join(acks) if len(acks) > 1 else acks[0])


async def serve(
    stats: Stats, host: str = "127.0.0.1", port: int = 0, unix: str | None = None
) -> asyncio.Server:
    """Start listening; the caller owns the returned server."""
    loop = asyncio.get_running_loop()
    if unix is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(unix)
        return await loop.create_unix_server(lambda: BaselineProtocol(stats), unix)
    return await loop.create_server(lambda: BaselineProtocol(stats), host, port, reuse_address=True)


async def _amain(host: str, port: int, unix: str | None) -> None:
    stats = Stats()
    server = await serve(stats, host, port, unix)
    where = unix if unix is not None else server.sockets[0].getsockname()[1]
    print(f"READY {where}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    print(stats.line(), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.baseline_receiver", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=24224, help="0 picks a free port (printed on READY)")
    ap.add_argument("--unix", default=None, help="listen on this unix socket path instead of TCP")
    args = ap.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio still works
        asyncio.run(_amain(args.host, args.port, args.unix))
    else:
        uvloop.run(_amain(args.host, args.port, args.unix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
