"""The HTTP output: each chunk is POSTed (or PUT/PATCHed) to an endpoint in one or more batched requests.

Bodies. ``ndjson`` (default): one JSON object per line, exactly the JSON lines of
:func:`forwardd.outputs.formats.json_lines` (time as RFC 3339 text under ``time``, tag under ``tag``, then
the record). ``json_array``: the same objects as one JSON array. ``msgpack``: one msgpack array of maps with
the same keys and the same time text, so a consumer sees one schema whatever the format (binary values stay
binary, which is what msgpack is for). ``compress: gzip`` gzips the body (``Content-Encoding: gzip``).

Batching. A chunk is sent as soon as :meth:`HttpOutput.write` is called; ``batch.max_wait`` is applied by the
buffer, which gathers chunks before handing them over, not here. A chunk becomes as many requests as it
takes to keep each body within ``max_events`` events and ``max_bytes`` bytes (before compression), events in
order. An event whose body alone exceeds ``max_bytes`` cannot ever be sent: the others are delivered, then
:class:`PermanentError` is raised with ``rejected`` holding a chunk of only those events.

Outcomes. 2xx is success. 408, 429, 5xx, connection failures, TLS failures and timeouts raise
:class:`RetryableError` (``retry_after`` from a ``Retry-After`` header, in seconds or as an HTTP date);
every other status (other 4xx, and 3xx: redirects are not followed, a POST body must not silently go
elsewhere) raises :class:`PermanentError`. When a chunk needs several requests, each request's outcome is
its own: a permanently refused request costs exactly its events (the next requests are still sent, then
:class:`RecordsRejected` names the refused events), and a retryable failure stops the write with a
:class:`PartialDelivery` whose ``unsent`` holds the events of that request and of the ones after it, so
the delivery loop re-sends only those: events the endpoint accepted with a 2xx are neither sent again nor
dead-lettered. (A request that timed out may still have been accepted: at-least-once.) A record the
encoder cannot represent raises :class:`UnprocessableError` before any request is made.

Endpoint placeholders. ``${tag}`` and ``${tag[N]}`` (dot parts; negative N counts from the end) are
substituted per chunk, URL-quoted so a value can never add a ``/``, ``?``, ``#``, ``@`` or ``:`` to the URL
(a value of only dots is escaped too, so it cannot climb the path). The resolved host (``host`` or
``host:port``) must be in ``allowed_hosts`` (SSRF protection, as Fluentd 1.19.3 ``out_http``), else
PermanentError. A static endpoint whose host is not allowed is a configuration error (ValueError).

Connections. One :class:`aiohttp.ClientSession` per output, opened in :meth:`start`, so connections are
kept alive and reused across writes; requests of one output go one at a time, in order.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import gzip
import math
import re
import ssl
import time
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlsplit

import aiohttp
import msgpack
import yarl

from forwardd.errors import PartialDelivery, PermanentError, RecordsRejected, RetryableError
from forwardd.model import Chunk, Event, EventTime
from forwardd.outputs.base import Output
from forwardd.outputs.formats import (
    json_lines,
    native_json_lines,
    plain_json_lines,
    rfc3339_ns,
    unprocessable,
)
from forwardd.pieces import ranges_of, select_events

if TYPE_CHECKING:
    from forwardd.config.schema import HttpOutput as HttpOutputSettings

__all__ = [
    "HttpOutput",
    "HttpStats",
    "encode_msgpack_maps",
    "parse_retry_after",
    "split_batches",
]

Format = Literal["ndjson", "json_array", "msgpack"]

_NS = 1_000_000_000
_CONTENT_TYPES = {
    "ndjson": "application/x-ndjson",
    "json_array": "application/json",
    "msgpack": "application/msgpack",
}
_USER_AGENT = "forwardd/0.1"
#: Response bytes kept for an error message; the rest of the body is read and thrown away (up to a cap,
#: so that the connection can be reused).
_SNIPPET = 512
_DRAIN_CAP = 1024**2
#: Bodies at least this big are gzipped in a worker thread (zlib releases the GIL) so the loop keeps going.
_GZIP_OFFLOAD = 256 * 1024
_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
_TAG_PART = re.compile(r"tag\[(-?\d+)\]")
_WHOLE_TAG = object()
#: Resolved endpoints kept per tag; cleared when it grows past this (tags are few in practice).
_URL_CACHE_MAX = 1024


# ---------------------------------------------------------------------------------------------- stats


@dataclass(slots=True)
class HttpStats:
    """Counters of one output. ``bytes`` are request body bytes as sent (after compression)."""

    events: int = 0
    bytes: int = 0
    requests: int = 0
    #: Failed requests that will be retried, by status code ("503") or "timeout" / "connection".
    retries: dict[str, int] = field(default_factory=dict)
    #: Permanent failures, by status code or "oversize" (events) / "host" (chunks).
    rejected: dict[str, int] = field(default_factory=dict)

    def copy(self) -> HttpStats:
        return HttpStats(self.events, self.bytes, self.requests, dict(self.retries), dict(self.rejected))


def _bump(counter: dict[str, int], key: str, n: int = 1) -> None:
    counter[key] = counter.get(key, 0) + n


# ------------------------------------------------------------------------------------------- helpers


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


def split_batches(
    ends: Sequence[int], max_events: int, max_bytes: int, overhead: Callable[[int], int]
) -> tuple[list[tuple[int, int]], list[int]]:
    """Cut items into request batches: ``([(start, stop), ...], [oversized item indexes])``.

    ``ends[i]`` is the end offset of item i in the concatenated items; a batch of n items costs its items'
    bytes plus ``overhead(n)`` (the array header or brackets). Greedy and in order; each step is a bisect,
    so the cost is per batch, not per event. ``overhead`` must not decrease as n grows.
    """
    n = len(ends)
    batches: list[tuple[int, int]] = []
    oversized: list[int] = []
    i = 0
    while i < n:
        hi = min(n, i + max_events)
        base = ends[i - 1] if i else 0
        j = bisect_right(ends, base + max_bytes - overhead(hi - i), i, hi)
        if j == i:
            # Under the worst-case overhead nothing fits; the first item alone may still fit exactly.
            if ends[i] - base + overhead(1) <= max_bytes:
                j = i + 1
            else:
                oversized.append(i)
                i += 1
                continue
        batches.append((i, j))
        i = j
    return batches, oversized


def _line_ends(lines: bytes) -> list[int]:
    """End offsets of the lines of JSON lines (JSON text never holds a raw newline)."""
    ends: list[int] = []
    append = ends.append
    find = lines.find
    pos = find(b"\n")
    while pos >= 0:
        append(pos + 1)
        pos = find(b"\n", pos + 1)
    return ends


def _container_header(n: int, fix: int, b16: bytes, b32: bytes) -> bytes:
    if n < 16:
        return bytes((fix | n,))
    if n < 0x10000:
        return b16 + n.to_bytes(2, "big")
    return b32 + n.to_bytes(4, "big")


def _array_header(n: int) -> bytes:
    return _container_header(n, 0x90, b"\xdc", b"\xdd")


_MAP_HEADERS = tuple(_container_header(n, 0x80, b"\xde", b"\xdf") for n in range(256))


def _map_header(n: int) -> bytes:
    return _MAP_HEADERS[n] if n < 256 else _container_header(n, 0x80, b"\xde", b"\xdf")


def _map_header_len(first: int) -> int:
    return 1 if 0x80 <= first <= 0x8F else 3 if first == 0xDE else 5


def _str_header(n: int) -> bytes:
    return bytes((0xA0 | n,)) if n < 32 else b"\xd9" + bytes((n,))


def _msgpack_default(obj: Any) -> Any:
    if type(obj) is EventTime:
        return obj.to_ext()
    raise TypeError(f"cannot encode {type(obj).__name__} as msgpack")


@unprocessable
def encode_msgpack_maps(
    events: Sequence[Event], tag: str, *, time_key: str | None = "time", tag_key: str | None = "tag"
) -> tuple[bytes, list[int]]:
    """Each event as a msgpack map (injected time text and tag first, then the record), concatenated;
    returns the bytes and each map's end offset.

    Each record is packed once and its map header rewritten to count the injected keys, so no per-event
    dict is built (as :func:`~forwardd.outputs.formats.json_lines` splices JSON).
    """
    packer = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape", default=_msgpack_default)
    pack = packer.pack
    tag_part = pack(tag_key) + pack(tag) if tag_key is not None else b""
    time_k = pack(time_key) if time_key is not None else b""
    extra = (time_key is not None) + (tag_key is not None)
    k1: Any = object() if time_key is None else time_key
    k2: Any = object() if tag_key is None else tag_key
    buf = bytearray()
    ends: list[int] = []
    end = ends.append
    last_s = -1
    head = b""
    for ev in events:
        rec = ev.record
        if k1 in rec or k2 in rec:
            rec = {k: v for k, v in rec.items() if k != k1 and k != k2}
        body = pack(rec)
        if extra:
            hl = _map_header_len(body[0])
            count = len(rec) + extra
            buf += _map_header(count)
            if time_key is not None:
                s, ns = divmod(ev.time_ns, _NS)
                if s != last_s:
                    last_s = s
                    text = rfc3339_ns(s * _NS)[:-10].encode()  # "YYYY-MM-DDTHH:MM:SS."
                    head = time_k + _str_header(len(text) + 10) + text
                buf += head
                buf += b"%09dZ" % ns
            buf += tag_part
            buf += memoryview(body)[hl:]
        else:
            buf += body
        end(len(buf))
    return bytes(buf), ends


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


# -------------------------------------------------------------------------------------------- output


class HttpOutput(Output):
    """Sends chunks to an HTTP endpoint; see the module docstring for bodies, batching and errors."""

    def __init__(
        self,
        *,
        name: str,
        endpoint: str,
        method: str = "POST",
        headers: Mapping[str, str] | None = None,
        basic_auth: tuple[str, str] | None = None,
        bearer_token: str | None = None,
        format: Format = "ndjson",
        compress: Literal["none", "gzip"] = "none",
        max_events: int = 1000,
        max_bytes: int = 1024**2,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        verify: bool = True,
        connect_timeout: float = 5.0,
        timeout: float = 30.0,
        allowed_hosts: Sequence[str] = (),
        time_key: str | None = "time",
        tag_key: str | None = "tag",
        gzip_level: int = 1,
    ) -> None:
        if format not in _CONTENT_TYPES:
            raise ValueError(f"unknown format {format!r}; expected one of {', '.join(_CONTENT_TYPES)}")
        if compress not in ("none", "gzip"):
            raise ValueError(f"unknown compression {compress!r}; expected none or gzip")
        if max_events < 1 or max_bytes < 1:
            raise ValueError("max_events and max_bytes must be at least 1")
        if basic_auth is not None and bearer_token is not None:
            raise ValueError("set either basic_auth or bearer_token, not both")
        if bool(cert_file) != bool(key_file):
            raise ValueError("cert_file and key_file go together")
        self.name = name
        self.endpoint = endpoint
        self.method = method.upper()
        self.format = format
        self.compress = compress
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.time_key = time_key
        self.tag_key = tag_key
        self.gzip_level = gzip_level
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
        self._template = self._parse_template(endpoint)
        self._urls: dict[str, yarl.URL] = {}
        self._static_url: yarl.URL | None = None
        if self._template is None:
            self._static_url = yarl.URL(endpoint)
            if self.allowed_hosts and not self._host_allowed(endpoint):
                raise ValueError(f"endpoint host of {endpoint!r} is not in allowed_hosts")

        hdrs = {"User-Agent": _USER_AGENT, "Content-Type": _CONTENT_TYPES[format]}
        if basic_auth is not None:
            user, password = basic_auth
            if ":" in user:
                raise ValueError("a basic auth username cannot contain ':' (RFC 7617)")
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            hdrs["Authorization"] = f"Basic {token}"  # UTF-8, as RFC 7617 recommends
        elif bearer_token is not None:
            hdrs["Authorization"] = f"Bearer {bearer_token}"
        # Configured headers win, Authorization included: the operator knows the endpoint.
        for k, v in (headers or {}).items():
            for existing in [e for e in hdrs if e.lower() == k.lower()]:
                del hdrs[existing]
            hdrs[k] = v
        if compress == "gzip":
            hdrs["Content-Encoding"] = "gzip"
        self._headers = hdrs

        self._ssl: ssl.SSLContext | bool = True
        if ca_file or cert_file or not verify:
            ctx = ssl.create_default_context(cafile=ca_file)
            if cert_file:
                ctx.load_cert_chain(cert_file, key_file)
            if not verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._ssl = ctx
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=connect_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._stats = HttpStats()

    @classmethod
    def from_settings(cls, name: str, settings: HttpOutputSettings) -> HttpOutput:
        """The output for one ``type: http`` entry of the configuration."""
        auth = settings.auth
        tls = settings.tls
        return cls(
            name=name,
            endpoint=settings.endpoint,
            method=settings.method,
            headers=dict(settings.headers),
            basic_auth=(
                (auth.basic.username, auth.basic.password) if auth is not None and auth.basic else None
            ),
            bearer_token=auth.bearer if auth is not None else None,
            format=settings.format,
            compress=settings.compress,
            max_events=settings.batch.max_events,
            max_bytes=settings.batch.max_bytes,
            ca_file=str(tls.ca_file) if tls is not None and tls.ca_file else None,
            cert_file=str(tls.cert_file) if tls is not None and tls.cert_file else None,
            key_file=str(tls.key_file) if tls is not None and tls.key_file else None,
            verify=tls.verify if tls is not None else True,
            connect_timeout=settings.timeout.connect,
            timeout=settings.timeout.total,
            allowed_hosts=settings.allowed_hosts,
        )

    # --- endpoint ---------------------------------------------------------------------------------------

    @staticmethod
    def _parse_template(endpoint: str) -> list[Any] | None:
        """Literal text and placeholder tokens (``_WHOLE_TAG`` or a part index); None when static."""
        if "${" not in endpoint:
            return None
        tokens: list[Any] = []
        pos = 0
        for m in _PLACEHOLDER.finditer(endpoint):
            tokens.append(endpoint[pos : m.start()])
            name = m.group(1).strip()
            part = _TAG_PART.fullmatch(name)
            if name == "tag":
                tokens.append(_WHOLE_TAG)
            elif part is not None:
                tokens.append(int(part.group(1)))
            else:
                raise ValueError(
                    f"unsupported placeholder ${{{name}}} in endpoint; use ${{tag}} or ${{tag[N]}}"
                )
            pos = m.end()
        rest = endpoint[pos:]
        if "${" in rest:
            raise ValueError(f"unterminated placeholder in endpoint {endpoint!r}")
        tokens.append(rest)
        return tokens

    def _host_allowed(self, url: str) -> bool:
        host, host_port = _host_key(url)
        return bool(host) and (host in self.allowed_hosts or host_port in self.allowed_hosts)

    def endpoint_for(self, tag: str) -> yarl.URL:
        """The URL a chunk of ``tag`` goes to; PermanentError when a placeholder cannot be resolved or the
        resolved host is not allowed."""
        if self._static_url is not None:
            return self._static_url
        url = self._urls.get(tag)
        if url is not None:
            return url
        assert self._template is not None
        parts = tag.split(".")
        out: list[str] = []
        for tok in self._template:
            if type(tok) is str:
                out.append(tok)
            elif tok is _WHOLE_TAG:
                out.append(_quote(tag))
            else:
                try:
                    out.append(_quote(parts[tok]))
                except IndexError:
                    raise PermanentError(
                        f"tag {tag!r} has no part {tok} for endpoint {self.endpoint}"
                    ) from None
        text = "".join(out)
        if not self._host_allowed(text):
            raise PermanentError(f"endpoint {text!r} (tag {tag!r}): host not in allowed_hosts")
        try:
            url = yarl.URL(text, encoded=True)  # already quoted: keep %2F and %2E as they are
        except ValueError as exc:
            raise PermanentError(f"endpoint {text!r} (tag {tag!r}) is not a valid URL: {exc}") from None
        if len(self._urls) >= _URL_CACHE_MAX:
            self._urls.clear()
        self._urls[tag] = url
        return url

    # --- lifecycle --------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(ssl=self._ssl, limit=4)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, headers=self._headers, auto_decompress=True
        )

    async def stop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @property
    def stats(self) -> HttpStats:
        return self._stats.copy()

    # --- write ------------------------------------------------------------------------------------------

    def _overhead(self, n: int) -> int:
        if self.format == "ndjson":
            return 0
        if self.format == "json_array":
            return 1  # "[" + items with the last newline dropped + "]"
        return len(_array_header(n))

    def _encode(self, events: Sequence[Event], tag: str) -> tuple[bytes, list[int] | None]:
        if self.format == "msgpack":
            return encode_msgpack_maps(events, tag, time_key=self.time_key, tag_key=self.tag_key)
        return json_lines(events, tag, time_key=self.time_key, tag_key=self.tag_key), None

    def _body(self, items: bytes | memoryview, n: int) -> bytes:
        if self.format == "ndjson":
            return bytes(items)
        if self.format == "json_array":
            return b"[" + bytes(items[:-1]).replace(b"\n", b",") + b"]"
        return _array_header(n) + items

    async def write(self, chunk: Chunk) -> None:
        url = self.endpoint_for(chunk.tag)  # before any work: a forbidden host is rejected outright
        ends: list[int] | None = None
        native = (
            native_json_lines(chunk, time_key=self.time_key, tag_key=self.tag_key)
            if self.format != "msgpack"
            else None
        )
        plain = chunk.plain_entries() if self.format != "msgpack" and native is None else None
        if native is not None:  # the C transcoder, straight from the entries
            n, items = native.count, native.data
        elif plain is not None:  # the bulk JSON encoder of plain chunks
            n = len(plain.records)
            items = plain_json_lines(plain, chunk.tag, time_key=self.time_key, tag_key=self.tag_key)
        else:
            events = chunk.events()
            n = len(events)
            items, ends = self._encode(events, chunk.tag)
        if n == 0:
            return
        if n <= self.max_events and len(items) + self._overhead(n) <= self.max_bytes:
            await self._send(url, self._body(items, n), n)
            return
        if ends is None:
            ends = _line_ends(items)
        batches, oversized = split_batches(ends, self.max_events, self.max_bytes, self._overhead)
        if oversized:
            _bump(self._stats.rejected, "oversize", len(oversized))
        view = memoryview(items)
        refused: list[tuple[int, int]] = []  # event ranges of requests refused for good
        first_refusal: PermanentError | None = None
        delivered = 0
        for b, (i, j) in enumerate(batches):
            start = ends[i - 1] if i else 0
            try:
                await self._send(url, self._body(view[start : ends[j - 1]], j - i), j - i)
            except PermanentError as exc:  # this request's events only; the next requests still go
                refused.append((i, j))
                first_refusal = first_refusal or exc
                continue
            except RetryableError as exc:
                if not delivered and not refused and not oversized:
                    raise  # nothing got through: the whole chunk is written again
                rejection = self._rejection(chunk, n, ends, refused, first_refusal, oversized, delivered)
                unsent = select_events(chunk, batches[b:], n)
                rejected = rejection.rejected if rejection is not None else None
                raise PartialDelivery(
                    f"{delivered} of {n} events of tag {chunk.tag!r} delivered, "
                    f"{rejected.count if rejected else 0} refused, {unsent.count} to send again: {exc}",
                    delivered=delivered,
                    rejected=rejected,
                    rejection=rejection,
                    unsent=unsent,
                    cause=exc,
                ) from exc
            delivered += j - i
        rejection = self._rejection(chunk, n, ends, refused, first_refusal, oversized, delivered)
        if rejection is not None:
            raise rejection

    def _rejection(
        self,
        chunk: Chunk,
        n: int,
        ends: list[int],
        refused: list[tuple[int, int]],
        first_refusal: PermanentError | None,
        oversized: list[int],
        delivered: int,
    ) -> RecordsRejected | None:
        """The events of refused requests and oversized ones, in chunk order, with why."""
        if not refused and not oversized:
            return None
        rejected = select_events(chunk, sorted(refused + ranges_of(oversized)), n)
        why = []
        if oversized:
            sizes = ", ".join(str(ends[k] - (ends[k - 1] if k else 0)) for k in oversized[:5])
            why.append(f"{len(oversized)} event(s) exceed max_bytes {self.max_bytes} (sizes {sizes})")
        if first_refusal is not None:
            why.append(f"{len(refused)} request(s) refused, e.g. {first_refusal}")
        return RecordsRejected(
            f"{rejected.count} event(s) of tag {chunk.tag!r} rejected: {'; '.join(why)}; "
            f"{delivered} others were delivered",
            rejected,
        )

    async def _send(self, url: yarl.URL, body: bytes, count: int) -> None:
        session = self._session
        if session is None:
            await self.start()
            session = self._session
            assert session is not None
        if self.compress == "gzip":
            if len(body) >= _GZIP_OFFLOAD:
                body = await asyncio.to_thread(gzip.compress, body, self.gzip_level, mtime=0)
            else:
                body = gzip.compress(body, self.gzip_level, mtime=0)
        stats = self._stats
        stats.requests += 1
        try:
            async with session.request(self.method, url, data=body, allow_redirects=False) as resp:
                status = resp.status
                snippet = await _drain(resp)
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except TimeoutError:
            _bump(stats.retries, "timeout")
            raise RetryableError(f"{self.method} {url}: timed out") from None
        except aiohttp.InvalidURL as exc:
            _bump(stats.rejected, "url")
            raise PermanentError(f"{self.method} {url}: invalid URL: {exc}") from None
        except (aiohttp.ClientError, OSError) as exc:
            _bump(stats.retries, "connection")
            raise RetryableError(f"{self.method} {url}: {type(exc).__name__}: {exc}") from None
        if 200 <= status < 300:
            stats.events += count
            stats.bytes += len(body)
            return
        message = f"{self.method} {url}: HTTP {status}" + (f": {snippet}" if snippet else "")
        if status == 408 or status == 429 or status >= 500:
            _bump(stats.retries, str(status))
            raise RetryableError(message, retry_after=retry_after)
        _bump(stats.rejected, str(status))
        raise PermanentError(message)


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
