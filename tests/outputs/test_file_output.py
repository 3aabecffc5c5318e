"""The file output on a real file system: lines, rotation, compression, symlink, restarts and faults."""

from __future__ import annotations

import errno
import gzip
import json
import os
import random
import resource
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard
from structlog.testing import capture_logs

from forwardd.errors import PermanentError, RetryableError, UnprocessableError
from forwardd.model import Chunk, Event, decode_entries
from forwardd.outputs.file import FileOutput

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
NS = 10**9


def chunk(start: int, n: int, tag: str = "app", pad: int = 40, t: int = T0) -> Chunk:
    """Events numbered start..start+n-1; the number is in the record so lines can be counted exactly."""
    events = [Event(t * NS + i, {"seq": start + i, "pad": "x" * pad}) for i in range(n)]
    return Chunk.from_events(tag, events, 0)


def seqs(data: bytes) -> list[int]:
    assert data == b"" or data.endswith(b"\n")
    return [json.loads(line)["seq"] for line in data.splitlines()]


def run(*argv: str) -> bytes:
    """A real tool (gzip, zstd, chattr); blocking is fine for these short calls."""
    return subprocess.run(argv, check=True, capture_output=True).stdout


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def read_plain(paths: list[Path]) -> list[int]:
    out: list[int] = []
    for p in paths:
        out += seqs(p.read_bytes())
    return out


def segment_order(p: Path) -> int:
    parts = p.name.split(".")
    return int(parts[-2]) if len(parts) > 3 else int(parts[-1]) if parts[-1].isdigit() else 0


async def test_writes_json_lines(tmp_path):
    out = FileOutput(name="f", path=str(tmp_path / "${tag}.log"))
    await out.write(chunk(0, 3))
    await out.write(chunk(3, 2))
    await out.stop()
    data = (tmp_path / "app.log").read_bytes()
    assert seqs(data) == [0, 1, 2, 3, 4]
    first = json.loads(data.splitlines()[0])
    assert first == {"time": "2023-11-14T22:13:20.000000000Z", "tag": "app", "seq": 0, "pad": "x" * 40}
    assert out.events_written == 5


async def test_chunk_split_by_hour_and_record_into_files(tmp_path):
    out = FileOutput(name="f", path=str(tmp_path / "%Y%m%d%H" / "${record.app}.log"), max_open_files=1)
    events = [
        Event(T0 * NS, {"app": "a", "seq": 0}),
        Event(T0 * NS, {"app": "b", "seq": 1}),
        Event((T0 + 3600) * NS, {"app": "a", "seq": 2}),
        Event(T0 * NS, {"app": "a", "seq": 3}),
    ]
    for _ in range(2):  # twice: with one open file allowed, files are closed and reopened in between
        await out.write(Chunk.from_events("t", events, 0))
    await out.stop()
    assert seqs((tmp_path / "2023111422/a.log").read_bytes()) == [0, 3, 0, 3]
    assert seqs((tmp_path / "2023111422/b.log").read_bytes()) == [1, 1]
    assert seqs((tmp_path / "2023111423/a.log").read_bytes()) == [2, 2]


async def test_hostile_tag_writes_under_the_root(tmp_path):
    root = tmp_path / "root"
    out = FileOutput(name="f", path=str(root / "${tag}" / "app.log"))
    for tag in ("../../escape", "/abs", "..", "."):
        await out.write(chunk(0, 1, tag=tag))
    await out.stop()
    assert sorted(p.name for p in root.iterdir()) == ["_.", "_..", "_.._.._escape", "_abs"]
    assert [p for p in tmp_path.iterdir()] == [root]


async def test_size_rotation_never_splits_loses_or_repeats_lines(tmp_path):
    rng = random.Random(7)
    limit = 4096
    out = FileOutput(name="f", path=str(tmp_path / "app.log"), rotate_max_size=limit, fsync_on_write=False)
    n = 0
    for _ in range(300):
        k = rng.randint(1, 30)
        await out.write(chunk(n, k, pad=rng.randint(0, 200)))
        n += k
    await out.stop()
    files = sorted(all_files(tmp_path), key=segment_order)
    assert len(files) > 10
    assert [f.name for f in files[:3]] == ["app.log", "app.log.1", "app.log.2"]
    assert read_plain(files) == list(range(n))
    for f in files:
        data = f.read_bytes()
        # a file only passes the limit when a single write alone is bigger
        assert len(data) <= limit or len(data.splitlines()) <= 30


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
async def test_compressed_files_decompress_to_exactly_the_lines(tmp_path, compress):
    out = FileOutput(name="f", path=str(tmp_path / "app.log"), compress=compress, rotate_max_size=400)
    n = 0
    for k in [1, 5, 17, 2, 40, 3, 9, 60, 1, 1]:
        await out.write(chunk(n, k))
        n += k
    await out.stop()
    ext = ".gz" if compress == "gzip" else ".zst"
    files = sorted(all_files(tmp_path), key=segment_order)
    assert len(files) > 1
    assert files[0].name == "app.log" + ext
    assert files[1].name == "app.log.1" + ext
    tool = ["gzip", "-dc"] if compress == "gzip" else ["zstd", "-dcq"]
    got: list[int] = []
    for f in files:
        lines = seqs(run(*tool, str(f)))  # the standard tool reads the multi-member/-frame file whole
        raw = f.read_bytes()
        if compress == "gzip":
            assert seqs(gzip.decompress(raw)) == lines
        else:
            assert (
                seqs(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True).read()) == lines
            )
        got += lines
    assert got == list(range(n))


async def test_symlink_points_at_the_current_file(tmp_path):
    link = tmp_path / "current"
    out = FileOutput(name="f", path=str(tmp_path / "logs/${tag}.log"), symlink=str(link), rotate_max_size=500)
    await out.write(chunk(0, 1, tag="a"))
    assert os.readlink(link) == str(tmp_path / "logs/a.log")
    await out.write(chunk(1, 1, tag="b"))
    assert os.readlink(link) == str(tmp_path / "logs/b.log")
    await out.write(chunk(2, 10, tag="b"))  # rotates
    assert os.readlink(link) == str(tmp_path / "logs/b.log.1")
    await out.stop()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "logs"]  # no temporary link left
    assert seqs(link.read_bytes()) == list(range(2, 12))


async def test_rotate_interval_uses_the_clock(tmp_path):
    now = [1000.0]
    out = FileOutput(name="f", path=str(tmp_path / "a.log"), rotate_interval=60, clock=lambda: now[0])
    await out.write(chunk(0, 1))
    now[0] += 59
    await out.write(chunk(1, 1))
    now[0] += 1
    await out.write(chunk(2, 1))
    await out.stop()
    assert seqs((tmp_path / "a.log").read_bytes()) == [0, 1]
    assert seqs((tmp_path / "a.log.1").read_bytes()) == [2]


async def test_restart_continues_a_clean_file_and_cuts_a_torn_last_line(tmp_path):
    path = tmp_path / "a.log"
    out = FileOutput(name="f", path=str(path))
    await out.write(chunk(0, 2))
    await out.stop()
    out = FileOutput(name="f", path=str(path))
    await out.write(chunk(2, 1))
    await out.stop()
    assert seqs(path.read_bytes()) == [0, 1, 2]
    torn = b'{"seq":3,"pad":"xx'
    with path.open("ab") as f:  # what a kill in the middle of a large write() leaves
        f.write(torn)
    with capture_logs() as logs:
        out = FileOutput(name="f", path=str(path))
        await out.write(chunk(3, 1))  # the buffer redelivers the torn write's chunk
        await out.stop()
    # No partial line is ever left for a reader, and the file goes on where its last whole line ended.
    assert seqs(path.read_bytes()) == [0, 1, 2, 3]
    assert not (tmp_path / "a.log.1").exists()
    assert [e["bytes"] for e in logs if e["event"] == "file.torn_tail_removed"] == [len(torn)]


async def test_restart_with_compression_starts_a_new_segment(tmp_path):
    for start in (0, 1):
        out = FileOutput(name="f", path=str(tmp_path / "a.log"), compress="gzip")
        await out.write(chunk(start, 1))
        await out.stop()
    assert seqs(gzip.decompress((tmp_path / "a.log.gz").read_bytes())) == [0]
    assert seqs(gzip.decompress((tmp_path / "a.log.1.gz").read_bytes())) == [1]


async def test_file_removed_or_renamed_behind_our_back_is_reopened(tmp_path):
    path = tmp_path / "a.log"
    out = FileOutput(name="f", path=str(path))
    await out.write(chunk(0, 1))
    path.rename(tmp_path / "a.log.old")  # external rotation
    await out.write(chunk(1, 1))
    path.unlink()
    await out.write(chunk(2, 1))
    await out.stop()
    assert seqs((tmp_path / "a.log.old").read_bytes()) == [0]
    assert seqs(path.read_bytes()) == [2]


async def test_folder_removed_behind_our_back_is_made_again(tmp_path):
    """A clean-up job removes a tag's folder while forwardd runs: the next write makes it again. (The
    output remembered the folder as existing and failed every later write with ENOENT, retried for days.)"""
    out = FileOutput(name="f", path=str(tmp_path / "logs" / "${tag}" / "day.log"))
    await out.write(chunk(0, 1))
    shutil.rmtree(tmp_path / "logs" / "app")
    await out.write(chunk(1, 2))
    shutil.rmtree(tmp_path / "logs")
    await out.write(chunk(3, 1))
    await out.stop()
    assert read_plain(all_files(tmp_path / "logs")) == [3]


async def test_msgpack_and_fluentd_formats(tmp_path):
    mp = FileOutput(name="m", path=str(tmp_path / "a.mpk"), format="msgpack")
    fd = FileOutput(name="f", path=str(tmp_path / "a.txt"), format="fluentd")
    for out in (mp, fd):
        await out.write(chunk(0, 2))
        await out.stop()
    events, invalid = decode_entries((tmp_path / "a.mpk").read_bytes(), 0)
    assert invalid == 0
    assert [e.record["seq"] for e in events] == [0, 1]
    lines = (tmp_path / "a.txt").read_bytes().splitlines()
    assert lines[0] == b'2023-11-14T22:13:20+00:00\tapp\t{"seq":0,"pad":"' + b"x" * 40 + b'"}'


async def test_empty_chunk_touches_nothing(tmp_path):
    out = FileOutput(name="f", path=str(tmp_path / "a.log"))
    await out.write(Chunk("t", b"", 0, 0))
    await out.stop()
    assert list(tmp_path.iterdir()) == []


async def test_parent_is_a_regular_file_is_permanent(tmp_path):
    (tmp_path / "blocker").write_bytes(b"")
    out = FileOutput(name="f", path=str(tmp_path / "blocker" / "${tag}" / "a.log"))
    with pytest.raises(PermanentError, match="ENOTDIR"):
        await out.write(chunk(0, 1))
    await out.stop()


@pytest.fixture
def immutable(tmp_path) -> Iterator[Path]:
    """A folder made read-only for real: root ignores permission bits but not the immutable attribute."""
    folder = tmp_path / "ro"
    folder.mkdir()
    run("chattr", "+i", str(folder))
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], check=False)


async def test_read_only_folder_is_retryable_then_succeeds(immutable):
    out = FileOutput(name="f", path=str(immutable / "a.log"))
    with pytest.raises(RetryableError, match="EPERM"):
        await out.write(chunk(0, 2))
    run("chattr", "-i", str(immutable))
    await out.write(chunk(0, 2))  # the buffer retries the same chunk
    await out.stop()
    assert seqs((immutable / "a.log").read_bytes()) == [0, 1]


async def test_read_only_file_mid_stream_then_recovers(tmp_path):
    path = tmp_path / "a.log"
    out = FileOutput(name="f", path=str(path))
    await out.write(chunk(0, 1))
    run("chattr", "+i", str(path))
    try:
        with pytest.raises(RetryableError):
            await out.write(chunk(1, 1))
    finally:
        run("chattr", "-i", str(path))
    await out.write(chunk(1, 1))
    await out.stop()
    assert seqs(path.read_bytes()) == [0, 1]


@pytest.fixture
def file_size_limit() -> Iterator[None]:
    """Real short writes: RLIMIT_FSIZE makes write() stop at the limit, then fail with EFBIG."""
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    yield
    resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
    signal.signal(signal.SIGXFSZ, old_handler)


async def test_failed_write_leaves_no_partial_line(tmp_path, file_size_limit):
    path = tmp_path / "a.log"
    out = FileOutput(name="f", path=str(path))
    await out.write(chunk(0, 2))
    size = path.stat().st_size
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, hard))  # the next write gets cut part-way
    try:
        with pytest.raises(RetryableError, match="EFBIG"):
            await out.write(chunk(2, 5))
        assert path.stat().st_size == size
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    await out.write(chunk(2, 5))
    await out.stop()
    assert seqs(path.read_bytes()) == list(range(7))


async def test_unencodable_record_is_unprocessable_and_nothing_is_written(tmp_path):
    """Not the destination's verdict but the data's: the delivery loop isolates the event (its tests)."""
    out = FileOutput(name="f", path=str(tmp_path / "a.log"))
    bad = Chunk("t", b"", 1, 0)
    bad._events = [Event(T0 * NS, {"x": object()})]  # what a buggy filter could hand on
    with pytest.raises(UnprocessableError, match="cannot encode"):
        await out.write(bad)
    await out.stop()
    assert list(tmp_path.iterdir()) == []


async def test_a_path_that_fails_in_the_file_thread_is_unprocessable_too(tmp_path, monkeypatch):
    """A plain chunk is transcoded and grouped by path in the output's thread: a failure there is the
    data's verdict as on the loop (UnprocessableError, nothing written), not a retryable write error. No
    real path of a plain chunk fails to resolve, so the template is made to fail."""
    out = FileOutput(name="f", path=str(tmp_path / "${tag}.log"))

    def no_path(*_: object) -> None:
        raise ValueError("no path for this")

    monkeypatch.setattr(out.template, "group_lines", no_path)
    with pytest.raises(UnprocessableError, match="cannot encode chunk of 'app': no path for this"):
        await out.write(chunk(0, 3))
    await out.stop()
    assert list(tmp_path.iterdir()) == []
    assert out.events_written == 0


async def test_invalid_settings_are_config_errors(tmp_path):
    with pytest.raises(ValueError, match="compress"):
        FileOutput(name="f", path=str(tmp_path / "a"), compress="lz4")
    with pytest.raises(ValueError, match="format"):
        FileOutput(name="f", path=str(tmp_path / "a"), format="csv")
    with pytest.raises(ValueError, match="rotate_max_size"):
        FileOutput(name="f", path=str(tmp_path / "a"), rotate_max_size=0)


def test_tools_for_these_tests_exist():
    for tool in ("gzip", "zstd", "chattr"):
        assert shutil.which(tool), tool


@pytest.mark.parametrize(
    "template",
    ["${tag}.log", "%Y%m%d%H/${tag}.log", "%H%M%S/x.log", "%Y%m%d%H/${record.app}.log"],
)
async def test_chunks_off_the_wire_write_the_same_files_as_decoded_events(tmp_path, template):
    """A chunk as clients send it takes the plain fast path (columns, one msgspec call per batch); the
    files must be what the general path writes for the same events, whatever the template groups by."""
    events = [
        Event((T0 + (i % 3) * 1800) * NS + i, {"app": "ab"[i % 2], "seq": i, "log": 'é"\\\n'})
        for i in range(12)
    ]
    general = Chunk.from_events("web", events, 0)
    wire = Chunk("web", general.entries, general.count, 0)
    assert wire.plain_entries() is not None
    outs = {}
    for name, c in (("plain", wire), ("general", general)):
        out = FileOutput(name=name, path=str(tmp_path / name / template))
        await out.write(c)
        await out.stop()
        assert out.events_written == 12
        outs[name] = {p.relative_to(tmp_path / name): p.read_bytes() for p in all_files(tmp_path / name)}
    assert outs["plain"] == outs["general"]
    assert sorted(i for data in outs["plain"].values() for i in seqs(data)) == list(range(12))


class Fsyncs:
    """Counts the file fsyncs of one output; ``fail`` makes the next ones fail with EIO. A failing fsync is
    the one fault here no real filesystem can be made to produce on demand."""

    def __init__(self, out: FileOutput) -> None:
        self.calls = 0
        self.fail = 0
        out._disk.fsync_file = self

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self.fail:
            self.fail -= 1
            raise OSError(errno.EIO, "Input/output error")
        os.fsync(fd)


async def test_grouped_syncs_fsync_once_per_file_in_sync_not_per_write(tmp_path):
    grouped = FileOutput(name="g", path=str(tmp_path / "g" / "${tag}.log"), fsync="grouped")
    per_write = FileOutput(name="w", path=str(tmp_path / "w" / "${tag}.log"))
    assert grouped.defers_sync
    assert not per_write.defers_sync
    g, w = Fsyncs(grouped), Fsyncs(per_write)
    for i in range(10):
        for out in (grouped, per_write):
            await out.write(chunk(i * 3, 3, tag="a"))
            await out.write(chunk(i * 3, 3, tag="b"))
    assert (g.calls, w.calls) == (0, 20)
    assert seqs((tmp_path / "g" / "a.log").read_bytes()) == list(range(30))  # written, readable at once
    await grouped.sync()
    assert g.calls == 2  # one per file written since the last sync
    await grouped.sync()
    assert g.calls == 2  # nothing written since
    await per_write.sync()  # a no-op for an output that does not defer it
    assert w.calls == 20
    for out in (grouped, per_write):
        await out.stop()


async def test_a_failed_grouped_fsync_fails_the_sync_and_later_writes_go_to_a_new_file(tmp_path):
    path = tmp_path / "a.log"
    out = FileOutput(name="f", path=str(path), fsync="grouped")
    fsyncs = Fsyncs(out)
    await out.write(chunk(0, 3))
    fsyncs.fail = 1
    with pytest.raises(RetryableError, match=r"cannot fsync .*a\.log.*EIO"):
        await out.sync()
    # What that fsync concerned may be lost: the file is never appended to again. The caller writes the
    # same chunk again, into a new file, and a sync after it succeeds.
    await out.write(chunk(0, 3))
    await out.write(chunk(3, 2))
    await out.sync()
    await out.stop()
    assert seqs((tmp_path / "a.log.1").read_bytes()) == list(range(5))


async def test_a_file_closed_between_grouped_syncs_whose_fsync_fails_fails_the_next_sync(tmp_path):
    """One open file at most: writing to b closes a, fsyncing it; if that fails, a's lines written since
    the last sync may be lost, and only a failing sync() tells the delivery loop to write them again."""
    out = FileOutput(name="f", path=str(tmp_path / "${tag}.log"), fsync="grouped", max_open_files=1)
    fsyncs = Fsyncs(out)
    await out.write(chunk(0, 3, tag="a"))
    await out.sync()
    await out.write(chunk(3, 3, tag="a"))
    fsyncs.fail = 1
    await out.write(chunk(0, 3, tag="b"))  # closes a.log: its fsync fails, the write itself succeeds
    with pytest.raises(RetryableError, match=r"a\.log"):
        await out.sync()
    await out.sync()  # said once: the writes after it are synced as usual
    await out.stop()


async def test_a_write_cut_part_way_fsyncs_what_earlier_grouped_writes_left_and_a_failure_fails_the_sync(
    tmp_path, file_size_limit
):
    """A failed append closes its file. With grouped syncs the lines earlier writes put in it are not
    synced yet: they are fsynced as it closes, and if that fails only the next sync() can say so (the
    delivery loop then writes them again); the append's own error is what the write raises."""
    path = tmp_path / "a.log"
    out = FileOutput(name="f", path=str(path), fsync="grouped")
    fsyncs = Fsyncs(out)
    await out.write(chunk(0, 3))
    size = path.stat().st_size
    fsyncs.fail = 1
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, hard))  # the next write gets cut part-way
    try:
        with pytest.raises(RetryableError, match="EFBIG"):
            await out.write(chunk(3, 5))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert path.stat().st_size == size  # the part that went in is cut off again
    assert fsyncs.calls == 1  # the earlier write's lines, as the file closed
    with pytest.raises(RetryableError, match=r"cannot fsync .*a\.log.*EIO"):
        await out.sync()
    await out.write(chunk(0, 8))  # what the loop writes again goes to a new file, and syncs
    await out.sync()
    await out.stop()
    assert seqs((tmp_path / "a.log.1").read_bytes()) == list(range(8))


async def test_invalid_fsync_settings_are_config_errors(tmp_path):
    with pytest.raises(ValueError, match="fsync"):
        FileOutput(name="f", path=str(tmp_path / "a"), fsync="always")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fsync_interval"):
        FileOutput(name="f", path=str(tmp_path / "a"), fsync="grouped", fsync_interval=0)
