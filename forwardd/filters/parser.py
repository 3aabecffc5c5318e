"""parser: parse one text field (``log`` by default) into fields (Fluentd filter_parser).

Formats: ``json`` (orjson; the result must be a map), ``regex`` (named groups of ``pattern``, searched;
groups that did not take part are left out) and ``logfmt`` (``k=v k2="quoted \\"v\\"" flag``; a bare key
reads as ``true``; the whole text must tokenise).

The parsed map is merged over the record (parsed values win) when ``reserve_data`` (the default here,
unlike Fluentd), or replaces it otherwise; ``hash_value_field`` puts it under that key instead of merging;
``remove_key_name_field`` drops the source field when parsing succeeded (before merging, so a parsed field
of the same name survives). The event's time is left as it is.

A record that cannot be parsed passes unchanged: losing a log line because it is not JSON would be worse.
It is counted in :attr:`Parser.failures` and logged as ``filter.parse_failed`` at the 1st, 2nd, 4th, 8th...
failure (Fluentd's rate limit for "no match"), so a stream of plain-text lines cannot flood the log.
Records without the field, or where it is not text, are counted in :attr:`Parser.skipped` and pass too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

import orjson
import structlog

from forwardd.config.types import Frozen, NonEmpty, Problems, Regex
from forwardd.filters._accessor import MISSING, get_path, parse_accessor, pop_path
from forwardd.model import Chunk, Event

__all__ = ["Parser", "ParserSettings", "parse_logfmt"]

Format = Literal["json", "regex", "logfmt"]

_LOGFMT = re.compile(r"""\s*([^\s="]+)(?:=("(?:[^"\\]|\\.)*"|[^\s"]*))?(?:\s+|$)""")
_ESCAPE = re.compile(r"\\(.)")


def parse_logfmt(text: str) -> dict[str, Any] | None:
    """A logfmt line as a map, or None when it does not tokenise (or holds no pair)."""
    out: dict[str, Any] = {}
    pos = 0
    n = len(text)
    match = _LOGFMT.match
    while pos < n:
        m = match(text, pos)
        if m is None or m.end() == pos:
            return None
        key, raw = m.group(1), m.group(2)
        if raw is None:
            out[key] = True
        elif raw.startswith('"'):
            try:
                out[key] = orjson.loads(raw)
            except orjson.JSONDecodeError:
                out[key] = _ESCAPE.sub(r"\1", raw[1:-1])
        else:
            out[key] = raw
        pos = m.end()
    return out or None


def _parse_json(text: str | bytes) -> dict[Any, Any] | None:
    # A leading-character check spares the exception for the common plain-text line.
    head = text[:1] if isinstance(text, str) else text[:1].decode("latin-1")
    if head != "{" and text.lstrip()[:1] not in ("{", b"{"):
        return None
    try:
        v = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return v if type(v) is dict else None


class ParserSettings(Frozen):
    """``type: parser``: parse one field (JSON, a regex with named groups, logfmt) into fields."""

    key: NonEmpty = "log"
    format: Literal["json", "regex", "logfmt"] = "json"
    pattern: Regex | None = None
    reserve_data: bool = True
    remove_key_name_field: bool = False
    hash_value_field: str | None = None

    def problems(self) -> Problems:
        if self.format == "regex" and self.pattern is None:
            yield ("pattern",), "format regex needs a pattern"
        elif self.format == "regex" and self.pattern is not None and not re.compile(self.pattern).groupindex:
            yield ("pattern",), "a parser pattern needs named groups like (?P<level>\\w+)"
        elif self.format != "regex" and self.pattern is not None:
            yield ("pattern",), f"pattern only applies to format regex, not {self.format}"


class Parser:
    """Parse a field of each event into fields; returns the chunk itself when nothing was parsed."""

    __slots__ = (
        "_hash_value_field",
        "_key",
        "_parse",
        "_remove_key",
        "_reserve",
        "failures",
        "key_name",
        "name",
        "skipped",
    )

    @classmethod
    def from_settings(cls, name: str, s: ParserSettings) -> Parser:
        return cls(
            name=name,
            key_name=s.key,
            format=s.format,
            pattern=s.pattern,
            reserve_data=s.reserve_data,
            remove_key_name_field=s.remove_key_name_field,
            hash_value_field=s.hash_value_field,
        )

    def __init__(
        self,
        *,
        name: str = "parser",
        key_name: str = "log",
        format: Format = "json",
        pattern: str | None = None,
        reserve_data: bool = True,
        remove_key_name_field: bool = False,
        hash_value_field: str | None = None,
    ) -> None:
        self.name = name
        self.key_name = key_name
        try:
            self._key = parse_accessor(key_name)
        except ValueError as e:
            raise ValueError(f"parser key_name: {e}") from None
        if format == "json":
            if pattern is not None:
                raise ValueError("parser: pattern is only for format 'regex'")
            self._parse: Callable[[Any], dict[Any, Any] | None] = _parse_json
        elif format == "logfmt":
            if pattern is not None:
                raise ValueError("parser: pattern is only for format 'regex'")
            self._parse = lambda v: parse_logfmt(v) if type(v) is str else None
        elif format == "regex":
            if not pattern:
                raise ValueError("parser: format 'regex' needs a pattern")
            try:
                rx = re.compile(pattern)
            except re.error as e:
                raise ValueError(f"parser: bad regex {pattern!r}: {e}") from None
            if not rx.groupindex:
                raise ValueError(f"parser: regex {pattern!r} has no named group (?P<name>...)")
            search = rx.search

            def parse_regex(v: Any) -> dict[Any, Any] | None:
                m = search(v) if type(v) is str else None
                if m is None:
                    return None
                return {k: g for k, g in m.groupdict().items() if g is not None}

            self._parse = parse_regex
        else:
            raise ValueError(f"parser format must be 'json', 'regex' or 'logfmt', got {format!r}")
        if hash_value_field is not None and not hash_value_field:
            raise ValueError("parser hash_value_field must not be empty")
        self._reserve = reserve_data
        self._remove_key = remove_key_name_field
        self._hash_value_field = hash_value_field
        self.failures = 0
        self.skipped = 0

    def __call__(self, chunk: Chunk) -> Chunk | None:
        events = chunk.events()
        out: list[Event] | None = None  # started at the first parsed event; until then nothing changed
        key = self._key
        top = key[0] if len(key) == 1 else None
        parse = self._parse
        for i, ev in enumerate(events):
            rec = ev.record
            v = rec.get(top, MISSING) if top is not None else get_path(rec, key)
            tv = type(v)
            if tv is not str and tv is not bytes:
                self.skipped += 1
                parsed = None
            else:
                parsed = parse(v)
                if parsed is None:
                    self._failed(chunk.tag)
            if parsed is None:
                if out is not None:
                    out.append(ev)
                continue
            if out is None:
                out = events[:i]
            out.append(Event(ev.time_ns, self._merge(rec, parsed), ev.meta))
        return chunk if out is None else chunk.replace_events(out)

    def _merge(self, rec: dict[Any, Any], parsed: dict[Any, Any]) -> dict[Any, Any]:
        value: dict[Any, Any] = {self._hash_value_field: parsed} if self._hash_value_field else parsed
        if not self._reserve:
            return value
        base = dict(rec)
        if self._remove_key:
            key = self._key
            if len(key) == 1:
                base.pop(key[0], None)
            else:
                pop_path(base, key)
        base.update(value)
        return base

    def _failed(self, tag: str) -> None:
        self.failures += 1
        n = self.failures
        if n & (n - 1) == 0:
            # Looked up here, not at import: logging may be configured (or captured in tests) later.
            structlog.get_logger("forwardd.filter").warning(
                "filter.parse_failed", filter=self.name, tag=tag, failures=n, key=self.key_name
            )
