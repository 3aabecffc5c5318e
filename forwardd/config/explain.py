"""Pydantic's validation errors as sentences: "expected X, got Y", "unknown key (did you mean ...?)",
"unknown output type 'x' (expected one of: ...)", each at the key path the author wrote.

Generic in the model: the keys and ``type:`` values a place accepts are read from the model itself.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel

from forwardd.config.units import show_value

__all__ = ["explain"]

_Loc = tuple[Any, ...]

_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dict_type": "a mapping",
    "list_type": "a list",
    "tuple_type": "a list",
    "path_type": "a file path",
}


def _data_path(data: Any, loc: _Loc) -> _Loc:
    """The key path in the YAML for a pydantic ``loc`` (which also names union members: skip those)."""
    out: list[Any] = []
    node = data
    for i, part in enumerate(loc):
        if part == "[key]":
            break
        present = (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        )
        if present:
            node = node[part]
            out.append(part)
        elif i == len(loc) - 1:
            out.append(part)  # a missing key: name it
    return tuple(out)


def explain(err: Any, data: Any, model: type[BaseModel]) -> tuple[_Loc, str]:
    """The key path in ``data`` and the sentence for one pydantic error met validating it into ``model``."""
    kind: str = err["type"]
    loc: _Loc = tuple(err["loc"])
    ctx: dict[str, Any] = err.get("ctx") or {}
    got = show_value(err.get("input"))
    path = _data_path(data, loc)
    if kind == "missing":
        return path, "required, but not set"
    if kind == "extra_forbidden":
        keys = _known_keys(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
        if close:
            return path, f"unknown key (did you mean {close[0]!r}?)"
        return path, f"unknown key (expected one of: {', '.join(keys)})" if keys else "unknown key"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        what = "filter" if "filters" in path else "output" if path[:1] == ("outputs",) else "component"
        expected = ", ".join(_union_tags(model, loc))
        if kind == "union_tag_not_found":
            return (*path, "type"), f"required, but not set (the {what} type: one of {expected})"
        return (*path, "type"), f"unknown {what} type {ctx.get('tag')!r} (expected one of: {expected})"
    if kind == "literal_error":
        return path, f"expected one of {ctx.get('expected')}, got {got}"
    if kind in _EXPECTED:
        return path, f"expected {_EXPECTED[kind]}, got {got}"
    bounds = {
        "greater_than_equal": ">=",
        "greater_than": ">",
        "less_than_equal": "<=",
        "less_than": "<",
    }
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        return path, f"expected a number {bounds[kind]} {limit}, got {got}"
    if kind == "too_short":
        n = ctx.get("min_length", 1)
        return path, f"expected at least {n} item{'s' if n != 1 else ''}, got {ctx.get('actual_length', 0)}"
    if kind == "string_too_short":
        return path, "expected a non-empty string"
    message: str = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return path, message


def _strip(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _schema_at(model: type[BaseModel], loc: _Loc) -> Any:
    """The type that validates the value at pydantic ``loc`` (None when it cannot be followed)."""
    tp: Any = model
    for part in loc:
        tp = _strip(tp)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            match = [f.annotation for n, f in tp.model_fields.items() if part in (n, f.alias)]
            if not match:
                return None
            tp = match[0]
        elif origin in (typing.Union, types.UnionType):
            members = [m for m in _union_members(tp) if part in _tags_of(m)]
            if not members:
                return None
            tp = members[0]
        elif origin in (tuple, list):
            tp = typing.get_args(tp)[0]
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        else:
            return None
    return _strip(tp)


def _union_members(tp: Any) -> list[type[BaseModel]]:
    members = [_strip(m) for m in typing.get_args(tp)]
    return [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]


def _tags_of(model: type[BaseModel]) -> tuple[Any, ...]:
    f = model.model_fields.get("type")
    return typing.get_args(f.annotation) if f is not None else ()


def _known_keys(model: type[BaseModel], loc: _Loc) -> list[str]:
    """The keys a mapping at pydantic ``loc`` accepts (for "did you mean")."""
    tp = _schema_at(model, loc)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [f.alias or n for n, f in tp.model_fields.items()]
    return []


def _union_tags(model: type[BaseModel], loc: _Loc) -> list[str]:
    """The ``type:`` values the union at pydantic ``loc`` accepts."""
    tp = _schema_at(model, loc)
    return [str(t) for m in _union_members(tp) for t in _tags_of(m)] if tp is not None else []
