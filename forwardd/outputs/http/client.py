"""The HTTP output's client: one aiohttp session per output, and what each response means for the events
in it.

2xx is success. 408, 429, 5xx, connection failures, TLS failures and timeouts raise
:class:`~forwardd.errors.RetryableError` (``retry_after`` from a ``Retry-After`` header, in seconds or as an
HTTP date); every other status (other 4xx, and 3xx: redirects are not followed, a POST body must not silently
go elsewhere) raises :class:`~forwardd.errors.PermanentError`. (A request that timed out may still have been
accepted: at-least-once.)

The session is opened in ``start`` (or by the first request), so connections are kept alive and reused
across writes. Large bodies are gzipped in a worker thread (zlib releases the GIL) so the loop keeps going.

Several sends may run at once (the output's ``in_flight`` writes, each sending its own requests in
order): each gets a connection of its own, since the pool holds at least ``connections`` of them. A
smaller pool would make the extra requests queue for a connection, and that wait counts against the
``connect`` timeout (aiohttp's): a busy pool would read as an endpoint timing out. The counters are
updated without an ``await`` between reading and writing them, so concurrent sends never lose a count.
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import math
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC

import aiohttp
import structlog
import yarl
from aiohttp.abc import AbstractStreamWriter

from forwardd.errors import PermanentError, RetryableError
from forwardd.outputs.base import StatValue

__all__ = ["Client", "HttpStats", "parse_retry_after", "ssl_context"]

log = structlog.get_logger("forwardd.outputs.http")

#: Response bytes kept for an error message; the rest of the body is read and thrown away (up to a cap,
#: so that the connection can be reused).
_SNIPPET = 512
_DRAIN_CAP = 1024**2
#: Bodies at least this big are gzipped in a worker thread (zlib releases the GIL) so the loop keeps going.
_GZIP_OFFLOAD = 256 * 1024


@dataclass(slots=True)
class HttpStats:
    """Counters of one output. ``bytes`` are request body bytes as sent (after compression)."""

    events: int = 0
    bytes: int = 0
    requests: int = 0
    #: Failed requests that will be retried, by status code ("503") or "timeout" / "connection".
    retries: dict[str, int] = field(default_factory=dict)
    #: Permanent failures, by status code, "url" (an endpoint the tag made invalid) or "oversize" (events).
    rejected: dict[str, int] = field(default_factory=dict)

    def copy(self) -> HttpStats:
        return HttpStats(self.events, self.bytes, self.requests, dict(self.retries), dict(self.rejected))

    def as_dict(self) -> dict[str, StatValue]:
        """Flat: ``retries`` and ``rejected`` are totals, ``retries.503``, ``rejected.oversize`` ... the
        parts of them by reason."""
        out: dict[str, StatValue] = {
            "events": self.events,
            "bytes": self.bytes,
            "requests": self.requests,
            "retries": sum(self.retries.values()),
            "rejected": sum(self.rejected.values()),
        }
        for name, counts in (("retries", self.retries), ("rejected", self.rejected)):
            for why, n in sorted(counts.items()):
                out[f"{name}.{why}"] = n
        return out

    def retry(self, why: str) -> None:
        self.retries[why] = self.retries.get(why, 0) + 1

    def reject(self, why: str, n: int = 1) -> None:
        self.rejected[why] = self.rejected.get(why, 0) + n


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` value (delta-seconds or an HTTP date); None when absent or garbage.

    A date in the past means "now" (0). The buffer caps the result at its own retry maximum.
    """
    if not value:
        return None
    value = value.strip()
    try:
        secs = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        secs = max(0.0, when.timestamp() - (time.time() if now is None else now))
    if not math.isfinite(secs) or secs < 0:
        return None
    return secs


def ssl_context(
    ca_file: str | None, cert_file: str | None, key_file: str | None, verify: bool
) -> ssl.SSLContext | bool:
    """What aiohttp's connector takes: True (the system's CAs, verified) unless something is configured."""
    if not (ca_file or cert_file or not verify):
        return True
    ctx = ssl.create_default_context(cafile=ca_file)
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


#: Connections kept by the pool at least, whatever ``connections`` says.
_POOL_MIN = 4


class Client:
    """Sends bodies (up to ``connections`` at once without waiting for a connection) and turns each
    response into success or the error the delivery loop acts on; counts both in ``stats``."""

    def __init__(
        self,
        *,
        method: str,
        headers: Mapping[str, str],
        ssl: ssl.SSLContext | bool,
        timeout: aiohttp.ClientTimeout,
        gzip_level: int | None,
        stats: HttpStats,
        connections: int = 1,
    ) -> None:
        self.method = method
        self.headers = headers
        self.ssl = ssl
        self.timeout = timeout
        self.gzip_level = gzip_level  # None: bodies go as they are
        self.stats = stats
        self.connections = max(_POOL_MIN, connections)
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self.session is not None:
            return
        connector = aiohttp.TCPConnector(ssl=self.ssl, limit=self.connections)
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=self.timeout, headers=self.headers, auto_decompress=True
        )

    async def stop(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            await session.close()

    async def send(
        self, url: yarl.URL, body: bytes, count: int, sent: Callable[[], None] | None = None
    ) -> None:
        """POST (or the configured method) ``body`` holding ``count`` events; see the module doc.
        ``sent`` is called once the body is handed to the connection, while the answer is awaited."""
        session = self.session
        if session is None:
            await self.start()
            session = self.session
            assert session is not None
        if self.gzip_level is not None:
            if len(body) >= _GZIP_OFFLOAD:
                body = await asyncio.to_thread(gzip.compress, body, self.gzip_level, mtime=0)
            else:
                body = gzip.compress(body, self.gzip_level, mtime=0)
        stats = self.stats
        stats.requests += 1
        try:
            data = body if sent is None else _Body(body, sent)
            async with session.request(self.method, url, data=data, allow_redirects=False) as resp:
                status = resp.status
                snippet = await _drain(resp)
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except TimeoutError:
            stats.retry("timeout")
            raise RetryableError(f"{self.method} {url}: timed out") from None
        except aiohttp.InvalidURL as exc:
            stats.reject("url")
            raise PermanentError(f"{self.method} {url}: invalid URL: {exc}") from None
        except (aiohttp.ClientError, OSError) as exc:
            stats.retry("connection")
            raise RetryableError(f"{self.method} {url}: {type(exc).__name__}: {exc}") from None
        if 200 <= status < 300:
            stats.events += count
            stats.bytes += len(body)
            return
        message = f"{self.method} {url}: HTTP {status}" + (f": {snippet}" if snippet else "")
        if status == 408 or status == 429 or status >= 500:
            stats.retry(str(status))
            raise RetryableError(message, retry_after=retry_after)
        stats.reject(str(status))
        raise PermanentError(message)


class _Body(aiohttp.BytesPayload):
    """A request body that calls ``sent`` once it is handed to the connection (aiohttp writes a body in
    a task of its own, after the request's headers): the output then gets its next body ready while this
    one is answered. The content type is the session's header."""

    def __init__(self, value: bytes, sent: Callable[[], None]) -> None:
        super().__init__(value)
        self._sent: Callable[[], None] | None = sent

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        await super().write_with_length(writer, content_length)
        self._handed_over()

    async def write(self, writer: AbstractStreamWriter) -> None:  # what aiohttp before 3.12 calls
        await super().write(writer)
        self._handed_over()

    def _handed_over(self) -> None:
        sent, self._sent = self._sent, None
        if sent is not None:
            try:
                sent()
            except Exception:  # a bug there must not fail a request the endpoint may have taken
                log.exception("http.prepare_failed")


async def _drain(resp: aiohttp.ClientResponse) -> str:
    """Read the response to its end (so the connection goes back to the pool) and keep its first bytes
    for an error message. A body past the cap is abandoned: the connection is closed instead."""
    kept = b""
    total = 0
    while total <= _DRAIN_CAP:
        data = await resp.content.read(65536)
        if not data:
            break
        if len(kept) < _SNIPPET:
            kept += data[: _SNIPPET - len(kept)]
        total += len(data)
    else:
        resp.close()
    return kept.decode("utf-8", "replace").strip()
