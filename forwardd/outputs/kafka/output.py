"""The Kafka output: one message per event, through librdkafka (confluent-kafka), at-least-once.

How a chunk is written: :meth:`KafkaOutput.write` hands every event's value to librdkafka
(``produce()``, non-blocking: it queues them) and waits until every one of its messages is reported
(:mod:`.producer`); the failures among the reports then decide each event's outcome (:mod:`.outcomes`,
which also says what write() raises). A full local queue waits for the poll thread to serve reports, then
produces the rest. Up to :attr:`KafkaOutput.concurrent_writes` writes are in flight at once.

Two ways to the values (:mod:`.messages`). When no record field is needed (no ``topic_key``,
``message_key`` or ``headers_from_record``), the chunk is encoded and produced :data:`SLICE` events at a
time: the C transcoder writes each slice's values straight from the chunk's msgpack bytes, librdkafka sends
the first slices while the next are encoded, and the event loop serves connections between slices (acks
wait behind a slice, not behind a 4 MiB batch). A record the transcoder declines sends the rest of the
chunk through the Python encoder; one that no encoder can write raises UnprocessableError, before anything
is produced if it is in the first slice, else as the cause of a PartialDelivery whose ``unsent`` is the
rest. Otherwise each event's record is decoded for its fields and each message goes out with its own
topic, key and headers. Measured end to end (bench/e2e_outputs.py, docs/kafka-output.md), the first way,
with reports that skip Python for delivered messages, took the output from 0.3-0.45x of a plain
confluent-kafka producer to parity.

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

from forwardd.errors import UnprocessableError
from forwardd.model import Chunk, Event
from forwardd.outputs.base import Output
from forwardd.outputs.kafka.messages import Values, key_bytes
from forwardd.outputs.kafka.outcomes import KafkaOutputStats, Produced, fail_retryable, settle
from forwardd.outputs.kafka.producer import KafkaClient, Reports, is_permanent, producer_config
from forwardd.outputs.kafka.settings import ClientTls, KafkaSettings, Sasl

__all__ = ["SLICE", "KafkaOutput"]

#: Events encoded and produced at a time before the event loop serves connections again: a merged batch
#: of 4 MiB is about 17k events, which produced at once would hold acks back for tens of milliseconds.
SLICE = 1000


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
        compression: str = "lz4",
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
        #: Whether each message needs fields of its record (then records are decoded, see the module doc).
        self._by_record = topic_key is not None or message_key is not None or bool(self.headers_from_record)
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
        if idempotent:
            # Idempotence promises the order of what was produced; writes retried beside later ones in
            # flight would give it up across batches. One write at a time keeps the promise whole.
            self.concurrent_writes = 1

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

    #: Writes the delivery loop may have in flight at once (Output.concurrent_writes): while one batch's
    #: messages are acknowledged the next is produced, and a batch of many tags (one write each) does not
    #: wait for a broker round trip per tag. Each write completes on its own (see :mod:`.producer`).
    concurrent_writes = 8

    async def write(self, chunk: Chunk) -> None:
        client = self._client
        if client.fatal is not None or client.producer is None:
            await client.reopen()  # a fatal error poisons the producer: start a fresh one
        reports = Reports()
        out = Produced()
        done, ref = client.completion(reports)
        client.producing += 1
        try:
            if self._by_record:
                records, values = self._messages.encode(chunk)
                out.count = len(values)
                await self._produce_each(records, values, reports, out)
            else:
                await self._produce_slices(chunk, reports, out)
        finally:
            client.producing -= 1
        failed, produced = reports.failed, reports.produced
        del reports  # the messages hold it until their last report: then `done` resolves
        if not out.count:
            return
        if produced:
            client.waiting.add(done)
            try:
                await asyncio.wait_for(asyncio.shield(done), self._report_timeout)
            except TimeoutError:
                fail_retryable(self.name, self._stats, "delivery reports did not arrive in time")
            finally:
                client.waiting.discard(done)
        del ref
        settle(
            self.name,
            self._stats,
            self.max_message_size,
            chunk,
            lambda: self._messages.of_chunk(chunk),
            failed,
            produced,
            out,
        )

    async def _produce_slices(self, chunk: Chunk, reports: Reports, out: Produced) -> None:
        """Every event's value to ``topic``, encoded and produced :data:`SLICE` at a time, the event loop
        served between slices (see the module doc). ``produce()`` takes its arguments by position: parsing
        keywords cost it more than half again per message."""
        client = self._client
        producer = client.producer
        assert producer is not None
        produce, poll = producer.produce, producer.poll
        topic = self.topic
        cb = reports
        hdrs = list(self.static_headers) or None
        limit = self.max_message_size
        slices = self._messages.slices(chunk, SLICE)
        while True:
            try:
                values = next(slices, None)
            except UnprocessableError as exc:
                if not out.count:
                    raise  # nothing produced: the whole chunk cannot be encoded as it is
                out.unsent += range(out.count, max(out.count, chunk.count))
                # Without its traceback: that holds this frame, and so the write's Reports, alive.
                out.cause = exc.with_traceback(None)
                out.count = max(out.count, chunk.count)
                return
            if values is None:
                return
            base = out.count
            n = len(values)
            out.count += n
            checked = max(map(len, values)) > limit
            j = 0
            while j < n:
                try:
                    if checked or hdrs is not None:
                        for v in values[j:] if j else values:
                            if checked and len(v) > limit:
                                out.oversized.append(base + j)
                            else:
                                produce(topic, v, None, -1, cb, None, 0, hdrs)
                                reports.produced += 1
                                out.sent_bytes += len(v)
                            j += 1
                    else:  # the hot loop: nothing to check per message
                        for v in values[j:] if j else values:
                            produce(topic, v, None, -1, cb)
                            j += 1
                        reports.produced += n
                        out.sent_bytes += sum(map(len, values))
                except BufferError:
                    if not checked and hdrs is None:  # the hot loop counts at its end: count what it did
                        checked = True  # (and go on with the counting loop for the rest of the slice)
                        done = values[:j]
                        reports.produced += len(done)
                        out.sent_bytes += sum(map(len, done))
                    if reports.failed and not all(is_permanent(e) for e, _ in reports.failed):
                        # Already failing (broker gone): waiting out every queue-full of the chunk would
                        # take message.timeout.ms each time. The rest is sent again later.
                        out.unsent += range(base + j, max(base + n, chunk.count))
                        out.count = max(base + n, chunk.count)
                        out.stop_reason = "local queue full while messages fail"
                        return
                    await client.wait_for_space()
                    if client.fatal is not None:
                        fail_retryable(self.name, self._stats, f"fatal producer error: {client.fatal}")
                except KafkaException as exc:
                    if not checked and hdrs is None:
                        checked = True
                        done = values[:j]
                        reports.produced += len(done)
                        out.sent_bytes += sum(map(len, done))
                    err = exc.args[0]
                    if not is_permanent(err):
                        out.unsent += range(base + j, max(base + n, chunk.count))
                        out.count = max(base + n, chunk.count)
                        out.stop_reason = f"produce failed: {err.name()}: {err.str()}"
                        return
                    out.local_rejects.append((base + j, f"{err.name()}: {err.str()}"))
                    j += 1
            # Serve the reports that came in meanwhile here, where the GIL is ours anyway: the poll thread
            # would take it from the loop once per report, and those left for the end of the write are
            # served while nothing else goes on.
            poll(0)
            await asyncio.sleep(0)  # let the event loop serve connections between slices
            if client.producer is not producer:  # another write replaced it after a fatal error
                fail_retryable(self.name, self._stats, f"producer replaced: {client.fatal or 'closed'}")

    async def _produce_each(
        self, records: list[dict[Any, Any]], values: list[bytes], reports: Reports, out: Produced
    ) -> None:
        """One ``produce()`` per message, with its topic, key and headers from its record."""
        client = self._client
        producer = client.producer
        assert producer is not None
        cb = reports
        produce = producer.produce
        topic_key, key_field = self.topic_key, self.message_key
        static, from_record = self.static_headers, self.headers_from_record
        hdrs: list[tuple[str, str | bytes | None]] | None = list(static) or None
        limit = self.max_message_size
        for i, value in enumerate(values):
            rec = records[i]
            topic = self.topic
            if topic_key is not None:
                t = rec.get(topic_key)
                if type(t) is str and t:
                    topic = t
            key = None if key_field is None else key_bytes(rec.get(key_field))
            if len(value) + (len(key) if key else 0) > limit:
                out.oversized.append(i)
                continue
            if from_record:
                hdrs = list(static)
                for h, field in from_record.items():
                    hv = key_bytes(rec.get(field))
                    if hv is not None:
                        hdrs.append((h, hv))
            while True:
                try:
                    produce(topic, value, key, -1, cb, None, 0, hdrs)
                except BufferError:
                    if reports.failed and not all(is_permanent(e) for e, _ in reports.failed):
                        # Already failing (broker gone): see _produce_slices.
                        out.unsent = list(range(i, len(values)))
                        out.stop_reason = "local queue full while messages fail"
                        return
                    await client.wait_for_space()
                    if client.fatal is not None:
                        fail_retryable(self.name, self._stats, f"fatal producer error: {client.fatal}")
                    continue
                except KafkaException as exc:
                    err = exc.args[0]
                    if not is_permanent(err):
                        out.unsent = list(range(i, len(values)))
                        out.stop_reason = f"produce failed: {err.name()}: {err.str()}"
                        return
                    out.local_rejects.append((i, f"{err.name()}: {err.str()}"))
                else:
                    reports.produced += 1
                    out.sent_bytes += len(value)
                break
