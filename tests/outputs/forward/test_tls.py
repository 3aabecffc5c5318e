"""TLS to a real TLS listener (forwardd's test server) with certificates made by trustme: the CA checked,
names checked, client certificates for mutual TLS, and each way it can fail."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trustme

from forwardd.errors import RetryableError
from forwardd.outputs.forward import client_tls_context
from forwardd.protocol.client import ClientSecurity
from forwardd.server.tls import TlsSettings
from forwardd.testing import SyncTestServer, TestServer
from tests.outputs.forward.helpers import chunk, output, seqs, server, started


class Pki:
    def __init__(self, base: Path) -> None:
        self.ca = trustme.CA()
        self.other_ca = trustme.CA()
        self.dir = base
        self.ca_file = str(base / "ca.pem")
        self.other_ca_file = str(base / "other-ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        self.other_ca.cert_pem.write_to_path(self.other_ca_file)
        self.server_cert, self.server_key = self.issue(self.ca, "server", "agg.internal", "127.0.0.1")
        self.client_cert, self.client_key = self.issue(self.ca, "client", "agent-1")
        self.rogue_cert, self.rogue_key = self.issue(self.other_ca, "rogue", "agent-1")

    def issue(self, ca: trustme.CA, name: str, *identities: str) -> tuple[str, str]:
        cert = ca.issue_cert(*identities)
        cert_file, key_file = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        cert.private_key_pem.write_to_path(str(key_file))
        return str(cert_file), str(key_file)

    def listener(self, client_auth: str = "none") -> TlsSettings:
        return TlsSettings(
            cert_file=self.server_cert,
            key_file=self.server_key,
            ca_file=self.ca_file,
            client_auth=client_auth,
        )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


async def deliver(srv: TestServer, **kw: Any) -> None:
    async with started(output([server(srv.port)], **kw)) as out:
        await out.write(chunk("tls", 0, 20))
    assert seqs(srv.events) == list(range(20))


async def test_verified_tls_with_handshake(pki: Pki) -> None:
    ctx = client_tls_context(ca_file=pki.ca_file)
    async with TestServer(tls=pki.listener(), shared_key="k") as srv:
        await deliver(srv, ssl_context=ctx, security=ClientSecurity("agent", "k"), compress="gzip")


async def test_mutual_tls(pki: Pki) -> None:
    ctx = client_tls_context(ca_file=pki.ca_file, cert_file=pki.client_cert, key_file=pki.client_key)
    async with TestServer(tls=pki.listener("required")) as srv:
        await deliver(srv, ssl_context=ctx)


async def test_server_name_for_certificates_that_name_the_service(pki: Pki) -> None:
    """Connecting by address (tasks.<service> resolves to IPs) to a certificate naming the service."""
    cert, key = pki.issue(pki.ca, "named", "agg.internal")
    settings = TlsSettings(cert_file=cert, key_file=key)
    ctx = client_tls_context(ca_file=pki.ca_file)
    async with TestServer(tls=settings) as srv:
        async with started(output([server(srv.port)], ssl_context=ctx, connect_timeout=2)) as out:
            with pytest.raises(RetryableError, match="tls"):
                await out.write(chunk("tls", 0, 1))
        await deliver(srv, ssl_context=ctx, tls_server_name="agg.internal")


@pytest.mark.parametrize("case", ["unknown CA", "no client certificate", "client certificate of another CA"])
async def test_tls_failures_deliver_nothing_and_are_retryable(pki: Pki, case: str) -> None:
    if case == "unknown CA":
        ctx = client_tls_context(ca_file=pki.other_ca_file)
    elif case == "no client certificate":
        ctx = client_tls_context(ca_file=pki.ca_file)
    else:
        ctx = client_tls_context(ca_file=pki.ca_file, cert_file=pki.rogue_cert, key_file=pki.rogue_key)
    async with TestServer(tls=pki.listener("required")) as srv:
        async with started(output([server(srv.port)], ssl_context=ctx, connect_timeout=2)) as out:
            with pytest.raises(RetryableError):
                await out.write(chunk("tls", 0, 5))
            assert out.stats.events == 0
            assert set(out.stats.failures) <= {"tls", "lost", "connect", "protocol"}
        assert srv.events == []


async def test_verify_false_takes_any_certificate(pki: Pki) -> None:
    ctx = client_tls_context(ca_file=pki.other_ca_file, verify=False)
    async with TestServer(tls=pki.listener()) as srv:
        await deliver(srv, ssl_context=ctx)


async def test_plain_client_against_tls_listener_fails_cleanly(pki: Pki) -> None:
    async with TestServer(tls=pki.listener()) as srv:
        async with started(output([server(srv.port)], ack_response_timeout=1)) as out:
            with pytest.raises(RetryableError):
                await out.write(chunk("tls", 0, 5))
        assert srv.events == []


async def test_stop_closes_idle_connections_at_once_not_one_after_another(pki: Pki) -> None:
    """Closing an idle TLS connection waits for the receiver's close_notify, up to a second when it does
    not come (a receiver frozen, or cut off). Four such receivers: a stop takes about one second, not
    four, which would eat half the daemon's stop deadline."""
    gate = threading.Event()
    receivers = [SyncTestServer(tls=pki.listener()).start() for _ in range(4)]
    try:
        ctx = client_tls_context(ca_file=pki.ca_file)
        out = output([server(r.server.port) for r in receivers], ssl_context=ctx)
        await out.start()
        for i in range(4):
            await out.write(chunk("tls", i, 1))  # equal weights: one write, one idle connection each
        assert [r.server.stats.acks for r in receivers] == [1, 1, 1, 1]
        for r in receivers:  # each receiver's loop blocks: nothing answers the close_notify
            r.server.loop.call_soon_threadsafe(gate.wait)
        t = time.monotonic()
        await out.stop()
        took = time.monotonic() - t
        assert 0.9 <= took < 2.5, f"stop took {took:.2f}s"
    finally:
        gate.set()
        for r in receivers:
            r.stop()
