"""The ``forward`` output: forwardd as a forwarder to Fluentd, Fluent Bit or forwardd aggregators.

:mod:`.output` is the output and its write path (acked, load-balanced, failing over). The parts it drives:
:mod:`.messages` cuts a chunk into requests as they go on the wire, :mod:`.failover` picks the next
endpoint and marks endpoints up and down over :mod:`.balance`'s pure state, :mod:`.pool` keeps connections
alive between writes, :mod:`.connection` is one connection around the sans-IO client of
:mod:`forwardd.protocol.client`, :mod:`.acks` sends requests and matches their acks, :mod:`.heartbeat`
probes the receivers, :mod:`.dns` resolves server names to endpoints, :mod:`.stats` holds the counters and
:mod:`.settings` the configuration entry.
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
