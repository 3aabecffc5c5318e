"""record_modify: set, rename, remove and keep fields (Fluentd record_transformer + Fluent Bit modify).

Steps, in this fixed order on each event: ``rename`` (old → new), ``keep_keys`` (drop every other field),
``set`` (templates, see :mod:`._template`), ``remove_keys``. Templates read the record as it *arrived*
(as Fluentd's ``${record[...]}`` does), so ``set`` can copy a field that ``rename`` or ``remove_keys`` take
away. Every key may be nested (``a.b``, ``$.a.b``, ``$['a.b']``). A template that is exactly one
``${record...}`` keeps the value's type (a number stays a number); a missing field gives ``null`` there and
``""`` inside a longer text.

Records are copied before any change (shallowly, plus the nested maps on a changed path): the chunk's
decoded events may be shared with another route, so they are never changed in place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from forwardd.config.types import Frozen, Text
from forwardd.filters._accessor import (
    MISSING,
    Path,
    get_path,
    parse_accessor,
    pop_path,
    require_map_path,
    set_path,
)
from forwardd.filters._template import Bound, Template
from forwardd.model import Chunk, Event

__all__ = ["RecordModify", "RecordModifySettings"]


def _write_path(spec: str, what: str) -> Path:
    try:
        path = parse_accessor(spec)
        require_map_path(spec, path)
    except ValueError as e:
        raise ValueError(f"record_modify {what}: {e}") from None
    return path


class RecordModifySettings(Frozen):
    """``type: record_modify``: set (templates), remove, rename and keep fields."""

    set: dict[str, Text] = Field(default_factory=dict)
    remove: tuple[str, ...] = ()
    rename: dict[str, str] = Field(default_factory=dict)
    keep_keys: tuple[str, ...] | None = None


class RecordModify:
    """Change fields of every event; returns the chunk itself when no event changed."""

    __slots__ = ("_keep", "_remove", "_rename", "_set", "name")

    @classmethod
    def from_settings(cls, name: str, s: RecordModifySettings) -> RecordModify:
        return cls(name=name, set=s.set, remove_keys=s.remove, rename=s.rename, keep_keys=s.keep_keys)

    def __init__(
        self,
        *,
        name: str = "record_modify",
        set: Mapping[str, str] | None = None,  # the config's own word
        remove_keys: Sequence[str] = (),
        rename: Mapping[str, str] | None = None,
        keep_keys: Sequence[str] | None = None,
    ) -> None:
        self.name = name
        self._set: list[tuple[Path, Template]] = []
        for key, text in (set or {}).items():
            try:
                tpl = Template(text)
            except ValueError as e:
                raise ValueError(f"record_modify set[{key!r}]: {e}") from None
            self._set.append((_write_path(key, f"set[{key!r}]"), tpl))
        self._remove = [_write_path(k, "remove_keys") for k in remove_keys]
        self._rename = [
            (_write_path(old, f"rename[{old!r}]"), _write_path(new, f"rename[{old!r}]"))
            for old, new in (rename or {}).items()
        ]
        self._keep = None if keep_keys is None else [_write_path(k, "keep_keys") for k in keep_keys]
        if not (self._set or self._remove or self._rename or self._keep is not None):
            raise ValueError("record_modify needs at least one of set, remove_keys, rename, keep_keys")

    def __call__(self, chunk: Chunk) -> Chunk | None:
        events = chunk.events()
        # Per chunk: constants are rendered once; only record/time templates are left per event.
        consts: list[tuple[Path, Any]] = []
        per_event: list[tuple[Path, Bound]] = []
        for path, tpl in self._set:
            b = tpl.bind(chunk.tag)
            if b.constant is not None:
                consts.append((path, b.constant))
            else:
                per_event.append((path, b))
        out: list[Event] = []
        changed = False
        modify = self._modify
        for ev in events:
            rec = modify(ev, consts, per_event)
            if rec is None:
                out.append(ev)
            else:
                changed = True
                out.append(Event(ev.time_ns, rec, ev.meta))
        return chunk.replace_events(out) if changed else chunk

    def _modify(
        self, ev: Event, consts: list[tuple[Path, Any]], per_event: list[tuple[Path, Bound]]
    ) -> dict[Any, Any] | None:
        """The new record, or None when this one needs no change (so nothing is copied)."""
        orig = ev.record
        values = consts
        if per_event:
            # Rendered before any change: templates see the record as it arrived.
            values = consts.copy()
            for path, b in per_event:
                if b.single is not None:
                    v = get_path(orig, b.single.path)
                    values.append((path, None if v is MISSING else v))
                else:
                    values.append((path, b.render(ev)))
        rec: dict[Any, Any] | None = None
        for old, new in self._rename:
            if get_path(orig if rec is None else rec, old) is MISSING:
                continue
            if rec is None:
                rec = dict(orig)
            set_path(rec, new, pop_path(rec, old))
        if self._keep is not None:
            src = orig if rec is None else rec
            kept: dict[Any, Any] = {}
            for path in self._keep:
                v = get_path(src, path)
                if v is not MISSING:
                    set_path(kept, path, v)
            if kept != src:
                rec = kept
        for path, v in values:
            cur = get_path(orig if rec is None else rec, path)
            if cur is v or (type(cur) is type(v) and cur == v):
                continue
            if rec is None:
                rec = dict(orig)
            set_path(rec, path, v)
        for path in self._remove:
            if get_path(orig if rec is None else rec, path) is MISSING:
                continue
            if rec is None:
                rec = dict(orig)
            pop_path(rec, path)
        return rec
