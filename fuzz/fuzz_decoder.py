"""atheris target for the protocol core: ServerConnection must turn any byte stream, cut into any reads,
into events (a ProtocolViolation last if it breaks the protocol), and every chunk it hands out must decode
without raising.

Input layout (so that a corpus of real traffic is easy to seed): byte 0 holds flags, byte 1 seeds the
read sizes, the rest is what the peer sends.

* flag 1: security on (HELO/PING/PONG); flag 4: prepend a valid PING so the stream gets past it;
* flag 2: small limits (frame 4 KiB, options 512 B, decompressed 64 KiB), which reach the oversized-frame
  paths with small inputs; else the defaults with decompressed payloads capped at 1 MiB (see DEFAULT);
* flag 8: JSON mode allowed (a payload starting with ``[`` or ``{`` is then a JSON stream).

Run: ``python fuzz/fuzz_decoder.py CORPUS_DIR -max_total_time=60`` (tests/protocol/test_fuzz.py does).
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator

import atheris

with atheris.instrument_imports():
    from forwardd.model import decode_entries
    from forwardd.protocol import (
        EntriesReceived,
        HandshakeCompleted,
        HandshakeFailed,
        Heartbeat,
        Limits,
        PayloadReceived,
        ProtocolViolation,
        Rejected,
        Security,
        ServerConnection,
        finish_payload,
    )
    from forwardd.protocol.handshake import ServerHandshake, client_ping

SECURITY = Security(self_hostname="srv", shared_key="k")
SMALL = Limits(max_frame_size=4096, max_option_size=512, max_decompressed_size=65536)
#: The default limits, but for the decompressed size: check() decodes every chunk into Python objects (which
#: forwardd never does), and 256 MiB of 3-byte entries from an 8 KiB zstd input is ~90 million of them: an
#: out-of-memory of this harness, not of the decoder (8 MiB of them made ~370 MB of objects and ran
#: the fuzzer past 1 GB RSS once with its copies; 1 MiB makes ~46 MB).
DEFAULT = Limits(max_decompressed_size=1024 * 1024)
NONCE = b"n" * 16
PING = client_ping({b"nonce": NONCE, b"auth": NONCE}, hostname="c", shared_key="k", salt=b"s" * 16)[0]
RECV = 1_700_000_000_000_000_000


def reads(data: bytes, seed: int) -> Iterator[bytes]:
    """Cut ``data`` into reads whose sizes come from ``seed``: 0 feeds it whole, others mix 1-byte reads
    with larger ones."""
    if seed == 0:
        yield data
        return
    rnd = random.Random(seed)
    pos = 0
    while pos < len(data):
        size = rnd.choice((1, 1, 2, 3, 7, 64, 1000, 1 << 16))
        yield data[pos : pos + size]
        pos += size


def check(ev: object) -> None:
    if type(ev) is PayloadReceived:  # a big request: finished as the session does it, in a worker thread
        for done in finish_payload(ev):
            check(done)
    elif type(ev) is EntriesReceived:
        chunk = ev.chunk
        events, invalid = decode_entries(chunk.entries, RECV)
        assert len(events) + invalid == chunk.count, (len(events), invalid, chunk.count)
        # The edge left out every entry decoding would drop, and reported them.
        assert invalid == 0, (invalid, chunk.count)
        reported = ev.invalid.count if ev.invalid is not None else 0
        assert reported == chunk.invalid, (ev.invalid, chunk.invalid)
        assert isinstance(chunk.tag, str)
        assert ev.ack is None or ev.ack.startswith((b"\x81\xa3ack", b'{"ack": '))
    else:
        assert type(ev) in (Rejected, Heartbeat, HandshakeCompleted, HandshakeFailed), type(ev)


def TestOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    flags, seed, payload = data[0], data[1], data[2:]
    limits = SMALL if flags & 2 else DEFAULT
    conn = ServerConnection(
        limits=limits,
        security=SECURITY if flags & 1 else None,
        clock_ns=lambda: RECV,
        json_mode=bool(flags & 8),
    )
    if flags & 1:
        conn.handshake = ServerHandshake(SECURITY, "127.0.0.1", urandom=lambda n: NONCE)
        if flags & 4:
            payload = PING + payload
    max_frame = conn.decoder.limits.max_frame_size
    broken = False
    for piece in reads(payload, seed):
        events = conn.receive_data(piece)
        if broken:
            assert events == [], events  # a broken stream reads nothing more
        for i, ev in enumerate(events):
            if type(ev) is ProtocolViolation:
                assert i == len(events) - 1, events  # always the last event
                broken = True
            else:
                check(ev)
        assert conn.buffered <= max_frame, (conn.buffered, max_frame)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
