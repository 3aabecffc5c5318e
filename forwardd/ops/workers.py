"""``workers: N`` behind one endpoint: the parent process serves it and asks every worker for its snapshot
when a request comes (nothing is sent while nobody asks, and no answer is older than the request).

Before forking, the parent binds the endpoint's port (a port in use fails the start at once, not in a
worker) and makes one socketpair per worker. Each worker keeps its end and answers on it
(:mod:`forwardd.ops.attach`); the parent runs the endpoint on an asyncio loop in a thread of its own, since
its main thread waits for the workers and forwards signals. A worker that does not answer within
``WORKER_TIMEOUT`` shows as not responding (``/ready`` 503); one whose pipe is closed has exited
(``/health`` 503 too).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from typing import Any

import orjson
import structlog

from forwardd.ops.snapshot import WORKER_TIMEOUT, Snapshot, Status, merge

__all__ = ["WorkerChannels"]

log = structlog.get_logger("forwardd.ops")

#: The longest snapshot line accepted from a worker (hundreds of tags and outputs fit many times over).
MAX_SNAPSHOT = 16 * 1024 * 1024


class _WorkerClient:
    """The parent's end of one worker's pipe: one request at a time, replies matched by id."""

    def __init__(self, worker: int, sock: socket.socket) -> None:
        self.worker = worker
        self.sock = sock
        self.closed = False
        self._seq = 0
        self._lock = asyncio.Lock()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(sock=self.sock, limit=MAX_SNAPSHOT)

    async def snapshot(self) -> Snapshot | None:
        async with self._lock:
            if self.closed or self._reader is None or self._writer is None:
                return None
            self._seq += 1
            seq = str(self._seq).encode()
            try:
                self._writer.write(seq + b"\n")
                async with asyncio.timeout(WORKER_TIMEOUT):
                    while True:
                        line = await self._reader.readline()
                        if not line.endswith(b"\n"):
                            self.closed = True  # the worker has exited
                            return None
                        got, _, body = line.partition(b" ")
                        if got == seq:  # an older reply (one that came after its timeout) is skipped
                            data: Snapshot = orjson.loads(body)
                            return data
            except TimeoutError:
                return None
            except (OSError, ValueError):
                self.closed = True
                return None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class WorkerChannels:
    """Made in the parent before forking: the endpoint's socket and a pipe per worker."""

    def __init__(self, bind: str, port: int, workers: int) -> None:
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        self.listen = socket.create_server((bind, port), family=family)
        self.pairs = [socket.socketpair() for _ in range(workers)]
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._failed: BaseException | None = None

    @classmethod
    def for_config(cls, config: Any) -> WorkerChannels | None:
        """None without ``http_server``; raises OSError when its port cannot be bound."""
        h = config.http_server
        return None if h is None else cls(h.bind, h.port, config.workers)

    def child(self, worker: int) -> socket.socket:
        """In worker ``worker`` after the fork: its end of its pipe; every other descriptor is closed."""
        self.listen.close()
        for i, (parent, child) in enumerate(self.pairs):
            parent.close()
            if i != worker:
                child.close()
        return self.pairs[worker][1]

    def serve(self) -> None:
        """In the parent after forking every worker: serve the endpoint from a thread; raises what failed."""
        for _, child in self.pairs:
            child.close()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), name="forwardd-http", daemon=True)
        self._thread.start()
        started.wait()
        if self._failed is not None:
            raise self._failed

    def _run(self, started: threading.Event) -> None:
        try:
            asyncio.run(self._main(started))
        except BaseException as exc:
            self._failed = exc
            started.set()

    async def _main(self, started: threading.Event) -> None:
        from forwardd.ops.endpoint import Endpoint

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        clients = [_WorkerClient(i, parent) for i, (parent, _) in enumerate(self.pairs)]
        for c in clients:
            await c.open()

        async def read() -> Status:
            snaps = await asyncio.gather(*(c.snapshot() for c in clients))
            return merge(snaps, [c.worker for c in clients])

        def health() -> str | None:
            gone = [c.worker for c in clients if c.closed]
            return f"worker(s) {', '.join(map(str, gone))} exited" if gone else None

        endpoint = Endpoint(read, health)
        try:
            await endpoint.start(sock=self.listen)
            started.set()
            await self._stop.wait()
        finally:
            await endpoint.stop()
            for c in clients:
                c.close()

    def close(self) -> None:
        """Stop serving (the workers have exited)."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already gone
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(5.0)
        self.listen.close()
