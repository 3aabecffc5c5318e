"""The Kafka output: one message per event, through librdkafka (confluent-kafka), at-least-once.

Why librdkafka: it is the only Python client here whose idempotent producer works against every broker we
test with, it reports every message's fate, speaks every codec and TLS/SASL, and out-produces aiokafka's
per-record ``send()`` several times over (numbers and reasons: bench/kafka_bench.py and the docs).

How a chunk is written
    :meth:`KafkaOutput.write` encodes every event of the chunk (one ``json_lines`` call for the whole chunk,
    split at newlines: orjson escapes newlines inside strings, so each line is one event), ``produce()`` s
    each one (non-blocking: librdkafka queues it) and awaits one future that resolves when the last delivery
    report of the chunk has come in. Reports are served by a poll thread that owns ``Producer.poll``; the
    per-message callback only counts, and wakes the event loop once per chunk (``call_soon_threadsafe``).
    A full local queue (``BufferError``) waits for the poll thread to serve reports, then produces again.

What write() raises (the :mod:`forwardd.outputs.base` contract, per chunk; every message has its own
delivery report, so every event has its own outcome)
    * returns: every event was acknowledged by the broker (with ``required_acks``).
    * :class:`~forwardd.errors.RetryableError`: no message got through, at least one failed retryably
      (broker down, message timed out, leader moving, not enough replicas, local queue purged), or the
      producer failed fatally or its reports did not come (then what happened is unknown): the whole chunk
      is written again later, at-least-once.
    * :class:`~forwardd.errors.PartialDelivery`: some messages were acknowledged and others failed
      retryably: ``unsent`` holds only the failed ones (and those never produced), ``rejected`` those
      refused for good, ``cause`` the RetryableError; the delivery loop re-sends only ``unsent``.
    * :class:`~forwardd.errors.RecordsRejected` (a ``PermanentError``) with ``rejected: Chunk``: every
      other event was delivered, and ``rejected`` holds only the events that can never be: larger than
      ``max_message_size`` (never sent), or refused by the broker for good (message too large, invalid
      topic name, record invalid, not authorised).
    * :class:`~forwardd.errors.UnprocessableError`: a record the format cannot encode (nothing produced).

Record format
    ``json`` (default): the JSON object of :func:`forwardd.outputs.formats.encode_json`: ``time`` (RFC 3339,
    nanoseconds) and ``tag`` injected first, then the record. ``msgpack``: a msgpack map of the same fields
    (time as the same RFC 3339 string). That is fluent-plugin-kafka's ``<format> @type msgpack`` (the record
    alone, msgpack-encoded) with its ``<inject>`` of time and tag turned on, so consumers see the same
    fields in either format; it is *not* the ``[time, record]`` forward entry.

Topic, key, partition, headers
    ``topic_key``: the record's value under that key (a non-empty string) is the topic, else ``topic``.
    ``message_key``: the record's value under that key is the message key (strings as UTF-8, numbers as
    text, bytes as is), none if absent; librdkafka's default partitioner then puts equal keys on the same
    partition (CRC32 of the key; keyless messages go to a random partition). Set ``options: {partitioner:
    murmur2_random}`` to place keys as Java clients do. ``headers`` are static; ``headers_from_record`` maps
    a header name to a record key (absent keys add no header). The message timestamp is the produce time
    (fluent-plugin-kafka's default), so time-based retention is not fooled by old buffered events.

librdkafka settings made here (``options`` override any of them): ``message.timeout.ms`` 30 s (the buffer
retries; a write must not hang for librdkafka's 5 minutes while the broker is down), ``linger.ms`` 1 (one
chunk is in flight at a time, so waiting for more messages only adds latency), ``message.max.bytes`` large
enough for ``max_message_size``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import orjson
import structlog
from confluent_kafka import KafkaError, KafkaException, Producer

from forwardd.config import schema as cfg
from forwardd.errors import PartialDelivery, RecordsRejected, RetryableError
from forwardd.model import Chunk, Event
from forwardd.outputs.base import Output
from forwardd.outputs.formats import json_lines, plain_json_lines, rfc3339_ns, unprocessable
from forwardd.pieces import ranges_of, select_events

__all__ = ["KafkaOutput", "KafkaOutputStats", "is_permanent", "producer_config"]

log = structlog.get_logger("forwardd.outputs.kafka")

#: Errors that trying again cannot fix, for the one message they concern. Everything else is retryable:
#: an error we do not know keeps the chunk in the buffer, where retries are bounded and end in dead-letter.
_PERMANENT = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.TOPIC_EXCEPTION,  # invalid topic name
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_TIMESTAMP,
        KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
        KafkaError.POLICY_VIOLATION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError._INVALID_ARG,
        KafkaError._BAD_MSG,
    }
)

# log_level 2: librdkafka's own error lines repeat what error_cb reports (which is throttled here).
_DEFAULTS: dict[str, Any] = {"message.timeout.ms": 30_000, "linger.ms": 1, "log_level": 2}
#: Seconds between two log lines for the same client-level error code (a down broker repeats every second).
_ERROR_LOG_INTERVAL = 30.0


def is_permanent(err: KafkaError) -> bool:
    """Whether a message that failed with ``err`` can never be delivered as it is."""
    return err.code() in _PERMANENT and not err.retriable()


@dataclass(slots=True)
class KafkaOutputStats:
    """Counters since start. Bytes are message values as sent (before compression)."""

    delivered_events: int = 0
    delivered_bytes: int = 0
    rejected_events: int = 0
    retryable_errors: int = 0
    permanent_errors: int = 0
    last_error: str | None = None


def producer_config(
    brokers: Sequence[str],
    *,
    compression: str = "none",
    required_acks: str = "all",
    idempotent: bool = False,
    max_message_size: int = 1024**2,
    tls: cfg.ClientTls | None = None,
    sasl: cfg.Sasl | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The librdkafka configuration for these settings (without callbacks); ``options`` win."""
    if idempotent and required_acks != "all":
        raise ValueError("idempotent: true needs required_acks: all (the idempotent producer requires it)")
    conf: dict[str, Any] = dict(_DEFAULTS)
    conf.update(
        {
            "bootstrap.servers": ",".join(brokers),
            "acks": "-1" if required_acks == "all" else required_acks,
            "compression.type": compression,
            "enable.idempotence": idempotent,
            # The broker-side default (1 MB) is what most clusters keep; never refuse locally what we allow.
            "message.max.bytes": max(1_000_000, max_message_size + 64 * 1024),
        }
    )
    if tls is not None:
        if tls.ca_file is not None:
            conf["ssl.ca.location"] = str(tls.ca_file)
        if tls.cert_file is not None:
            conf["ssl.certificate.location"] = str(tls.cert_file)
        if tls.key_file is not None:
            conf["ssl.key.location"] = str(tls.key_file)
        if not tls.verify:
            conf["enable.ssl.certificate.verification"] = False
            conf["ssl.endpoint.identification.algorithm"] = "none"
    if sasl is not None:
        conf["sasl.mechanism"] = sasl.mechanism
        conf["sasl.username"] = sasl.username
        conf["sasl.password"] = sasl.password
    conf["security.protocol"] = {
        (False, False): "plaintext",
        (True, False): "ssl",
        (False, True): "sasl_plaintext",
        (True, True): "sasl_ssl",
    }[(tls is not None, sasl is not None)]
    if options:
        conf.update(options)
    return conf


def _key_bytes(v: Any) -> bytes | None:
    """A record value as message key / header bytes; None (no key) for an absent or null value."""
    t = type(v)
    if t is str:
        return v.encode("utf-8", "surrogateescape")  # type: ignore[no-any-return]
    if t is bytes:
        return v  # type: ignore[no-any-return]
    if v is None:
        return None
    if t is int:
        return b"%d" % v
    try:  # floats, booleans (as JSON spells them), lists and maps
        return orjson.dumps(v, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=repr)
    except TypeError:  # surrogates or huge integers: a key need not be pretty, only stable
        pass
    try:
        return repr(v).encode("utf-8", "backslashreplace")
    except Exception:  # nested past repr's recursion limit: any stable key will do
        return t.__name__.encode()


class _Batch:
    """The delivery reports of one write(). Only the poll thread calls :meth:`on_delivery`; the loop thread
    sets ``produced`` then ``sealed``. Each side writes before it reads, so one of them sees the last report
    and wakes the loop (possibly both: finishing is idempotent)."""

    __slots__ = ("done", "failed", "future", "loop", "produced", "sealed")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.produced = 0
        self.sealed = False
        self.done = 0
        self.failed: list[tuple[KafkaError, bytes | None]] = []

    def on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self.failed.append((err, msg.value()))
        self.done += 1
        if self.sealed and self.done == self.produced:
            self.wake()

    def wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self.loop.call_soon_threadsafe(self._finish)

    def _finish(self) -> None:
        if not self.future.done():
            self.future.set_result(None)

    def seal(self) -> None:
        self.sealed = True
        if self.done == self.produced:
            self._finish()


class KafkaOutput(Output):
    """Writes each event as one Kafka message; see the module doc for what write() promises."""

    def __init__(
        self,
        *,
        name: str,
        brokers: Sequence[str],
        topic: str,
        topic_key: str | None = None,
        message_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        headers_from_record: Mapping[str, str] | None = None,
        compression: str = "none",
        required_acks: str = "all",
        idempotent: bool = False,
        max_message_size: int = 1024**2,
        format: str = "json",
        tls: cfg.ClientTls | None = None,
        sasl: cfg.Sasl | None = None,
        options: Mapping[str, Any] | None = None,
        time_key: str | None = "time",
        tag_key: str | None = "tag",
        stop_timeout: float = 5.0,
    ) -> None:
        if format not in ("json", "msgpack"):
            raise ValueError(f"unknown format {format!r}; expected json or msgpack")
        self.name = name
        self.topic = topic
        self.topic_key = topic_key
        self.message_key = message_key
        self.static_headers: list[tuple[str, str | bytes | None]] = [
            (k, v.encode()) for k, v in (headers or {}).items()
        ]
        self.headers_from_record = dict(headers_from_record or {})
        self.max_message_size = max_message_size
        self.format = format
        self.time_key = time_key
        self.tag_key = tag_key
        self.stop_timeout = stop_timeout
        self.config = producer_config(
            brokers,
            compression=compression,
            required_acks=required_acks,
            idempotent=idempotent,
            max_message_size=max_message_size,
            tls=tls,
            sasl=sasl,
            options=options,
        )
        timeout_ms = self.config.get("message.timeout.ms", self.config.get("delivery.timeout.ms", 300_000))
        #: librdkafka reports every message within message.timeout.ms; this is only a guard against a bug.
        self._report_timeout = float(timeout_ms) / 1000 + 30.0
        self.stats = KafkaOutputStats()
        self._producer: Producer | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        self._fatal: str | None = None
        self._last_error: str | None = None
        self._logged: dict[int, float] = {}
        self._space: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_settings(cls, name: str, settings: cfg.KafkaOutput) -> KafkaOutput:
        s = settings
        return cls(
            name=name,
            brokers=s.brokers,
            topic=s.topic,
            topic_key=s.topic_key,
            message_key=s.message_key,
            headers=s.headers,
            headers_from_record=s.headers_from_record,
            compression=s.compression,
            required_acks=s.required_acks,
            idempotent=s.idempotent,
            max_message_size=s.max_message_size,
            format=s.format,
            tls=s.tls,
            sasl=s.sasl,
            options=s.options,
        )

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._open()

    def _open(self) -> None:
        """A producer and the thread that serves its reports; nothing connects until the first produce."""
        conf = dict(self.config)
        conf["error_cb"] = self._on_error
        conf["logger"] = logging.getLogger(f"forwardd.outputs.kafka.{self.name}")
        try:
            self._producer = Producer(conf)
        except KafkaException as exc:
            raise ValueError(f"kafka output {self.name!r}: {exc.args[0].str()}") from None
        self._fatal = None
        self._running = True
        self._thread = threading.Thread(
            target=self._poll_loop, args=(self._producer,), name=f"kafka-poll:{self.name}", daemon=True
        )
        self._thread.start()

    def _poll_loop(self, producer: Producer) -> None:
        while self._running:
            if producer.poll(0.1) and self._space is not None:
                self._wake_space()

    def _wake_space(self) -> None:
        fut, loop = self._space, self._loop
        if fut is not None and loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, fut)

    def _on_error(self, err: KafkaError) -> None:
        """Client-level errors (poll thread): connection trouble is retried by librdkafka and shows up as
        message timeouts; a fatal one (idempotence state lost) means this producer must be replaced."""
        self._last_error = err.str()
        if err.fatal():
            self._fatal = err.str()
            log.error("kafka.fatal", output=self.name, error=err.str())
        else:
            now = time.monotonic()
            if now - self._logged.get(err.code(), -_ERROR_LOG_INTERVAL) >= _ERROR_LOG_INTERVAL:
                self._logged[err.code()] = now
                log.warning("kafka.client_error", output=self.name, error=err.str(), code=err.name())

    async def _close(self, flush_timeout: float) -> None:
        producer, thread = self._producer, self._thread
        self._producer = self._thread = None
        self._running = False
        if producer is None:
            return

        def finish() -> None:
            if thread is not None:
                thread.join()
            # What does not get out now stays in the disk buffer and is written again after a restart.
            producer.flush(flush_timeout)
            producer.purge()
            producer.poll(0)
            producer.close()

        await asyncio.get_running_loop().run_in_executor(None, finish)

    async def stop(self) -> None:
        await self._close(self.stop_timeout)

    # --- encoding -----------------------------------------------------------------------------------------

    @unprocessable
    def _encode(self, chunk: Chunk) -> tuple[list[dict[Any, Any]], list[bytes]]:
        """Each event's record and message value; a plain chunk's JSON values come from one bulk encode."""
        plain = chunk.plain_entries() if self.format == "json" else None
        if plain is not None:
            values = plain_json_lines(plain, chunk.tag, time_key=self.time_key, tag_key=self.tag_key)
            lines = values.split(b"\n")
            lines.pop()  # after the last newline
            return plain.records, lines
        events = chunk.events()
        return [ev.record for ev in events], self._values(events, chunk.tag)

    def _values(self, events: list[Event], tag: str) -> list[bytes]:
        if self.format == "json":
            values = json_lines(events, tag, time_key=self.time_key, tag_key=self.tag_key).split(b"\n")
            values.pop()  # after the last newline
            return values
        packb = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape", default=_mp_default).pack
        tk, gk = self.time_key, self.tag_key
        out = []
        for ev in events:
            d: dict[Any, Any] = {}
            if tk is not None:
                d[tk] = rfc3339_ns(ev.time_ns)
            if gk is not None:
                d[gk] = tag
            d.update(ev.record)
            if tk is not None:  # the injected values win, in first place (as the JSON format)
                d[tk] = rfc3339_ns(ev.time_ns)
            if gk is not None:
                d[gk] = tag
            out.append(packb(d))
        return out

    # --- writing ------------------------------------------------------------------------------------------

    async def write(self, chunk: Chunk) -> None:
        if self._fatal is not None or self._producer is None:
            await self._close(0)  # a fatal error poisons the producer: start a fresh one
            self._loop = asyncio.get_running_loop()
            self._open()
        producer = self._producer
        assert producer is not None
        records, values = self._encode(chunk)
        if not records:
            return
        batch = _Batch(asyncio.get_running_loop())
        on_delivery = batch.on_delivery
        produce = producer.produce
        topic_key, key_field = self.topic_key, self.message_key
        static, from_record = self.static_headers, self.headers_from_record
        hdrs: list[tuple[str, str | bytes | None]] | None = list(static) or None
        limit = self.max_message_size
        oversized: list[int] = []
        local_rejects: list[tuple[int, str]] = []
        sent_bytes = 0
        stopped_at: int | None = None  # the first event not produced when producing had to stop
        stop_reason = ""
        try:
            for i, rec in enumerate(records):
                value = values[i]
                topic = self.topic
                if topic_key is not None:
                    t = rec.get(topic_key)
                    if type(t) is str and t:
                        topic = t
                key = None if key_field is None else _key_bytes(rec.get(key_field))
                if len(value) + (len(key) if key else 0) > limit:
                    oversized.append(i)
                    continue
                if from_record:
                    hdrs = list(static)
                    for h, field in from_record.items():
                        hv = _key_bytes(rec.get(field))
                        if hv is not None:
                            hdrs.append((h, hv))
                while True:
                    try:
                        produce(topic, value, key, on_delivery=on_delivery, headers=hdrs)
                    except BufferError:
                        if batch.failed and not all(is_permanent(e) for e, _ in batch.failed):
                            # Already failing (broker gone): waiting out every queue-full of the chunk
                            # would take message.timeout.ms each time. The rest is sent again later.
                            stopped_at, stop_reason = i, "local queue full while messages fail"
                            break
                        await self._wait_for_space()
                        continue
                    except KafkaException as exc:
                        err = exc.args[0]
                        if not is_permanent(err):
                            stopped_at, stop_reason = i, f"produce failed: {err.name()}: {err.str()}"
                            break
                        local_rejects.append((i, f"{err.name()}: {err.str()}"))
                    else:
                        batch.produced += 1
                        sent_bytes += len(value)
                    break
                if stopped_at is not None:
                    break
        finally:
            batch.seal()  # messages already produced are still reported; a later write() does not wait
        try:
            await asyncio.wait_for(asyncio.shield(batch.future), self._report_timeout)
        except TimeoutError:
            self._fail_retryable("delivery reports did not arrive in time")
        self._settle(chunk, values, batch, oversized, local_rejects, sent_bytes, stopped_at, stop_reason)

    async def _wait_for_space(self) -> None:
        """The local queue is full: wait until the poll thread served some reports (or a short while)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._space = fut
        try:
            await asyncio.wait_for(fut, 0.5)
        except TimeoutError:
            pass
        finally:
            self._space = None
        if self._fatal is not None:
            self._fail_retryable(f"fatal producer error: {self._fatal}")

    def _fail_retryable(self, why: str) -> None:
        self.stats.retryable_errors += 1
        self.stats.last_error = why
        raise RetryableError(f"kafka output {self.name!r}: {why}")

    def _settle(
        self,
        chunk: Chunk,
        values: list[bytes],
        batch: _Batch,
        oversized: list[int],
        local_rejects: list[tuple[int, str]],
        sent_bytes: int,
        stopped_at: int | None,
        stop_reason: str,
    ) -> None:
        """Turn the reports of one write into the contract's outcome: each event is delivered, rejected
        for good, or unsent (failed retryably, or never produced); see the module doc."""
        n = len(values)
        rejected = list(oversized) + [i for i, _ in local_rejects]
        unsent: list[int] = [] if stopped_at is None else list(range(stopped_at, n))
        reasons = [f"{len(oversized)} larger than {self.max_message_size} bytes"] if oversized else []
        reasons += [why for _, why in local_rejects[:1]]
        retry_reasons = [stop_reason] if stop_reason else []
        if batch.failed:
            # Find the failed messages' events by value among those produced; equal values are equal
            # events, any one will do. Only a failure pays for this.
            skip = set(rejected)
            by_value: dict[bytes, list[int]] = {}
            for i in range(n if stopped_at is None else stopped_at):
                if i not in skip:
                    by_value.setdefault(values[i], []).append(i)
            permanent = [(e, v) for e, v in batch.failed if is_permanent(e)]
            retryable = [(e, v) for e, v in batch.failed if not is_permanent(e)]
            for failed, into in ((permanent, rejected), (retryable, unsent)):
                for _, fv in failed:
                    idx = by_value.get(fv or b"")
                    if idx:
                        into.append(idx.pop())
                        sent_bytes -= len(fv or b"")
            if permanent:
                e = permanent[0][0]
                reasons.append(f"{len(permanent)} refused by the broker, e.g. {e.name()}: {e.str()}")
            if retryable:
                e = retryable[0][0]
                retry_reasons.append(
                    f"{len(retryable)} of {batch.produced} messages failed, e.g. {e.name()}: {e.str()}"
                )
        delivered = batch.produced - len(batch.failed)
        self.stats.delivered_events += delivered
        self.stats.delivered_bytes += sent_bytes
        rejection: RecordsRejected | None = None
        if rejected:
            rejected.sort()
            self.stats.rejected_events += len(rejected)
            self.stats.permanent_errors += 1
            why = "; ".join(reasons)
            self.stats.last_error = why
            rejection = RecordsRejected(
                f"kafka output {self.name!r}: {len(rejected)} of {n} events rejected ({why})",
                select_events(chunk, ranges_of(rejected), n),
            )
        if unsent:
            unsent.sort()
            if not delivered and not rejected:
                self._fail_retryable("; ".join(retry_reasons))  # nothing got through: all again
            self.stats.retryable_errors += 1
            cause = RetryableError(f"kafka output {self.name!r}: {'; '.join(retry_reasons)}")
            self.stats.last_error = str(cause)
            raise PartialDelivery(
                f"kafka output {self.name!r}: {delivered} of {n} events delivered, {len(rejected)} "
                f"rejected, {len(unsent)} to send again ({'; '.join(retry_reasons)})",
                delivered=delivered,
                rejected=rejection.rejected if rejection is not None else None,
                rejection=rejection,
                unsent=select_events(chunk, ranges_of(unsent), n),
                cause=cause,
            )
        if rejection is not None:
            raise rejection


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _mp_default(obj: Any) -> Any:
    from forwardd.model import EventTime

    if type(obj) is EventTime:
        return obj.to_ext()
    raise TypeError(f"cannot encode {type(obj).__name__} as msgpack")
