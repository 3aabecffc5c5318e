"""The building blocks of every settings model: a frozen base, and the small validated scalar types.

Each component declares its own settings beside its code (``outputs/file/settings.py``, the ``GrepSettings``
of ``filters/grep.py``, ``server/settings.py``...) from these, so that every error reads the same way
("expected a name of letters..., got 'x y'") and the loader can print it with its file and line. This
module, like the rest of ``forwardd.config``, imports no component: the layers above import it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from forwardd.config.units import Duration, show_value

__all__ = [
    "Count",
    "FileMode",
    "Frozen",
    "LabelName",
    "Loc",
    "Name",
    "NonEmpty",
    "Port",
    "PositiveDuration",
    "Problems",
    "Regex",
    "Scalar",
    "Text",
    "TlsVersion",
    "unknown",
]

#: A key path below a settings section: ``("servers", 0, "host")``.
Loc = tuple[Any, ...]
#: Mistakes no single field shows, each with the key path (relative to the section) to look at.
Problems = Iterable[tuple[Loc, str]]


class Frozen(BaseModel):
    """A settings section: immutable once validated, and no key it does not know."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def problems(self) -> Problems:
        """What is wrong across this section's fields (paths relative to it); nothing by default.

        Kept apart from field validation so that each mistake is reported at its own key path, and all
        of them at once, once every field has its shape."""
        return ()


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_LABEL_RE = re.compile(r"@?[A-Za-z0-9][A-Za-z0-9_.-]*")


def _name(value: str) -> str:
    # Output names become directory names (buffers, dead letters): keep them path-safe.
    if not _NAME_RE.fullmatch(value):
        raise PydanticCustomError(
            "name",
            "expected a name of letters, digits, '_', '.' and '-', got {got}",
            {"got": show_value(value)},
        )
    return value


def _label(value: str) -> str:
    if not _LABEL_RE.fullmatch(value):
        raise PydanticCustomError(
            "label", "expected a label name like audit or @ERROR, got {got}", {"got": show_value(value)}
        )
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise PydanticCustomError(
            "regex",
            "expected a regular expression, got {got}: {why}",
            {"got": show_value(value), "why": str(exc)},
        ) from None
    return value


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise PydanticCustomError(
        "scalar", "expected a string, number, true/false or null, got {got}", {"got": show_value(value)}
    )


def _scalar_str(value: Any) -> Any:
    # Header values and the like: `X-Count: 5` in YAML is an int, but the author meant the text "5".
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _file_mode(value: Any) -> Any:
    # YAML 1.1 reads an unquoted 0660 as octal already (432); a quoted "0660" arrives as text.
    if isinstance(value, str) and re.fullmatch(r"0?o?[0-7]{3,4}", value):
        return int(value.replace("o", ""), 8)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o7777:
        return value
    raise PydanticCustomError(
        "file_mode", 'expected a file mode like "0660", got {got}', {"got": show_value(value)}
    )


def _tls_version(value: Any) -> Any:
    text = str(value).upper().replace("TLSV", "").replace("TLS", "").replace("_", ".").strip()
    return text if text in ("1.2", "1.3") else value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError(
            "blank", "expected a non-empty string, got {got}", {"got": show_value(value)}
        )
    return value


Name = Annotated[str, AfterValidator(_name)]
LabelName = Annotated[str, AfterValidator(_label)]
Regex = Annotated[str, AfterValidator(_regex)]
Scalar = Annotated[Any, AfterValidator(_scalar)]
Text = Annotated[str, BeforeValidator(_scalar_str)]
NonEmpty = Annotated[str, AfterValidator(_not_blank)]
Port = Annotated[int, Field(ge=0, le=65535)]
Count = Annotated[int, Field(ge=1)]
FileMode = Annotated[int, BeforeValidator(_file_mode)]
TlsVersion = Annotated[Literal["1.2", "1.3"], BeforeValidator(_tls_version)]
PositiveDuration = Annotated[Duration, Field(gt=0)]


def unknown(kind: str, name: str, known: list[str]) -> str:
    """``unknown output 'fils' (did you mean 'files'?)``: a reference to something not defined."""
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"unknown {kind} {name!r} (did you mean {close[0]!r}?)"
    if not known:
        return f"unknown {kind} {name!r} (none is defined)"
    return f"unknown {kind} {name!r} (defined: {', '.join(sorted(known))})"
