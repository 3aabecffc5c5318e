"""TLS and mutual TLS, with certificates from a throwaway CA (trustme)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from forwardd.server.tls import TlsSettings, server_context
from forwardd.testing.client import AckError


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_settings(ca: trustme.CA, tmp: Path, client_auth: str = "none") -> TlsSettings:
    server = ca.issue_cert("localhost", "127.0.0.1")
    pem = tmp / "server.pem"
    server.private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca_file = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return TlsSettings(cert_file=str(pem), key_file=str(pem), ca_file=str(ca_file), client_auth=client_auth)


def client_context(ca: trustme.CA, with_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if with_cert:
        ca.issue_cert("client.test").configure_cert(ctx)
    return ctx


def test_tls_acks(serve, ca, tmp_path):
    served = serve(listener_kw={"tls": tls_settings(ca, tmp_path)})
    with served.client(ssl_context=client_context(ca), server_hostname="localhost") as c:
        c.message("tls.m", {"n": 1}, ack=True)
        c.packed("tls.p", [{"n": 2}], ack=True, compressed="gzip")
    assert served.sink is not None
    assert [e.record["n"] for e in served.sink.events] == [1, 2]


def test_client_that_does_not_trust_the_server_is_refused_by_itself(serve, ca, tmp_path):
    served = serve(listener_kw={"tls": tls_settings(ca, tmp_path)})
    with pytest.raises(ssl.SSLCertVerificationError):
        served.client(ssl_context=ssl.create_default_context(), server_hostname="localhost")


def test_mutual_tls_refuses_a_client_without_certificate(serve, ca, tmp_path):
    served = serve(listener_kw={"tls": tls_settings(ca, tmp_path, client_auth="required")})
    # With TLS 1.3 the client learns of the refusal on its first read, not in its handshake.
    c = served.client(ssl_context=client_context(ca), server_hostname="localhost")
    try:
        with pytest.raises((ssl.SSLError, AckError, ConnectionResetError)):
            c.message("mtls", {"n": 1}, ack=True)
    finally:
        c.close()
    assert served.sink is not None
    assert served.sink.events == []


def test_mutual_tls_accepts_a_client_with_certificate(serve, ca, tmp_path):
    served = serve(listener_kw={"tls": tls_settings(ca, tmp_path, client_auth="required")})
    with served.client(ssl_context=client_context(ca, with_cert=True), server_hostname="localhost") as c:
        c.message("mtls", {"n": 1}, ack=True)
    assert served.sink is not None
    assert [e.tag for e in served.sink.events] == ["mtls"]


def test_client_auth_without_ca_is_a_configuration_error(ca, tmp_path):
    settings = tls_settings(ca, tmp_path, client_auth="required")
    with pytest.raises(ValueError, match="ca_file"):
        server_context(TlsSettings(settings.cert_file, settings.key_file, client_auth="required"))
