"""The one placeholder syntax of the outputs' settings: ``${tag}``, ``${tag[N]}`` and ``${record.a.b}``,
parsed once and expanded per chunk or event, for the file output's paths and the HTTP output's endpoint.

``${tag}`` is the whole tag, ``${tag[N]}`` its N-th dot-separated part (negative N counts from the end),
``${record.a.b}`` the value under nested record keys (a scalar; where a user allows it). Whitespace around a
name is ignored; an unknown name or a ``${`` without its ``}`` is a configuration error.

The engine only finds each placeholder's raw value. How a value is made safe depends on where it goes, so
each user decides that and checks the whole result: the file output makes each value one harmless name
component and keeps the path under its root (:mod:`forwardd.outputs.file.paths`); the HTTP output
URL-quotes each value and checks the resolved host against ``allowed_hosts``
(:mod:`forwardd.outputs.http.endpoint`). Expansion is one pass over the parsed tokens, so substituted text is
never read for placeholders again (a tag holding ``${tag}`` or ``%Y`` stays literal).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["LITERAL", "RECORD", "TAG", "TAG_PART", "Template", "Token", "UnknownPlaceholder", "record_value"]

#: Token kinds: ``(LITERAL, text)``, ``(TAG, None)``, ``(TAG_PART, index)``, ``(RECORD, keys)``.
LITERAL = "lit"
TAG = "tag"
TAG_PART = "part"
RECORD = "rec"
Token = tuple[str, Any]

_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
_TAG_PART = re.compile(r"tag\[(-?\d+)\]")
_RECORD = re.compile(r"record((?:\.[^.]+)+)")


class UnknownPlaceholder(ValueError):
    """A ``${...}`` the template's user does not know; each user words its own configuration error."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown placeholder ${{{name}}}")
        self.name = name


class Template:
    """Text with placeholders, as tokens in order; ``record=False`` refuses ``${record...}``."""

    __slots__ = ("has_record", "text", "tokens")

    def __init__(self, text: str, *, record: bool = True) -> None:
        self.text = text
        self.tokens: list[Token] = []
        pos = 0
        for m in _PLACEHOLDER.finditer(text):
            if m.start() > pos:
                self.tokens.append((LITERAL, text[pos : m.start()]))
            self.tokens.append(_placeholder(m.group(1).strip(), record))
            pos = m.end()
        rest = text[pos:]
        if "${" in rest:
            raise ValueError(f"unterminated placeholder in {text!r}")
        if rest:
            self.tokens.append((LITERAL, rest))
        self.has_record = any(kind == RECORD for kind, _ in self.tokens)

    @property
    def static(self) -> bool:
        """True when the text has no placeholder: it expands to itself."""
        return all(kind == LITERAL for kind, _ in self.tokens)

    def expand(
        self,
        tag: str,
        record: dict[Any, Any] | None,
        *,
        escape: Callable[[int, str], str],
        missing: Callable[[Token], str],
        literal: Callable[[str], str] | None = None,
    ) -> str:
        """The text for ``tag`` (and ``record``): each value through ``escape(token index, value)``, a tag
        part or record value that does not exist through ``missing(token)`` (which may raise), literal text
        through ``literal`` if given."""
        out: list[str] = []
        parts: list[str] | None = None
        for i, (kind, val) in enumerate(self.tokens):
            if kind == LITERAL:
                out.append(val if literal is None else literal(val))
            elif kind == TAG:
                out.append(escape(i, tag))
            elif kind == TAG_PART:
                if parts is None:
                    parts = tag.split(".")
                ok = -len(parts) <= val < len(parts)
                out.append(escape(i, parts[val]) if ok else missing((kind, val)))
            else:
                value = record_value(record, val)
                out.append(missing((kind, val)) if value is None else escape(i, value))
        return "".join(out)


def _placeholder(name: str, record: bool) -> Token:
    if name == "tag":
        return (TAG, None)
    m = _TAG_PART.fullmatch(name)
    if m:
        return (TAG_PART, int(m.group(1)))
    m = _RECORD.fullmatch(name)
    if m and record:
        return (RECORD, tuple(m.group(1)[1:].split(".")))
    raise UnknownPlaceholder(name)


def record_value(record: dict[Any, Any] | None, keys: tuple[str, ...]) -> str | None:
    """The scalar under nested ``keys`` as text (bytes decoded, undecodable ones replaced); None when a key
    is absent, the value is null, or it is a map or a list."""
    value: Any = record
    for k in keys:
        if type(value) is not dict:
            return None
        value = value.get(k)
    if value is None or type(value) in (dict, list):
        return None
    if type(value) is bytes:
        return value.decode("utf-8", "replace")
    return str(value)
