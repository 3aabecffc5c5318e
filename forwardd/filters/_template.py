"""Value templates shared by record_modify and tag_rewrite, compiled once and bound once per tag.

Placeholders (Fluentd record_transformer's, without Ruby): ``${tag}``, ``${tag_parts[N]}``,
``${tag_prefix[N]}``, ``${tag_suffix[N]}`` (N may be negative; out of range gives ``""``), ``${hostname}``,
``${time}`` (the event's time, ISO 8601 UTC with nanoseconds), ``${record["k"]}`` / ``${record.k.nested}``
(any accessor form of :mod:`._accessor` after ``record``), and, for tag_rewrite only, ``$1``..``$99`` (regex
groups). A ``$`` not starting a placeholder is literal. Unknown placeholders are a configuration error.

Everything that depends on the tag alone is resolved by :meth:`Template.bind` once per chunk (a chunk has
one tag), so the per-event work is only the record/time/group lookups that remain.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from forwardd.constants import NS
from forwardd.filters._accessor import MISSING, Path, get_path, parse_accessor, value_str
from forwardd.model import Event

__all__ = ["Bound", "GroupRef", "RecordRef", "Template", "TimeRef", "format_time", "tag_info"]


@dataclass(frozen=True, slots=True)
class _TagRef:
    kind: str  # "tag" | "tag_parts" | "tag_prefix" | "tag_suffix"
    index: int


@dataclass(frozen=True, slots=True)
class RecordRef:
    path: Path


@dataclass(frozen=True, slots=True)
class TimeRef:
    pass


@dataclass(frozen=True, slots=True)
class GroupRef:
    n: int


_Token = str | _TagRef | RecordRef | TimeRef | GroupRef
#: What is left of a template once the tag is known.
Part = str | RecordRef | TimeRef | GroupRef

_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}|\$(\d{1,2})|\$\{")
_TAG_INDEXED = re.compile(r"(tag_parts|tag_prefix|tag_suffix)\[\s*(-?\d+)\s*\]")


@lru_cache(maxsize=1)
def _hostname() -> str:
    return socket.gethostname()


@lru_cache(maxsize=1024)
def tag_info(tag: str) -> dict[str, list[str]]:
    """Fluentd's tag arrays: for ``a.b.c``, prefix is ``[a, a.b, a.b.c]``, suffix ``[a.b.c, b.c, c]``."""
    parts = tag.split(".")
    prefix = [".".join(parts[: i + 1]) for i in range(len(parts))]
    suffix = [".".join(parts[i:]) for i in range(len(parts))]
    return {"tag": [tag], "tag_parts": parts, "tag_prefix": prefix, "tag_suffix": suffix}


_time_cache: list[Any] = [None, ""]


def format_time(ns: int) -> str:
    """ISO 8601 UTC with nanoseconds; the second's text is cached because events of a chunk share it.

    A time gmtime cannot write (a client's integer seconds far past year 9999) is written as its seconds,
    so that one odd client time costs nothing but its own text."""
    s, frac = divmod(ns, NS)
    if _time_cache[0] != s:
        try:
            _time_cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s))
        except (OverflowError, OSError, ValueError):
            return f"{s}.{frac:09d}"
        _time_cache[0] = s
    return f"{_time_cache[1]}.{frac:09d}Z"


def _parse_inner(inner: str, text: str, *, record: bool, times: bool) -> _Token:
    name = inner.strip()
    if name == "tag":
        return _TagRef("tag", 0)
    if name == "hostname":
        return _hostname()
    if name == "time" and times:
        return TimeRef()
    m = _TAG_INDEXED.fullmatch(name)
    if m:
        return _TagRef(m.group(1), int(m.group(2)))
    if record and (name.startswith("record[") or name.startswith("record.")):
        try:
            return RecordRef(parse_accessor("$" + name[len("record") :]))
        except ValueError as e:
            raise ValueError(f"template {text!r}: {e}") from None
    raise ValueError(f"template {text!r}: unknown placeholder ${{{inner}}}")


class Template:
    """A compiled template; ``bind(tag)`` gives the per-chunk form."""

    __slots__ = ("_bound", "groups", "text", "tokens")

    def __init__(self, text: str, *, record: bool = True, times: bool = True, groups: bool = False) -> None:
        if not isinstance(text, str):
            raise ValueError(f"template must be a string, got {text!r}")
        self.text = text
        tokens: list[_Token] = []
        pos = 0
        for m in _PLACEHOLDER.finditer(text):
            if m.group(0) == "${":
                raise ValueError(f"template {text!r}: unclosed '${{' at offset {m.start()}")
            if m.group(2) is not None and not groups:
                continue  # $1 is literal text outside tag_rewrite
            if m.start() > pos:
                tokens.append(text[pos : m.start()])
            if m.group(2) is not None:
                tokens.append(GroupRef(int(m.group(2))))
            else:
                tokens.append(_parse_inner(m.group(1), text, record=record, times=times))
            pos = m.end()
        if pos < len(text):
            tokens.append(text[pos:])
        self.tokens = tokens
        self.groups = max((t.n for t in tokens if isinstance(t, GroupRef)), default=0)
        self._bound: dict[str, Bound] = {}

    def bind(self, tag: str) -> Bound:
        b = self._bound.get(tag)
        if b is None:
            if len(self._bound) >= 1024:  # tags are few in practice; a flood of them must not grow this
                self._bound.clear()
            b = self._bound[tag] = Bound(self.tokens, tag)
        return b


class Bound:
    """A template with the tag resolved: ``constant`` when nothing per-event is left."""

    __slots__ = ("constant", "parts", "single")

    def __init__(self, tokens: list[_Token], tag: str) -> None:
        info = tag_info(tag)
        parts: list[Part] = []
        for t in tokens:
            if isinstance(t, _TagRef):
                arr = info[t.kind]
                t = arr[t.index] if -len(arr) <= t.index < len(arr) else ""
            if isinstance(t, str):
                if not t:
                    continue
                if parts and isinstance(parts[-1], str):
                    parts[-1] += t
                    continue
            parts.append(t)
        self.parts = parts
        self.constant: str | None = None
        if not parts:
            self.constant = ""
        elif len(parts) == 1 and isinstance(parts[0], str):
            self.constant = parts[0]
        #: A template that is exactly one ``${record...}`` keeps the value's type (Fluentd auto_typecast).
        only = parts[0] if len(parts) == 1 else None
        self.single: RecordRef | None = only if isinstance(only, RecordRef) else None

    def render(self, ev: Event, groups: Callable[[int], str | Any] | None = None) -> str:
        out: list[str] = []
        for p in self.parts:
            if type(p) is str:
                out.append(p)
            elif type(p) is RecordRef:
                v = get_path(ev.record, p.path)
                out.append("" if v is MISSING else value_str(v))
            elif type(p) is TimeRef:
                out.append(format_time(ev.time_ns))
            elif groups is not None:
                out.append(groups(p.n) or "")  # type: ignore[union-attr]
        return "".join(out)
