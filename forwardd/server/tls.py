"""TLS server contexts: server certificate, optional client-certificate verification (mutual TLS)."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

__all__ = ["TlsSettings", "handshake_failure", "run_now", "server_context"]

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True, slots=True)
class TlsSettings:
    cert_file: str
    key_file: str
    ca_file: str | None = None
    #: "none", "optional" or "required": whether clients must present a certificate signed by ca_file.
    client_auth: str = "none"
    min_version: str = "1.2"
    key_password: str | None = None


def server_context(s: TlsSettings) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[s.min_version]
    ctx.load_cert_chain(s.cert_file, s.key_file, password=s.key_password)
    if s.client_auth != "none":
        if s.ca_file is None:
            raise ValueError("client_auth needs ca_file to verify client certificates against")
        ctx.load_verify_locations(s.ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED if s.client_auth == "required" else ssl.CERT_OPTIONAL
    return ctx


#: What OpenSSL says when the first bytes are no TLS record at all: the peer speaks plaintext (a forward
#: client without TLS, an HTTP probe) to a TLS port.
_PLAINTEXT = frozenset(
    {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "UNKNOWN_PROTOCOL",
     "PACKET_LENGTH_TOO_LONG", "RECORD_LENGTH_MISMATCH", "UNSUPPORTED_PROTOCOL", "RECORD_LAYER_FAILURE"}
)  # fmt: skip


def handshake_failure(exc: BaseException | None, elapsed: float, timeout: float) -> tuple[str, str]:
    """The log event and reason for a TLS handshake that did not complete after ``elapsed`` seconds (with
    ``exc`` None when the peer closed cleanly: a TCP probe, a load balancer's health check)."""
    if timeout > 0 and elapsed >= timeout * 0.95:
        return "tls.handshake_timeout", f"no handshake within {timeout:g}s"
    if exc is None:
        return "tls.handshake_failed", "closed during the handshake"
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or exc.strerror or type(exc).__name__)
        if reason in _PLAINTEXT:
            return "tls.handshake_failed", f"plaintext on a TLS port ({reason})"
        return "tls.handshake_failed", reason
    if isinstance(exc, ConnectionError | EOFError):
        return "tls.handshake_failed", f"closed during the handshake ({type(exc).__name__})"
    return "tls.handshake_failed", repr(exc)


def run_now(
    coro: Coroutine[Any, Any, Any], done: Callable[[Any, BaseException | None], None]
) -> Callable[[], None]:
    """Run ``coro`` up to its first wait now, not on a later turn of the loop as a task would, then on as
    the futures it waits on complete; ``done(result, exception)`` at its end. Returns a function that
    abandons it (closing the coroutine, which runs its cleanup).

    For ``loop.start_tls`` from ``connection_made``: its first step takes the transport over. In a task,
    that step comes a turn later, and uvloop starts reading when ``connection_made`` returns, so the
    client's first TLS bytes went to the plain protocol and were lost.
    """

    def step(_fut: Any = None) -> None:
        try:
            waited = coro.send(None)
        except StopIteration as stop:
            done(stop.value, None)
            return
        except Exception as exc:
            done(None, exc)
            return
        waited._asyncio_future_blocking = False  # what asyncio.Task does with an awaited future
        waited.add_done_callback(step)

    step()
    return coro.close
