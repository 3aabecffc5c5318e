"""pytest fixtures for tests of code that logs through the forward protocol.

``forwardd_server``: a running test server on 127.0.0.1 and an ephemeral port (``.port``).
``forwardd_unix_server``: the same on a Unix socket in a short-lived temporary directory (``.unix_path``).
``forwardd_server_factory``: call it with :class:`~forwardd.testing.TestServer` options (faults, keys, TLS)
to get more servers; all are stopped at the end of the test.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from forwardd.testing.server import SyncTestServer, run_test_server


@pytest.fixture
def forwardd_server_factory() -> Iterator[Callable[..., SyncTestServer]]:
    servers: list[SyncTestServer] = []

    def make(**kwargs: Any) -> SyncTestServer:
        server = SyncTestServer(**kwargs).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def forwardd_server(forwardd_server_factory: Callable[..., SyncTestServer]) -> SyncTestServer:
    return forwardd_server_factory()


@pytest.fixture
def forwardd_unix_server() -> Iterator[SyncTestServer]:
    # Not tmp_path: it can exceed the 107-byte limit of AF_UNIX paths (long test names, nested runs).
    with (
        tempfile.TemporaryDirectory(prefix="forwardd-") as d,
        run_test_server(unix_path=os.path.join(d, "forward.sock")) as server,
    ):
        yield server
