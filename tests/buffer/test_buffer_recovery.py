"""Recovery: torn tails, corruption in the middle, unreadable files, interrupted salvage, real kill -9."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from forwardd.buffer.segment import MAGIC, encode_prefix, frame_size
from forwardd.buffer.store import SegmentStore, WriteError
from forwardd.model import Chunk

SEG = 1000
PER_SEG = SEG // (26 + 5 + 150)  # records of chunk(0..9) per segment: 5


def chunk(n: int, size: int = 150) -> Chunk:
    return Chunk(f"app.{n}", bytes([65 + n % 26]) * size, n, n)


def fill(path: Path, n: int, size: int = 150) -> list[Chunk]:
    store = SegmentStore.open(str(path), max_segment_size=SEG, fsync="never")
    chunks = [chunk(i, size) for i in range(n)]
    store.publish(store.write(chunks))
    store.close()
    return chunks


def drain(path: Path) -> list[Chunk]:
    store = SegmentStore.open(str(path), max_segment_size=SEG, fsync="never")
    out = []
    while (t := store.take()) is not None:
        out.append(t.chunk)
        store.mark_delivered(t)
    store.close()
    return out


def tags(chunks: list[Chunk]) -> list[str]:
    return [c.tag for c in chunks]


def segment_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.suffix in (".open", ".sealed"))


def test_torn_tail_is_truncated_to_the_last_good_record(tmp_path: Path) -> None:
    chunks = fill(tmp_path, 3)
    seg = segment_files(tmp_path)[-1]
    with seg.open("ab") as f:  # half of a fourth record, as a crash mid-write leaves it
        f.write(MAGIC + b"\x00\x00\x01\x00" + b"\xff" * 40)
    with capture_logs() as logs:
        out = drain(tmp_path)
    assert tags(out) == tags(chunks)
    assert [e["bytes"] for e in logs if e["event"] == "buffer.truncated"] == [48]
    assert not any(e["event"] == "buffer.quarantined" for e in logs)
    assert not (tmp_path / "quarantine").exists()


def test_corruption_in_the_middle_is_quarantined_and_the_rest_delivered(tmp_path: Path) -> None:
    chunks = fill(tmp_path, 12)
    first = segment_files(tmp_path)[0]
    data = bytearray(first.read_bytes())
    rec = frame_size(chunks[0])
    data[2 * rec + 60] ^= 0xFF  # a bit flip inside the third record's entries
    first.write_bytes(bytes(data))
    with capture_logs() as logs:
        out = drain(tmp_path)
    assert tags(out) == tags(chunks[:2] + chunks[3:])
    (q,) = [e for e in logs if e["event"] == "buffer.quarantined"]
    assert q["log_level"] == "warning"
    assert q["lost_records"] == 1
    assert q["lost_bytes"] == rec
    assert q["salvaged_records"] == PER_SEG - 1
    assert (tmp_path / "quarantine" / first.name).read_bytes() == bytes(data)


def test_salvage_skips_records_the_ledger_says_were_delivered(tmp_path: Path) -> None:
    chunks = fill(tmp_path, 6)
    store = SegmentStore.open(str(tmp_path), max_segment_size=SEG, fsync="never")
    for _ in range(2):
        t = store.take()
        assert t is not None
        store.mark_delivered(t)
    for seg in store.segments:
        seg.close()  # crash
    seg = segment_files(tmp_path)[0]
    data = bytearray(seg.read_bytes())
    data[4 * frame_size(chunks[0]) + 8] ^= 0x01  # the fifth record's CRC
    seg.write_bytes(bytes(data))
    with capture_logs() as logs:
        out = drain(tmp_path)
    # The damaged record is the sealed segment's last: still corruption, not a torn tail, so it is reported.
    assert tags(out) == tags([chunks[2], chunks[3], chunks[5]])
    assert [e["salvaged_records"] for e in logs if e["event"] == "buffer.quarantined"] == [2]


def test_unreadable_segment_does_not_block_startup(tmp_path: Path) -> None:
    chunks = fill(tmp_path, 12)
    bad = segment_files(tmp_path)[0]
    bad.unlink()
    bad.mkdir()  # os.open(O_RDWR) fails with EISDIR: a file we cannot read at all
    with capture_logs() as logs:
        out = drain(tmp_path)
    assert tags(out) == tags(chunks[PER_SEG:])
    assert [e["reason"] for e in logs if e["event"] == "buffer.quarantined"] != []
    assert (tmp_path / "quarantine" / bad.name).is_dir()


def test_interrupted_salvage_is_redone_or_finished(tmp_path: Path) -> None:
    chunks = fill(tmp_path, 12)
    first, second = segment_files(tmp_path)[:2]
    # Crash before the original moved: a partial copy lies next to it. It is discarded, nothing doubles.
    (tmp_path / f"{first.stem}.salvage").write_bytes(first.read_bytes()[:100])
    # Crash after the original moved: the complete copy is all there is. It takes the original's place.
    salvage = tmp_path / f"{second.stem}.salvage"
    second.rename(salvage)
    assert tags(drain(tmp_path)) == tags(chunks)
    assert not salvage.exists()


def test_a_segment_name_that_exists_is_never_truncated(tmp_path: Path) -> None:
    """A clash (a bug, or a second writer the storage lock failed to stop) must not destroy the file: the
    write fails and is retried like a full disk, and a restart delivers both (issue 17: O_TRUNC did)."""
    store = SegmentStore.open(str(tmp_path), max_segment_size=SEG, fsync="never")
    theirs = [chunk(20 + i) for i in range(3)]
    taken = tmp_path / "00000001.open"  # where our writer rolls to next, already holding records
    taken.write_bytes(b"".join(encode_prefix(c) + c.entries for c in theirs))
    before = taken.read_bytes()
    ours = [chunk(i) for i in range(PER_SEG + 1)]  # the last one rolls to segment 1
    with capture_logs() as logs:
        with pytest.raises(WriteError) as info:
            store.write(ours)
        with pytest.raises(WriteError) as again:
            store.write(ours[PER_SEG:])  # retried: still refused, reported once
    assert isinstance(info.value.cause, FileExistsError)
    assert isinstance(again.value.cause, FileExistsError)
    assert info.value.result.committed == PER_SEG  # what fitted before the roll stays committed
    clashes = [e for e in logs if e["event"] == "buffer.segment_exists"]
    assert [(e["segment"], e["log_level"]) for e in clashes] == [(str(taken), "error")]
    assert taken.read_bytes() == before
    store.publish(info.value.result)
    store.close()
    assert tags(drain(tmp_path)) == tags(ours[:PER_SEG] + theirs)


def test_unreadable_ledger_means_redelivery_not_loss(tmp_path: Path) -> None:
    chunks = fill(tmp_path, 4)
    (tmp_path / "ledger.json").write_bytes(b"{not json")
    with capture_logs() as logs:
        assert tags(drain(tmp_path)) == tags(chunks)
    assert any(e["event"] == "buffer.ledger_unreadable" for e in logs)


def test_recovered_log_line_reports_what_is_queued(tmp_path: Path) -> None:
    chunks = fill(tmp_path, 7)
    with capture_logs() as logs:
        SegmentStore.open(str(tmp_path), max_segment_size=SEG).close()
    (rec,) = [e for e in logs if e["event"] == "buffer.recovered"]
    assert rec["chunks"] == 7
    assert rec["bytes"] == sum(map(frame_size, chunks))


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    import structlog
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    from forwardd.buffer import DiskQueue
    from forwardd.model import Chunk

    async def producer(q, k, workers):
        n = k
        while True:
            await q.submit(Chunk("kill.test", str(n).encode() * 50, n, n))
            sys.stdout.write(f"{n}\\n")
            sys.stdout.flush()
            n += workers

    async def main():
        q = DiskQueue(sys.argv[1], max_segment_size=64 * 1024, fsync="always")
        await q.start()
        sys.stdout.write("ready\\n")
        sys.stdout.flush()
        await asyncio.gather(*(producer(q, k, 8) for k in range(8)))

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_loses_no_committed_chunk(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
            lines = [proc.stdout.readline() for _ in range(rng.randint(50, 600))]
        finally:
            proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    # Every number printed was acked after its commit; read them all, the ones still in the pipe too.
    printed = {int(line) for line in [*lines, *rest.splitlines()] if line.strip().isdigit()}
    assert len(printed) >= 50
    store = SegmentStore.open(str(tmp_path))
    got: list[int] = []
    while (t := store.take()) is not None:
        got.append(t.chunk.count)
        assert t.chunk.entries == str(t.chunk.count).encode() * 50
    store.close()
    assert len(got) == len(set(got)), "a chunk was recovered twice"
    assert printed <= set(got)
    for k in range(8):  # each producer's chunks come out in the order it submitted them
        mine = [n for n in got if n % 8 == k]
        assert mine == sorted(mine)
    assert len(got) >= 50


def test_kill_9_ledger_state_is_json(tmp_path: Path) -> None:
    """The ledger a crash leaves is the documented, human-readable one."""
    fill(tmp_path, 8)
    store = SegmentStore.open(str(tmp_path), max_segment_size=SEG, fsync="never")
    t = store.take()
    assert t is not None
    store.mark_delivered(t)
    assert json.loads((tmp_path / "ledger.json").read_bytes()) == {"seq": 0, "offset": frame_size(chunk(0))}
    store.close()


# --- the runway: zeros ahead of small commits under fsync "always" ---------------------------------------


def open_always(path: Path, seg: int = 64 * 1024) -> SegmentStore:
    return SegmentStore.open(str(path), max_segment_size=seg, fsync="always")


def test_small_commits_write_into_zeros_laid_ahead(tmp_path: Path) -> None:
    store = open_always(tmp_path)
    store.publish(store.write([chunk(0)]))
    (seg,) = segment_files(tmp_path)
    assert seg.stat().st_size == 64 * 1024  # the runway reaches the segment's end (< one step)
    size_after_first = seg.stat().st_size
    store.publish(store.write([chunk(1), chunk(2)]))
    assert seg.stat().st_size == size_after_first  # written into the zeros: the file did not grow
    data = seg.read_bytes()
    end = 3 * frame_size(chunk(0))
    assert data[end:].count(0) == len(data) - end
    store.close()
    assert seg.stat().st_size == end  # a clean stop leaves no runway behind


def test_a_crash_leaves_a_runway_that_recovery_cuts_silently(tmp_path: Path) -> None:
    store = open_always(tmp_path)
    chunks = [chunk(i) for i in range(4)]
    store.publish(store.write(chunks))
    (seg,) = segment_files(tmp_path)
    assert seg.stat().st_size > 4 * frame_size(chunk(0))  # as kill -9 would leave it: no close()
    with capture_logs() as logs:
        out = drain(tmp_path)
    assert tags(out) == tags(chunks)
    assert not [e for e in logs if e["event"] == "buffer.truncated"]
    (rec,) = [e for e in logs if e["event"] == "buffer.recovered"]
    assert rec["truncated_bytes"] == 0


def test_a_torn_record_inside_the_runway_is_reported_without_the_zeros(tmp_path: Path) -> None:
    store = open_always(tmp_path)
    chunks = [chunk(i) for i in range(3)]
    store.publish(store.write(chunks))
    (seg,) = segment_files(tmp_path)
    torn = MAGIC + b"\x00\x00\x01\x00" + b"\xff" * 40  # half a record, then the runway's zeros
    with seg.open("r+b") as f:
        f.seek(3 * frame_size(chunk(0)))
        f.write(torn)
    with capture_logs() as logs:
        out = drain(tmp_path)
    assert tags(out) == tags(chunks)
    assert [e["bytes"] for e in logs if e["event"] == "buffer.truncated"] == [len(torn)]


def test_sealed_segments_end_with_their_last_record(tmp_path: Path) -> None:
    store = open_always(tmp_path, seg=1000)
    store.publish(store.write([chunk(0)]))
    for i in range(1, 12):  # one at a time: small commits, each extending the runway as needed
        store.publish(store.write([chunk(i)]))
    store.close()
    sealed = [p for p in segment_files(tmp_path) if p.suffix == ".sealed"]
    assert len(sealed) >= 2
    for p in sealed:
        assert p.stat().st_size == PER_SEG * frame_size(chunk(0))
    assert tags(drain(tmp_path)) == [f"app.{i}" for i in range(12)]


def test_large_commits_append_without_a_runway(tmp_path: Path) -> None:
    """Bulk commits are bound by bandwidth, not fsync latency: writing zeros first would only double it."""
    store = SegmentStore.open(str(tmp_path), max_segment_size=16 << 20, fsync="always")
    big = [chunk(i, 20_000) for i in range(5)]  # 100 kB in one commit
    store.publish(store.write(big))
    (seg,) = segment_files(tmp_path)
    assert seg.stat().st_size == sum(map(frame_size, big))
    store.close()


def test_a_runway_that_cannot_be_written_does_not_fail_the_commit(tmp_path: Path) -> None:
    """A full disk (injected: only the zeros' write fails) costs the runway, not the records."""
    store = open_always(tmp_path)
    real = store.writer._pwritev
    failed: list[int] = []

    def pwritev(fd: int, bufs: list[bytes], pos: int) -> int:
        if len(bufs) == 1 and len(bufs[0]) > 1000 and not any(bufs[0]):
            failed.append(pos)
            raise OSError(28, "No space left on device")
        return real(fd, bufs, pos)

    store.writer._pwritev = pwritev  # type: ignore[method-assign]
    res = store.write([chunk(0)])
    assert res.committed == 1
    store.publish(res)
    store.publish(store.write([chunk(1)]))  # no second attempt in this segment
    assert len(failed) == 1
    (seg,) = segment_files(tmp_path)
    assert seg.stat().st_size == 2 * frame_size(chunk(0))
    store.close()
    assert tags(drain(tmp_path)) == ["app.0", "app.1"]
