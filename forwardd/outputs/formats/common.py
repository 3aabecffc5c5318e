"""What every record format shares: the one error an encoder may raise, the time text, the encoder types.

Kept apart from the formats themselves so that each of them (and the outputs that build on them) can use
these without importing another format.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import ParamSpec, TypeVar

from forwardd.constants import NS
from forwardd.errors import UnprocessableError
from forwardd.model import Event, PlainEntries

__all__ = [
    "Encoder",
    "PlainEncoder",
    "fix_str",
    "rfc3339_ns",
    "second_utc",
    "unprocessable",
]


_P = ParamSpec("_P")
_R = TypeVar("_R")


def unprocessable(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Make ``fn`` raise nothing but :class:`UnprocessableError`: any exception while encoding (an odd
    value, RecursionError, MemoryError on one huge record, a time out of range) is about the data, and the
    delivery loop needs to know that, not the exception's type. A ``try`` costs nothing when nothing
    raises."""

    @functools.wraps(fn)
    def encode(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except UnprocessableError:
            raise
        except Exception as exc:
            raise UnprocessableError(f"cannot encode: {type(exc).__name__}: {exc}") from exc

    return encode


#: A batch encoder as the file output uses it: events of one tag → bytes.
Encoder = Callable[[Sequence[Event], str], bytes]
#: The same for a plain chunk's columns (:meth:`Chunk.plain_entries`), where a format has a faster way.
PlainEncoder = Callable[[PlainEntries, str], bytes]


def second_utc(s: int) -> str:
    """``2024-01-02T03:04:05``: the whole-second part of the time text, UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s))


def rfc3339_ns(ns: int) -> str:
    """``2024-01-02T03:04:05.123456789Z``: the one time text of the JSON format."""
    s, n = divmod(ns, NS)
    return f"{second_utc(s)}.{n:09d}Z"


def fix_str(s: str) -> str:
    """Valid UTF-8 text for a string holding surrogates: undecodable bytes shown as ``\\xNN``."""
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that did not come from surrogateescape
        return s.encode("utf-8", "backslashreplace").decode("ascii")
