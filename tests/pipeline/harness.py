"""The whole event path in one process: bytes -> ServerConnection -> router (every filter type, built from a
configuration) -> the delivery loop of every output (file in every format, HTTP in every format, Kafka in
both formats) -> dead letters and @ERROR -> log lines rendered by forwardd's own logging configuration.

Shared by the atheris target (fuzz/fuzz_pipeline.py) and the hypothesis properties (tests/pipeline). It
checks the one property of issue 14: whatever the peer sends, only documented errors come out of each
stage, and nothing escapes to the event loop:

* the protocol core raises only ProtocolError;
* the router (and so every filter, and every log line written on its way) raises only ChunkRejected;
* filters raise nothing: the router would contain it, but a filter raising on a value is a poison chunk
  (the whole chunk goes to @ERROR), which is what item 1 of the issue forbids;
* an output's ``write()`` raises only the documented delivery errors: any DeliveryError subclass
  (PermanentError, RetryableError, RecordsRejected, and whatever new one is added) and the classes of
  ``forwardd/errors.py``;
* every delivery loop keeps running and empties its queue within a few attempts per chunk (retry sleeps
  are instant here, the clock is fake): a chunk is delivered, parked in the dead-letter folder or handed
  to @ERROR, never retried for hours and never the cause of a dead loop;
* every log line renders (JSON lines parse; console lines are written): those the router and the delivery
  loops write themselves, and those the session and the daemon would write for what happened here
  (``chunk.rejected``, ``conn.protocol_error``, ``handshake.failed``, ``output.stats``, a sample of a record).

Only the network edges are replaced, as the brief of issue 14 requires of a fuzz loop: the HTTP output's
``_send`` keeps the body it was given instead of sending it, and the Kafka output's producer (librdkafka's
network client) is a stub that reports every message delivered. Everything else is the real code:
filters built by ``forwardd.app.build_routes`` from a parsed configuration, ``Router``, ``MemorySink``
(the delivery loop the disk queue shares), ``FileOutput`` writing real files, dead letters written by the
real ``write_dead_letter``.
"""

from __future__ import annotations

import asyncio
import io
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import structlog

import forwardd.errors as ferrors
from forwardd.app import ROOT_LABEL, build_output, build_routes, parse_config
from forwardd.buffer import MemorySink, RetryPolicy
from forwardd.errors import ChunkRejected, DeliveryError
from forwardd.logging import configure_logging
from forwardd.model import Chunk
from forwardd.outputs.base import Output
from forwardd.outputs.http import HttpOutput
from forwardd.outputs.kafka import KafkaOutput
from forwardd.protocol import (
    EntriesReceived,
    HandshakeFailed,
    Limits,
    ProtocolError,
    Rejected,
    ServerConnection,
)
from forwardd.router import Router

__all__ = ["OUTPUT_ERRORS", "Pipeline", "Violation", "pipeline_config"]

#: What an output's write() may raise: the delivery errors (any subclass, wherever it is defined) and
#: every exception class that forwardd/errors.py defines (the module that lists the documented errors).
OUTPUT_ERRORS: tuple[type[BaseException], ...] = (
    DeliveryError,
    *(
        v
        for v in vars(ferrors).values()
        if isinstance(v, type) and issubclass(v, Exception) and v.__module__ == ferrors.__name__
    ),
)

#: Most writes of one chunk the delivery loop may make when nothing transient is wrong (no output here
#: can fail transiently): "unknown errors get at most a few attempts, not 72 hours" (issue 14, item 1).
MAX_ATTEMPTS = 5

_FILE_OUTPUTS = {
    "file_json": ("json", "${tag}/%Y%m%d.log"),
    "file_msgpack": ("msgpack", "${tag}/%Y%m%d.mp"),
    "file_fluentd": ("fluentd", "${tag}/%Y/%m/%d.log"),
    "file_by_record": ("json", "${tag[0]}/${record.level}/${record.a.b}.log"),
}
_HTTP_OUTPUTS = {"http_ndjson": "ndjson", "http_array": "json_array", "http_msgpack": "msgpack"}
_KAFKA_OUTPUTS = {"kafka_json": "json", "kafka_msgpack": "msgpack"}
OUTPUT_NAMES = (*_FILE_OUTPUTS, *_HTTP_OUTPUTS, *_KAFKA_OUTPUTS)


def pipeline_config(root: Path) -> dict[str, Any]:
    """Every filter type on one route (and a second, filterless route: chunks as they came, which is the
    C transcoder's path), every output format, an @ERROR label. Filters read the keys the hostile
    strategies like to fill (log, msg, line, level, a.b, partial_*), so hostile values reach them."""
    filters = [
        {"type": "docker_partial", "journal": False, "max_pending": 8, "max_size": "64KiB"},
        {"type": "parser", "key": "log", "format": "json", "hash_value_field": "parsed"},
        {"type": "parser", "key": "msg", "format": "logfmt", "remove_key_name_field": True},
        {"type": "parser", "key": "line", "format": "regex", "pattern": r"^(?P<level>\S+) (?P<rest>.*)$"},
        {
            "type": "grep",
            "regexp": [{"key": "log", "pattern": ""}, {"key": "$.a.b", "pattern": "."}],
            "exclude": [{"key": "level", "pattern": "^drop$"}],
            "combine": "or",
        },
        {
            "type": "record_modify",
            "set": {
                "copied": '${record["log"]}',
                "where": "${tag_parts[0]}/${tag_suffix[1]}@${hostname}",
                "when": "${time}",
                "nested": "${record.a.b}",
                "$.added.deep": "x",
            },
            "rename": {"msg": "message", "$.a.b": "ab"},
            "remove": ["line"],
        },
        {
            "type": "tag_rewrite",
            "rules": [
                {"key": "level", "pattern": r"^(\w*)", "tag": "rw.$1.${tag}"},
                {"key": "$.parsed.kind", "pattern": "(.+)", "tag": "${tag_prefix[1]}.$1"},
            ],
        },
    ]
    outputs: dict[str, Any] = {}
    for name, (fmt, path) in _FILE_OUTPUTS.items():
        outputs[name] = {
            "type": "file",
            "format": fmt,
            "path": str(root / "files" / name / path),
            "fsync": "grouped",  # the loop's written-not-synced path runs under the properties too
        }
    for name, fmt in _HTTP_OUTPUTS.items():
        outputs[name] = {
            "type": "http",
            "endpoint": "http://sink.test:8080/in/${tag}/${tag[1]}",
            "allowed_hosts": ["sink.test:8080"],
            "format": fmt,
            "compress": "gzip" if fmt == "ndjson" else "none",
            "batch": {"max_events": 7, "max_bytes": "4KiB"},
        }
    for name, fmt in _KAFKA_OUTPUTS.items():
        outputs[name] = {
            "type": "kafka",
            "brokers": ["127.0.0.1:9"],
            "topic": "logs",
            "topic_key": "topic",
            "message_key": "key",
            "headers_from_record": {"h-log": "log", "h-level": "level"},
            "max_message_size": "2KiB",
            "format": fmt,
        }
    outputs["errors"] = {"type": "file", "path": str(root / "files" / "errors" / "${tag}.log")}
    return {
        "storage": {"path": str(root / "data")},
        "sources": [{"name": "in", "port": 0}],
        "routes": [
            {"match": "**", "filters": filters, "outputs": list(OUTPUT_NAMES), "continue": True},
            {"match": "**", "outputs": list(OUTPUT_NAMES)},
        ],
        "labels": {
            "@ERROR": [{"match": "**", "outputs": ["errors"]}],
            # A source label whose one route matches almost nothing: the unmatched-tag path and its log line.
            "@narrow": [{"match": "steady.**", "outputs": ["errors"]}],
        },
        "outputs": outputs,
    }


class Violation(AssertionError):
    """The property failed: an undocumented exception, a stalled delivery loop, or a broken log line."""


# --- the network edges --------------------------------------------------------------------------------------


class _UnsentHttp(HttpOutput):
    """The real HTTP output (endpoint templating, body building, batching, oversized events) up to the
    request, which is not made: a fuzz loop must not open connections."""

    requests = 0

    async def start(self) -> None:
        # No ClientSession: nothing is sent. The request is the client's; everything before it is real.
        self._client.send = self._count  # type: ignore[method-assign]

    async def stop(self) -> None:
        pass

    async def _count(self, url: Any, body: bytes, count: int, sent: Any = None) -> None:
        self.requests += 1
        if sent is not None:
            sent()  # the body is "handed over": the output may prepare its next one, as it does for real


class _Message:
    def __init__(self, value: bytes) -> None:
        self._value = value

    def value(self) -> bytes:
        return self._value


class _StubProducer:
    """Stands in for confluent_kafka.Producer (a network client): every message is reported delivered."""

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int = -1,
        on_delivery: Any = None,
        callback: Any = None,
        timestamp: int = 0,
        headers: Any = None,
    ) -> None:
        """The real method's parameters, in its order: the output passes them by position."""
        on_delivery = on_delivery if on_delivery is not None else callback
        if not callable(on_delivery):
            raise TypeError(f"produce() got no delivery callback: {on_delivery!r}")
        if not isinstance(partition, int) or not isinstance(timestamp, int):
            raise TypeError(f"produce() got partition {partition!r}, timestamp {timestamp!r}")
        if not isinstance(topic, str) or not isinstance(value, bytes):
            raise TypeError(f"produce() got topic {type(topic).__name__}, value {type(value).__name__}")
        if key is not None and not isinstance(key, bytes):
            raise TypeError(f"produce() got a {type(key).__name__} key")
        for h, v in headers or ():
            if not isinstance(h, str) or not isinstance(v, bytes | str | None):
                raise TypeError(f"produce() got header {h!r}: {type(v).__name__}")
        on_delivery(None, _Message(value))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0

    def __len__(self) -> int:
        return 0


class _UnsentKafka(KafkaOutput):
    """The real Kafka output (value encoding, topic/key/header extraction, oversized events, the
    outcome of the reports) over a stub producer."""

    async def start(self) -> None:
        self._client._loop = asyncio.get_running_loop()
        self._client.producer = _StubProducer()  # type: ignore[assignment]

    async def stop(self) -> None:
        self._client.producer = None


class _Watched(Output):
    """The real output, with every write() counted and every undocumented exception noted (and raised
    on, so the delivery loop sees exactly what it would have seen)."""

    def __init__(self, inner: Output, violations: list[str]) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls = 0
        #: Writes of each chunk object since the last reset: the delivery loop retries the same object.
        self.attempts: dict[int, int] = {}
        #: The chunks counted, held so that a freed chunk's id() cannot be reused by a new one and counted
        #: as its retry (pieces of an isolated batch are short-lived chunk objects).
        self.seen: dict[int, Chunk] = {}
        self._violations = violations
        #: The file output's grouped syncs go through, so that the loop's written-not-synced path runs
        #: here too; the interval is real time (the fake clock never moves while the loop waits), short.
        self.defers_sync = inner.defers_sync
        self.sync_interval = min(inner.sync_interval, 0.001)
        self.syncs = 0

    async def start(self) -> None:
        await self.inner.start()

    async def sync(self) -> None:
        self.syncs += 1
        try:
            await self.inner.sync()
        except OUTPUT_ERRORS:
            raise
        except Exception as exc:
            self._violations.append(f"output {self.name}: sync() raised {_describe(exc)}")
            raise

    async def stop(self) -> None:
        await self.inner.stop()

    async def write(self, chunk: Chunk) -> None:
        self.calls += 1
        self.attempts[id(chunk)] = self.attempts.get(id(chunk), 0) + 1
        self.seen[id(chunk)] = chunk
        try:
            await self.inner.write(chunk)
        except OUTPUT_ERRORS:
            raise
        except Exception as exc:
            self._violations.append(f"output {self.name}: write() raised {_describe(exc)}")
            # Failed already. What the delivery loop would do next (log this exception with its traceback,
            # which for a RecursionError renders the locals of ~1000 frames for seconds, then retry it)
            # would only make the failing run slow: the loop is parked here until the pipeline is closed.
            await asyncio.Event().wait()
            raise


def _no_fsync(fd: int) -> None:
    """Grouped syncs without the disk: the harness checks files, not durability."""


class _WatchedFilter:
    """A configured filter, with any exception it raises noted (the router still handles it)."""

    def __init__(self, inner: Any, violations: list[str]) -> None:
        self.inner = inner
        self.name = inner.name
        self._violations = violations
        for hook in ("expire", "drain"):
            if hasattr(inner, hook):
                setattr(self, hook, getattr(inner, hook))

    def __call__(self, chunk: Chunk) -> Any:
        try:
            return self.inner(chunk)
        except ChunkRejected:
            raise
        except Exception as exc:
            self._violations.append(f"filter {self.name}: raised {_describe(exc)}")
            raise


def _describe(exc: BaseException) -> str:
    text = str(exc)
    where = traceback.extract_tb(exc.__traceback__)[-3:]
    frames = "; ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in where)
    return f"{type(exc).__name__}: {text[:160]!r} at {frames}"


# --- log lines ----------------------------------------------------------------------------------------------


class _JsonLines(io.RawIOBase):
    """Where JSON-mode log lines go: each must be one JSON object (the renderer's promise to shippers)."""

    def __init__(self, violations: list[str]) -> None:
        self._violations = violations
        self.lines = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        raw = bytes(data)
        for line in raw.splitlines():
            self.lines += 1
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                self._violations.append(f"log line is not JSON ({exc}): {line[:200]!r}")
                continue
            if not isinstance(obj, dict) or "event" not in obj:
                self._violations.append(f"log line without an event: {line[:200]!r}")
        return len(raw)


class _ConsoleLines(io.TextIOWrapper):
    """Where console-mode lines go: a text stream like sys.stderr (UTF-8, backslashreplace), not a TTY."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO(), encoding="utf-8", errors="backslashreplace", write_through=True)

    def isatty(self) -> bool:
        return False

    def write(self, s: str) -> int:
        n = super().write(s)
        buf = self.buffer
        assert isinstance(buf, io.BytesIO)
        if buf.tell() > 1 << 20:  # keep memory flat over a long fuzz run
            buf.seek(0)
            buf.truncate()
        return n


# --- the pipeline -------------------------------------------------------------------------------------------


class Pipeline:
    """See the module doc. Use as a context manager; :meth:`feed` one peer's bytes at a time."""

    def __init__(self, root: Path, *, log_format: str = "json", limits: Limits | None = None) -> None:
        self.root = root
        self.log_format = log_format
        self.limits = limits or Limits(
            max_frame_size=1 << 20, max_decompressed_size=4 << 20, max_option_size=4096
        )
        self.violations: list[str] = []
        self.now = 1_000.0
        self.loop = asyncio.new_event_loop()
        self._saved_log_config: dict[str, Any] | None = None
        self.config = parse_config(orjson.dumps(pipeline_config(root)).decode())
        self.fed = 0
        #: Set once a feed failed: the loops may be stuck on the poison, so closing does not wait for them.
        self.broken = False

    # -- set-up

    def __enter__(self) -> Pipeline:
        self._saved_log_config = structlog.get_config()
        if self.log_format == "json":
            configure_logging("debug", "json", stream=_JsonLines(self.violations))
        else:
            configure_logging("debug", "console", stream=_ConsoleLines())
        # forwardd caches a logger on first use; here it must not, so that the configuration of the rest
        # of the test session (structlog.testing.capture_logs in other tests) is not captured by ours.
        structlog.configure(cache_logger_on_first_use=False)
        self.loop.run_until_complete(self._build())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.broken:
                self.loop.run_until_complete(self._abandon())
            else:
                self.loop.run_until_complete(self._stop())
        finally:
            self.loop.close()
            if self._saved_log_config is not None:
                structlog.configure(**self._saved_log_config)

    async def _sleep(self, delay: float) -> None:
        """The delivery loops' back-off: instant, and the fake clock moves on by it."""
        self.now += max(delay, 0.0)
        await asyncio.sleep(0)

    def _clock(self) -> float:
        return self.now

    async def _build(self) -> None:
        cfg = self.config
        self.outputs: dict[str, _Watched] = {}
        self.sinks: dict[str, MemorySink] = {}
        for name, o in cfg.outputs.items():
            if name in _HTTP_OUTPUTS:
                inner: Output = _UnsentHttp.from_settings(name, o)  # type: ignore[arg-type]
            elif name in _KAFKA_OUTPUTS:
                inner = _UnsentKafka.from_settings(name, o)  # type: ignore[arg-type]
            else:
                inner = build_output(name, o)
                disk = getattr(inner, "_disk", None)
                if disk is not None:  # files, not durability, are under test here: no fsync
                    disk.fsync = False
                    disk.fsync_file = _no_fsync
            watched = _Watched(inner, self.violations)
            r = o.buffer.retry
            policy = RetryPolicy(
                initial=r.initial, max=r.max, multiplier=r.multiplier, jitter=r.jitter,
                max_attempts=r.max_attempts, max_age=r.max_age,
            )  # fmt: skip
            sink = MemorySink(
                name,
                watched,
                policy,
                str(self.root / "dead-letter" / name),
                clock=self._clock,
                sleep=self._sleep,
                rand=lambda: 0.5,
                drain_timeout=0.5,
                stop_timeout=0.5,
            )
            self.outputs[name] = watched
            self.sinks[name] = sink
        labels = {ROOT_LABEL: build_routes(cfg.routes)}
        for label, routes in cfg.labels.items():
            labels[label] = build_routes(routes)
        for routes in labels.values():
            for i, route in enumerate(routes):
                filters = tuple(_WatchedFilter(f, self.violations) for f in route.filters)
                routes[i] = type(route)(
                    matcher=route.matcher,
                    filters=filters,
                    outputs=route.outputs,
                    relabel=route.relabel,
                    continue_=route.continue_,
                )
        self.router = Router(labels, self.sinks, root_label=ROOT_LABEL)
        error_entry = self.router.entry("@ERROR")
        for name, sink in self.sinks.items():
            if name != "errors":
                sink.error_route = error_entry  # as forwardd.app.Daemon wires it
        self.ingest = self.router.entry(ROOT_LABEL)
        self.narrow = self.router.entry("@narrow")
        for sink in self.sinks.values():
            await sink.start()

    async def _abandon(self) -> None:
        tasks = [t for s in self.sinks.values() if (t := getattr(s, "_task", None)) is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _stop(self) -> None:
        for sink in self.sinks.values():
            try:
                await sink.stop()
            except Exception as exc:
                self.violations.append(f"sink {sink.name}: stop() raised {_describe(exc)}")

    def reset_files(self) -> None:
        """Delete the files the outputs and dead letters wrote so far (a long fuzz run would fill the disk).

        Files only: the file output remembers the folders it made, and one deleted behind its back is not
        made again (ENOENT, retried without end: a fault of its own, reported with issue 14's tests)."""
        for out in self.outputs.values():
            disk = getattr(out.inner, "_disk", None)
            if disk is not None:
                disk.close_all()
                disk.segments.clear()
        for sub in ("files", "dead-letter"):
            for path in (self.root / sub).rglob("*"):
                if path.is_file() or path.is_symlink():
                    path.unlink()

    # -- one peer

    def feed(self, reads: Iterable[bytes], *, json_mode: bool = False) -> None:
        """What one peer sends, cut into reads, through the whole path; raises Violation at the end if the
        property failed anywhere on the way."""
        self.fed += 1
        before = len(self.violations)
        conn = ServerConnection(
            limits=self.limits, clock_ns=lambda: 1_700_000_000_000_000_000, json_mode=json_mode
        )
        events: list[Any] = []
        error: ProtocolError | None = None
        try:
            for piece in reads:
                events.extend(conn.receive_data(piece))
        except ProtocolError as exc:
            events.extend(exc.events)
            error = exc
        except Exception as exc:
            self.violations.append(f"protocol core raised {_describe(exc)}")
        self.loop.run_until_complete(self._handle(events, error))
        if len(self.violations) > before:
            self.broken = True
            found = self.violations[before:]
            del self.violations[before:]
            raise Violation("\n".join(dict.fromkeys(found)))

    async def _handle(self, events: list[Any], error: ProtocolError | None) -> None:
        log = structlog.get_logger("forwardd.server")
        for ev in events:
            if type(ev) is EntriesReceived:
                chunk = ev.chunk
                await self._route(chunk)
                self._log(log.info, "pipeline.sample", tag=chunk.tag, **_sample(chunk))
            elif type(ev) is Rejected:
                self._log(log.warning, "chunk.rejected", listener="in", peer="127.0.0.1:1", tag=ev.tag,
                          reason=ev.reason, detail=ev.detail, size=ev.size)  # fmt: skip
            elif type(ev) is HandshakeFailed:
                self._log(
                    log.warning, "handshake.failed", listener="in", peer="127.0.0.1:1", reason=ev.reason
                )
        if error is not None:
            self._log(log.warning, "conn.protocol_error", listener="in", peer="127.0.0.1:1",
                      reason=error.reason, detail=error.detail)  # fmt: skip
        try:
            drained = self.router.drain()  # what docker_partial holds, as at a stop
            if drained is not None:
                await drained
        except ChunkRejected:
            pass
        except Exception as exc:
            self.violations.append(f"router drain raised {_describe(exc)}")
        await self._settle()
        for out in self.outputs.values():
            out.attempts.clear()
            out.seen.clear()
        for name, sink in self.sinks.items():  # the counters, as the daemon reports them (last_error too)
            self._log(log.info, "output.stats", output=name, **sink.stats.as_dict())

    async def _route(self, chunk: Chunk) -> None:
        for entry in (self.ingest, self.narrow):
            try:
                accepted = entry(chunk)
                if accepted is not None:
                    await accepted
            except ChunkRejected:
                pass
            except Exception as exc:
                self.violations.append(f"router raised {_describe(exc)} for tag {chunk.tag!r}")

    def _log(self, method: Any, event: str, **kw: Any) -> None:
        try:
            method(event, **kw)
        except Exception as exc:
            self.violations.append(f"log line {event!r} raised {_describe(exc)}")

    async def _settle(self) -> None:
        """Run the delivery loops until every queue is empty; a loop that is dead, stuck or retrying a
        chunk more than MAX_ATTEMPTS times is a violation."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30.0
        seen = len(self.violations)
        while True:
            if len(self.violations) > seen:
                return  # an output raised what it must not: failed already, no need to wait out its retries
            queued = {n: s.stats.queued_chunks for n, s in self.sinks.items() if s.stats.queued_chunks}
            if not queued:
                return
            for name, sink in self.sinks.items():
                task = getattr(sink, "_task", None)
                if task is not None and task.done() and name in queued:
                    exc = task.exception() if not task.cancelled() else None
                    why = _describe(exc) if exc is not None else "it ended"
                    self.violations.append(f"delivery loop of {name} died with {queued[name]} queued: {why}")
                    return
            over = {n: max(o.attempts.values()) for n, o in self.outputs.items() if o.attempts}
            over = {n: a for n, a in over.items() if a > MAX_ATTEMPTS}
            if over:
                self.violations.append(
                    f"a chunk was written more than {MAX_ATTEMPTS} times (attempts per output: {over}; "
                    "last errors: "
                    + ", ".join(f"{n}={self.sinks[n].stats.last_error!r:.300}" for n in over)
                    + ")"
                )
                return
            if loop.time() > deadline:
                self.violations.append(f"delivery stuck: {queued} still queued after 30 s")
                return
            await asyncio.sleep(0.0005 if any(n.startswith("file") or n == "errors" for n in queued) else 0)


def _sample(chunk: Chunk) -> dict[str, Any]:
    """A record key and value of the chunk, for a log line (what an invalid-entry sample would show)."""
    try:
        events = chunk.events()
    except Exception as exc:  # decoding is the protocol core's promise: it never raises
        return {"decode_error": f"{type(exc).__name__}: {exc}"}
    for ev in events[:1]:
        for k, v in list(ev.record.items())[:1]:
            return {"key": k, "value": v if not isinstance(v, dict | list) else "<container>"}
    return {}
