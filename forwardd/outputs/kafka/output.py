"""The Kafka output: one message per event, through librdkafka (confluent-kafka), at-least-once.

How a chunk is written: :meth:`KafkaOutput.write` encodes every event's value at once (:mod:`.messages`),
``produce()`` s each one (non-blocking: librdkafka queues it) and awaits one future that resolves when the
last delivery report of the chunk has come in (:mod:`.producer`); the reports then decide each event's
outcome (:mod:`.outcomes`, which also says what write() raises). A full local queue (``BufferError``)
waits for the poll thread to serve reports, then produces again. A record the format cannot encode raises
UnprocessableError before anything is produced.

Topic, key, partition, headers
    ``topic_key``: the record's value under that key (a non-empty string) is the topic, else ``topic``.
    ``message_key``: the record's value under that key is the message key (strings as UTF-8, numbers as
    text, bytes as is), none if absent; librdkafka's default partitioner then puts equal keys on the same
    partition (CRC32 of the key; keyless messages go to a random partition). Set ``options: {partitioner:
    murmur2_random}`` to place keys as Java clients do. ``headers`` are static; ``headers_from_record`` maps
    a header name to a record key (absent keys add no header). The message timestamp is the produce time
    (fluent-plugin-kafka's default), so time-based retention is not fooled by old buffered events.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaException, Producer

from forwardd.model import Chunk, Event
from forwardd.outputs.base import Output
from forwardd.outputs.kafka.messages import Values, key_bytes
from forwardd.outputs.kafka.outcomes import KafkaOutputStats, fail_retryable, settle
from forwardd.outputs.kafka.producer import KafkaClient, Reports, is_permanent, producer_config
from forwardd.outputs.kafka.settings import ClientTls, KafkaSettings, Sasl

__all__ = ["KafkaOutput"]


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
        tls: ClientTls | None = None,
        sasl: Sasl | None = None,
        options: Mapping[str, Any] | None = None,
        time_key: str | None = "time",
        tag_key: str | None = "tag",
        stop_timeout: float = 5.0,
    ) -> None:
        self._messages = Values(format, time_key, tag_key)
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
        self._stats = KafkaOutputStats()
        self._client = KafkaClient(name, self.config)

    @classmethod
    def from_settings(cls, name: str, settings: KafkaSettings) -> KafkaOutput:
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

    @property
    def stats(self) -> KafkaOutputStats:
        return self._stats.copy()

    @property
    def _producer(self) -> Producer | None:
        """The current librdkafka producer; None before start and after stop."""
        return self._client.producer

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._client.open()

    async def stop(self) -> None:
        # A write cut off by the stop left messages in librdkafka's queue; their chunks stay in the disk
        # buffer anyway, so the flush only spares duplicates: it gets what the stop's deadline leaves.
        timeout = self.stop_timeout
        if self.stop_deadline is not None:
            timeout = max(0.0, min(timeout, self.stop_deadline - time.monotonic()))
        await self._client.close(timeout)

    # --- encoding -----------------------------------------------------------------------------------------

    def _encode(self, chunk: Chunk) -> tuple[list[dict[Any, Any]], list[bytes]]:
        return self._messages.encode(chunk)

    def _values(self, events: list[Event], tag: str) -> list[bytes]:
        return self._messages.of_events(events, tag)

    # --- writing ------------------------------------------------------------------------------------------

    async def write(self, chunk: Chunk) -> None:
        client = self._client
        if client.fatal is not None or client.producer is None:
            await client.reopen()  # a fatal error poisons the producer: start a fresh one
        producer = client.producer
        assert producer is not None
        records, values = self._messages.encode(chunk)
        if not records:
            return
        reports = Reports(asyncio.get_running_loop())
        on_delivery = reports.on_delivery
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
                key = None if key_field is None else key_bytes(rec.get(key_field))
                if len(value) + (len(key) if key else 0) > limit:
                    oversized.append(i)
                    continue
                if from_record:
                    hdrs = list(static)
                    for h, field in from_record.items():
                        hv = key_bytes(rec.get(field))
                        if hv is not None:
                            hdrs.append((h, hv))
                while True:
                    try:
                        produce(topic, value, key, on_delivery=on_delivery, headers=hdrs)
                    except BufferError:
                        if reports.failed and not all(is_permanent(e) for e, _ in reports.failed):
                            # Already failing (broker gone): waiting out every queue-full of the chunk
                            # would take message.timeout.ms each time. The rest is sent again later.
                            stopped_at, stop_reason = i, "local queue full while messages fail"
                            break
                        await client.wait_for_space()
                        if client.fatal is not None:
                            fail_retryable(self.name, self._stats, f"fatal producer error: {client.fatal}")
                        continue
                    except KafkaException as exc:
                        err = exc.args[0]
                        if not is_permanent(err):
                            stopped_at, stop_reason = i, f"produce failed: {err.name()}: {err.str()}"
                            break
                        local_rejects.append((i, f"{err.name()}: {err.str()}"))
                    else:
                        reports.produced += 1
                        sent_bytes += len(value)
                    break
                if stopped_at is not None:
                    break
        finally:
            reports.seal()  # messages already produced are still reported; a later write() does not wait
        try:
            await asyncio.wait_for(asyncio.shield(reports.future), self._report_timeout)
        except TimeoutError:
            fail_retryable(self.name, self._stats, "delivery reports did not arrive in time")
        settle(
            self.name,
            self._stats,
            limit,
            chunk,
            values,
            reports,
            oversized,
            local_rejects,
            sent_bytes,
            stopped_at,
            stop_reason,
        )
