"""HTTP output throughput: 1000-event chunks of ~250-byte docker records, as the buffer hands them over.

Two measurements per format/compression: the body encoder alone (records already decoded), and whole
``write()`` calls (decode + encode + compress + POST) against a discard server (aiohttp.web, answers 204)
running in a child process so that it does not share this process's GIL.

    python bench/http_bench.py [--chunks 200] [--max-events 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time
from multiprocessing.connection import Connection

from bench.records import EVENTS_PER_CHUNK, T0, docker_entries
from forwardd.model import Chunk
from forwardd.outputs.http import HttpOutput

CASES = [("ndjson", "none"), ("json_array", "none"), ("msgpack", "none"), ("ndjson", "gzip")]


def serve(conn: Connection) -> None:
    """The discard server (child process): reads each body, answers 204, reports its port on ``conn``."""
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    async def main() -> None:
        app = web.Application(client_max_size=256 * 1024**2)
        app.router.add_post("/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        conn.send(runner.addresses[0][1])
        await asyncio.Event().wait()

    asyncio.run(main())


def report(label: str, events: int, nbytes: int, seconds: float) -> None:
    print(f"{label:<40} {events / seconds:>12,.0f} events/s {nbytes / seconds / 1e6:>9.1f} MB/s")


async def bench(port: int, entries: list[bytes], max_events: int) -> None:
    for fmt, compress in CASES:
        out = HttpOutput(
            name="bench", endpoint=f"http://127.0.0.1:{port}/in", format=fmt, compress=compress,  # type: ignore[arg-type]
            max_events=max_events, max_bytes=64 * 1024**2,
        )  # fmt: skip
        chunks = [Chunk("docker.web", e, EVENTS_PER_CHUNK, T0) for e in entries]
        for c in chunks:
            c.events()
        t = time.perf_counter()
        nbytes = sum(len(out._encode(c.events(), c.tag)[0]) for c in chunks)
        report(f"encode {fmt} (decoded)", len(chunks) * EVENTS_PER_CHUNK, nbytes, time.perf_counter() - t)

        await out.start()
        await out.write(Chunk("docker.web", entries[0], EVENTS_PER_CHUNK, T0))  # connect outside the timing
        chunks = [Chunk("docker.web", e, EVENTS_PER_CHUNK, T0) for e in entries]
        before = out.stats
        t = time.perf_counter()
        for c in chunks:
            await out.write(c)
        elapsed = time.perf_counter() - t
        after = out.stats
        report(
            f"write {fmt}/{compress} ({after.requests - before.requests} req)",
            after.events - before.events,
            after.bytes - before.bytes,
            elapsed,
        )
        await out.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=200)
    ap.add_argument("--max-events", type=int, default=1000, help="events per request")
    args = ap.parse_args()
    entries = [docker_entries(i) for i in range(args.chunks)]
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.Process(target=serve, args=(child,), daemon=True)
    proc.start()
    try:
        if not parent.poll(20):
            raise SystemExit("discard server did not start")
        port = parent.recv()
        asyncio.run(bench(port, entries, args.max_events))
    finally:
        proc.terminate()
        proc.join(5)


if __name__ == "__main__":
    main()
