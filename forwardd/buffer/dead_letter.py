"""Where the events an output rejects for good go, and the dead-letter folder's file format.

In order: the ``@ERROR`` label's routes when the configuration has one (:attr:`DeadLetters.error_route`;
the chunk leaves the output's queue only once they have committed it); else the folder
``<storage>/dead-letter/<output>/``, one file per piece (:func:`write_dead_letter`: the piece's entries
framed as in a segment, exactly as they came, and a JSON sidecar naming the reason and the exception), retried
until the folder takes it (a full disk), so nothing acked is ever dropped while a folder is configured; else
(no folder) dropped, counted and logged. :func:`read_dead_letter` reads a file back to inspect or replay it.

The log helpers here (:func:`describe`, :func:`rate_limited`) are shared by the delivery loop: whatever an
exception or a tag holds, a log line or a sidecar stays bounded, safe text, and a hostile stream cannot make
one line per event.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Callable

import orjson
import structlog

from forwardd.buffer.segment import decode_record, encode_prefix, fsync_dir
from forwardd.logging import safe_text, safe_value
from forwardd.model import Chunk
from forwardd.sink import Ingest

__all__ = [
    "ERROR_TEXT_MAX",
    "DeadLetters",
    "describe",
    "rate_limited",
    "read_dead_letter",
    "write_dead_letter",
]

log = structlog.get_logger("forwardd.delivery")

_seq = itertools.count()

#: Longest exception text kept in a log line or a dead-letter sidecar.
ERROR_TEXT_MAX = 2000


class DeadLetters:
    """One output's way out for rejected events, and how many took it."""

    def __init__(
        self,
        output: str,
        directory: str | None,
        *,
        max_delay: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.output = output
        self.directory = directory
        #: The router's entry for the @ERROR label, set by the daemon when the configuration has one.
        self.error_route: Ingest | None = None
        self._max_delay = max_delay
        self._sleep = sleep
        #: Dead-letter files written, and the events in them; events handed to @ERROR; events dropped.
        self.files = 0
        self.events = 0
        self.to_error_label = 0
        self.dropped = 0

    async def put(self, chunk: Chunk, meta: dict[str, object]) -> None:
        """Send ``chunk`` (a piece of a batch) its way (see the module doc); ``meta`` says why, for the
        sidecar and the log line. Returns once it is committed somewhere, or counted as dropped."""
        if self.error_route is not None and await self._to_error_route(chunk, meta):
            return
        if self.directory is None:
            log.error("delivery.dropped", output=self.output, tag=chunk.tag, count=chunk.count, **meta)
            self.dropped += chunk.count
            return
        delay = min(1.0, self._max_delay)
        failing = False
        while True:
            try:
                path = await asyncio.to_thread(write_dead_letter, self.directory, self.output, chunk, meta)
                break
            except OSError as exc:
                if not failing:
                    failing = True
                    log.error("delivery.dead_letter_failed", output=self.output, error=describe(exc))
                await self._sleep(delay)
                delay = min(delay * 2, self._max_delay)
        self.files += 1
        self.events += chunk.count
        if rate_limited(self.files):
            log.warning(
                "delivery.dead_letter",
                output=self.output,
                tag=chunk.tag,
                count=chunk.count,
                path=path,
                dead_lettered=self.files,
                **meta,
            )

    async def park(self, chunk: Chunk, meta: dict[str, object]) -> None:
        """Straight to the folder, once (no @ERROR route, no retry: either may be what keeps failing), or
        dropped when there is no folder; an OSError is the caller's to handle."""
        if self.directory is None:
            self.dropped += chunk.count
            return
        await asyncio.to_thread(write_dead_letter, self.directory, self.output, chunk, meta)
        self.files += 1
        self.events += chunk.count

    async def _to_error_route(self, chunk: Chunk, meta: dict[str, object]) -> bool:
        """Hand ``chunk`` to the @ERROR label's routes; True once they have committed it (only then may it
        leave this queue), False if they refused it (the dead-letter folder takes it then)."""
        assert self.error_route is not None
        try:
            accepted = self.error_route(chunk)
            if accepted is not None:
                await accepted
        except Exception as exc:  # a refusal of any kind: the dead-letter folder is the fallback
            log.error("delivery.error_label_failed", output=self.output, tag=chunk.tag, error=describe(exc))
            return False
        self.to_error_label += chunk.count
        log.warning("delivery.to_error_label", output=self.output, tag=chunk.tag, count=chunk.count, **meta)
        return True


def write_dead_letter(directory: str, output: str, chunk: Chunk, meta: dict[str, object]) -> str:
    """Write ``chunk`` (one framed record, as in a segment: the exact tag and entries) and a ``.json``
    sidecar (values made safe text: a tag that is not UTF-8 shows its bytes as ``\\xNN``); the chunk's
    path."""
    os.makedirs(directory, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in output)
    base = os.path.join(directory, f"{time.time_ns()}-{os.getpid()}-{next(_seq)}-{safe}")
    sidecar = safe_value(
        {
            **meta,
            "output": output,
            "tag": chunk.tag,
            "count": chunk.count,
            "bytes": len(chunk.entries),
            "received_ns": chunk.received_ns,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    for path, parts in (
        (base + ".chunk", (encode_prefix(chunk), chunk.entries)),
        (base + ".json", (orjson.dumps(sidecar, option=orjson.OPT_INDENT_2),)),
    ):
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if os.writev(fd, parts) != sum(len(p) for p in parts):
                raise OSError(28, "short write (disk full?)", path)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(path + ".tmp", path)
    fsync_dir(directory)
    return base + ".chunk"


def read_dead_letter(path: str) -> Chunk:
    """The chunk of a dead-letter ``.chunk`` file (to inspect or replay it)."""
    with open(path, "rb") as f:
        chunk, _ = decode_record(f.read())
    return chunk


def rate_limited(count: int) -> bool:
    """Log at 1, 2, 4, ... 256, then every 512: a hostile stream must not make one line per event."""
    return (count & (count - 1)) == 0 if count < 512 else count % 512 == 0


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, as safe text of bounded length (its str() may raise, or quote
    undecodable bytes)."""
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:
        text = f"{type(exc).__name__}: <str() failed>"
    if len(text) > ERROR_TEXT_MAX:
        text = text[:ERROR_TEXT_MAX] + "..."
    return safe_text(text)
