"""Sizes and durations as people write them in configuration files.

Sizes are bytes: an integer, or a number with a unit. IEC units (``KiB``, ``MiB``, ``GiB``, ``TiB``) and
Fluentd's single letters (``k``, ``m``, ``g``, ``t``) are powers of 1024; SI units (``KB``, ``MB``, ``GB``,
``TB``) are powers of 1000, as their names say. Units are case-insensitive. Durations are seconds: a number,
or one or more number-unit pairs (``500ms``, ``10s``, ``5m``, ``72h``, ``1d``, ``1h30m``).

Both are exposed as pydantic annotated types whose errors read "expected a size like 512MiB, got 'lots'",
so that the loader can print them as they are.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

__all__ = [
    "Duration",
    "Size",
    "format_duration",
    "format_size",
    "parse_duration",
    "parse_size",
    "show_value",
]

_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")

_DURATION_UNITS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")


def show_value(value: Any) -> str:
    """A value as the YAML author would recognise it, short enough for one error line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 60 else text[:56] + "...'"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_size(value: Any) -> int:
    """Bytes from an int or a string such as ``512MiB``; raises ValueError on anything else."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(value)
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str):
        m = _SIZE_RE.fullmatch(value)
        if m is not None:
            factor = _SIZE_UNITS.get(m.group(2).lower())
            if factor is not None:
                return int(float(m.group(1)) * factor) if "." in m.group(1) else int(m.group(1)) * factor
    raise ValueError(value)


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as ``500ms`` or ``1h30m``; raises ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int | float):
        if value < 0 or not math.isfinite(value):
            raise ValueError(value)
        return float(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if _NUMBER_RE.fullmatch(text):
            return float(text)
        if text and _DURATION_PART_RE.sub("", text) == "":
            return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART_RE.findall(text))
    raise ValueError(value)


def _size(value: Any) -> int:
    try:
        return parse_size(value)
    except ValueError:
        raise PydanticCustomError(
            "size", "expected a size like 512MiB, got {got}", {"got": show_value(value)}
        ) from None


def _duration(value: Any) -> float:
    try:
        return parse_duration(value)
    except ValueError:
        raise PydanticCustomError(
            "duration", "expected a duration like 10s, 500ms or 5m, got {got}", {"got": show_value(value)}
        ) from None


#: Bytes; accepts ``1048576``, ``"1MiB"``, ``"1m"``, ``"1MB"`` (= 1,000,000).
Size = Annotated[int, BeforeValidator(_size)]
#: Seconds as a float; accepts ``1.5``, ``"1500ms"``, ``"5m"``, ``"1h30m"``.
Duration = Annotated[float, BeforeValidator(_duration)]


def format_size(n: int) -> str:
    """The shortest exact IEC spelling of a byte count (``1GiB``, ``1536KiB``, ``1000B``)."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}B"


def format_duration(seconds: float) -> str:
    """A compact spelling of a duration (``72h``, ``5m``, ``1.5s``, ``500ms``)."""
    if seconds == 0:
        return "0s"
    for unit, factor in (("h", 3600), ("m", 60)):
        if seconds >= factor and seconds % factor == 0:
            return f"{int(seconds // factor)}{unit}"
    if seconds >= 1 or seconds * 1000 % 1:
        return f"{seconds:.12g}s"
    return f"{seconds * 1000:.12g}ms"
