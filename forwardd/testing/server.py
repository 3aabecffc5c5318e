"""The embedded test server: forwardd's real listener and protocol core in-process, capturing events.

Start it on an ephemeral TCP port or a Unix socket, point the code under test at it (fluent-logger,
docker's driver, anything that speaks the forward protocol), then wait for events without sleeping::

    from forwardd.testing import run_test_server

    with run_test_server() as server:
        sender = FluentSender("app", port=server.port)
        sender.emit("login", {"user": "alice"})
        [event] = server.wait_for(1)
        assert event.tag == "app.login"

``async with TestServer() as server`` does the same inside a running event loop. Faults for testing
clients: ``ack_delay`` (seconds before each chunk is accepted), ``withhold_acks`` (accept nothing until
:meth:`release_acks`), ``close_after`` (close each connection after that many requests),
``refuse_handshake`` (answer every PING with a failure PONG; needs ``shared_key``). ``json_mode=True``
also takes Fluentd's JSON convenience mode (fluent-logger-golang's ``MarshalAsJSON``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

from forwardd.protocol import Limits, Security, User
from forwardd.server.listener import ForwardListener, ListenerSettings
from forwardd.server.session import SessionSettings
from forwardd.server.stats import SourceStats
from forwardd.server.tls import TlsSettings
from forwardd.testing.capture import CapturedEvent, CaptureSink
from forwardd.testing.faults import Faults

__all__ = ["SyncTestServer", "TestServer", "run_test_server"]


class TestServer:
    """An in-process forward receiver that keeps what it receives in memory."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        unix_path: str | None = None,
        tls: TlsSettings | None = None,
        shared_key: str | None = None,
        self_hostname: str = "forwardd-test",
        users: Mapping[str, str] | None = None,
        ack_delay: float = 0.0,
        withhold_acks: bool = False,
        close_after: int | None = None,
        refuse_handshake: bool = False,
        udp_heartbeat: bool = False,
        limits: Limits | None = None,
        max_inflight: int = 64,
        handshake_timeout: float = 10.0,
        json_mode: bool = False,
    ) -> None:
        security = None
        if shared_key is not None or refuse_handshake:
            security = Security(
                self_hostname=self_hostname,
                shared_key=shared_key or "",
                user_auth=bool(users),
                users=tuple(User(u, p) for u, p in (users or {}).items()),
            )
        self.sink = CaptureSink(ack_delay=ack_delay, withhold_acks=withhold_acks)
        session = SessionSettings(
            listener="test",
            limits=limits or Limits(),
            security=security,
            max_inflight=max_inflight,
            handshake_timeout=handshake_timeout,
            hooks=Faults(close_after, refuse_handshake)
            if close_after is not None or refuse_handshake
            else None,
            json_mode=json_mode,
        )
        settings = ListenerSettings(
            name="test",
            session=session,
            bind=host,
            port=port,
            unix_path=unix_path,
            unix_mode=0o600,
            udp_heartbeat=udp_heartbeat,
            tls=tls,
        )
        self.listener = ForwardListener(settings, self.sink.submit)
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def host(self) -> str:
        return self.listener.settings.bind

    @property
    def port(self) -> int:
        assert self.listener.port is not None, "not a TCP server, or not started"
        return self.listener.port

    @property
    def unix_path(self) -> str | None:
        return self.listener.settings.unix_path

    @property
    def events(self) -> list[CapturedEvent]:
        return list(self.sink.events)

    @property
    def stats(self) -> SourceStats:
        return self.listener.stats

    async def start(self) -> TestServer:
        self.loop = asyncio.get_running_loop()
        await self.listener.start()
        return self

    async def stop(self) -> None:
        self.sink.release_acks()
        await self.listener.stop(grace=2.0)

    async def __aenter__(self) -> TestServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_for(self, n: int = 1, timeout: float = 10.0) -> list[CapturedEvent]:
        """The first ``n`` (or more) events, waiting up to ``timeout`` seconds for them."""
        return await self.sink.wait_for(n, timeout)

    def release_acks(self) -> None:
        self.sink.release_acks()

    def clear(self) -> None:
        self.sink.clear()

    def records(self, tag: str | None = None) -> list[dict[Any, Any]]:
        return [e.record for e in self.sink.events if tag is None or e.tag == tag]

    def assert_received(self, tag: str | None = None, **fields: Any) -> CapturedEvent:
        """The first event with this tag whose record holds these fields; AssertionError if none."""
        for e in self.sink.events:
            if (tag is None or e.tag == tag) and all(e.record.get(k) == v for k, v in fields.items()):
                return e
        seen = [(e.tag, e.record) for e in self.sink.events[:20]]
        raise AssertionError(f"no event with tag={tag!r} and {fields!r}; first events seen: {seen!r}")


class SyncTestServer:
    """:class:`TestServer` on an event loop of its own in a background thread, for synchronous tests."""

    __test__ = False

    def __init__(self, **kwargs: Any) -> None:
        self.server = TestServer(**kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="forwardd-test", daemon=True)

    def start(self) -> SyncTestServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._loop.is_closed():
            return  # stopped already (by the test, then by the fixture)
        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> SyncTestServer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    host = property(lambda self: self.server.host)
    port = property(lambda self: self.server.port)
    unix_path = property(lambda self: self.server.unix_path)
    events = property(lambda self: self.server.events)
    stats = property(lambda self: self.server.stats)

    def wait_for(self, n: int = 1, timeout: float = 10.0) -> list[CapturedEvent]:
        return self.server.sink.wait_for_sync(n, timeout)

    def release_acks(self) -> None:
        self._loop.call_soon_threadsafe(self.server.release_acks)

    def clear(self) -> None:
        self.server.clear()

    def records(self, tag: str | None = None) -> list[dict[Any, Any]]:
        return self.server.records(tag)

    def assert_received(self, tag: str | None = None, **fields: Any) -> CapturedEvent:
        return self.server.assert_received(tag, **fields)


@contextlib.contextmanager
def run_test_server(**kwargs: Any) -> Iterator[SyncTestServer]:
    """Run a :class:`TestServer` in a background thread for the duration of the ``with`` block."""
    server = SyncTestServer(**kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()
