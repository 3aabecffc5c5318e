"""A connection reads a bounded amount per turn of the event loop, whatever its peer has sent.

libuv reads a readable socket up to 32 times (256 KiB each) before it serves the next; 20 peers streaming
big frames made one turn of the daemon's loop 100-400 ms long, and every other connection's ack waited
that long (tests/hostile/test_memory.py, once past its 1 s bound on CI). A ticker that runs once per turn
watches how much one connection read between two turns while its peer pushes 24 MiB at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import msgpack

from forwardd.protocol import encode
from forwardd.server.session import TURN_READ_BYTES

from .support import Served

#: The most one read hands over (uvloop's and asyncio's read buffer).
READ_MAX = 256 * 1024


def test_a_connection_reads_a_bounded_amount_per_turn_of_the_loop(serve: Callable[..., Served]) -> None:
    served = serve()
    loop = served.lt.loop
    per_turn: list[int] = []
    stop = threading.Event()

    def tick(last: int) -> None:
        # The session leaves the listener's set when it closes: the count stays where it got to.
        now = max(last, sum(s._bytes_in for s in served.listener.sessions))
        per_turn.append(now - last)
        if not stop.is_set():
            loop.call_soon(tick, now)

    entry = msgpack.packb([1, {"pad": "x" * 1000}])
    frame = encode.packed_forward("big", entry * (24 * 1024), chunk="k")  # 24 MiB
    with served.client(timeout=60) as c:
        loop.call_soon_threadsafe(tick, 0)
        c.send(frame)
        assert c.read_value(timeout=60) == {"ack": "k"}
    stop.set()
    served.lt.run(asyncio.sleep(0))  # the ticker's last turn
    assert sum(per_turn) >= len(frame)
    assert max(per_turn) <= TURN_READ_BYTES + READ_MAX, (max(per_turn), served.lt.kind)


def test_reading_goes_on_after_the_turn(serve: Callable[..., Served]) -> None:
    """Many small requests in one burst, more than a turn's worth: every one is acked (the pause for a
    turn always ends)."""
    served = serve()
    msgs = b"".join(encode.message("t", 1, {"i": i, "pad": "x" * 200}, chunk=f"c{i}") for i in range(8000))
    assert len(msgs) > 4 * TURN_READ_BYTES
    with served.client(timeout=30) as c:
        c.send(msgs)
        acks = [c.read_value(timeout=30) for _ in range(8000)]
    assert acks == [{"ack": f"c{i}"} for i in range(8000)]
