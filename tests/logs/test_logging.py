"""Logging never raises: an undecodable tag (and other hostile values) through every path that logs in the
delivery loop, the router, the filters and the stats report, in JSON and console mode (also on an ASCII
stream), each time giving valid lines and no exception.

Before, orjson raised on the surrogates of a tag that was not UTF-8, from inside the delivery loop's
exception handler, and the delivery task died without a word.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import structlog

from forwardd.app import Config, Daemon
from forwardd.buffer import MemorySink, RetryPolicy
from forwardd.errors import PermanentError, RetryableError
from forwardd.filters import Grep
from forwardd.logging import MAX_TEXT, _Guarded, configure_logging, safe_value
from forwardd.model import Chunk
from forwardd.outputs.base import Output
from forwardd.router import Route, Router
from forwardd.router.match import compile_pattern
from tests.buffer.test_buffer_delivery import FakeTime
from tests.router.fakes import RecordingSink

TAG = b"app.\xff\xfe".decode("utf-8", "surrogateescape")
T0 = 1_700_000_000


class Stream:
    """What the daemon logs to: a text stream over bytes, in a given encoding."""

    def __init__(self, encoding: str) -> None:
        self.raw = io.BytesIO()
        self.text = io.TextIOWrapper(self.raw, encoding=encoding, write_through=True)

    def lines(self) -> list[str]:
        self.text.flush()
        data = self.raw.getvalue()
        return data.decode(self.text.encoding).splitlines()  # strict: fails on anything not encodable


MODES = [("json", "utf-8"), ("console", "utf-8"), ("console", "ascii")]


@pytest.fixture(params=MODES, ids=[f"{m}-{e}" for m, e in MODES])
def stream(request: pytest.FixtureRequest) -> Iterator[tuple[str, Stream]]:
    fmt, encoding = request.param
    s = Stream(encoding)
    configure_logging("debug", fmt, s.text, cache=False)
    try:
        yield fmt, s
    finally:
        structlog.reset_defaults()


def events(fmt: str, s: Stream) -> list[dict[str, Any]]:
    """The log lines as dicts (JSON), or as {"event": name, "text": line} (console)."""
    out = []
    for line in s.lines():
        if fmt == "json":
            out.append(json.loads(line))
        elif line and not line.startswith((" ", "Traceback", "  ")) and "[" in line:
            out.append({"event": line.split("]", 1)[1].split()[0], "text": line})
    return out


def names(fmt: str, s: Stream) -> list[str]:
    return [e["event"] for e in events(fmt, s)]


def entry(record: bytes | dict[str, Any], seq: int = 0) -> bytes:
    body = record if isinstance(record, bytes) else msgpack.packb(record)
    return b"\x92" + msgpack.packb(T0 + seq) + body


DEEP = b"\x81\xa3log" + b"\x91" * 1000 + b"\xa1x"  # repr() of it raises RecursionError


class Script(Output):
    """Raises the scripted errors, then delivers."""

    name = "out"

    def __init__(self, errors: list[BaseException]) -> None:
        self.errors = errors

    async def write(self, chunk: Chunk) -> None:
        if self.errors:
            raise self.errors.pop(0)


async def run_sink(out: Script, chunk: Chunk, tmp_path: Path, error_route: Any = None) -> MemorySink:
    t = FakeTime()
    sink = MemorySink("out", out, RetryPolicy(), str(tmp_path / "dead"), clock=t.clock, sleep=t.sleep)
    sink.error_route = error_route
    await sink.start()
    sink.submit(chunk)

    async def delivered() -> None:
        while sink.stats.queued_chunks:
            await asyncio.sleep(0.005)  # polls the queue the loop empties; bounded by the timeout

    await asyncio.wait_for(delivered(), 5)
    await sink.stop()
    return sink


async def test_delivery_paths(stream: tuple[str, Stream], tmp_path: Path) -> None:
    fmt, s = stream
    bad = f"bad {TAG}"
    out = Script([RetryableError(bad), RuntimeError(bad), RuntimeError(bad), RuntimeError(bad)])
    chunk = Chunk(TAG, entry({"a": 1}) + entry({"a": 2}, 1), 2, T0 * 10**9)
    sink = await run_sink(out, chunk, tmp_path)
    got = names(fmt, s)
    for name in ("delivery.retry", "delivery.unexpected_error", "delivery.isolating"):
        assert name in got, got
    assert sink.stats.last_error is not None
    if fmt == "json":
        [retry] = [e for e in events(fmt, s) if e["event"] == "delivery.retry"]
        assert retry["tag"] == "app.\\xff\\xfe"
        assert retry["error"] == "RetryableError: bad app.\\xff\\xfe"
        unexpected = [e for e in events(fmt, s) if e["event"] == "delivery.unexpected_error"]
        assert "RuntimeError" in json.dumps(unexpected[0]["exception"])


async def test_dead_letter_and_error_label_paths(stream: tuple[str, Stream], tmp_path: Path) -> None:
    fmt, s = stream
    chunk = Chunk(TAG, entry({"a": 1}), 1, T0 * 10**9)
    await run_sink(Script([PermanentError(f"400 {TAG}")]), Chunk(TAG, chunk.entries, 1, 0), tmp_path)
    errors = RecordingSink("errors")
    await run_sink(Script([PermanentError(f"400 {TAG}")]), chunk, tmp_path, error_route=errors.submit)
    got = names(fmt, s)
    assert "delivery.dead_letter" in got
    assert "delivery.to_error_label" in got
    assert errors.chunks[0].tag == TAG


async def test_loop_crash_path(stream: tuple[str, Stream], tmp_path: Path) -> None:
    fmt, s = stream

    class Escape(BaseException):
        pass

    sink = await run_sink(Script([Escape(f"out of band {TAG}")]), Chunk(TAG, entry({"a": 1}), 1, 0), tmp_path)
    assert sink.stats.loop_crashes == 1
    assert "delivery.loop_crashed" in names(fmt, s)


async def test_router_paths(stream: tuple[str, Stream], tmp_path: Path) -> None:
    fmt, s = stream
    out = RecordingSink("out")
    router = Router(
        {
            "@ROOT": [
                Route(compile_pattern("app.**"), (Grep(name="grep[0]", regexp=[("log", "x")]),), ("out",))
            ]
        },
        {"out": out},
        dead_letter_dir=str(tmp_path),
    )
    accepted = router.entry()(Chunk(TAG, entry({"log": "x"}) + entry(DEEP, 1), 2, 0))
    assert accepted is not None
    await asyncio.wait_for(accepted, 5)
    assert router.entry()(Chunk(b"\xff".decode("utf-8", "surrogateescape"), entry({}), 1, 0)) is None
    got = names(fmt, s)
    for name in ("filter.failed", "filter.dead_letter", "route.unmatched"):
        assert name in got, got


def test_stats_report(stream: tuple[str, Stream], tmp_path: Path) -> None:
    fmt, s = stream
    config = Config.model_validate(
        {
            "storage": {"path": str(tmp_path)},
            "sources": [{"name": "in", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False}],
            "routes": [{"match": "**", "outputs": ["files"]}],
            "outputs": {"files": {"type": "file", "path": str(tmp_path / "${tag}.log")}},
        }
    )
    daemon = Daemon(config)
    sink = daemon.sinks["files"]
    sink._last_error = f"RetryableError: cannot write {TAG}"  # type: ignore[attr-defined]
    daemon.report()
    got = names(fmt, s)
    assert "output.stats" in got
    assert "router.stats" in got
    assert "source.stats" in got
    if fmt == "json":
        [stats] = [e for e in events(fmt, s) if e["event"] == "output.stats"]
        assert stats["last_error"] == "RetryableError: cannot write app.\\xff\\xfe"


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")


def test_hostile_values_and_exceptions(stream: tuple[str, Stream]) -> None:
    fmt, s = stream
    log = structlog.get_logger("test")
    log.error(
        "hostile",
        tag=TAG,
        obj=BadRepr(),
        raw=b"\xff\x00",
        big=2**70,
        nested={TAG: [TAG, b"\xfe", {(1, 2): float("nan")}], 3: None},
        key=TAG * 10_000,
    )
    try:
        raise ValueError(f"bad {TAG}")
    except ValueError:
        log.error("with_traceback", exc_info=True)
    try:
        raise BadStr()
    except BadStr:
        log.error("bad_str", exc_info=True)
    got = names(fmt, s)
    assert got[:1] == ["hostile"]
    assert "with_traceback" in got
    assert "bad_str" in got
    if fmt == "json":
        [line] = [e for e in events(fmt, s) if e["event"] == "hostile"]
        assert line["tag"] == "app.\\xff\\xfe"
        assert line["obj"] == "<BadRepr object (repr failed)>"
        assert line["big"] == str(2**70)
        assert line["nested"]["app.\\xff\\xfe"][2] == {"(1, 2)": None}
        # A 60k-character value is cut, not copied into every line (each undecodable byte shows as 4).
        assert len(line["key"]) < 4 * MAX_TEXT + 100


def test_a_processor_that_fails_gives_a_minimal_line() -> None:
    """An exception whose ``__notes__`` is not a list makes structlog's traceback dict raise (a real
    failure inside the JSON chain); the line becomes log.render_failed instead of an exception."""
    s = Stream("utf-8")
    configure_logging("debug", "json", s.text, cache=False)
    try:
        exc = ValueError(TAG)
        exc.__notes__ = 5  # type: ignore[attr-defined]
        structlog.get_logger("test").error("broken", tag=TAG, exc_info=exc)
    finally:
        structlog.reset_defaults()
    [line] = events("json", s)
    assert (line["event"], line["original_event"], line["level"]) == ("log.render_failed", "broken", "error")
    assert "not iterable" in line["error"]


@pytest.mark.parametrize("encoding", ["utf-8", "ascii"])
def test_the_guard_catches_any_failure_in_the_console_chain(encoding: str) -> None:
    def broken(_: Any, __: str, event_dict: Any) -> Any:
        raise RuntimeError(f"renderer bug {TAG}")

    guard = _Guarded([broken], json=False, encoding=encoding)
    text = guard(None, "error", {"event": TAG})
    assert text.encode(encoding).decode(encoding).startswith("log.render_failed ")
    assert "renderer bug" in text


def test_a_stream_that_cannot_be_written_loses_the_line_not_the_caller(stream: tuple[str, Stream]) -> None:
    _, s = stream
    s.text.close()
    structlog.get_logger("test").error("into a closed stream", tag=TAG)  # does not raise


def test_safe_value_is_plain_data_for_anything() -> None:
    value = safe_value({TAG: {b"k": [BadRepr(), {1, 2}, 2**65, -(2**64)]}, None: object})
    assert json.loads(json.dumps(value)) == value


def test_tracebacks_carry_no_frame_locals() -> None:
    """A traceback in a JSON line names frames, never their locals: those would copy record contents (and
    secrets such as a shared key) into the log."""
    s = Stream("utf-8")
    configure_logging("info", "json", s.text, cache=False)

    def deliver(record: dict[str, str]) -> None:
        raise ValueError("cannot encode")

    try:
        deliver({"password": "hunter2-in-a-record"})
    except ValueError:
        structlog.get_logger("t").error("delivery.unexpected_error", exc_info=True)
    [line] = s.lines()
    parsed = json.loads(line)
    assert parsed["exception"][0]["frames"], parsed
    assert "hunter2-in-a-record" not in line
