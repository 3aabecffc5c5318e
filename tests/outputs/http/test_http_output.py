"""The HTTP output against a real aiohttp server on 127.0.0.1: bodies, batching, auth, errors, TLS, URLs."""

from __future__ import annotations

import base64
import email.utils
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

from forwardd.app import parse_config
from forwardd.errors import PartialDelivery, PermanentError, RecordsRejected, RetryableError
from forwardd.model import Event
from forwardd.outputs.formats import rfc3339_ns
from forwardd.outputs.http import (
    HttpOutput,
    encode_msgpack_maps,
    parse_retry_after,
    split_batches,
)

from .conftest import T0, Recorder, Reply, make_chunk

FORMATS = ["ndjson", "json_array", "msgpack"]


def records(n: int, start: int = 0, pad: int = 0) -> list[dict[str, Any]]:
    return [
        {"seq": i, "log": f'line {i} \u00e9\u6f22 "quoted"\n{"x" * pad}', "nested": {"a": [1, None, True]}}
        for i in range(start, start + n)
    ]


def expected(tag: str, recs: list[dict[str, Any]], t0: int = T0) -> list[dict[str, Any]]:
    return [{"time": rfc3339_ns(t0 + i * 1000), "tag": tag, **r} for i, r in enumerate(recs)]


# --- bodies ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", ["none", "gzip"])
@pytest.mark.parametrize("fmt", FORMATS)
async def test_every_event_arrives(http_server: Recorder, make_output, fmt: str, compress: str) -> None:
    out = make_output(http_server.url + "/in", format=fmt, compress=compress)
    recs = records(40)
    await out.write(make_chunk("app.web", recs))
    [req] = http_server.requests
    assert req.method == "POST"
    assert req.path == "/in"
    assert req.events == expected("app.web", recs)
    ctype = {
        "ndjson": "application/x-ndjson",
        "json_array": "application/json",
        "msgpack": "application/msgpack",
    }
    assert req.headers["content-type"] == ctype[fmt]
    if compress == "gzip":
        assert req.headers["content-encoding"] == "gzip"
        assert req.raw[:2] == b"\x1f\x8b"
    else:
        assert "content-encoding" not in req.headers
    stats = out.stats
    assert (stats.events, stats.requests, stats.bytes) == (40, 1, len(req.raw))


async def test_record_keys_named_time_or_tag_are_replaced_in_msgpack(http_server: Recorder, make_output):
    out = make_output(http_server.url, format="msgpack")
    await out.write(make_chunk("t", [{"time": "mine", "tag": "mine", "k": b"\x00\xff"}]))
    assert http_server.requests[0].events == [{"time": rfc3339_ns(T0), "tag": "t", "k": b"\x00\xff"}]


async def test_chunk_of_only_invalid_entries_sends_nothing(http_server: Recorder, make_output) -> None:
    from forwardd.model import Chunk

    out = make_output(http_server.url)
    await out.write(Chunk("t", b"\x01\x02", 2, T0))  # two entries that are not [time, record]
    assert http_server.requests == []


# --- batching ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
async def test_max_events_splits_in_order(http_server: Recorder, make_output, fmt: str) -> None:
    out = make_output(http_server.url, format=fmt, max_events=10)
    recs = records(25)
    await out.write(make_chunk("a", recs))
    assert [len(r.events) for r in http_server.requests] == [10, 10, 5]
    assert http_server.events() == expected("a", recs)
    assert len(http_server.peers()) == 1


@pytest.mark.parametrize("compress", ["none", "gzip"])
@pytest.mark.parametrize("fmt", FORMATS)
async def test_max_bytes_bounds_every_body(
    http_server: Recorder, make_output, fmt: str, compress: str
) -> None:
    out = make_output(http_server.url, format=fmt, compress=compress, max_bytes=1500)
    recs = records(30, pad=100)  # ~200 bytes per event: several requests
    await out.write(make_chunk("a", recs))
    assert len(http_server.requests) >= 4
    for req in http_server.requests:
        body = req.raw
        if compress == "gzip":
            import gzip

            body = gzip.decompress(body)
        assert len(body) <= 1500
    assert http_server.events() == expected("a", recs)


@pytest.mark.parametrize("fmt", FORMATS)
async def test_oversized_event_is_rejected_alone(http_server: Recorder, make_output, fmt: str) -> None:
    out = make_output(http_server.url, format=fmt, max_bytes=2000, max_events=3)
    recs = records(8)
    recs[2]["log"] = "y" * 5000
    recs[6]["log"] = "z" * 3000
    with pytest.raises(RecordsRejected) as info:
        await out.write(make_chunk("a", recs))
    assert isinstance(info.value, PermanentError)
    rejected = info.value.rejected
    assert rejected.tag == "a"
    assert [e.record["seq"] for e in rejected.events()] == [2, 6]
    assert [e.time_ns for e in rejected.events()] == [T0 + 2000, T0 + 6000]
    want = [e for i, e in enumerate(expected("a", recs)) if i not in (2, 6)]
    assert http_server.events() == want
    assert all(len(r.events) <= 3 for r in http_server.requests)
    assert out.stats.rejected == {"oversize": 2}


def _items(sizes: list[int]) -> list[int]:
    ends, total = [], 0
    for s in sizes:
        total += s
        ends.append(total)
    return ends


@given(
    sizes=st.lists(st.integers(1, 300), max_size=60),
    max_events=st.integers(1, 12),
    max_bytes=st.integers(1, 700),
    ovh=st.sampled_from([0, 1, 5]),
)
def test_split_batches_respects_limits_and_order(sizes, max_events, max_bytes, ovh) -> None:
    def overhead(n: int) -> int:
        return ovh if ovh < 5 else (1 if n < 16 else 3)  # msgpack-like: grows with n

    ends = _items(sizes)
    batches, oversized = split_batches(ends, max_events, max_bytes, overhead)
    covered = sorted([i for a, b in batches for i in range(a, b)] + oversized)
    assert covered == list(range(len(sizes)))  # every item exactly once
    flat = [i for a, b in batches for i in range(a, b)]
    assert flat == sorted(flat)  # order kept
    for a, b in batches:
        assert 1 <= b - a <= max_events
        assert sum(sizes[a:b]) + overhead(b - a) <= max_bytes
    for i in oversized:
        assert sizes[i] + overhead(1) > max_bytes  # only what cannot fit alone is rejected


# --- headers and auth --------------------------------------------------------------------------------------


async def test_basic_auth_static_headers_and_method(http_server: Recorder, make_output) -> None:
    out = make_output(
        http_server.url, method="put", basic_auth=("alice", "s3cr:t"), headers={"X-Api-Key": "k1"}
    )
    await out.write(make_chunk("a", records(1)))
    req = http_server.requests[0]
    assert req.method == "PUT"
    assert req.headers["authorization"] == "Basic " + base64.b64encode(b"alice:s3cr:t").decode()
    assert req.headers["x-api-key"] == "k1"
    assert req.headers["user-agent"].startswith("forwardd/")


async def test_bearer_token_and_header_override(http_server: Recorder, make_output) -> None:
    out = make_output(
        http_server.url, bearer_token="tok", headers={"content-type": "application/x-ndjson; charset=utf-8"}
    )
    await out.write(make_chunk("a", records(1)))
    req = http_server.requests[0]
    assert req.headers["authorization"] == "Bearer tok"
    assert req.headers["content-type"] == "application/x-ndjson; charset=utf-8"


# --- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
async def test_retryable_statuses(http_server: Recorder, make_output, status: int) -> None:
    out = make_output(http_server.url)
    http_server.script.append(Reply(status, body=b"busy"))
    with pytest.raises(RetryableError) as info:
        await out.write(make_chunk("a", records(3)))
    assert info.value.retry_after is None
    assert f"HTTP {status}: busy" in str(info.value)
    assert out.stats.retries == {str(status): 1}
    assert out.stats.events == 0
    await out.write(make_chunk("a", records(3)))  # the default reply is 200 again
    assert out.stats.events == 3


async def test_retry_after_seconds_and_date(http_server: Recorder, make_output) -> None:
    out = make_output(http_server.url)
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    http_server.script.extend([Reply(429, {"Retry-After": "7"}), Reply(503, {"Retry-After": when})])
    with pytest.raises(RetryableError) as first:
        await out.write(make_chunk("a", records(1)))
    assert first.value.retry_after == 7.0
    with pytest.raises(RetryableError) as second:
        await out.write(make_chunk("a", records(1)))
    assert second.value.retry_after is not None
    assert 100 < second.value.retry_after <= 121


@pytest.mark.parametrize("status", [400, 401, 404, 413, 301])
async def test_other_statuses_are_permanent(http_server: Recorder, make_output, status: int) -> None:
    out = make_output(http_server.url)
    http_server.script.append(Reply(status, {"Location": http_server.url + "/elsewhere"}))
    with pytest.raises(PermanentError) as info:
        await out.write(make_chunk("a", records(2)))
    assert not isinstance(info.value, RetryableError)
    assert len(http_server.requests) == 1  # a redirect is not followed
    assert out.stats.rejected == {str(status): 1}


async def test_timeout_is_retryable(http_server: Recorder, make_output) -> None:
    out = make_output(http_server.url, timeout=0.3)
    http_server.script.append(Reply(action="hang"))
    with pytest.raises(RetryableError, match="timed out"):
        await out.write(make_chunk("a", records(2)))
    assert out.stats.retries == {"timeout": 1}
    await out.write(make_chunk("a", records(2)))  # a fresh connection works
    assert len(http_server.events()) == 2


async def test_connection_closed_mid_request_is_retryable(http_server: Recorder, make_output) -> None:
    out = make_output(http_server.url)
    http_server.script.append(Reply(action="close"))
    with pytest.raises(RetryableError):
        await out.write(make_chunk("a", records(200)))
    assert out.stats.retries == {"connection": 1}
    await out.write(make_chunk("a", records(2)))
    assert len(http_server.events()) == 2


async def test_connection_refused_is_retryable(make_output) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = make_output(f"http://127.0.0.1:{port}/", connect_timeout=2)
    with pytest.raises(RetryableError):
        await out.write(make_chunk("a", records(1)))


async def test_partial_failure_resends_only_what_was_not_accepted(http_server: Recorder, make_output) -> None:
    """Batch 1 accepted, batch 2 failed retryably: only batch 2 is to be sent again (issue 18 item 3; this
    test used to assert that batch 1 arrived twice)."""
    out = make_output(http_server.url, max_events=5)
    http_server.script.extend([Reply(200), Reply(503, headers={"Retry-After": "3"})])
    recs = records(10)
    chunk = make_chunk("a", recs)
    with pytest.raises(PartialDelivery) as info:
        await out.write(chunk)
    err = info.value
    assert isinstance(err.cause, RetryableError)
    assert err.cause.retry_after == 3.0
    assert (err.delivered, err.rejected) == (5, None)
    assert err.unsent is not None
    assert err.unsent.entries == chunk.entries[len(make_chunk("a", recs[:5]).entries) :]  # sliced, as sent
    await out.write(err.unsent)
    seqs = [e["seq"] for e in http_server.events()]
    assert seqs == list(range(10))


async def test_connection_is_reused_across_writes(http_server: Recorder, make_output) -> None:
    out = make_output(http_server.url)
    for i in range(5):
        await out.write(make_chunk("a", records(3, start=i * 3)))
    assert len(http_server.requests) == 5
    assert len(http_server.peers()) == 1
    # A 4xx answer with a body does not cost the connection either.
    http_server.script.append(Reply(400, body=b"bad record"))
    with pytest.raises(PermanentError, match="bad record"):
        await out.write(make_chunk("a", records(1)))
    await out.write(make_chunk("a", records(1)))
    assert len(http_server.peers()) == 1


async def test_stop_then_write_reopens(http_server: Recorder, make_output) -> None:
    out = make_output(http_server.url)
    await out.start()
    await out.stop()
    await out.write(make_chunk("a", records(1)))
    assert len(http_server.events()) == 1


# --- TLS ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ca = trustme.CA()
    d = tmp_path_factory.mktemp("pki")
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    client_cert = ca.issue_cert("client.forwardd.test")
    paths = {"ca": d / "ca.pem", "cert": d / "client.pem", "key": d / "client.key"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    client_cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    client_cert.private_key_pem.write_to_path(str(paths["key"]))
    return {"ca": ca, "server_cert": server_cert, "paths": paths}


def server_context(pki: dict[str, Any], require_client: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki["server_cert"].configure_cert(ctx)
    if require_client:
        pki["ca"].configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def test_tls_with_ca_and_client_certificate(pki, make_output) -> None:
    server = Recorder(server_context(pki, require_client=True))
    await server.start()
    try:
        p: dict[str, Path] = pki["paths"]
        out = make_output(server.url, ca_file=str(p["ca"]), cert_file=str(p["cert"]), key_file=str(p["key"]))
        await out.write(make_chunk("a", records(3)))
        assert len(server.events()) == 3
        cert = server.requests[0].peercert
        assert cert is not None
        assert ("DNS", "client.forwardd.test") in cert["subjectAltName"]  # the server saw our client cert
        # Without the client certificate the server refuses the handshake.
        bare = make_output(server.url, ca_file=str(p["ca"]))
        with pytest.raises(RetryableError):
            await bare.write(make_chunk("a", records(1)))
    finally:
        await server.stop()
    assert len(server.requests) == 1


async def test_tls_verification(pki, make_output) -> None:
    server = Recorder(server_context(pki, require_client=False))
    await server.start()
    try:
        strict = make_output(server.url)  # system CAs do not know the test CA
        with pytest.raises(RetryableError, match=r"(?i)certificate"):
            await strict.write(make_chunk("a", records(1)))
        lax = make_output(server.url, verify=False)
        await lax.write(make_chunk("a", records(2)))
        assert len(server.events()) == 2
    finally:
        await server.stop()


# --- templated endpoints -----------------------------------------------------------------------------------


async def test_templated_endpoint_and_allowed_hosts(http_server: Recorder, make_output) -> None:
    port = http_server.port
    out = make_output(
        f"http://${{tag[0]}}:{port}/in/${{tag[-1]}}/${{tag}}", allowed_hosts=["127.0.0.1", "localhost"]
    )
    await out.write(make_chunk("localhost.svc.web", records(2)))
    await out.write(make_chunk("localhost.a/b?c#d", records(1)))
    assert [r.raw_path for r in http_server.requests] == [
        "/in/web/localhost.svc.web",
        "/in/a%2Fb%3Fc%23d/localhost.a%2Fb%3Fc%23d",
    ]
    assert [r.path for r in http_server.requests] == [
        "/in/web/localhost.svc.web",
        "/in/a/b?c#d/localhost.a/b?c#d",
    ]
    assert [e["tag"] for e in http_server.events()] == ["localhost.svc.web"] * 2 + ["localhost.a/b?c#d"]
    with pytest.raises(PermanentError, match="allowed_hosts"):
        await out.write(make_chunk("evil.svc", records(1)))
    with pytest.raises(PermanentError, match="allowed_hosts"):
        await out.write(make_chunk("169.254.169.254", records(1)))  # tag[0] is "169": not allowed
    assert len(http_server.requests) == 2


async def test_dot_only_tag_cannot_climb_the_path(http_server: Recorder, make_output) -> None:
    out = make_output(f"http://127.0.0.1:{http_server.port}/in/${{tag}}/end", allowed_hosts=["127.0.0.1"])
    await out.write(make_chunk("..", records(1)))
    assert http_server.requests[0].raw_path == "/in/%2E%2E/end"


async def test_host_port_entries_in_allowed_hosts(http_server: Recorder, make_output) -> None:
    port = http_server.port
    out = make_output(f"http://${{tag}}:{port}/", allowed_hosts=[f"localhost:{port}"])
    await out.write(make_chunk("localhost", records(1)))
    wrong = make_output(f"http://${{tag}}:{port}/", allowed_hosts=[f"localhost:{port + 1}"])
    with pytest.raises(PermanentError):
        await wrong.write(make_chunk("localhost", records(1)))
    assert len(http_server.requests) == 1


def test_endpoint_configuration_errors() -> None:
    with pytest.raises(ValueError, match="unsupported placeholder"):
        HttpOutput(name="w", endpoint="http://h/${record.x}", allowed_hosts=["h"])
    with pytest.raises(ValueError, match="allowed_hosts"):
        HttpOutput(name="w", endpoint="http://other:80/", allowed_hosts=["h"])
    out = HttpOutput(name="w", endpoint="http://h/${tag[3]}", allowed_hosts=["h"])
    with pytest.raises(PermanentError, match="no part 3"):
        out.endpoint_for("a.b")


@given(tag=st.text(max_size=40))
def test_substituted_tag_cannot_change_host_or_path_shape(tag: str) -> None:
    out = HttpOutput(
        name="w", endpoint="https://${tag[0]}.example.com/p/${tag}?q=1", allowed_hosts=["api.example.com"]
    )
    try:
        url = out.endpoint_for("api." + tag)
    except PermanentError:
        return
    assert url.host == "api.example.com"
    assert url.port == 443
    assert url.raw_path.count("/") == 2
    assert url.raw_path.startswith("/p/")
    assert url.raw_query_string == "q=1"
    assert url.fragment == ""
    assert url.raw_path not in ("/p/.", "/p/..")


# --- helpers -----------------------------------------------------------------------------------------------


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 0 ", now) == 0.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0
    for bad in (None, "", "soon", "-5", "inf", "nan"):
        assert parse_retry_after(bad, now) is None


@given(
    recs=st.lists(
        st.dictionaries(
            st.text(max_size=5),
            st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=20), st.binary(max_size=10)),
            max_size=8,
        ),
        max_size=8,
    )
)
def test_msgpack_maps_are_records_plus_time_and_tag(recs: list[dict[str, Any]]) -> None:
    import msgpack

    events = [Event(T0 + i, r) for i, r in enumerate(recs)]
    data, ends = encode_msgpack_maps(events, "t.g")
    assert len(ends) == len(recs)
    got = msgpack.unpackb(b"\xdd" + len(recs).to_bytes(4, "big") + data, raw=False)
    want = [
        {"time": rfc3339_ns(T0 + i), "tag": "t.g", **{k: v for k, v in r.items() if k not in ("time", "tag")}}
        for i, r in enumerate(recs)
    ]
    assert got == want
    assert [list(g) for g in got] == [list(w) for w in want]  # injected keys first


def test_from_settings(tmp_path: Path) -> None:
    config = parse_config(
        f"""
storage: {{path: {tmp_path}}}
sources: [{{port: 0}}]
routes: [{{match: "**", outputs: [web]}}]
outputs:
  web:
    type: http
    endpoint: "https://${{tag}}.logs.example.com/v1/${{tag[-1]}}"
    method: put
    headers: {{X-Count: 5}}
    auth: {{bearer: tok}}
    format: msgpack
    compress: gzip
    batch: {{max_events: 7, max_bytes: 4KiB}}
    tls: {{verify: false}}
    timeout: {{connect: 1s, total: 2s}}
    allowed_hosts: [a.logs.example.com]
"""
    )
    out = HttpOutput.from_settings("web", config.outputs["web"])  # type: ignore[arg-type]
    assert (out.name, out.method, out.format, out.compress) == ("web", "PUT", "msgpack", "gzip")
    assert (out.max_events, out.max_bytes) == (7, 4096)
    assert str(out.endpoint_for("a")) == "https://a.logs.example.com/v1/a"
    with pytest.raises(PermanentError):
        out.endpoint_for("b")
    headers = out._headers
    assert headers["X-Count"] == "5"
    assert headers["Authorization"] == "Bearer tok"
    assert headers["Content-Encoding"] == "gzip"
