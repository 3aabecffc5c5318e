"""A ``type: http`` output's settings, as :meth:`HttpOutput.from_settings` reads them."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_core import PydanticCustomError

from forwardd.config.types import Count, Frozen, Problems, Text
from forwardd.config.units import Duration, Size, show_value
from forwardd.outputs.tls import ClientTls

__all__ = [
    "MAX_IN_FLIGHT",
    "BasicAuth",
    "ClientTls",
    "HttpAuth",
    "HttpBatch",
    "HttpSettings",
    "HttpTimeout",
]


def _url(value: str) -> str:
    # ${tag[N]} placeholders would read as an IPv6 literal: check the URL's shape without them.
    try:
        parts = urlsplit(re.sub(r"\$\{[^}]*\}", "x", value))
    except ValueError:
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PydanticCustomError(
            "url", "expected an http:// or https:// URL, got {got}", {"got": show_value(value)}
        )
    return value


def _method(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


class BasicAuth(Frozen):
    username: str
    password: str = Field(repr=False)


class HttpAuth(Frozen):
    basic: BasicAuth | None = None
    bearer: str | None = Field(default=None, repr=False)


class HttpBatch(Frozen):
    max_events: Count = 1000
    max_bytes: Size = 1024**2
    max_wait: Duration = 1.0


class HttpTimeout(Frozen):
    connect: Duration = 5.0
    total: Duration = 30.0


#: Most requests of one output in flight at once (``in_flight``): each holds a connection and its chunk's
#: entries in memory; past a few dozen an endpoint gains nothing and a backlog's memory does.
MAX_IN_FLIGHT = 64


class HttpSettings(Frozen):
    endpoint: Annotated[str, AfterValidator(_url)]
    method: Annotated[Literal["POST", "PUT", "PATCH"], BeforeValidator(_method)] = "POST"
    headers: dict[str, Text] = Field(default_factory=dict)
    auth: HttpAuth | None = None
    format: Literal["ndjson", "json_array", "msgpack"] = "ndjson"
    compress: Literal["none", "gzip"] = "none"
    batch: HttpBatch = Field(default_factory=HttpBatch)
    tls: ClientTls | None = None
    timeout: HttpTimeout = Field(default_factory=HttpTimeout)
    #: Hosts a templated endpoint may resolve to; required when the endpoint has ``${...}`` placeholders.
    allowed_hosts: tuple[str, ...] = ()
    #: Chunks written at once (the output's ``concurrent_writes``). 1 keeps the order of requests at the
    #: endpoint; more gives it up across chunks (see :mod:`forwardd.outputs.http.output`).
    in_flight: Annotated[int, Field(ge=1, le=MAX_IN_FLIGHT)] = 1

    def problems(self) -> Problems:
        if "${" in self.endpoint and not self.allowed_hosts:
            yield ("allowed_hosts",), "required when the endpoint has ${...} placeholders"
        if self.auth is not None and (self.auth.basic is None) == (self.auth.bearer is None):
            yield ("auth",), "set exactly one of basic or bearer"
        if self.tls is not None:
            for loc, message in self.tls.problems():
                yield ("tls", *loc), message

    def describe(self) -> str:
        text = f"http {self.method} {self.endpoint} format={self.format} compress={self.compress}"
        return text + (f" in_flight={self.in_flight}" if self.in_flight > 1 else "")
