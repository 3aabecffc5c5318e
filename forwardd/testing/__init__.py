"""forwardd's embedded test server and client, for test suites that want to see what their code logs.

Public API: :class:`TestServer` (async), :func:`run_test_server` (sync, background thread),
:class:`CapturedEvent`, :class:`ForwardClient` (forwardd's own protocol client), and a pytest plugin
(fixtures ``forwardd_server``, ``forwardd_unix_server``, ``forwardd_server_factory``) registered through the
``pytest11`` entry point, so installing forwardd is enough.
"""

from forwardd.testing.capture import CapturedEvent, CaptureSink
from forwardd.testing.client import ForwardClient
from forwardd.testing.server import SyncTestServer, TestServer, run_test_server

__all__ = [
    "CaptureSink",
    "CapturedEvent",
    "ForwardClient",
    "SyncTestServer",
    "TestServer",
    "run_test_server",
]
