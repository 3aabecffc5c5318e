"""Fluentd tag patterns (``<match a.**>``), compiled once to a regular expression.

This is a port of Fluentd's ``lib/fluent/match.rb`` (``MatchPattern.create``, ``GlobMatchPattern``,
``AllMatchPattern``, ``OrMatchPattern``) so that a Fluentd configuration's patterns route the same tags here:

* ``*`` matches one dot-separated part (any run of non-dots, possibly empty);
* ``**`` matches zero or more parts: ``a.**`` matches ``a`` and ``a.b.c``, ``**.a`` matches ``a`` and
  ``x.y.a``; a ``**`` glued to other characters (``a**``) is just "anything";
* ``{x,y}`` is an alternation whose arms may hold ``*``, ``**`` and nested braces;
* ``\\c`` makes ``c`` literal; any other character is literal;
* ``/regex/`` is a regular expression that must match the whole tag;
* several patterns separated by whitespace match when any of them does.

Fluentd's quirks are kept on purpose, since configurations in the wild depend on them: a trailing dot is
ignored (``a.`` matches ``a``), ``,`` outside braces is literal, and ``a.**.**`` does not match ``a``.

Where Fluentd does something accidental with a malformed pattern, forwardd refuses it instead
(:class:`PatternError`): an unclosed ``{`` (Fluentd quietly turns the arms into literals), a stray ``}``,
a trailing backslash (Fluentd drops it), a ``/regex`` without its closing slash (Fluentd refuses it too),
and a regex Python cannot compile. Regexes use Python's ``re`` dialect, which agrees with Ruby's for the
constructs tag patterns use; a regex must match the whole tag (Fluentd writes ``\\A`` + body + ``\\Z``
without a group, so its ``/a|b/`` matches any tag that starts with ``a``; here it means ``a`` or ``b``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["PatternError", "TagMatcher", "compile_pattern", "escape_tag"]

_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


class PatternError(ValueError):
    """A tag pattern that cannot be compiled; the message names the pattern and the reason."""


class TagMatcher:
    """A compiled tag pattern. Immutable; equal when built from the same text."""

    __slots__ = ("_all", "_tests", "pattern")

    def __init__(self, pattern: str, match_all: bool, tests: tuple[Callable[[str], object], ...]) -> None:
        self.pattern = pattern
        self._all = match_all
        self._tests = tests

    def matches(self, tag: str) -> bool:
        if self._all:
            return True
        return any(test(tag) is not None for test in self._tests)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TagMatcher) and other.pattern == self.pattern

    def __hash__(self) -> int:
        return hash(self.pattern)

    def __repr__(self) -> str:
        return f"TagMatcher({self.pattern!r})"


def compile_pattern(text: str) -> TagMatcher:
    """Compile a Fluentd match string (one or more whitespace-separated patterns)."""
    parts = text.split()
    if not parts:
        raise PatternError(f"empty tag pattern {text!r}")
    globs: list[str] = []
    tests: list[Callable[[str], object]] = []
    for part in parts:
        if part == "**":
            return TagMatcher(text, True, ())
        if part.startswith("/"):
            tests.append(_compile_regex(part))
        else:
            globs.append(_glob_to_regex(part))
    if globs:
        # Glob regexes hold no groups and no inline flags, so one alternation serves them all.
        combined = globs[0] if len(globs) == 1 else "|".join(f"(?:{g})" for g in globs)
        tests.insert(0, re.compile(combined).fullmatch)
    return TagMatcher(text, False, tuple(tests))


def escape_tag(tag: str) -> str:
    """A glob pattern matching exactly ``tag`` (which must hold no whitespace, as patterns split on it)."""
    if not tag or any(c.isspace() for c in tag):
        raise PatternError(f"cannot escape tag {tag!r}: empty or contains whitespace")
    return "".join(c if c in _WORD else "\\" + c for c in tag)


def _compile_regex(part: str) -> Callable[[str], object]:
    if len(part) < 2 or not part.endswith("/"):
        raise PatternError(f"regex tag pattern {part!r} must be enclosed in slashes: /regex/")
    try:
        return re.compile(part[1:-1]).fullmatch
    except re.error as exc:
        raise PatternError(f"bad regex in tag pattern {part!r}: {exc}") from None


def _glob_to_regex(pat: str) -> str:
    """Translate one glob the way GlobMatchPattern#initialize does (same branches, same order)."""
    stack: list[list[str]] = []  # open braces: the arms finished so far
    regex = [""]  # regex[-1] is the text being built (the current brace arm, or the top level)
    escape = False
    dot = False  # a '.' seen but not yet written: '**' after it writes a lookahead instead
    i = 0
    n = len(pat)
    while i < n:
        c = pat[i]
        if escape:
            regex[-1] += re.escape(c)
            escape = False
            i += 1
            continue
        if pat.startswith("**", i):
            if dot:
                regex[-1] += r"(?![^.])"
                dot = False
            if pat.startswith(".", i + 2):
                regex[-1] += r"(?:.*\.|\A)"
                i += 3
            else:
                regex[-1] += ".*"
                i += 2
            continue
        if dot:
            regex[-1] += r"\."
            dot = False
        if c == "\\":
            escape = True
        elif c == ".":
            dot = True
        elif c == "*":
            regex[-1] += r"[^.]*"
        elif c == "{":
            stack.append([])
            regex.append("")
        elif c == "}":
            if not stack:
                raise PatternError(f"tag pattern {pat!r}: '}}' at offset {i} closes no '{{'")
            arms = stack.pop()
            arms.append(regex.pop())
            regex[-1] += "(?:" + "|".join(arms) + ")"
        elif c == "," and stack:
            stack[-1].append(regex.pop())
            regex.append("")
        elif c in _WORD:
            regex[-1] += c
        else:
            regex[-1] += re.escape(c)
        i += 1
    if escape:
        raise PatternError(f"tag pattern {pat!r} ends with a lone backslash")
    if stack:
        raise PatternError(f"tag pattern {pat!r} has {len(stack)} unclosed '{{'")
    # A '.' still pending here is dropped, as Fluentd does.
    return regex[0]
