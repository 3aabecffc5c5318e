"""Per-source record changes: tag override, tag prefix, the peer's address and hostname in the record."""

from __future__ import annotations

import socket

from .support import wait_until


def test_add_tag_prefix(serve):
    served = serve(add_tag_prefix="edge")
    with served.client() as c:
        c.message("app.log", {"k": 1}, ack=True)
        c.packed("app.packed", [{"k": 2}], ack=True)
    assert served.sink is not None
    assert [e.tag for e in served.sink.events] == ["edge.app.log", "edge.app.packed"]


def test_tag_override_wins_over_prefix(serve):
    served = serve(tag="fixed", add_tag_prefix="ignored")
    with served.client() as c:
        c.message("whatever", {"k": 1}, ack=True)
    assert served.sink is not None
    assert [e.tag for e in served.sink.events] == ["fixed"]


def test_source_address_key(serve):
    served = serve(source_address_key="src")
    with served.client() as c:
        c.forward("t", [{"k": 1}, {"k": 2, "src": "spoofed"}], ack=True)
    assert served.sink is not None
    assert [e.record for e in served.sink.events] == [
        {"k": 1, "src": "127.0.0.1"},
        {"k": 2, "src": "127.0.0.1"},
    ]


def test_source_hostname_key(serve, lt):
    served = serve(source_hostname_key="host")
    expected = socket.getnameinfo(("127.0.0.1", 0), 0)[0]
    with served.client() as c:
        # The name is resolved asynchronously at connect time; wait for it rather than race it.
        wait_until(lambda: lt.call(lambda: [s.peer_hostname for s in served.listener.sessions]) == [expected])
        c.message("t", {"k": 1}, ack=True)
    assert served.sink is not None
    assert served.sink.events[0].record == {"k": 1, "host": expected}
