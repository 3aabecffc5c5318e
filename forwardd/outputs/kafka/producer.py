"""The Kafka output's librdkafka producer: its configuration, the thread that serves its delivery reports,
its client-level errors, and the bookkeeping of one write's reports.

Why librdkafka: it is the only Python client here whose idempotent producer works against every broker we
test with, it reports every message's fate, speaks every codec and TLS/SASL, and out-produces aiokafka's
per-record ``send()`` several times over (numbers and reasons: bench/kafka_bench.py and the docs).

Reports are served by a poll thread that owns ``Producer.poll`` (and by the writing coroutine between
slices, where the loop holds the GIL anyway). Only failures reach Python (``delivery.report.only.error``):
a message that was delivered costs no Python object and no call, and a failed one calls its write's
:class:`Reports` with its value. How a write learns that all of its messages are reported without a call
per message: its :class:`Reports` object is each message's callback, and the client library holds a
reference to it from ``produce()`` until that message's report is served. The write drops its own
reference once it has produced; the last report then frees the object, and a weak reference's callback
(:meth:`KafkaClient.completion`) wakes the write. So writes in flight at the same time (the delivery loop
begins the next batches while one is acknowledged) each complete on their own. A fatal error (idempotence
state lost) poisons the producer: :class:`KafkaClient` replaces it before the next write.

Compression is ``lz4`` unless configured otherwise: measured end to end (bench/e2e_outputs.py,
docs/kafka-output.md) it cost this process about 0.1-0.2 us of CPU per event and saved the broker 1.7 of
its 2.4 us, with a third of the delivery latency; every Kafka client and broker reads it.

librdkafka settings made here (``options`` override any of them): ``message.timeout.ms`` 30 s (the buffer
retries; a write must not hang for librdkafka's 5 minutes while the broker is down), ``linger.ms`` 5
(librdkafka's own default: measured end to end, 1 ms made smaller batches that cost the broker about
0.5 us more CPU per event, docs/kafka-output.md), ``message.max.bytes`` large enough for
``max_message_size``. The linger is at most 5 ms added to one write; the next writes go on meanwhile.
(Flushing at the end of each write was measured and dropped: with writes overlapping, it had librdkafka
send the next write's messages a few at a time, and the broker spent three times the CPU per event.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Producer

from forwardd.outputs.kafka.settings import ClientTls, Sasl

__all__ = ["KafkaClient", "Reports", "is_permanent", "producer_config"]

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
_DEFAULTS: dict[str, Any] = {"message.timeout.ms": 30_000, "linger.ms": 5, "log_level": 2}

#: Seconds between two log lines for the same client-level error code (a down broker repeats every second).
_ERROR_LOG_INTERVAL = 30.0


def is_permanent(err: KafkaError) -> bool:
    """Whether a message that failed with ``err`` can never be delivered as it is."""
    return err.code() in _PERMANENT and not err.retriable()


def producer_config(
    brokers: Sequence[str],
    *,
    compression: str = "lz4",
    required_acks: str = "all",
    idempotent: bool = False,
    max_message_size: int = 1024**2,
    tls: ClientTls | None = None,
    sasl: Sasl | None = None,
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


class Reports:
    """The callback of one write's messages: counts what was produced and keeps the failures. It lives as
    long as one of those messages is unreported (see the module doc); the poll thread, or the writing
    coroutine, appends to ``failed``. A delivered message is never seen here."""

    __slots__ = ("__weakref__", "failed", "produced")

    def __init__(self) -> None:
        self.produced = 0
        self.failed: list[tuple[KafkaError, bytes | None]] = []

    def __call__(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self.failed.append((err, msg.value()))


class KafkaClient:
    """One output's producer and the thread that serves its reports; replaced after a fatal error."""

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        self.name = name
        self.config = config
        self.producer: Producer | None = None
        #: Text of a fatal error of the current producer (it must be replaced), and of the last error.
        self.fatal: str | None = None
        self.last_error: str | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        self._logged: dict[int, float] = {}
        self._space: asyncio.Future[None] | None = None
        #: Writes producing now, and the completions of writes waiting for their last reports.
        self.producing = 0
        self.waiting: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reopening = asyncio.Lock()

    def open(self) -> None:
        """A producer and the thread that serves its reports; nothing connects until the first produce."""
        self._loop = asyncio.get_running_loop()
        conf = dict(self.config)
        conf["error_cb"] = self._on_error
        # Delivered messages skip the Python callback (completion is seen by the callback object going
        # away instead); a setting of the Python client, not of librdkafka, that the output relies on.
        conf["delivery.report.only.error"] = True
        conf["logger"] = logging.getLogger(f"forwardd.outputs.kafka.{self.name}")
        try:
            self.producer = Producer(conf)
        except KafkaException as exc:
            raise ValueError(f"kafka output {self.name!r}: {exc.args[0].str()}") from None
        self.fatal = None
        self._running = True
        self._thread = threading.Thread(
            target=self._poll_loop, args=(self.producer,), name=f"kafka-poll:{self.name}", daemon=True
        )
        self._thread.start()

    async def reopen(self) -> None:
        """A fresh producer in place of a poisoned (or closed) one; one at a time when writes overlap (the
        writes in flight on the old producer get its purge as their reports)."""
        async with self._reopening:
            if self.fatal is not None or self.producer is None:
                await self.close(0)
                self.open()

    def completion(self, reports: Reports) -> tuple[asyncio.Future[None], weakref.ref[Reports]]:
        """A future that resolves once ``reports`` is gone, i.e. every message produced with it as the
        callback is reported, and the weak reference that does it (keep it as long as the future)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def gone(_: weakref.ref[Reports]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_resolve, fut)

        return fut, weakref.ref(reports, gone)

    def _poll_loop(self, producer: Producer) -> None:
        while self._running:
            if producer.poll(0.1) and self._space is not None:
                self._wake(self._space)
            if self.waiting and not len(producer):
                # An empty queue means every write's messages are reported, whatever may still hold a
                # write's callback object (its completion is that object going away): wake them all.
                for fut in list(self.waiting):
                    self._wake(fut)

    def _wake(self, fut: asyncio.Future[None]) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_resolve, fut)

    def _on_error(self, err: KafkaError) -> None:
        """Client-level errors (poll thread): connection trouble is retried by librdkafka and shows up as
        message timeouts; a fatal one (idempotence state lost) means this producer must be replaced."""
        self.last_error = err.str()
        if err.fatal():
            self.fatal = err.str()
            log.error("kafka.fatal", output=self.name, error=err.str())
        else:
            now = time.monotonic()
            if now - self._logged.get(err.code(), -_ERROR_LOG_INTERVAL) >= _ERROR_LOG_INTERVAL:
                self._logged[err.code()] = now
                log.warning("kafka.client_error", output=self.name, error=err.str(), code=err.name())

    async def wait_for_space(self) -> None:
        """The local queue is full: wait until the poll thread served some reports (or a short while)."""
        fut = self._space
        if fut is None or fut.done():
            fut = self._space = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(fut), 0.5)
        except TimeoutError:
            pass

    async def close(self, flush_timeout: float) -> None:
        producer, thread = self.producer, self._thread
        self.producer = self._thread = None
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


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
