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


# --- handshakes that fail: logged (rate-limited) and counted ---------------------------------------------

import socket  # noqa: E402
import time  # noqa: E402

import msgpack  # noqa: E402
from structlog.testing import capture_logs  # noqa: E402

from forwardd.protocol import encode  # noqa: E402

from .support import wait_until  # noqa: E402


def _lines(logs: list[dict], name: str) -> list[dict]:
    return [e for e in logs if e["event"] == name]


def test_plaintext_on_a_tls_port_is_logged_and_counted(serve, ca, tmp_path):
    served = serve(listener_kw={"tls": tls_settings(ca, tmp_path)})
    with capture_logs() as logs:
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as raw:
            raw.sendall(encode.message("plain", 1, {"k": "v"}, chunk="c"))  # a forward client without TLS
            raw.settimeout(5)
            while raw.recv(4096):  # whatever the server says (a TLS alert), it closes
                pass
        wait_until(lambda: served.stats.tls_failures == 1, what="the failure to be counted")
        with served.client(ssl_context=client_context(ca), server_hostname="localhost") as c:
            c.message("tls.after", {"n": 1}, ack=True)  # the listener goes on
    [line] = _lines(logs, "tls.handshake_failed")
    assert line["reason"].startswith("plaintext on a TLS port"), line
    assert line["peer"].startswith("127.0.0.1:")
    assert line["listener"] == "t"


def test_a_tls_handshake_that_never_comes_times_out_logged_and_counted(serve, ca, tmp_path):
    served = serve(handshake_timeout=0.3, listener_kw={"tls": tls_settings(ca, tmp_path)})
    with capture_logs() as logs:
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as raw:
            t0 = time.monotonic()
            raw.settimeout(5)
            assert raw.recv(1) == b""  # closed by the server, not by our timeout
            assert time.monotonic() - t0 < 3
        wait_until(lambda: served.stats.tls_failures == 1, what="the timeout to be counted")
    [line] = _lines(logs, "tls.handshake_timeout")
    assert line["reason"] == "no handshake within 0.3s"


def test_a_tls_client_without_the_required_certificate_is_logged(serve, ca, tmp_path):
    served = serve(listener_kw={"tls": tls_settings(ca, tmp_path, client_auth="required")})
    with capture_logs() as logs:
        c = served.client(ssl_context=client_context(ca), server_hostname="localhost")
        try:
            with pytest.raises((ssl.SSLError, AckError, ConnectionResetError)):
                c.message("mtls", {"n": 1}, ack=True)
        finally:
            c.close()
        wait_until(lambda: served.stats.tls_failures == 1, what="the failure to be counted")
    [line] = _lines(logs, "tls.handshake_failed")
    assert "CERTIFICATE" in line["reason"].upper(), line


def test_a_client_that_closes_during_the_handshake_is_logged(serve, ca, tmp_path):
    """A TCP probe (a load balancer's health check, say) connects and closes: seen, counted, said why."""
    served = serve(listener_kw={"tls": tls_settings(ca, tmp_path)})
    with capture_logs() as logs:
        socket.create_connection(("127.0.0.1", served.port), timeout=5).close()
        wait_until(lambda: served.stats.tls_failures == 1, what="the failure to be counted")
    [line] = _lines(logs, "tls.handshake_failed")
    assert line["reason"].startswith("closed during the handshake"), line


def test_many_failed_handshakes_are_counted_but_their_lines_rate_limited(serve, ca, tmp_path):
    served = serve(listener_kw={"tls": tls_settings(ca, tmp_path)})
    with capture_logs() as logs:
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", served.port), timeout=5) as raw:
                raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                raw.settimeout(5)
                while raw.recv(4096):
                    pass
        wait_until(lambda: served.stats.tls_failures == 20, what="20 failures")
        served.stop()  # says how many lines it held back
    lines = _lines(logs, "tls.handshake_failed")
    assert 1 <= len([e for e in lines if not e.get("summary")]) <= 5
    assert sum(1 if not e.get("summary") else e["suppressed_since_last"] for e in lines) == 20


def test_a_request_in_the_same_flight_as_the_client_s_finished_is_read(serve, ca, tmp_path):
    """A TLS 1.3 client may send its first request with its Finished message: the TLS layer hands it to
    the session in the read that completes the handshake, before the forward protocol has begun there. It
    was dropped, and the client waited for an ack that never came (the forward output did)."""
    served = serve(listener_kw={"tls": tls_settings(ca, tmp_path)})
    ctx = client_context(ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as raw:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                incoming.write(raw.recv(65536))
        tls.write(encode.message("flight", 1, {"n": 1}, chunk="f1"))
        raw.sendall(outgoing.read())  # the client's Finished and the request, in one write
        unpacker = msgpack.Unpacker(raw=False)
        while True:
            try:
                unpacker.feed(tls.read(4096))
                break
            except ssl.SSLWantReadError:
                data = raw.recv(65536)
                assert data, "the server closed the connection"
                incoming.write(data)
        assert next(unpacker) == {"ack": "f1"}
    assert served.sink is not None
    assert [e.tag for e in served.sink.events] == ["flight"]
