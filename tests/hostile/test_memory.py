"""Memory: what peers make the daemon buffer must be bounded, and released when they go (issue 14, item 4).

The issue's example: three rounds of four unauthenticated ~63 MiB PING frames left RSS at 0.85, 1.57 and
2.37 GB (a closed session was only freed by the cycle collector; a peer before its handshake got the full
64 MiB frame limit; a frame near the limit cost 4-5x its size). Here: those rounds; many connections each
sending half a big frame and stalling; 100 peers sending near-limit frames at once (a global budget of
buffered bytes must pause reading rather than grow RSS); and the peak cost of one near-limit frame.

The big frames end with ``compressed: "bogus"``: a whole one is read, rejected and acked, so these tests
measure buffering, not the disk buffer or an output decoding 63 MiB of entries.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from forwardd.testing.client import ForwardClient
from tests.hostile.harness import (
    Daemon,
    MiB,
    base_config,
    check_delivered,
    raw_connection,
    steady,
)
from tests.pipeline import mp

FRAME_PAYLOAD = 63 * MiB
#: Most the daemon's RSS may grow while 100 peers push near-limit frames (6.3 GB if all were buffered):
#: room for a global budget of a few hundred MiB at the allowed 2x per buffered byte, nothing like the
#: 4-5x of every frame that the unfixed daemon buffers.
PEAK_BOUND = 768 * MiB


def _bin32_header(n: int) -> bytes:
    return b"\xc6" + struct.pack(">I", n)


def ping_frame_head() -> bytes:
    """The start of a PING-shaped frame whose second element is a ~63 MiB bin (sent before the handshake)."""
    return b"\x96\xa4PING" + _bin32_header(FRAME_PAYLOAD)


def packed_frame_head(tag: str) -> bytes:
    """The start of a PackedForward whose entries are a ~63 MiB bin."""
    raw = tag.encode()
    return b"\x93" + bytes((0xA0 | len(raw),)) + raw + _bin32_header(FRAME_PAYLOAD)


PAYLOAD = memoryview(bytes(FRAME_PAYLOAD))
PACKED_TAIL = mp.pack(mp.Map((("chunk", "big"), ("compressed", "bogus"))))


class Pushers:
    """Many raw connections pushing (parts of) big frames from one thread, non-blocking: each gets as far
    as the daemon reads, and the push ends when every one is done or none has moved for ``idle`` seconds."""

    def __init__(self, port: int, n: int, head: bytes, size: int, tail: bytes = b"") -> None:
        self.socks: list[socket.socket] = []
        self.todo: list[memoryview] = []
        whole = FRAME_PAYLOAD + len(head) + len(tail)
        for _ in range(n):
            s = raw_connection(port)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)  # bound the kernel's share
            s.setblocking(False)
            self.socks.append(s)
        self.head, self.tail, self.size, self.whole = head, tail, size, whole
        self.sent = [0] * n
        self.errors = 0

    def _piece(self, i: int) -> memoryview:
        pos, head = self.sent[i], self.head
        if pos < len(head):
            return memoryview(head)[pos:]
        pos -= len(head)
        if pos < FRAME_PAYLOAD:
            return PAYLOAD[pos : min(FRAME_PAYLOAD, self.size - len(head))]
        return memoryview(self.tail)[pos - FRAME_PAYLOAD :]

    def push(self, idle: float = 3.0, limit: float = 20.0) -> int:
        """Send until done or stalled; returns the bytes sent in all."""
        live = set(range(len(self.socks)))
        last_progress = start = time.monotonic()
        while live and time.monotonic() - last_progress < idle and time.monotonic() - start < limit:
            _, writable, _ = select.select([], [self.socks[i] for i in live], [], 0.1)
            for s in writable:
                i = self.socks.index(s)
                piece = self._piece(i)
                if not piece:
                    live.discard(i)
                    continue
                try:
                    n = s.send(piece[: 1 << 20])
                except BlockingIOError:
                    continue
                except OSError:  # the daemon closed it (a frame limit): that peer is done
                    self.errors += 1
                    live.discard(i)
                    continue
                self.sent[i] += n
                last_progress = time.monotonic()
                if self.sent[i] >= self.size:
                    live.discard(i)
        return sum(self.sent)

    def close(self) -> None:
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.close()


def _send_ping_frame(port: int) -> None:
    """One unauthenticated peer: a whole ~63 MiB PING-shaped frame (blocking; the daemon may cut it short
    by closing, which is what a small pre-handshake limit does), then close."""
    with raw_connection(port, timeout=30) as s, contextlib.suppress(OSError):
        s.sendall(ping_frame_head())
        s.sendall(PAYLOAD)
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):  # the failure PONG, then the close
            pass


def _config(tmp: Path) -> dict[str, Any]:
    config = base_config(tmp)
    config["sources"].append(
        {"name": "secure", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False,
         "security": {"shared_key": "k", "self_hostname": "srv"}}
    )  # fmt: skip
    return config


@pytest.mark.slow
def test_rounds_of_unauthenticated_near_limit_frames_leave_no_memory_behind(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with Daemon(tmp_path, _config(tmp_path)) as d:
        plain, secure = d.ports
        before = d.rss()
        with steady(plain) as s:
            for _ in range(3):
                threads = [threading.Thread(target=_send_ping_frame, args=(secure,)) for _ in range(4)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(60)
                d.wait_rss_back(before)
        s.check_latency()
        check_delivered(out / "steady", s)
        d.wait_lines(lambda line: line.get("event") in ("conn.protocol_error", "handshake.failed"))
        stats = d.stop()
        sec = stats["source:secure"]
        assert sec["protocol_errors"] + sec["handshake_failures"] >= 12, sec
        assert not d.not_json(), d.not_json()[:5]


@pytest.mark.slow
@pytest.mark.parametrize(("peers", "part"), [(20, 0.5), (100, 1.0)], ids=["20-stalled-halves", "100-whole"])
def test_many_peers_with_big_frames_cannot_grow_memory(tmp_path: Path, peers: int, part: float) -> None:
    out = tmp_path / "out"
    with Daemon(tmp_path, _config(tmp_path)) as d:
        plain = d.ports[0]
        before = d.rss()
        with steady(plain) as s:
            head = packed_frame_head("big.frame")
            size = (
                int(len(head) + FRAME_PAYLOAD * part)
                if part < 1
                else len(head) + FRAME_PAYLOAD + len(PACKED_TAIL)
            )
            p = Pushers(plain, peers, head, size, PACKED_TAIL)
            try:
                d.watch.reset_peak()
                pushed = p.push()
                s.wait_acks(30)  # the daemon keeps serving others while those peers hold their frames
                peak = d.watch.peak
                d.check_alive()
            finally:
                p.close()
        s.check_latency()
        assert peak - before <= PEAK_BOUND, (
            f"RSS grew {(peak - before) / MiB:.0f} MiB while {peers} peers pushed {pushed / MiB:.0f} MiB "
            f"(bound {PEAK_BOUND / MiB:.0f} MiB)"
        )
        d.wait_rss_back(before)
        check_delivered(out / "steady", s)
        whole = pushed == peers * size
        if not whole:  # some peer was closed with its frame unfinished: that is said
            d.wait_lines("conn.closed_mid_frame")
        stats = d.stop()
        if whole:  # every frame was read whole (the budget paused and resumed readers): each was answered
            assert stats["source:in"]["rejected"] >= peers, stats["source:in"]
        assert stats["source:in"]["connections"] >= peers + 1
        assert not d.not_json(), d.not_json()[:5]


@pytest.mark.slow
def test_one_near_limit_frame_costs_at_most_about_twice_its_size(tmp_path: Path) -> None:
    frame = packed_frame_head("one.big") + bytes(PAYLOAD) + PACKED_TAIL
    with Daemon(tmp_path, base_config(tmp_path)) as d, steady(d.port) as s:
        before = d.watch.reset_peak()
        with ForwardClient(port=d.port, timeout=60) as c:
            sender = threading.Thread(target=c.send, args=(frame,), daemon=True)
            sender.start()
            assert c.read_value() == {"ack": "big"}  # read whole, rejected (unknown codec), acked
            sender.join(10)
        peak = d.watch.peak
        limit = 2 * len(frame) + 32 * MiB
        assert peak - before <= limit, (
            f"one {len(frame) / MiB:.0f} MiB frame cost {(peak - before) / MiB:.0f} MiB"
        )
        d.wait_lines(lambda line: line.get("event") == "chunk.rejected" and line.get("tag") == "one.big")
        s.wait_acks(10)
    s.check_latency()
