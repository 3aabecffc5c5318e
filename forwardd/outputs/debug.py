"""Outputs for trying a pipeline out: print every event, or drop them and count."""

from __future__ import annotations

import sys
from typing import BinaryIO, Literal

from forwardd.config.types import Frozen
from forwardd.model import Chunk
from forwardd.outputs.base import Output
from forwardd.outputs.formats import encode_json_lines

__all__ = ["NullOutput", "NullSettings", "StdoutOutput", "StdoutSettings"]


class StdoutSettings(Frozen):
    format: Literal["json", "fluentd"] = "json"

    def describe(self) -> str:
        return f"stdout format={self.format}"


class NullSettings(Frozen):
    def describe(self) -> str:
        return "null (discard)"


class StdoutOutput(Output):
    """JSON lines on standard output (or ``stream``), one write per chunk so chunks never interleave."""

    @classmethod
    def from_settings(cls, name: str, s: StdoutSettings) -> StdoutOutput:
        return cls(name=name)

    def __init__(
        self,
        *,
        name: str = "stdout",
        time_key: str | None = "time",
        tag_key: str | None = "tag",
        stream: BinaryIO | None = None,
    ) -> None:
        self.name = name
        self.time_key = time_key
        self.tag_key = tag_key
        self._stream = stream

    async def write(self, chunk: Chunk) -> None:
        data = encode_json_lines(chunk, self.time_key, self.tag_key)
        if data:
            stream = self._stream if self._stream is not None else sys.stdout.buffer
            stream.write(data)
            stream.flush()


class NullOutput(Output):
    """Discards chunks and counts them: a sink for benchmarks and routing tests."""

    @classmethod
    def from_settings(cls, name: str, s: NullSettings) -> NullOutput:
        return cls(name=name)

    def __init__(self, *, name: str = "null", decode: bool = False) -> None:
        self.name = name
        self.decode = decode  # decode records, to measure the decoding cost an output would pay
        self.chunks = 0
        self.events = 0

    async def write(self, chunk: Chunk) -> None:
        self.chunks += 1
        self.events += len(chunk.events()) if self.decode else chunk.count
