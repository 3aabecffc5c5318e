"""The ``http_server:`` section: where the operators' endpoint listens (:mod:`forwardd.ops`)."""

from __future__ import annotations

from forwardd.config.types import Frozen, Port
from forwardd.config.units import Duration

__all__ = ["HttpServer"]


class HttpServer(Frozen):
    """The operators' endpoint: /metrics, /health, /ready, /status (:mod:`forwardd.ops`). Off unless
    configured; on loopback unless told otherwise, since it shows tags, peers' counts and errors."""

    bind: str = "127.0.0.1"
    #: Fluentd's monitor_agent port.
    port: Port = 24220
    #: An output whose writes have kept failing (retried with back-off) this long makes /ready answer 503.
    stuck_after: Duration = 60.0

    def describe(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"http://{host}:{self.port} (/metrics /health /ready /status)"
