"""TLS server contexts: server certificate, optional client-certificate verification (mutual TLS)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

__all__ = ["TlsSettings", "server_context"]

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
