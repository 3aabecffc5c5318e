"""The ``buffer:`` section of an output: which queue stands in front of it, where, and how it retries.

Beside the queues it configures; every output entry of the configuration has one (the app's registry adds
it to each output type's own settings).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from forwardd.buffer.retry import RetryPolicy
from forwardd.buffer.segment import Compression
from forwardd.config.types import Count, Frozen, Problems
from forwardd.config.units import Duration, Size

__all__ = ["BufferSettings", "RetrySettings"]


class RetrySettings(Frozen):
    initial: Duration = 1.0
    max: Duration = 300.0
    multiplier: Annotated[float, Field(ge=1.0)] = 2.0
    #: Each delay is multiplied by a random factor in [1 - jitter, 1 + jitter].
    jitter: Annotated[float, Field(ge=0.0, le=1.0)] = 0.125
    #: Give up (dead-letter the chunk) after this many failed attempts; null = no limit.
    max_attempts: Count | None = None
    #: Give up on a chunk this long after its first attempt; null = no limit.
    max_age: Duration | None = 72 * 3600.0

    def problems(self) -> Problems:
        if self.initial > self.max:
            yield ("initial",), "must not exceed retry.max"

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            initial=self.initial, max=self.max, multiplier=self.multiplier, jitter=self.jitter,
            max_attempts=self.max_attempts, max_age=self.max_age,
        )  # fmt: skip


class BufferSettings(Frozen):
    type: Literal["disk", "memory"] = "disk"
    #: Resolved when the Config is validated: default ``<storage.path>/buffer/<output name>``.
    path: Path | None = None
    #: Resolved likewise: default ``<storage.path>/dead-letter/<output name>``.
    dead_letter_path: Path | None = None
    fsync: Literal["always", "interval", "never"] = "always"
    fsync_interval: Duration = 1.0
    max_size: Size = 1024**3
    segment_size: Size = 16 * 1024**2
    when_full: Literal["block", "drop_oldest"] = "block"
    #: Chunks of 4 KiB or more are written as LZ4 blocks when that saves an eighth (docker-shaped
    #: PackedForward: 5-9x less): the synced write bandwidth of the disk bounds bulk traffic. "none"
    #: writes them as they came; either is read back (see forwardd.buffer.segment).
    compression: Compression = "lz4"
    retry: RetrySettings = Field(default_factory=RetrySettings)

    def problems(self) -> Problems:
        if self.segment_size > self.max_size:
            yield ("segment_size",), "must not exceed buffer.max_size"
        for loc, message in self.retry.problems():
            yield ("retry", *loc), message
