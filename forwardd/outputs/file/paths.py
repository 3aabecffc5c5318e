"""Where the file output writes: a path template resolved per event into a path that stays under its root.

Placeholders (:mod:`forwardd.outputs.template`): ``${tag}``, ``${tag[N]}`` (dot parts, negative N counts
from the end), ``${record.a.b}`` (nested record keys; missing or non-scalar → ``_``), and ``strftime`` codes
in the literal text (event time, UTC unless ``utc=False``). Record placeholders and time codes split a chunk
into one group per resolved path.

Substituted values are untrusted: each is made a single harmless name component (see
:func:`sanitise_component`), truncated with a hash suffix to fit ``NAME_MAX``, and the joined path must stay
under the template's fixed folder prefix (the *root*) or the chunk is rejected with PermanentError.
Placeholders are never read in substituted text (a tag holding ``%Y`` or ``${tag}`` stays literal). With
compression, ``.gz``/``.zst`` is appended to the path unless the template already ends with it.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from forwardd.constants import NS
from forwardd.errors import PermanentError
from forwardd.model import Event, PlainEntries
from forwardd.outputs.formats import JsonLines
from forwardd.outputs.template import LITERAL, RECORD, Template, Token, UnknownPlaceholder, record_value

__all__ = ["MISSING", "NAME_MAX", "PathTemplate", "sanitise_component"]

#: Linux NAME_MAX: the longest name of one path component, in bytes.
NAME_MAX = 255
#: Room kept in each templated name for the rotation suffix and compression extension (".123456.zst").
_SUFFIX_RESERVE = 16
#: A substituted value never gets less room than this; a template that leaves less is a config error.
_MIN_BUDGET = 32
#: What a missing placeholder value (absent record key, ``${tag[9]}`` of a short tag) becomes.
MISSING = "_"
_HASH_LEN = 16
#: Control characters, NUL, both slashes: never part of a substituted name.
_UNSAFE = str.maketrans({c: "_" for c in [*map(chr, range(32)), "\x7f", "/", "\\"]})


def sanitise_component(value: str, budget: int = NAME_MAX - _SUFFIX_RESERVE) -> str:
    """Make an untrusted value safe as (part of) one path component.

    Undecodable bytes become U+FFFD; ``/``, ``\\``, NUL and control characters become ``_``; an empty value
    becomes ``_``; a leading ``.`` gets a ``_`` before it (so no ``.``, ``..`` or hidden name can result);
    a value longer than ``budget`` UTF-8 bytes is cut and given a hash of the whole value, so long values
    stay distinct.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        try:
            value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:  # surrogates that are no escaped bytes
            value = value.encode("utf-8", "replace").decode("utf-8")
    value = value.translate(_UNSAFE)
    if not value:
        return MISSING
    if value[0] == ".":
        value = "_" + value
    raw = value.encode("utf-8")
    if len(raw) <= budget:
        return value
    digest = hashlib.sha256(raw).hexdigest()[:_HASH_LEN]
    return raw[: budget - _HASH_LEN - 1].decode("utf-8", "ignore") + "~" + digest


def _missing(token: Token) -> str:
    return MISSING


class PathTemplate:
    """A parsed path template: resolves events to paths under a fixed root."""

    def __init__(self, template: str, *, utc: bool = True, extension: str = "") -> None:
        path = os.path.abspath(template)  # also collapses "//" and "/./" of the fixed text
        if extension and not path.endswith(extension):
            path += extension
        self.template = path
        self._gm = time.gmtime if utc else time.localtime
        try:
            self._parsed = Template(path)
        except UnknownPlaceholder as e:
            raise ValueError(
                f"unknown placeholder ${{{e.name}}}; expected ${{tag}}, ${{tag[N]}} or ${{record.key}}"
            ) from None
        self.tokens: list[Token] = self._parsed.tokens
        self.has_time = any(kind == LITERAL and "%" in val for kind, val in self.tokens)
        self.has_record = self._parsed.has_record
        # The root: the leading folders free of placeholders and time codes; the file name never counts.
        fixed: list[str] = []
        for seg in path.split("/")[:-1]:
            if "%" in seg or "${" in seg:
                break
            fixed.append(seg)
        self.root = "/".join(fixed) or "/"
        self._budgets = self._budget_per_placeholder()
        self._cache: dict[Any, str] = {}

    def _budget_per_placeholder(self) -> list[int]:
        """Bytes each placeholder may fill so its whole name fits NAME_MAX with the rotation suffix."""
        sample = time.gmtime(2_000_000_000)  # a two-digit-everything date for the width of time codes
        budgets: list[int] = []
        seg_fixed = 0
        seg_tokens: list[int] = []

        def close() -> None:
            if seg_tokens:
                budget = (NAME_MAX - _SUFFIX_RESERVE - seg_fixed) // len(seg_tokens)
                if budget < _MIN_BUDGET:
                    raise ValueError(f"path template {self.template!r}: a name leaves too little room")
                for i in seg_tokens:
                    budgets[i] = budget

        for i, (kind, val) in enumerate(self.tokens):
            budgets.append(0)
            if kind != LITERAL:
                seg_tokens.append(i)
                continue
            pieces = val.split("/")
            seg_fixed += len(time.strftime(pieces[0], sample).encode())
            for piece in pieces[1:]:
                close()
                seg_fixed, seg_tokens = len(time.strftime(piece, sample).encode()), []
        close()
        return budgets

    def resolve(self, tag: str, time_ns: int = 0, record: dict[Any, Any] | None = None) -> str:
        """The path for one event; raises PermanentError if it would leave the root."""
        literal: Callable[[str], str] | None = None
        if self.has_time:
            tm = self._gm(time_ns // NS)

            def literal(text: str) -> str:
                return time.strftime(text, tm) if "%" in text else text

        budgets = self._budgets
        path = self._parsed.expand(
            tag,
            record,
            escape=lambda i, value: sanitise_component(value, budgets[i]),
            missing=_missing,
            literal=literal,
        )
        self._check(path)
        return path

    def _check(self, path: str) -> None:
        root = self.root.rstrip("/") + "/"
        if "\0" in path or os.path.normpath(path) != path or not path.startswith(root):
            raise PermanentError(f"resolved path {path!r} is not a plain path under {self.root!r}")
        if any(
            len(seg.encode("utf-8", "surrogateescape")) > NAME_MAX - _SUFFIX_RESERVE
            for seg in path.split("/")
        ):
            raise PermanentError(
                f"resolved path {path!r} has a name longer than {NAME_MAX - _SUFFIX_RESERVE}"
            )

    def group(self, events: Sequence[Event], tag: str) -> list[tuple[str, Sequence[Event]]]:
        """Events split by resolved path, each group in chunk order; one resolve per distinct key."""
        if not self.has_time and not self.has_record:
            return [(self._cached(tag, (tag,), 0, None), events)] if events else []
        groups: dict[str, list[Event]] = {}
        if not self.has_record:
            last_s = -1
            bucket: list[Event] = []
            for ev in events:
                s = ev.time_ns // NS
                if s != last_s:
                    last_s = s
                    bucket = groups.setdefault(self._cached(tag, (tag, s), ev.time_ns, None), [])
                bucket.append(ev)
            return list(groups.items())
        keys = [val for kind, val in self.tokens if kind == RECORD]
        for ev in events:
            s = ev.time_ns // NS if self.has_time else 0
            key = (tag, s, *(record_value(ev.record, k) for k in keys))
            groups.setdefault(self._cached(tag, key, ev.time_ns, ev.record), []).append(ev)
        return list(groups.items())

    def group_plain(self, plain: PlainEntries, tag: str) -> list[tuple[str, PlainEntries]] | None:
        """:meth:`group` for a plain chunk's columns; None when the template reads record keys (then the
        events are grouped instead)."""
        if self.has_record:
            return None
        if not self.has_time:
            return [(self._cached(tag, (tag,), 0, None), plain)] if plain.records else []
        by_path: dict[str, list[int]] = {}
        last_s = -1
        bucket: list[int] = []
        for i, s in enumerate(plain.seconds):
            if s != last_s:
                last_s = s
                bucket = by_path.setdefault(self._cached(tag, (tag, s), s * NS, None), [])
            bucket.append(i)
        if len(by_path) == 1:
            return [(path, plain) for path in by_path]
        return [(path, plain.select(idx)) for path, idx in by_path.items()]

    def group_lines(self, lines: JsonLines, tag: str) -> list[tuple[str, bytes]]:
        """The transcoder's text split by resolved path, by its runs of seconds; the template must not
        read record keys. The usual chunk resolves to one path and keeps its text uncopied."""
        if not self.has_time:
            return [(self._cached(tag, (tag,), 0, None), lines.data)]
        spans: dict[str, list[tuple[int, int]]] = {}
        start = 0
        for s, end, _ in lines.runs:
            spans.setdefault(self._cached(tag, (tag, s), s * NS, None), []).append((start, end))
            start = end
        if len(spans) == 1:
            return [(path, lines.data) for path in spans]
        view = memoryview(lines.data)
        return [(path, b"".join([view[a:b] for a, b in parts])) for path, parts in spans.items()]

    def _cached(self, tag: str, key: tuple[Any, ...], time_ns: int, record: dict[Any, Any] | None) -> str:
        path = self._cache.get(key)
        if path is None:
            if len(self._cache) >= 4096:
                self._cache.clear()
            path = self._cache[key] = self.resolve(tag, time_ns, record)
        return path
