"""fdatasync by Linux AIO: the loop stays free while the disk syncs, and an ack still follows the sync."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from forwardd.buffer import DiskQueue
from forwardd.buffer.aiosync import AioSync
from forwardd.buffer.segment import scan
from forwardd.model import Chunk

TIMEOUT = 5.0


def chunk(n: int, size: int = 200) -> Chunk:
    return Chunk(f"q.{n}", bytes([n % 256]) * size, n, n)


async def test_an_aio_fdatasync_of_a_real_file_resolves_and_a_bad_descriptor_fails(tmp_path: Path) -> None:
    aio = AioSync.open(asyncio.get_running_loop())
    assert aio is not None, "this kernel offers AIO fdatasync (Linux >= 4.18); forwardd relies on it here"
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b"x" * 300)
        await asyncio.wait_for(asyncio.gather(*(aio.fdatasync(fd) for _ in range(3))), TIMEOUT)
        r, w = os.pipe()  # a pipe cannot be synced: the kernel says so, the future carries it
        try:
            with pytest.raises(OSError) as info:
                await asyncio.wait_for(aio.fdatasync(r), TIMEOUT)
            assert info.value.errno == errno.EINVAL
        finally:
            os.close(r)
            os.close(w)
    finally:
        os.close(fd)
        aio.close()


async def test_a_batch_is_acked_only_after_its_aio_sync_and_the_loop_runs_meanwhile(tmp_path: Path) -> None:
    queue = DiskQueue(str(tmp_path))
    await queue.start()
    aio = queue._aio
    assert aio is not None
    held: list[asyncio.Future[None]] = []
    real = aio.fdatasync

    def held_sync(fd: int) -> asyncio.Future[None]:
        held.append(real(fd))  # the real sync, whose end the test decides to pass on
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        held.append(gate)
        return gate

    aio.fdatasync = held_sync  # type: ignore[method-assign]
    futs = [queue.submit(chunk(i)) for i in range(3)]  # more than one: the AIO path
    while not held:
        await asyncio.sleep(0)  # the loop runs while the commit waits for its sync
    await asyncio.wait_for(held[0], TIMEOUT)
    for _ in range(20):
        await asyncio.sleep(0)
    assert not any(f.done() for f in futs)  # written and synced, but the queue has not heard: no ack
    late = queue.submit(chunk(9))  # arrives during the sync: the next batch
    held[1].set_result(None)
    await asyncio.wait_for(asyncio.gather(*futs), TIMEOUT)
    aio.fdatasync = real  # type: ignore[method-assign]
    await asyncio.wait_for(late, TIMEOUT)
    assert queue.async_commits >= 1
    assert [(await queue.get()).chunk.count for _ in range(4)] == [0, 1, 2, 9]
    await queue.close()


async def test_a_failed_aio_sync_withholds_the_acks_and_the_batch_is_committed_again(tmp_path: Path) -> None:
    """EIO from the sync cannot be made on demand on a real disk: the sync's future carries it here."""
    queue = DiskQueue(str(tmp_path), write_retry_initial=0.001)
    await queue.start()
    aio = queue._aio
    assert aio is not None
    real = aio.fdatasync
    failures: list[int] = []
    synced: list[int] = []

    def failing_once(fd: int) -> asyncio.Future[None]:
        if failures:
            synced.append(fd)
            return real(fd)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_exception(OSError(errno.EIO, "Input/output error"))
        failures.append(fd)
        return fut

    aio.fdatasync = failing_once  # type: ignore[method-assign]
    futs = [queue.submit(chunk(i)) for i in range(3)]
    await asyncio.wait_for(asyncio.gather(*futs), TIMEOUT)
    assert len(failures) == 1
    assert synced  # the acks came from the retry's sync, not from the failed one
    assert [(await queue.get()).chunk.count for _ in range(3)] == [0, 1, 2]
    await queue.close()
    # The failed attempt was cut away (truncated, as a failed write is): on disk each record once.
    assert len(segment_records(tmp_path)) == 3


def segment_records(directory: Path) -> list[tuple[int, int, int]]:
    records = []
    for p in sorted(directory.iterdir()):
        if p.suffix in (".open", ".sealed"):
            records += scan(p.read_bytes()).spans
    return records
