"""The shape of a ``type: http`` configuration entry, as :meth:`HttpOutput.from_settings` reads it.

Structural types, so that this package imports nothing from ``forwardd.config`` (components sit above the
configuration loader, and their settings move beside them). (The typed builder is to put the settings model
itself here, beside the output it configures.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Literal, Protocol

__all__ = ["HttpSettings"]


class _Basic(Protocol):
    @property
    def username(self) -> str: ...
    @property
    def password(self) -> str: ...


class _Auth(Protocol):
    @property
    def basic(self) -> _Basic | None: ...
    @property
    def bearer(self) -> str | None: ...


class _Batch(Protocol):
    @property
    def max_events(self) -> int: ...
    @property
    def max_bytes(self) -> int: ...


class _Tls(Protocol):
    @property
    def ca_file(self) -> PathLike[str] | str | None: ...
    @property
    def cert_file(self) -> PathLike[str] | str | None: ...
    @property
    def key_file(self) -> PathLike[str] | str | None: ...
    @property
    def verify(self) -> bool: ...


class _Timeout(Protocol):
    @property
    def connect(self) -> float: ...
    @property
    def total(self) -> float: ...


class HttpSettings(Protocol):
    """What the output needs of its configuration entry."""

    @property
    def endpoint(self) -> str: ...
    @property
    def method(self) -> str: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def auth(self) -> _Auth | None: ...
    @property
    def format(self) -> Literal["ndjson", "json_array", "msgpack"]: ...
    @property
    def compress(self) -> Literal["none", "gzip"]: ...
    @property
    def batch(self) -> _Batch: ...
    @property
    def tls(self) -> _Tls | None: ...
    @property
    def timeout(self) -> _Timeout: ...
    @property
    def allowed_hosts(self) -> Sequence[str]: ...
