"""The ``forward`` output: forwardd as a forwarder to Fluentd, Fluent Bit or forwardd aggregators.

:mod:`.output` writes chunks (acked, load-balanced, failing over), :mod:`.balance` keeps which receiver is
up and picks the next, :mod:`.connection` is one connection around the sans-IO client of
:mod:`forwardd.protocol.client`, :mod:`.heartbeat` probes the receivers.
"""

from forwardd.outputs.forward.balance import Balancer, Endpoint, ServerSpec
from forwardd.outputs.forward.connection import client_tls_context
from forwardd.outputs.forward.dns import Resolver, system_resolver
from forwardd.outputs.forward.output import ForwardOutput
from forwardd.outputs.forward.stats import ForwardStats

__all__ = [
    "Balancer",
    "Endpoint",
    "ForwardOutput",
    "ForwardStats",
    "Resolver",
    "ServerSpec",
    "client_tls_context",
    "system_resolver",
]
