"""The shape of a ``type: kafka`` configuration entry, as :meth:`KafkaOutput.from_settings` and
:func:`producer_config` read it.

Structural types, so that this package imports nothing from ``forwardd.config`` (components sit above the
configuration loader, and their settings move beside them), and code that builds an output without a
configuration file passes any object of this shape. (The typed builder is to put the settings model itself
here, beside the output it configures.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any, Protocol

__all__ = ["KafkaSettings", "SaslLogin", "TlsFiles"]


class TlsFiles(Protocol):
    """TLS towards the brokers: CA, client certificate and key (paths), and whether to verify them."""

    @property
    def ca_file(self) -> PathLike[str] | str | None: ...
    @property
    def cert_file(self) -> PathLike[str] | str | None: ...
    @property
    def key_file(self) -> PathLike[str] | str | None: ...
    @property
    def verify(self) -> bool: ...


class SaslLogin(Protocol):
    """SASL towards the brokers: a mechanism librdkafka knows (PLAIN, SCRAM-SHA-256/512) and a login."""

    @property
    def mechanism(self) -> str: ...
    @property
    def username(self) -> str: ...
    @property
    def password(self) -> str: ...


class KafkaSettings(Protocol):
    """What the output needs of its configuration entry."""

    @property
    def brokers(self) -> Sequence[str]: ...
    @property
    def topic(self) -> str: ...
    @property
    def topic_key(self) -> str | None: ...
    @property
    def message_key(self) -> str | None: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def headers_from_record(self) -> Mapping[str, str]: ...
    @property
    def compression(self) -> str: ...
    @property
    def required_acks(self) -> str: ...
    @property
    def idempotent(self) -> bool: ...
    @property
    def max_message_size(self) -> int: ...
    @property
    def format(self) -> str: ...
    @property
    def tls(self) -> TlsFiles | None: ...
    @property
    def sasl(self) -> SaslLogin | None: ...
    @property
    def options(self) -> Mapping[str, Any]: ...
