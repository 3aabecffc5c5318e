"""What the HTTP output's tests through the real delivery loop share: a BufferedSink over a DiskQueue in
front of an HttpOutput, started by hand so that chunks can be committed before the loop runs, and waits on
the loop's progress (never a poll)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from forwardd.buffer import BufferedSink, DiskQueue, RetryPolicy, read_dead_letter
from forwardd.outputs.http import HttpOutput
from tests.buffer.test_buffer_delivery import FakeTime


def records(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"seq": i} for i in range(start, start + n)]


def dead(folder: Path) -> list[tuple[list[int], dict[str, Any]]]:
    """The dead-letter files in ``folder``: each one's sequence numbers and its sidecar."""
    out = []
    for sidecar in sorted(folder.glob("*.json")):
        chunk = read_dead_letter(str(sidecar.with_suffix(".chunk")))
        out.append(([e.record["seq"] for e in chunk.events()], json.loads(sidecar.read_text())))
    return out


async def http_sink(
    tmp_path: Path, endpoint: str, t: FakeTime, queue: DiskQueue | None = None, **kwargs: Any
) -> BufferedSink:
    """A BufferedSink over a started DiskQueue (``queue``, or one under ``tmp_path/q``) and an
    HttpOutput(**kwargs), with a clock that only moves when the loop backs off (retries cost no wall
    time); its delivery loop is not started (:func:`deliver_all` does)."""
    out = HttpOutput(name="web", endpoint=endpoint, **kwargs)
    q = queue if queue is not None else DiskQueue(str(tmp_path / "q"), fsync="never")
    s = BufferedSink(
        "web", out, q, RetryPolicy(jitter=0.0), str(tmp_path / "dead"),
        clock=t.clock, sleep=t.sleep, rand=lambda: 1.0,
    )  # fmt: skip
    await q.start()
    return s


async def deliver_all(s: BufferedSink, timeout: float) -> None:
    """Start the delivery loop and wait until every chunk has left the queue (delivered or dead-lettered),
    woken by the loop's progress each time a batch leaves it."""
    await s.output.start()
    s._task = asyncio.create_task(s._supervise())
    q, progress = s.queue, s._deliverer.progress

    async def empty() -> None:
        while q.queued_chunks or q.pending_chunks:
            progress.clear()
            await progress.wait()

    await asyncio.wait_for(empty(), timeout)
