"""The Kafka output: one message per event, through librdkafka (confluent-kafka), at-least-once.

How a chunk is written: :meth:`KafkaOutput.write` encodes every event's value at once (:mod:`.messages`),
hands them to librdkafka (non-blocking: it queues them) and waits until the producer's queue is drained,
every message reported (:mod:`.producer`); the failures among the reports then decide each event's outcome
(:mod:`.outcomes`, which also says what write() raises). A full local queue waits for the poll thread to
serve reports, then produces the rest. A record the format cannot encode raises UnprocessableError before
anything is produced.

Two ways to librdkafka. When no record field is needed (no ``topic_key``, ``message_key``,
``headers_from_record``) and no static ``headers`` are set, the values go in one ``produce_batch`` call per
chunk (the client library's C loop over the messages, one small dict each) from the JSON lines the C
transcoder writes straight from the chunk's bytes: measured end to end, this and reports that skip
Python for delivered messages took the output from 0.35-0.45x of a plain confluent-kafka producer to
parity (bench/e2e_outputs.py, docs/kafka-output.md). Otherwise each event's record is decoded for its
fields and each message goes through ``produce()`` with its own topic, key and headers.

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

from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from forwardd.model import Chunk, Event
from forwardd.outputs.base import Output
from forwardd.outputs.kafka.messages import Values, key_bytes
from forwardd.outputs.kafka.outcomes import KafkaOutputStats, fail_retryable, settle
from forwardd.outputs.kafka.producer import KafkaClient, Reports, is_permanent, producer_config
from forwardd.outputs.kafka.settings import KafkaSettings, SaslLogin, TlsFiles

__all__ = ["BATCH_CALL", "KafkaOutput"]

#: Messages handed to librdkafka per ``produce_batch`` call: one call's cost is spread over many messages,
#: and a call refused in part by a full local queue is looked through quickly.
BATCH_CALL = 1000


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
        tls: TlsFiles | None = None,
        sasl: SaslLogin | None = None,
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
        await self._client.close(self.stop_timeout)

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
        records: list[dict[Any, Any]] | None = None
        if self._by_record:
            records, values = self._messages.encode(chunk)
        else:
            values = self._messages.of_chunk(chunk)
        if not values:
            return
        reports = Reports()
        out = _Outcome()
        if records is None and not self.static_headers:
            await self._produce_batch(values, reports, out)
        else:
            await self._produce_each(records, values, reports, out)
        if not await client.drained(self._report_timeout):
            fail_retryable(self.name, self._stats, "delivery reports did not arrive in time")
        settle(
            self.name,
            self._stats,
            self.max_message_size,
            chunk,
            values,
            reports,
            out.oversized,
            out.local_rejects,
            out.sent_bytes,
            out.unsent,
            out.stop_reason,
        )

    async def _produce_batch(self, values: list[bytes], reports: Reports, out: _Outcome) -> None:
        """Every value to ``topic`` through ``produce_batch``, :data:`BATCH_CALL` messages a call; when the
        local queue is full, the rest goes once the poll thread has served some reports."""
        client = self._client
        producer = client.producer
        assert producer is not None
        limit = self.max_message_size
        index: list[int] | None = None  # the event of each message; None: message i is event i
        messages: list[dict[str, Any]]
        if max(map(len, values)) > limit:
            index = [i for i, v in enumerate(values) if len(v) <= limit]
            out.oversized = [i for i, v in enumerate(values) if len(v) > limit]
            messages = [{"value": values[i]} for i in index]
        else:
            messages = [{"value": v} for v in values]
        topic = self.topic
        on_delivery = reports.on_delivery
        produce_batch = producer.produce_batch
        pos, n = 0, len(messages)
        while pos < n:
            part = messages[pos : pos + BATCH_CALL]
            good = produce_batch(topic, part, on_delivery=on_delivery)
            if good == len(part):
                reports.produced += good
                out.sent_bytes += sum(len(m["value"]) for m in part)
                pos += good
                continue
            full: list[int] = []  # positions in ``messages`` the full local queue refused
            for j, m in enumerate(part, pos):
                err = m.pop("_error", None)
                i = j if index is None else index[j]
                if err is None:
                    reports.produced += 1
                    out.sent_bytes += len(m["value"])
                elif err.code() == KafkaError._QUEUE_FULL:
                    full.append(j)
                elif is_permanent(err):
                    out.local_rejects.append((i, f"{err.name()}: {err.str()}"))
                else:
                    out.unsent.append(i)
                    out.stop_reason = out.stop_reason or f"produce failed: {err.name()}: {err.str()}"
            rest = full + list(range(pos + len(part), n))  # what is still to produce, in order
            if not rest:
                return
            if out.unsent or (reports.failed and not all(is_permanent(e) for e, _ in reports.failed)):
                # Already failing (broker gone): waiting out every queue-full of the chunk would take
                # message.timeout.ms each time. The rest is sent again later.
                out.unsent += rest if index is None else [index[j] for j in rest]
                out.stop_reason = out.stop_reason or "local queue full while messages fail"
                return
            index = rest if index is None else [index[j] for j in rest]
            messages = [messages[j] for j in rest]
            pos, n = 0, len(messages)
            await client.wait_for_space()
            if client.fatal is not None:
                fail_retryable(self.name, self._stats, f"fatal producer error: {client.fatal}")

    async def _produce_each(
        self, records: list[dict[Any, Any]] | None, values: list[bytes], reports: Reports, out: _Outcome
    ) -> None:
        """One ``produce()`` per message, with its topic, key and headers from its record."""
        client = self._client
        producer = client.producer
        assert producer is not None
        on_delivery = reports.on_delivery
        produce = producer.produce
        topic_key, key_field = self.topic_key, self.message_key
        static, from_record = self.static_headers, self.headers_from_record
        hdrs: list[tuple[str, str | bytes | None]] | None = list(static) or None
        limit = self.max_message_size
        rec: dict[Any, Any] = {}
        for i, value in enumerate(values):
            topic = self.topic
            key = None
            if records is not None:
                rec = records[i]
                if topic_key is not None:
                    t = rec.get(topic_key)
                    if type(t) is str and t:
                        topic = t
                if key_field is not None:
                    key = key_bytes(rec.get(key_field))
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
                    produce(topic, value, key, on_delivery=on_delivery, headers=hdrs)
                except BufferError:
                    if reports.failed and not all(is_permanent(e) for e, _ in reports.failed):
                        # Already failing (broker gone): see _produce_batch.
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


class _Outcome:
    """What producing one write's messages left to settle besides the reports: events never produced, by
    why (too large; refused by librdkafka for good; not sent because producing had to stop)."""

    __slots__ = ("local_rejects", "oversized", "sent_bytes", "stop_reason", "unsent")

    def __init__(self) -> None:
        self.oversized: list[int] = []
        self.local_rejects: list[tuple[int, str]] = []
        self.unsent: list[int] = []
        self.stop_reason = ""
        self.sent_bytes = 0
