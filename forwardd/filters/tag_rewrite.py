"""tag_rewrite: give events a new tag from a field (fluent-plugin-rewrite-tag-filter, without ``invert``).

Each rule is ``(key, regex, new_tag)``; the first rule whose regex is found in the field's text decides
the event's tag. ``new_tag`` is a template: ``$1``..``$99`` are the regex's groups (an unmatched group gives
``""``) and ``${tag}``, ``${tag_parts[N]}``, ``${tag_prefix[N]}``, ``${tag_suffix[N]}``, ``${hostname}``
work as in record_modify. A rule whose rendered tag is empty counts as not matching (an empty tag cannot be
routed), and the next rule is tried. Events no rule matches keep their tag, or are dropped with
``keep_unmatched=False``.

Contract extension: a chunk has one tag, so events that end up under different tags must leave as several
chunks. This is the one filter whose ``__call__`` may return ``list[Chunk]`` (two or more chunks, each one
tag, in the order each new tag first appeared; events keep their relative order within a tag). When every
event ends up under one tag it returns a single Chunk: the same object if the tag did not change, else
:meth:`Chunk.with_tag`, which shares the bytes. Whether a rewritten chunk is routed again from the top (and
so could loop) is the router's decision, not this filter's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from pydantic import Field

from forwardd.config.types import Frozen, NonEmpty, Regex
from forwardd.filters._accessor import MISSING, Path, get_path, parse_accessor, value_str
from forwardd.filters._template import Template
from forwardd.model import Chunk, Event

__all__ = ["TagRewrite", "TagRewriteSettings"]

_Rule = tuple[Path, Callable[[str], "re.Match[str] | None"], Template]


class TagRule(Frozen):
    key: NonEmpty
    pattern: Regex
    tag: NonEmpty


class TagRewriteSettings(Frozen):
    """``type: tag_rewrite``: the first rule whose field matches gives the event its new tag."""

    rules: Annotated[tuple[TagRule, ...], Field(min_length=1)]
    keep_unmatched: bool = True


class TagRewrite:
    """Re-tag events by rules; may split a chunk into one chunk per resulting tag."""

    __slots__ = ("_keep_unmatched", "_rules", "name")

    @classmethod
    def from_settings(cls, name: str, s: TagRewriteSettings) -> TagRewrite:
        return cls(
            name=name, rules=[(r.key, r.pattern, r.tag) for r in s.rules], keep_unmatched=s.keep_unmatched
        )

    def __init__(
        self,
        *,
        name: str = "tag_rewrite",
        rules: Sequence[tuple[str, str, str]],
        keep_unmatched: bool = True,
    ) -> None:
        self.name = name
        self._keep_unmatched = keep_unmatched
        self._rules: list[_Rule] = []
        if not rules:
            raise ValueError("tag_rewrite needs at least one rule")
        for i, rule in enumerate(rules):
            try:
                key, pattern, new_tag = rule
            except (TypeError, ValueError):
                raise ValueError(
                    f"tag_rewrite rules[{i}]: expected (key, regex, new_tag), got {rule!r}"
                ) from None
            try:
                path = parse_accessor(key)
                rx = re.compile(pattern)
                tpl = Template(new_tag, record=False, times=False, groups=True)
            except re.error as e:
                raise ValueError(f"tag_rewrite rules[{i}]: bad regex {pattern!r}: {e}") from None
            except (ValueError, TypeError) as e:
                raise ValueError(f"tag_rewrite rules[{i}]: {e}") from None
            if tpl.groups > rx.groups:
                raise ValueError(
                    f"tag_rewrite rules[{i}]: new_tag {new_tag!r} uses ${tpl.groups} "
                    f"but regex {pattern!r} has {rx.groups} group(s)"
                )
            self._rules.append((path, rx.search, tpl))

    def tag_for(self, tag: str, ev: Event) -> str | None:
        """The tag this event goes to, or None when no rule matched."""
        rec = ev.record
        for path, search, tpl in self._rules:
            v: Any = rec.get(path[0], MISSING) if len(path) == 1 else get_path(rec, path)
            if v is MISSING:
                continue
            m = search(v if type(v) is str else value_str(v))
            if m is None:
                continue
            b = tpl.bind(tag)
            new = b.constant if b.constant is not None else b.render(ev, m.group)
            if new:
                return new
        return None

    def __call__(self, chunk: Chunk) -> Chunk | list[Chunk] | None:
        tag = chunk.tag
        events = chunk.events()
        if not events:
            return chunk
        groups: dict[str, list[Event]] = {}
        keep = self._keep_unmatched
        tag_for = self.tag_for
        for ev in events:
            new = tag_for(tag, ev)
            if new is None:
                if not keep:
                    continue
                new = tag
            g = groups.get(new)
            if g is None:
                groups[new] = [ev]
            else:
                g.append(ev)
        if not groups:
            return None
        if len(groups) == 1:
            ((new, evs),) = groups.items()
            if len(evs) == len(events):
                return chunk if new == tag else chunk.with_tag(new)
            return chunk.replace_events(evs, tag=new)
        return [chunk.replace_events(evs, tag=new) for new, evs in groups.items()]
