"""Back-pressure: a session that cannot hand chunks on, or whose peer does not read, stops reading.

The kernel's buffers then fill and the client's send blocks: the server holds at most ``max_inflight``
chunks plus one read's worth of bytes, however much the client tries to send.
"""

from __future__ import annotations

import select
import socket

import msgpack

from forwardd.protocol import encode

from .support import HeldIngest, wait_until

READ_SIZE = 256 * 1024  # the most one asyncio read hands the protocol


def send_until_blocked(sock: socket.socket, frame: bytes, limit: int = 64 * 1024 * 1024) -> int:
    """Send copies of ``frame`` on a non-blocking socket until the kernel refuses more (EAGAIN) and the
    socket stays unwritable; returns the number of bytes sent."""
    sock.setblocking(False)
    block = memoryview(frame * max(1, 256 * 1024 // len(frame)))
    sent = pos = 0
    while sent < limit:
        try:
            n = sock.send(block[pos:])
        except BlockingIOError:
            # EAGAIN. Blocked for good only if the peer does not drain the buffer again.
            _, writable, _ = select.select([], [sock], [], 0.3)
            if not writable:
                return sent
            continue
        sent += n
        pos = (pos + n) % len(block)
    raise AssertionError(f"sent {sent} bytes and the socket never blocked")


def test_ingest_that_never_resolves_pauses_reading_and_bounds_memory(serve, lt):
    ingest = HeldIngest(lt)
    max_inflight = 4
    served = serve(ingest, max_inflight=max_inflight)
    frame = encode.packed_forward("bp", [(1, {"pad": "x" * 1000})] * 60, chunk="c")  # ~60 KiB
    sock = served.raw()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    try:
        # The client means to send 16 MiB; the kernel stops it once its buffers are full.
        sent = send_until_blocked(sock, frame, limit=16 * 1024 * 1024)
        wait_until(lambda: served.stats.backpressure_pauses >= 1, what="a back-pressure pause")
        read = served.stats.bytes
        # What the server took in is bounded by max_inflight chunks and one read; the rest of what the
        # client sent sits in kernel buffers, not in forwardd.
        assert read <= max_inflight * len(frame) + 2 * READ_SIZE
        assert ingest.count <= max_inflight + READ_SIZE // len(frame) + 1
        assert sent > read  # the rest waits in kernel buffers: not read, and not read-and-dropped
        pending = lt.call(lambda: [len(s._pending) for s in served.listener.sessions])
        assert pending == [ingest.count]
        # Accepting releases the pressure: the server reads again and takes more chunks.
        before = ingest.count
        ingest.resolve_all()
        ingest.wait(before + 1)
    finally:
        sock.close()


def test_peer_that_does_not_read_its_acks_pauses_reading(serve, lt):
    served = serve(max_inflight=10_000)  # never the in-flight limit: only pause_writing can pause
    # Accepted sockets inherit buffer sizes from the listening socket: keep the server's small.
    for s in served.listener._server.sockets:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
    big_id = "k" * 16 * 1024  # the ack echoes the chunk id: 16 KiB acks fill buffers quickly
    frame = encode.message("t", 1, {"i": 0}, chunk=big_id)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024)
    sock.connect(("127.0.0.1", served.port))
    try:
        sent = send_until_blocked(sock, frame)
        assert served.stats.backpressure_pauses >= 1
        paused = lt.call(lambda: [s._paused_writing for s in served.listener.sessions])
        assert paused == [True]
        assert served.stats.bytes < sent
        # Reading the acks lets the server write, then read, then ack everything that was sent.
        sock.setblocking(True)
        sock.settimeout(10)
        expected = sent // len(frame)
        ack = msgpack.packb({"ack": big_id})
        want = expected * len(ack)
        received = bytearray()
        while len(received) < want:
            data = sock.recv(1 << 20)
            assert data, "the server closed the connection"
            received += data
        assert bytes(received) == ack * expected
        assert served.stats.acks == expected
        assert served.sink is not None
        assert len(served.sink.events) == expected
    finally:
        sock.close()
