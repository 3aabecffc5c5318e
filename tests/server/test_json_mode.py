"""JSON mode over a real socket: a source with json_mode takes a JSON stream and acks it in JSON, and
still takes msgpack on other connections."""

from __future__ import annotations

import json

from .support import wait_until


def read_json_acks(sock, n: int) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    dec = json.JSONDecoder()
    buf, out = "", []
    while len(out) < n:
        data = sock.recv(4096)
        assert data, "connection closed before the acks"
        buf += data.decode()
        while buf:
            try:
                obj, end = dec.raw_decode(buf)
            except ValueError:
                break
            out.append(obj)
            buf = buf[end:].lstrip()
    return out


def test_json_requests_get_json_acks_and_msgpack_still_works(serve):
    served = serve(json_mode=True)
    with served.raw() as sock:
        sock.sendall(
            b'["app.json", 1700000000, {"n": 1}, {"chunk": "j1"}]\n'
            b'["app.json", [[1700000001, {"n": 2}], [1700000002.25, {"n": 3}]], {"chunk": "j2"}]'
        )
        assert read_json_acks(sock, 2) == [{"ack": "j1"}, {"ack": "j2"}]
    with served.client() as c:  # a msgpack client on the same source
        c.message("app.mp", {"n": 4}, ack=True)
    events = served.sink.wait_for_sync(4, 10)
    assert [(e.tag, e.record["n"]) for e in events] == [
        ("app.json", 1),
        ("app.json", 2),
        ("app.json", 3),
        ("app.mp", 4),
    ]
    assert events[2].time_ns == 1700000002_250_000_000


def test_broken_json_closes_that_connection_only_after_acking_what_came_whole(serve):
    served = serve(json_mode=True)
    with served.raw() as sock:
        sock.sendall(b'["app", 1700000000, {"n": 1}, {"chunk": "ok"}] [1,,2]')
        assert read_json_acks(sock, 1) == [{"ack": "ok"}]
        sock.settimeout(10)
        assert sock.recv(100) == b""  # then closed
    wait_until(lambda: served.stats.protocol_errors == 1)
    assert served.sink.wait_for_sync(1, 10)[0].record == {"n": 1}
    with served.client() as c:
        assert c.message("app", {"n": 2}, ack=True)


def test_without_json_mode_a_json_stream_is_a_protocol_error(serve):
    served = serve()
    with served.raw() as sock:
        sock.sendall(b'["app", 1700000000, {"n": 1}, {"chunk": "x"}]')
        sock.settimeout(10)
        assert sock.recv(100) == b""
    wait_until(lambda: served.stats.protocol_errors == 1)
