"""grep: keep or drop events by regular expressions on fields (Fluentd filter_grep semantics).

An event survives when its ``regexp`` rules pass (all of them with ``regexp_mode="and"``, the default, or
any with ``"or"``) and its ``exclude`` rules do not (any of them, ``exclude_mode="or"``, the default, or
all with ``"and"``). Patterns are searched (not anchored) in the field's text (see
:func:`~forwardd.filters._accessor.value_str`). Unlike Fluentd, where a missing field reads as ``""``, a
missing field matches no rule: a pattern like ``^$`` then does not keep events that lack the field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

from forwardd.config.types import Frozen, NonEmpty, Problems, Regex
from forwardd.filters._accessor import MISSING, Path, get_path, parse_accessor, value_str
from forwardd.model import Chunk

__all__ = ["Grep", "GrepSettings"]

Mode = Literal["and", "or"]
_Rule = tuple[Path, Callable[[str], Any]]


def _compile(rules: Sequence[tuple[str, str]], what: str) -> list[_Rule]:
    out: list[_Rule] = []
    for i, rule in enumerate(rules):
        try:
            key, pattern = rule
        except (TypeError, ValueError):
            raise ValueError(f"grep {what}[{i}]: expected (key, pattern), got {rule!r}") from None
        try:
            path = parse_accessor(key)
        except ValueError as e:
            raise ValueError(f"grep {what}[{i}]: {e}") from None
        if not isinstance(pattern, str):
            raise ValueError(f"grep {what}[{i}]: pattern must be a string, got {pattern!r}")
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"grep {what}[{i}]: bad regex {pattern!r}: {e}") from None
        out.append((path, rx.search))
    return out


def _matches(record: dict[Any, Any], rule: _Rule) -> bool:
    path, search = rule
    v = record.get(path[0], MISSING) if len(path) == 1 else get_path(record, path)
    if v is MISSING:
        return False
    return search(v if type(v) is str else value_str(v)) is not None


class GrepRule(Frozen):
    key: NonEmpty
    pattern: Regex


class GrepSettings(Frozen):
    """``type: grep``: keep the events whose fields match, drop those an exclude rule matches."""

    regexp: tuple[GrepRule, ...] = ()
    exclude: tuple[GrepRule, ...] = ()
    #: How regexp rules combine: and = all must match, or = any. An event matching any exclude is dropped.
    combine: Literal["and", "or"] = "and"

    def problems(self) -> Problems:
        if not self.regexp and not self.exclude:
            yield (), "grep needs at least one regexp or exclude rule"


class Grep:
    """Filter events by field regexes; returns the chunk itself when every event survives."""

    __slots__ = ("_exclude", "_exclude_and", "_regexp", "_regexp_and", "name")

    @classmethod
    def from_settings(cls, name: str, s: GrepSettings) -> Grep:
        return cls(
            name=name,
            regexp=[(r.key, r.pattern) for r in s.regexp],
            exclude=[(r.key, r.pattern) for r in s.exclude],
            regexp_mode=s.combine,
        )

    def __init__(
        self,
        *,
        name: str = "grep",
        regexp: Sequence[tuple[str, str]] = (),
        exclude: Sequence[tuple[str, str]] = (),
        regexp_mode: Mode = "and",
        exclude_mode: Mode = "or",
    ) -> None:
        if regexp_mode not in ("and", "or"):
            raise ValueError(f"grep regexp_mode must be 'and' or 'or', got {regexp_mode!r}")
        if exclude_mode not in ("and", "or"):
            raise ValueError(f"grep exclude_mode must be 'and' or 'or', got {exclude_mode!r}")
        self.name = name
        self._regexp = _compile(regexp, "regexp")
        self._exclude = _compile(exclude, "exclude")
        if not self._regexp and not self._exclude:
            raise ValueError("grep needs at least one regexp or exclude rule")
        self._regexp_and = regexp_mode == "and"
        self._exclude_and = exclude_mode == "and"

    def keep(self, record: dict[Any, Any]) -> bool:
        """Whether one record survives; the per-event decision, exposed for tests and reuse."""
        if self._regexp:
            if self._regexp_and:
                if not all(_matches(record, r) for r in self._regexp):
                    return False
            elif not any(_matches(record, r) for r in self._regexp):
                return False
        if self._exclude:
            if self._exclude_and:
                if all(_matches(record, r) for r in self._exclude):
                    return False
            elif any(_matches(record, r) for r in self._exclude):
                return False
        return True

    def __call__(self, chunk: Chunk) -> Chunk | None:
        events = chunk.events()
        keep = self.keep
        kept = [e for e in events if keep(e.record)]
        if len(kept) == len(events):
            return chunk
        if not kept:
            return None
        return chunk.replace_events(kept)
