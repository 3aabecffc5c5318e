"""Where the HTTP output sends a chunk: its endpoint, with ``${tag}`` and ``${tag[N]}`` substituted per tag,
and the check that keeps a tag from choosing the host.

Placeholders are those of :mod:`forwardd.outputs.template` (no record keys: one chunk is one request URL).
Each value is URL-quoted so it can never add a ``/``, ``?``, ``#``, ``@`` or ``:`` to the URL (a value of only
dots is escaped too, so it cannot climb the path). The resolved host (``host`` or ``host:port``) must be in
``allowed_hosts`` (SSRF protection, as Fluentd 1.19.3 ``out_http``), else PermanentError. A static endpoint
whose host is not allowed is a configuration error (ValueError).
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote, urlsplit

import yarl

from forwardd.errors import PermanentError
from forwardd.outputs.template import Template, Token, UnknownPlaceholder

__all__ = ["Endpoint"]

#: Resolved endpoints kept per tag; cleared when it grows past this (tags are few in practice).
_URL_CACHE_MAX = 1024


class Endpoint:
    """An endpoint URL, static or templated, and the hosts it may resolve to."""

    def __init__(self, endpoint: str, allowed_hosts: Sequence[str] = ()) -> None:
        self.text = endpoint
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
        try:
            template = Template(endpoint, record=False)
        except UnknownPlaceholder as e:
            raise ValueError(
                f"unsupported placeholder ${{{e.name}}} in endpoint; use ${{tag}} or ${{tag[N]}}"
            ) from None
        self._template = None if template.static else template
        self._urls: dict[str, yarl.URL] = {}
        self._static_url: yarl.URL | None = None
        if self._template is None:
            self._static_url = yarl.URL(endpoint)
            if self.allowed_hosts and not self.host_allowed(endpoint):
                raise ValueError(f"endpoint host of {endpoint!r} is not in allowed_hosts")

    def host_allowed(self, url: str) -> bool:
        host, host_port = _host_key(url)
        return bool(host) and (host in self.allowed_hosts or host_port in self.allowed_hosts)

    def url_for(self, tag: str) -> yarl.URL:
        """The URL a chunk of ``tag`` goes to; PermanentError when a placeholder cannot be resolved or the
        resolved host is not allowed."""
        if self._static_url is not None:
            return self._static_url
        url = self._urls.get(tag)
        if url is not None:
            return url
        assert self._template is not None

        def missing(token: Token) -> str:
            raise PermanentError(f"tag {tag!r} has no part {token[1]} for endpoint {self.text}")

        text = self._template.expand(tag, None, escape=lambda _, value: _quote(value), missing=missing)
        if not self.host_allowed(text):
            raise PermanentError(f"endpoint {text!r} (tag {tag!r}): host not in allowed_hosts")
        try:
            url = yarl.URL(text, encoded=True)  # already quoted: keep %2F and %2E as they are
        except ValueError as exc:
            raise PermanentError(f"endpoint {text!r} (tag {tag!r}) is not a valid URL: {exc}") from None
        if len(self._urls) >= _URL_CACHE_MAX:
            self._urls.clear()
        self._urls[tag] = url
        return url


def _quote(value: str) -> str:
    """A placeholder value as one opaque URL piece: only unreserved characters survive unescaped."""
    text = quote(value.encode("utf-8", "surrogateescape"), safe="")
    if text and text.strip(".") == "":
        return "%2E" * len(text)  # "." / ".." would be read as path steps
    return text


def _host_key(url: str) -> tuple[str, str]:
    """(hostname, hostname:port) of a URL, lowercased; the port is the scheme's default if absent."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return host, f"{host}:{port}"
