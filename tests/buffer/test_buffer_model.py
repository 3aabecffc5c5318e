"""The segment store against an in-memory model, through appends, commits, takes, acks, drops, torn-write
crashes and clean reopens. The model predicts exactly what recovery must hand out next."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from forwardd.buffer.segment import encode_prefix, frame_size, parse_segment_name
from forwardd.buffer.store import DiskTaken, SegmentStore
from forwardd.model import Chunk

# Small segments so that rolling, multi-segment reads and segment deletion happen in short runs.
MAX_SEGMENT = 700
# tmpfs makes fsync free, so the real "always" path runs without costing the shared machine disk time.
TMP_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") else None


@dataclass
class Rec:
    chunk: Chunk
    done: bool = False


def make_chunk(n: int, size: int) -> Chunk:
    return Chunk(f"t.{n}", bytes([n % 251]) * size, n, 1_000_000 + n)


def same(a: Chunk, b: Chunk) -> bool:
    return (a.tag, a.entries, a.count, a.received_ns) == (b.tag, b.entries, b.count, b.received_ns)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="fwd-model-", dir=TMP_ROOT)
        self.store = SegmentStore.open(self.dir, max_segment_size=MAX_SEGMENT, fsync="always")
        self.pending: list[Chunk] = []  # appended, not committed
        self.committed: list[Rec] = []  # in order, from the first one that may still come out
        self.next_take = 0
        self.taken: dict[int, DiskTaken] = {}
        self.n = 0

    def teardown(self) -> None:
        self._abandon()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _abandon(self) -> None:
        """A crash as the files see it: descriptors go away, nothing is flushed or renamed."""
        for seg in self.store.segments:
            seg.close()

    @rule(sizes=st.lists(st.integers(0, 400), min_size=1, max_size=4))
    def append(self, sizes: list[int]) -> None:
        for size in sizes:
            self.pending.append(make_chunk(self.n, size))
            self.n += 1

    @rule()
    def commit(self) -> None:
        res = self.store.write(self.pending)
        assert res.committed == len(self.pending)
        self.store.publish(res)
        self.committed.extend(Rec(c) for c in self.pending)
        self.pending = []

    @rule(k=st.integers(1, 3))
    def take(self, k: int) -> None:
        for _ in range(k):
            t = self.store.take()
            if self.next_take == len(self.committed):
                assert t is None
                return
            assert t is not None
            rec = self.committed[self.next_take]
            assert same(t.chunk, rec.chunk), (t.chunk, rec.chunk)
            self.taken[self.next_take] = t
            self.next_take += 1

    @precondition(lambda self: self.taken)
    @rule(data=st.data())
    def mark_delivered(self, data: st.DataObject) -> None:
        # Any in-flight one, not only the oldest: completion out of order must not move the ledger too far.
        i = data.draw(st.sampled_from(sorted(self.taken)))
        self.store.mark_delivered(self.taken.pop(i))
        self.committed[i].done = True

    @rule()
    def drop(self) -> None:
        count = self.store.drop_next()
        if self.next_take == len(self.committed):
            assert count is None
            return
        rec = self.committed[self.next_take]
        assert count == rec.chunk.count
        rec.done = True
        self.next_take += 1

    def _restart_model(self, survivors: list[Chunk]) -> None:
        first = next((i for i, r in enumerate(self.committed) if not r.done), len(self.committed))
        # Done records behind the first undone one are not covered by the ledger: they come out again.
        self.committed = [Rec(r.chunk) for r in self.committed[first:]] + [Rec(c) for c in survivors]
        self.pending = []
        self.next_take = 0
        self.taken = {}

    @rule(cut=st.floats(0, 1), torn=st.booleans())
    def crash(self, cut: float, torn: bool) -> None:
        """kill -9 mid-commit: uncommitted records partly reached the open segment, cut at any byte."""
        cur = self.store.segments[-1]
        survivors: list[Chunk] = []
        fitting: list[Chunk] = []  # what the writer would have put in this segment before rolling
        acc = 0
        for c in self.pending:
            if cur.end + acc + frame_size(c) > MAX_SEGMENT and cur.end + acc > 0:
                break
            fitting.append(c)
            acc += frame_size(c)
        if torn and fitting:
            blob = b"".join(encode_prefix(c) + c.entries for c in fitting)
            keep = int(len(blob) * cut)
            with open(cur.path, "r+b") as f:
                f.seek(cur.end)
                f.write(blob[:keep])
                f.truncate(cur.end + keep)
            # Whole records before the cut are indistinguishable from committed ones: recovery keeps them.
            acc = 0
            for c in fitting:
                acc += frame_size(c)
                if acc > keep:
                    break
                survivors.append(c)
        self._abandon()
        self._restart_model(survivors)
        self.store = SegmentStore.open(self.dir, max_segment_size=MAX_SEGMENT, fsync="always")

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self._restart_model([])
        self.store = SegmentStore.open(self.dir, max_segment_size=MAX_SEGMENT, fsync="always")

    @invariant()
    def counters_match(self) -> None:
        undone = [r.chunk for r in self.committed if not r.done]
        assert self.store.queued_chunks == len(undone)
        assert self.store.queued_bytes == sum(frame_size(c) for c in undone)

    @invariant()
    def ledger_never_covers_in_flight(self) -> None:
        """The safety half of at-least-once: a crash now would hand every in-flight chunk out again."""
        with open(os.path.join(self.dir, "ledger.json"), "rb") as f:
            ledger = json.load(f)
        for t in self.taken.values():
            assert (t.seg.seq, t.start) >= (ledger["seq"], ledger["offset"])

    @invariant()
    def files_match(self) -> None:
        names = os.listdir(self.dir)
        assert "quarantine" not in names
        on_disk = sorted(p for p in map(parse_segment_name, names) if p is not None)
        segs = self.store.segments
        assert on_disk == [(s.seq, "sealed" if s.sealed else "open") for s in segs]
        assert not segs[-1].sealed
        for s in segs:
            assert s.end <= MAX_SEGMENT or s.records == 1


TestStoreModel = StoreMachine.TestCase
TestStoreModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_everything_comes_out_once_after_a_drain(tmp_path) -> None:
    """A plain end-to-end pass: commit across many segments, deliver all, and the directory empties."""
    store = SegmentStore.open(str(tmp_path), max_segment_size=MAX_SEGMENT, fsync="never")
    chunks = [make_chunk(i, 97 * i % 500) for i in range(60)]
    store.publish(store.write(chunks))
    assert len(store.segments) > 5
    out = []
    while (t := store.take()) is not None:
        out.append(t.chunk)
        store.mark_delivered(t)
    assert all(same(a, b) for a, b in zip(out, chunks, strict=True))
    assert store.queued_chunks == 0
    assert store.queued_bytes == 0
    assert [s.sealed for s in store.segments] == [False]
    store.close()
    again = SegmentStore.open(str(tmp_path), max_segment_size=MAX_SEGMENT, fsync="never")
    assert again.take() is None
    again.close()
