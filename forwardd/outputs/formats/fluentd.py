"""The ``fluentd`` format: Fluentd ``out_file``'s default ``time<TAB>tag<TAB>json`` line, for files that
tools written for Fluentd's output read as they are.

The time is ``2024-01-02T03:04:05+00:00`` (whole seconds, as Fluentd writes it) in UTC or local time; the
record is the ``json`` format's text of the record alone. Tabs and newlines in the tag are escaped so a
line stays a line.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import orjson

from forwardd.constants import NS
from forwardd.model import Chunk, Event
from forwardd.outputs.formats.common import fix_str, unprocessable
from forwardd.outputs.formats.json import to_json

__all__ = ["encode_fluentd_line", "encode_fluentd_lines", "fluentd_lines"]

_NL = orjson.OPT_APPEND_NEWLINE
_TAG_ESCAPES = str.maketrans({"\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _fluentd_second(s: int, utc: bool) -> str:
    if utc:
        return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(s))
    tm = time.localtime(s)
    off = tm.tm_gmtoff // 60
    sign = "+" if off >= 0 else "-"
    h, m = divmod(abs(off), 60)
    return time.strftime("%Y-%m-%dT%H:%M:%S", tm) + f"{sign}{h:02d}:{m:02d}"


@unprocessable
def fluentd_lines(events: Sequence[Event], tag: str, *, utc: bool = True) -> bytes:
    """Fluentd ``out_file`` lines: ``time<TAB>tag<TAB>json``."""
    tag_b = b"\t" + fix_str(tag).translate(_TAG_ESCAPES).encode() + b"\t"
    buf = bytearray()
    last_s = -1
    stamp = b""
    for ev in events:
        s = ev.time_ns // NS
        if s != last_s:
            last_s = s
            stamp = _fluentd_second(s, utc).encode() + tag_b
        buf += stamp
        buf += to_json(ev.record, _NL)
    return bytes(buf)


@unprocessable
def encode_fluentd_line(event: Event, tag: str, *, utc: bool = True) -> bytes:
    return fluentd_lines((event,), tag, utc=utc)


@unprocessable
def encode_fluentd_lines(chunk: Chunk, utc: bool = True) -> bytes:
    return fluentd_lines(chunk.events(), chunk.tag, utc=utc)
