"""``buffer.compression``: lz4 unless set, checked when the file is read, given to the disk queue, and a
queue setting that a reload refuses (the open queue keeps writing as it began)."""

from __future__ import annotations

from pathlib import Path

import pytest

from forwardd.app import parse_config
from forwardd.app.build import build_sink
from forwardd.app.reload import fixed_changes
from forwardd.buffer import DiskQueue
from forwardd.config import ConfigError


def config(tmp_path: Path, buffer: str = "") -> str:
    return f"""
storage: {{path: {tmp_path}}}
sources: [{{type: forward, port: 0}}]
outputs:
  files:
    type: file
    path: {tmp_path}/out
    buffer: {{{buffer}}}
routes: [{{match: "**", outputs: [files]}}]
"""


def test_lz4_unless_set(tmp_path: Path) -> None:
    assert parse_config(config(tmp_path)).outputs["files"].buffer.compression == "lz4"
    assert parse_config(config(tmp_path, "compression: none")).outputs["files"].buffer.compression == "none"


def test_an_unknown_codec_is_a_mistake_at_its_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="compression"):
        parse_config(config(tmp_path, "compression: zstd"))


@pytest.mark.parametrize("codec", ["lz4", "none"])
def test_the_disk_queue_gets_it(tmp_path: Path, codec: str) -> None:
    cfg = parse_config(config(tmp_path, f"compression: {codec}"))
    sink = build_sink("files", cfg.outputs["files"], tmp_path)
    assert isinstance(sink.queue, DiskQueue)
    assert sink.queue.compression == codec


def test_a_reload_cannot_change_it(tmp_path: Path) -> None:
    old = parse_config(config(tmp_path))
    new = parse_config(config(tmp_path, "compression: none"))
    assert fixed_changes(old, new) == ["outputs.files.buffer.compression: 'lz4' -> 'none'"]
