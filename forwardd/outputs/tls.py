"""TLS towards a destination (Kafka brokers, an HTTP endpoint): the settings both client outputs share."""

from __future__ import annotations

from pathlib import Path

from forwardd.config.types import Frozen, Problems

__all__ = ["ClientTls"]


class ClientTls(Frozen):
    """A CA to verify the server with, a client certificate and key (paths), and whether to verify."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify: bool = True

    def problems(self) -> Problems:
        if bool(self.cert_file) != bool(self.key_file):
            yield (), "cert_file and key_file go together"
