"""Configuration errors: every mistake in every file, each pinned to a file, a line and a key path.

One :class:`ConfigError` carries all :class:`Problem` s found, because fixing a file one error per run is
the experience this replaces (Vector's ``check_shape`` collects them too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ConfigError", "Problem", "format_path"]


def format_path(loc: tuple[Any, ...]) -> str:
    """``("outputs", "main")`` -> ``outputs.main``; indexes as ``[0]``; keys with odd characters quoted."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part and all(c.isalnum() or c in "_-@" for c in part):
            out += f".{part}" if out else part
        else:
            out += f"[{str(part)!r}]"
    return out


@dataclass(frozen=True, order=True)
class Problem:
    """One mistake. ``line`` is 1-based, or None when no line applies (a missing file, code-built config).

    ``loc`` is the key path as a tuple (for tools); ``path`` is its printed form.
    """

    file: str
    line: int | None
    path: str
    message: str
    loc: tuple[Any, ...] = field(default=(), compare=False, repr=False)

    def sort_key(self) -> tuple[str, int, str, str]:
        return (self.file, self.line or 0, self.path, self.message)

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists every reason, sorted by file and line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=Problem.sort_key)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)
