"""A ``type: file`` output's settings: where lines go, in which format, and when files rotate."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from forwardd.config.types import Frozen, NonEmpty, PositiveDuration
from forwardd.config.units import Duration, Size

__all__ = ["FileSettings", "FsyncMode", "Rotate", "worker_path"]

#: When the file output fsyncs what it wrote (see :mod:`forwardd.outputs.file.output`).
FsyncMode = Literal["write", "grouped"]


class Rotate(Frozen):
    interval: Duration | None = 86400.0
    max_size: Size | None = 256 * 1024**2


class FileSettings(Frozen):
    #: ``${tag}`` and strftime codes are expanded per chunk; relative paths are relative to the working dir.
    path: NonEmpty
    format: Literal["json", "msgpack", "fluentd"] = "json"
    compress: Literal["none", "gzip", "zstd"] = "none"
    rotate: Rotate = Field(default_factory=Rotate)
    symlink: str | None = None
    #: The longest a committed event waits to be written, so that writes and fsyncs are grouped.
    flush_interval: Duration = 0.1
    #: ``write``: an fsync per write. ``grouped``: one fsync for the writes of up to ``fsync_interval`` (the
    #: buffer keeps their chunks until then; a crash writes them again: more repeated lines after a kill -9).
    fsync: FsyncMode = "write"
    fsync_interval: PositiveDuration = 0.5

    def describe(self) -> str:
        return f"file {self.path} format={self.format} compress={self.compress}"


def worker_path(template: str, worker: int) -> str:
    """Worker processes must not append to the same file: each but the first gets its own suffix."""
    if worker == 0:
        return template
    p = Path(template)
    return str(p.with_name(f"{p.stem}.worker{worker}{p.suffix}"))
