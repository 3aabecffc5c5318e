"""Buffers between the ack path and the outputs: the durable disk queue, the memory queue, and the one
delivery loop they share (:mod:`.delivery`, with :mod:`.batching` for taking a batch, :mod:`.isolation`
for delivering one and :mod:`.dead_letter` for what is rejected). See :mod:`forwardd.buffer.queue` for the
design, :mod:`forwardd.buffer.commit` for the group commit."""

from forwardd.buffer.base import ChunkQueue, FsyncPolicy, Taken, WhenFull
from forwardd.buffer.batching import Batching
from forwardd.buffer.dead_letter import read_dead_letter, write_dead_letter
from forwardd.buffer.delivery import BufferedSink, SinkStats
from forwardd.buffer.memory import MemoryQueue, MemorySink
from forwardd.buffer.queue import DEFAULT_MAX_SEGMENT_SIZE, DEFAULT_MAX_SIZE, DiskQueue
from forwardd.buffer.retry import RetryPolicy

__all__ = [
    "DEFAULT_MAX_SEGMENT_SIZE",
    "DEFAULT_MAX_SIZE",
    "Batching",
    "BufferedSink",
    "ChunkQueue",
    "DiskQueue",
    "FsyncPolicy",
    "MemoryQueue",
    "MemorySink",
    "RetryPolicy",
    "SinkStats",
    "Taken",
    "WhenFull",
    "read_dead_letter",
    "write_dead_letter",
]
