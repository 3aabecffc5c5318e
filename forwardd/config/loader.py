"""Reading configuration files: YAML with line numbers, ``${ENV}`` interpolation, includes, and errors that
say where. Generic in the model it validates into (the app assembles forwardd's, from its registry of
components): this layer knows no component.

The YAML is composed into nodes (PyYAML's SafeLoader, so no arbitrary objects), then built into plain
data while each value remembers its file and line. Includes are merged at that stage (lists appended, maps
merged, the including file's scalars winning), so that after the merge every key path still knows where it
was written. Pydantic then validates the plain data; each error's ``loc`` is mapped back to the nearest key
path that has a line, and its message rewritten as "expected X, got Y".

Interpolation: in string scalars, ``${NAME}`` and ``${NAME:-default}`` are replaced from the environment
when NAME is upper case (``[A-Z_][A-Z0-9_]*``, the POSIX convention for environment variables). Anything
else, such as ``${tag}`` or ``${record["k"]}``, is left alone for the component that expands it per event.
``$${NAME}`` stands for a literal ``${NAME}``. ``${file:PATH}`` is replaced by the content of PATH, less its
trailing newline: secrets that an orchestrator mounts as files (Docker's ``/run/secrets/NAME``) are read
where they are and never pass through the environment, where child processes and ``docker inspect``
would see them. A relative PATH is relative to the file that names it, as an include is.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from forwardd.config.errors import ConfigError, Problem, format_path
from forwardd.config.explain import explain
from forwardd.config.units import show_value

__all__ = ["load_config", "parse_config"]

M = TypeVar("M", bound=BaseModel)

_ENV_RE = re.compile(r"\$(\$?)\{(?:([A-Z_][A-Z0-9_]*)(?::-([^}]*))?|file:([^}]+))\}")
_Loc = tuple[Any, ...]


@dataclass(slots=True)
class _V:
    """A YAML value with where it was written (for a map entry: the line of its key)."""

    value: Any  # dict[Any, _V] | list[_V] | a scalar
    file: str
    line: int
    problems: list[str] = field(default_factory=list)


class _Reader:
    """One load: collects problems from every file instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[Problem] = []

    # --- YAML to located values -------------------------------------------------------------------------

    def compose(self, text: str, display: str) -> _V | None:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return _V({}, display, 1)
            return self._build(node, loader, display)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            what = exc.problem or exc.context or "cannot parse"
            if exc.problem and exc.context and exc.context_mark is not None:
                what += f" ({exc.context} at line {exc.context_mark.line + 1})"
            self.problems.append(
                Problem(display, mark.line + 1 if mark else None, "", f"invalid YAML: {what}")
            )
        except yaml.YAMLError as exc:
            self.problems.append(Problem(display, None, "", f"invalid YAML: {exc}"))
        finally:
            loader.dispose()
        return None

    def _build(self, node: yaml.Node, loader: yaml.SafeLoader, display: str) -> _V:
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            explicit = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
            loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
            merged_count = len(node.value) - explicit
            out: dict[Any, _V] = {}
            explicit_lines: dict[Any, int] = {}  # keys written here, not pulled in by `<<`
            for i, (knode, vnode) in enumerate(node.value):
                key = loader.construct_object(knode, deep=True)
                child = self._build(vnode, loader, display)
                child.line = knode.start_mark.line + 1
                if not isinstance(key, str | int | float | bool) and key is not None:
                    child.problems.append(f"a key must be a string, got {show_value(key)}")
                    key = repr(key)
                if i >= merged_count:
                    if key in explicit_lines:
                        child.problems.append(
                            f"duplicate key {show_value(key)} (first at line {explicit_lines[key]})"
                        )
                    explicit_lines.setdefault(key, child.line)
                out[key] = child
            return _V(out, display, line)
        if isinstance(node, yaml.SequenceNode):
            return _V([self._build(n, loader, display) for n in node.value], display, line)
        value = loader.construct_object(node, deep=True)
        v = _V(value, display, line)
        if isinstance(value, str) and "${" in value:
            v.value = self._interpolate(value, v)
        return v

    def _interpolate(self, text: str, v: _V) -> str:
        def sub(m: re.Match[str]) -> str:
            if m.group(1):  # $${NAME}: the literal text
                return m.group(0)[1:]
            if m.group(4) is not None:
                return self._read_file(m.group(4), v)
            name, default = m.group(2), m.group(3)
            value = self.env.get(name)
            if value is None:
                if default is not None:
                    return default
                v.problems.append(
                    f"environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
                )
                return ""
            return value

        return _ENV_RE.sub(sub, text)

    def _read_file(self, path: str, v: _V) -> str:
        base = os.path.dirname(v.file) if not v.file.startswith("<") else ""
        full = os.path.normpath(path if os.path.isabs(path) else os.path.join(base, path))
        try:
            text = Path(full).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:  # the reason only: never any of the content
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            v.problems.append(f"cannot read {full} (named by ${{file:{path}}}): {why}")
            return ""
        return text.rstrip("\r\n")

    # --- files and includes -----------------------------------------------------------------------------

    def load_text(self, text: str, display: str, stack: tuple[str, ...]) -> _V | None:
        root = self.compose(text, display)
        if root is None:
            return None
        if root.value is None:
            root.value = {}
        if not isinstance(root.value, dict):
            self.problems.append(
                Problem(display, root.line, "", f"expected a mapping of settings, got {_kind(root.value)}")
            )
            return None
        merged = _V({}, display, root.line)
        include = root.value.pop("include", None)
        if include is not None:
            entries = include.value if isinstance(include.value, list) else [include]
            for i, entry in enumerate(entries):
                where: _Loc = ("include", i) if isinstance(include.value, list) else ("include",)
                if not isinstance(entry.value, str) or not entry.value:
                    self._problem(
                        entry, where, f"expected a file name or glob, got {show_value(entry.value)}"
                    )
                    continue
                for child in self._include(entry, where, display, stack):
                    self._merge(merged, child, ())
        self._merge(merged, root, ())
        return merged

    def _include(self, entry: _V, where: _Loc, display: str, stack: tuple[str, ...]) -> list[_V]:
        pattern = entry.value
        base = os.path.dirname(display) if not display.startswith("<") else ""
        full = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
        # A glob may match nothing (an empty conf.d/ is normal); a plain name must exist.
        paths = sorted(glob.glob(full)) if glob.has_magic(full) else [full]
        out = []
        for p in paths:
            shown = os.path.normpath(p)
            real = os.path.realpath(p)
            if real in stack:
                self._problem(entry, where, f"include cycle: {shown} is already being read")
                continue
            try:
                text = Path(p).read_text(encoding="utf-8")
            except FileNotFoundError:
                self._problem(entry, where, f"file not found: {shown}")
                continue
            except (OSError, UnicodeDecodeError) as exc:
                self._problem(entry, where, f"cannot read {shown}: {exc}")
                continue
            child = self.load_text(text, shown, (*stack, real))
            if child is not None:
                out.append(child)
        return out

    def _problem(self, v: _V, loc: _Loc, message: str) -> None:
        self.problems.append(Problem(v.file, v.line, format_path(loc), message, loc))

    def _merge(self, base: _V, extra: _V, loc: _Loc) -> None:
        """Merge ``extra`` into ``base`` in place: maps merged, lists appended, later scalars winning."""
        for key, v in extra.value.items():
            old = base.value.get(key)
            if old is None:
                base.value[key] = v
            elif loc == ("outputs",):
                first, again = f"{old.file}:{old.line}", f"{v.file}:{v.line}"
                self._problem(
                    v, (*loc, key), f"output {show_value(key)} is defined twice: in {first} and in {again}"
                )
            elif isinstance(old.value, dict) and isinstance(v.value, dict):
                self._merge(old, v, (*loc, key))
            elif isinstance(old.value, list) and isinstance(v.value, list):
                old.value = old.value + v.value
            else:
                base.value[key] = v

    # --- validation -------------------------------------------------------------------------------------

    def validate(self, root: _V, model: type[M]) -> M:
        locs: dict[_Loc, tuple[str, int]] = {}
        flagged: set[_Loc] = set()
        data = self._plain(root, (), locs, flagged)

        def place(loc: _Loc) -> tuple[str, int]:
            for n in range(len(loc), -1, -1):
                if loc[:n] in locs:
                    return locs[loc[:n]]
            return root.file, root.line

        config: M | None = None
        try:
            config = model.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            for err in errors:
                if err["type"] == "too_short" and _has_inner(err["loc"], errors):
                    continue  # pydantic counts only the items that validated: not the author's mistake
                path, message = explain(err, data, model)
                if any(path[:n] in flagged for n in range(len(path) + 1)):
                    continue  # already reported by the loader (e.g. an unset variable left it empty)
                file, line = place(path)
                self.problems.append(Problem(file, line, format_path(path), message, path))
        except ConfigError as exc:
            for p in exc.problems:
                file, line = place(p.loc)
                self.problems.append(Problem(file, line, p.path, p.message, p.loc))
        if self.problems or config is None:
            raise ConfigError(self.problems)
        return config

    def _plain(self, v: _V, loc: _Loc, locs: dict[_Loc, tuple[str, int]], flagged: set[_Loc]) -> Any:
        locs[loc] = (v.file, v.line)
        for message in v.problems:
            flagged.add(loc)
            self.problems.append(Problem(v.file, v.line, format_path(loc), message, loc))
        if isinstance(v.value, dict):
            return {k: self._plain(c, (*loc, k), locs, flagged) for k, c in v.value.items()}
        if isinstance(v.value, list):
            return [self._plain(c, (*loc, i), locs, flagged) for i, c in enumerate(v.value)]
        return v.value


def _has_inner(loc: Any, errors: list[Any]) -> bool:
    n = len(loc)
    return any(len(e["loc"]) > n and tuple(e["loc"][:n]) == tuple(loc) for e in errors)


def _kind(value: Any) -> str:
    return show_value(value) if not isinstance(value, list) else "a list"


# --- public API ---------------------------------------------------------------------------------------------


def parse_config(
    text: str, model: type[M], filename: str = "<string>", env: Mapping[str, str] | None = None
) -> M:
    """Validate configuration text into ``model``; ``filename`` is used in messages and to resolve relative
    includes."""
    reader = _Reader(os.environ if env is None else env)
    stack = () if filename.startswith("<") else (os.path.realpath(filename),)
    root = reader.load_text(text, filename, stack)
    if root is None:
        raise ConfigError(reader.problems)
    return reader.validate(root, model)


def load_config(path: str | Path, model: type[M], env: Mapping[str, str] | None = None) -> M:
    """Read a configuration file (and its includes) and validate it into ``model``; raises ConfigError
    listing every problem, each with its file, line and key path."""
    display = os.path.normpath(str(path))
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(display, None, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(display, None, "", f"cannot read: {exc}")]) from None
    return parse_config(text, model, display, env)
