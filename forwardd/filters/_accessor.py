"""Record accessors: the one syntax every filter uses to name a (possibly nested) field.

Accepted forms, parsed once at construction:

* ``log`` - a top-level key;
* ``a.b.c`` - nested maps (``record["a"]["b"]["c"]``); a plain dotted key always means nesting, so a key
  that itself contains dots (docker labels such as ``com.docker.swarm.service.name``) needs the next form;
* ``$.a.b``, ``$['a.b']``, ``$["a"][0]`` - Fluentd's record_accessor syntax; ``[N]`` indexes a list.

Values read here are turned into text by :func:`value_str` the way they look in JSON output (``true``,
not Python's ``True``), because that is what users see and write their patterns against.
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson

__all__ = [
    "MISSING",
    "Path",
    "get_path",
    "parse_accessor",
    "pop_path",
    "require_map_path",
    "set_path",
    "value_str",
]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


#: Returned by :func:`get_path` when the field is absent (distinct from a present ``None``/nil).
MISSING: Final = _Missing()

Path = tuple[str | int, ...]

_NAME = re.compile(r"\.([^.\[\]'\"]+)")
_QUOTED = re.compile(r"""\[\s*(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")\s*\]""")
_INDEX = re.compile(r"\[\s*(-?\d+)\s*\]")


def parse_accessor(spec: str) -> Path:
    """Compile an accessor string into a path; ValueError explains what is wrong with a bad one."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"field name must be a non-empty string, got {spec!r}")
    if not spec.startswith("$"):
        parts = spec.split(".")
        if any(not p for p in parts):
            raise ValueError(f"field name {spec!r} has an empty part (use $['...'] for odd keys)")
        return tuple(parts)
    path: list[str | int] = []
    pos = 1
    while pos < len(spec):
        m = _NAME.match(spec, pos) or _QUOTED.match(spec, pos) or _INDEX.match(spec, pos)
        if m is None:
            raise ValueError(f"field name {spec!r}: cannot parse at offset {pos} ({spec[pos:]!r})")
        if m.re is _NAME:
            path.append(m.group(1))
        elif m.re is _QUOTED:
            raw = m.group(1) if m.group(1) is not None else m.group(2)
            path.append(re.sub(r"\\(.)", r"\1", raw))
        else:
            path.append(int(m.group(1)))
        pos = m.end()
    if not path:
        raise ValueError(f"field name {spec!r} names no field")
    if type(path[0]) is int:
        raise ValueError(f"field name {spec!r}: a record is a map, it cannot start with an index")
    return tuple(path)


def get_path(record: dict[Any, Any], path: Path) -> Any:
    """The value at ``path`` or :data:`MISSING`; never raises on odd shapes."""
    if len(path) == 1:
        return record.get(path[0], MISSING)
    cur: Any = record
    for seg in path:
        tc = type(cur)
        if tc is dict:
            cur = cur.get(seg, MISSING)
            if cur is MISSING:
                return MISSING
        elif tc is list and type(seg) is int:
            if -len(cur) <= seg < len(cur):
                cur = cur[seg]
            else:
                return MISSING
        else:
            return MISSING
    return cur


def require_map_path(spec: str, path: Path) -> None:
    """Write paths go through maps only: copy-on-write of lists is not worth its edge cases."""
    if any(type(seg) is int for seg in path):
        raise ValueError(f"field name {spec!r}: list indexes cannot be written or removed")


def set_path(record: dict[Any, Any], path: Path, value: Any) -> None:
    """Set ``value`` at ``path`` in ``record`` (a private copy), copying nested maps on the way.

    The maps along the path may be shared with the original event, so they are copied, never changed in
    place. A non-map in the way is replaced by a map: setting ``a.b`` asks for ``a`` to be a map.
    """
    if len(path) == 1:
        record[path[0]] = value
        return
    cur = record
    for seg in path[:-1]:
        nxt = cur.get(seg)
        nxt = dict(nxt) if type(nxt) is dict else {}
        cur[seg] = nxt
        cur = nxt
    cur[path[-1]] = value


def pop_path(record: dict[Any, Any], path: Path) -> Any:
    """Remove and return the value at ``path`` (or :data:`MISSING`), copying nested maps on the way."""
    if len(path) == 1:
        return record.pop(path[0], MISSING)
    # Check first so that a miss copies nothing.
    parent = get_path(record, path[:-1])
    if type(parent) is not dict or path[-1] not in parent:
        return MISSING
    cur = record
    for seg in path[:-1]:
        nxt = dict(cur[seg])
        cur[seg] = nxt
        cur = nxt
    return cur.pop(path[-1])


def value_str(v: Any) -> str:
    """Text of a field value for matching and templating: as it reads in JSON output."""
    tv = type(v)
    if tv is str:
        return v  # type: ignore[no-any-return]
    if tv is bool:
        return "true" if v else "false"
    if v is None:
        return ""
    if tv is int or tv is float:
        return str(v)
    if tv is bytes:
        return v.decode("utf-8", "replace")  # type: ignore[no-any-return]
    if tv is dict or tv is list:
        try:
            return orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:
            return str(v)
    return str(v)
