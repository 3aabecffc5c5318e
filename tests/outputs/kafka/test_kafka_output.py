"""KafkaOutput against a real Kafka-protocol broker: what arrives, where, and what write() raises."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pytest
from confluent_kafka import Producer
from hypothesis import given, settings
from hypothesis import strategies as st

from forwardd.app import parse_config
from forwardd.errors import (
    PartialDelivery,
    PermanentError,
    RecordsRejected,
    RetryableError,
    UnprocessableError,
)
from forwardd.model import Chunk, Event, pack_entries
from forwardd.outputs.formats import rfc3339_ns
from forwardd.outputs.kafka import KafkaOutput, producer_config
from forwardd.outputs.kafka.output import SLICE
from forwardd.outputs.kafka.settings import ClientTls, Sasl

from .conftest import Broker, consume, free_port

pytestmark = pytest.mark.kafka

T0 = 1_700_000_000_123_456_789


def make_chunk(records: list[dict[str, Any]], tag: str = "app.web") -> Chunk:
    """A chunk as the buffer hands it over: entries only, not yet decoded."""
    entries, n = pack_entries(Event(T0 + i, r) for i, r in enumerate(records))
    return Chunk(tag, entries, n, T0)


def expected_json(i: int, record: dict[str, Any], tag: str = "app.web") -> dict[str, Any]:
    return {"time": rfc3339_ns(T0 + i), "tag": tag, **record}


async def started(**kw: Any) -> KafkaOutput:
    out = KafkaOutput(name="kafka-test", **kw)
    await out.start()
    return out


async def test_every_event_arrives_with_key_and_headers(kafka_broker: Broker, topic: str) -> None:
    records = [{"user": f"u{i % 7}", "host": f"h{i % 3}", "n": i, "msg": "a\nb"} for i in range(300)]
    records[5].pop("host")  # no header from an absent key
    out = await started(
        brokers=[kafka_broker.bootstrap], topic=topic, message_key="user",
        headers={"env": "test"}, headers_from_record={"x-host": "host"},
    )  # fmt: skip
    try:
        await out.write(make_chunk(records))
    finally:
        await out.stop()
    got = consume(kafka_broker.bootstrap, topic, 300)
    values = {orjson.loads(r.value)["n"]: r for r in got}
    assert sorted(values) == list(range(300))
    partitions_of_key: dict[bytes | None, set[int]] = {}
    for i, rec in enumerate(records):
        r = values[i]
        assert orjson.loads(r.value) == expected_json(i, rec)
        assert r.key == rec["user"].encode()
        want = [("env", b"test")] + ([("x-host", rec["host"].encode())] if "host" in rec else [])
        assert r.headers == want
        partitions_of_key.setdefault(r.key, set()).add(r.partition)
    # Keyed partitioning: every key on one partition, and the keys spread over more than one.
    assert all(len(p) == 1 for p in partitions_of_key.values())
    assert len(set().union(*partitions_of_key.values())) > 1
    assert out.stats.delivered_events == 300
    assert out.stats.delivered_bytes == sum(len(r.value) for r in got)


async def test_topic_from_record_key_with_default(kafka_broker: Broker, topic: str) -> None:
    other = topic + "-other"
    records: list[dict[str, Any]] = [
        {"n": 0, "dest": other},
        {"n": 1},  # absent: default topic
        {"n": 2, "dest": ""},  # empty: default
        {"n": 3, "dest": 42},  # not a string: default
        {"n": 4, "dest": other},
    ]
    out = await started(brokers=[kafka_broker.bootstrap], topic=topic, topic_key="dest")
    try:
        await out.write(make_chunk(records))
    finally:
        await out.stop()
    on_default = sorted(orjson.loads(r.value)["n"] for r in consume(kafka_broker.bootstrap, topic, 3))
    on_other = sorted(orjson.loads(r.value)["n"] for r in consume(kafka_broker.bootstrap, other, 2))
    assert (on_default, on_other) == ([1, 2, 3], [0, 4])


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
async def test_compression(kafka_broker: Broker, topic: str, codec: str) -> None:
    records = [{"n": i, "log": "x" * 200} for i in range(200)]
    out = await started(brokers=[kafka_broker.bootstrap], topic=topic, compression=codec)
    try:
        assert out.config["compression.type"] == codec
        await out.write(make_chunk(records))
    finally:
        await out.stop()
    got = consume(kafka_broker.bootstrap, topic, 200)
    assert sorted(orjson.loads(r.value)["n"] for r in got) == list(range(200))


async def test_msgpack_format(kafka_broker: Broker, topic: str) -> None:
    records = [{"n": i, "b": b"\x00\xff", "nested": {"k": [1, 2]}, "tag": "record's own"} for i in range(50)]
    out = await started(brokers=[kafka_broker.bootstrap], topic=topic, format="msgpack")
    try:
        await out.write(make_chunk(records, tag="mp"))
    finally:
        await out.stop()
    got = [msgpack.unpackb(r.value, raw=False) for r in consume(kafka_broker.bootstrap, topic, 50)]
    got.sort(key=lambda d: d["n"])
    # The same fields as JSON, injected first and winning over the record's own "tag".
    assert got == [{**records[i], "time": rfc3339_ns(T0 + i), "tag": "mp"} for i in range(50)]
    assert all(list(d)[:2] == ["time", "tag"] for d in got)


async def test_oversized_record_rejected_alone(kafka_broker: Broker, topic: str) -> None:
    records: list[dict[str, Any]] = [{"n": i} for i in range(20)]
    records[7] = {"n": 7, "log": "x" * 2000}
    out = await started(brokers=[kafka_broker.bootstrap], topic=topic, max_message_size=1000)
    try:
        with pytest.raises(RecordsRejected) as info:
            await out.write(make_chunk(records))
    finally:
        await out.stop()
    assert isinstance(info.value, PermanentError)
    rejected = info.value.rejected
    assert (rejected.tag, rejected.count) == ("app.web", 1)
    assert [(e.time_ns, e.record) for e in rejected.events()] == [(T0 + 7, records[7])]
    got = consume(kafka_broker.bootstrap, topic, 19)
    assert sorted(orjson.loads(r.value)["n"] for r in got) == [i for i in range(20) if i != 7]
    assert (out.stats.delivered_events, out.stats.rejected_events) == (19, 1)


async def test_records_librdkafka_refuses_are_rejected_alone_on_the_batch_path(
    kafka_broker: Broker, topic: str
) -> None:
    """No record field configured: the values go through produce_batch, where librdkafka refuses a message
    over its message.max.bytes in that message's own error, not by raising for the call."""
    records: list[dict[str, Any]] = [{"n": i} for i in range(3000)]
    for i in (5, 1500, 2999):  # in the first, a middle and the last produce_batch call
        records[i]["log"] = "x" * 5000
    out = await started(brokers=[kafka_broker.bootstrap], topic=topic, options={"message.max.bytes": 4000})
    try:
        with pytest.raises(RecordsRejected, match="MSG_SIZE_TOO_LARGE") as info:
            await out.write(make_chunk(records))
    finally:
        await out.stop()
    assert [e.record["n"] for e in info.value.rejected.events()] == [5, 1500, 2999]
    got = consume(kafka_broker.bootstrap, topic, 2997)
    assert sorted(orjson.loads(r.value)["n"] for r in got) == [
        i for i in range(3000) if i not in (5, 1500, 2999)
    ]
    assert (out.stats.delivered_events, out.stats.rejected_events) == (2997, 3)


async def test_an_encoding_error_after_the_first_slice_keeps_what_went_out(
    kafka_broker: Broker, topic: str
) -> None:
    """Values go out a slice at a time: when a record no format can write comes after the first slice,
    what was produced is delivered and reported, and only the rest goes back, with the encoding error."""
    deep: Any = "x"
    for _ in range(600):
        deep = [deep]
    records: list[dict[str, Any]] = [{"n": i} for i in range(2500)]
    records[1500]["log"] = deep
    out = await started(brokers=[kafka_broker.bootstrap], topic=topic)
    try:
        with pytest.raises(PartialDelivery) as info:
            await out.write(make_chunk(records))
    finally:
        await out.stop()
    err = info.value
    assert isinstance(err.cause, UnprocessableError)
    assert err.rejected is None
    assert err.delivered == SLICE
    assert err.unsent is not None
    assert [e.record["n"] for e in err.unsent.events()] == list(range(SLICE, 2500))
    got = consume(kafka_broker.bootstrap, topic, SLICE)
    assert sorted(orjson.loads(r.value)["n"] for r in got) == list(range(SLICE))


async def test_broker_refused_records_rejected_alone(kafka_broker: Broker, topic: str) -> None:
    """Invalid topic names (from a record key) are refused by the broker in the delivery report: only those
    events are rejected, the others are delivered."""
    records: list[dict[str, Any]] = [{"n": i} for i in range(10)]
    records[2]["dest"] = "bad topic!"
    records[6]["dest"] = "x" * 300
    out = await started(brokers=[kafka_broker.bootstrap], topic=topic, topic_key="dest")
    try:
        with pytest.raises(RecordsRejected, match="TOPIC_EXCEPTION") as info:
            await out.write(make_chunk(records))
    finally:
        await out.stop()
    assert [e.record for e in info.value.rejected.events()] == [records[2], records[6]]
    got = consume(kafka_broker.bootstrap, topic, 8)
    assert sorted(orjson.loads(r.value)["n"] for r in got) == [0, 1, 3, 4, 5, 7, 8, 9]


async def test_full_local_queue_waits_and_delivers_all(kafka_broker: Broker, topic: str) -> None:
    """A chunk larger than librdkafka's local queue: produce() raises BufferError, write() waits for
    reports and goes on."""
    out = await started(
        brokers=[kafka_broker.bootstrap], topic=topic, options={"queue.buffering.max.messages": 20}
    )
    try:
        await out.write(make_chunk([{"n": i} for i in range(500)]))
    finally:
        await out.stop()
    got = consume(kafka_broker.bootstrap, topic, 500)
    assert sorted(orjson.loads(r.value)["n"] for r in got) == list(range(500))


async def test_idempotent_producer(kafka_broker: Broker, topic: str) -> None:
    out = await started(brokers=[kafka_broker.bootstrap], topic=topic, idempotent=True)
    try:
        assert out.config["enable.idempotence"] is True
        # Order across batches: the delivery loop hands an idempotent producer one write at a time.
        assert out.concurrent_writes == 1
        for c in range(3):
            await out.write(make_chunk([{"n": c * 100 + i} for i in range(100)]))
    finally:
        await out.stop()
    got = consume(kafka_broker.bootstrap, topic, 300)
    assert sorted(orjson.loads(r.value)["n"] for r in got) == list(range(300))


async def test_dead_broker_is_retryable_then_nothing_lost(tmp_path: Path, own_broker: Broker) -> None:
    """Nothing listens: write() fails retryably within message.timeout.ms; once the broker is up, writing
    the same chunk again (as the delivery loop does) delivers every event."""
    records = [{"n": i} for i in range(100)]
    chunk = make_chunk(records)
    out = await started(brokers=[own_broker.bootstrap], topic="dead", options={"message.timeout.ms": 1000})
    try:
        t = time.monotonic()
        with pytest.raises(RetryableError):
            await out.write(chunk)
        assert time.monotonic() - t < 10
        assert out.stats.retryable_errors == 1
        own_broker.start()
        await out.write(chunk)
    finally:
        await out.stop()
    got = consume(own_broker.bootstrap, "dead", 100)
    assert sorted(orjson.loads(r.value)["n"] for r in got) == list(range(100))


async def test_broker_killed_while_writing_is_retryable(own_broker: Broker) -> None:
    """A local queue of 500 messages makes the 20k-event write yield while it produces, so the broker
    dies in the middle of it, whatever the machine's speed. What the broker acknowledged before it died is
    not written again (PartialDelivery), and this broker forgets everything when killed, so afterwards the
    topic holds exactly what was still to be sent."""
    own_broker.start()
    out = await started(
        brokers=[own_broker.bootstrap], topic="killed",
        options={"message.timeout.ms": 1000, "queue.buffering.max.messages": 500},
    )  # fmt: skip
    try:
        await out.write(make_chunk([{"n": -1}]))  # connected, topic known
        big = make_chunk([{"n": i, "log": "y" * 200} for i in range(20_000)])
        task = asyncio.create_task(out.write(big))
        await asyncio.sleep(0)  # one step of the write: it produces until the local queue is full
        assert out._producer is not None
        assert len(out._producer) > 0
        assert not task.done()
        own_broker.kill()
        # Retryable: either nothing got through, or what did is reported and only the rest is to be
        # written again (a PartialDelivery whose cause is the RetryableError).
        pending = big
        with pytest.raises((RetryableError, PartialDelivery)) as info:
            await asyncio.wait_for(task, 30)
        if isinstance(info.value, PartialDelivery):
            assert isinstance(info.value.cause, RetryableError)
            assert info.value.rejected is None
            assert info.value.unsent is not None
            assert info.value.delivered + info.value.unsent.count == 20_000
            pending = info.value.unsent
        # The broker keeps everything in memory: after its restart the topic holds what is sent again.
        want = {e.record["n"] for e in pending.events()}
        own_broker.start()
        # The buffer's delivery loop retries what is not delivered until it goes through; the producer may
        # need more than one message timeout (1 s here) to reconnect to the restarted broker on a busy
        # machine.
        for _ in range(30):
            try:
                await out.write(pending)  # every event not yet acknowledged, possibly some twice
                break
            except PartialDelivery as exc:
                if exc.unsent is None:
                    break
                pending = exc.unsent
            except RetryableError:
                continue
        else:
            pytest.fail("the chunk was never delivered after the broker came back")
    finally:
        await out.stop()
    got = consume(
        own_broker.bootstrap, "killed", len(want), timeout=30,
        until=lambda g: want <= {orjson.loads(r.value)["n"] for r in g},
    )  # fmt: skip
    assert {orjson.loads(r.value)["n"] for r in got} - {-1} == want  # some possibly twice


def test_config_maps_tls_and_sasl_for_librdkafka(tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("client.example")
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    tls = ClientTls(ca_file=ca_file, cert_file=cert_file, key_file=key_file, verify=False)
    sasl = Sasl(mechanism="SCRAM-SHA-512", username="u", password="p")
    conf = producer_config(
        ["b1:9093", "b2:9093"], tls=tls, sasl=sasl, compression="zstd", required_acks="1",
        options={"linger.ms": 20},
    )  # fmt: skip
    assert conf | {} == conf
    want = {
        "bootstrap.servers": "b1:9093,b2:9093",
        "security.protocol": "sasl_ssl",
        "ssl.ca.location": str(ca_file),
        "ssl.certificate.location": str(cert_file),
        "ssl.key.location": str(key_file),
        "enable.ssl.certificate.verification": False,
        "ssl.endpoint.identification.algorithm": "none",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "u",
        "sasl.password": "p",
        "compression.type": "zstd",
        "acks": "1",
        "linger.ms": 20,
    }
    assert {k: conf[k] for k in want} == want
    # librdkafka itself accepts it: it loads the certificate and key when the producer is created.
    Producer(conf).close()
    assert producer_config(["b:1"], tls=ClientTls())["security.protocol"] == "ssl"
    assert producer_config(["b:1"], sasl=sasl)["security.protocol"] == "sasl_plaintext"
    assert producer_config(["b:1"])["security.protocol"] == "plaintext"


def test_idempotence_needs_acks_all() -> None:
    with pytest.raises(ValueError, match="required_acks: all"):
        producer_config(["b:1"], idempotent=True, required_acks="1")


def test_lz4_unless_configured_otherwise(tmp_path: Path) -> None:
    """The default chosen by measurement (docs/kafka-output.md): the configuration's, the output's and
    producer_config's agree."""
    conf = parse_config(
        f"""
storage: {{path: {tmp_path}}}
sources: [{{port: 0}}]
outputs: {{k: {{type: kafka, brokers: ["127.0.0.1:{free_port()}"], topic: logs}}}}
"""
    )
    out = KafkaOutput.from_settings("k", conf.outputs["k"])  # type: ignore[arg-type]
    assert out.config["compression.type"] == "lz4"
    assert KafkaOutput(name="k", brokers=["b:1"], topic="t").config["compression.type"] == "lz4"
    assert producer_config(["b:1"])["compression.type"] == "lz4"
    assert producer_config(["b:1"], compression="none")["compression.type"] == "none"


def test_from_settings_reads_the_config_model(tmp_path: Path) -> None:
    conf = parse_config(
        f"""
storage: {{path: {tmp_path}}}
sources: [{{port: 0}}]
outputs:
  k:
    type: kafka
    brokers: [127.0.0.1:{free_port()}]
    topic: logs
    topic_key: t
    message_key: user
    headers: {{env: prod}}
    headers_from_record: {{x-host: host}}
    compression: zstd
    required_acks: -1
    idempotent: true
    max_message_size: 2MiB
    format: msgpack
    options: {{linger.ms: 7}}
"""
    )
    out = KafkaOutput.from_settings("k", conf.outputs["k"])  # type: ignore[arg-type]
    assert (out.name, out.topic, out.topic_key, out.message_key, out.format) == (
        "k", "logs", "t", "user", "msgpack",
    )  # fmt: skip
    assert out.static_headers == [("env", b"prod")]
    assert out.headers_from_record == {"x-host": "host"}
    assert out.max_message_size == 2 * 1024**2
    c = out.config
    assert (c["compression.type"], c["acks"], c["enable.idempotence"], c["linger.ms"]) == (
        "zstd",
        "-1",
        True,
        7,
    )
    assert c["message.max.bytes"] >= 2 * 1024**2


_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20)
_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | _text | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.dictionaries(_text, _values, max_size=5), min_size=1, max_size=10))
def test_json_values_one_per_event(records: list[dict[str, Any]]) -> None:
    """The chunk is encoded in one go and split at newlines: newlines inside strings must never split an
    event, and each value must be that event's object."""
    out = KafkaOutput(name="enc", brokers=["b:1"], topic="t")
    events = [Event(T0 + i, r) for i, r in enumerate(records)]
    values = out._values(events, "t.ag")
    assert len(values) == len(events)
    for i, (v, r) in enumerate(zip(values, records, strict=True)):
        d = orjson.loads(v)
        assert (d.pop("time"), d.pop("tag")) == (rfc3339_ns(T0 + i), "t.ag")
        assert set(d) == set(r) - {"time", "tag"}


@pytest.mark.parametrize("native", [True, False])
def test_value_slices_are_the_chunk_values_where_the_transcoder_declines_midway(
    native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bytes value (not plain: the transcoder declines it) after two slices: the slices go on from the
    Python text, so together they are exactly the chunk's values, in order."""
    from forwardd.outputs.formats import json as formats

    if not native:
        monkeypatch.setattr(formats, "_jsonl", None)
    records: list[dict[str, Any]] = [{"n": i, "log": f"line {i}"} for i in range(2500)]
    records[2100]["raw"] = b"\xff\x00"
    chunk = make_chunk(records)
    out = KafkaOutput(name="enc", brokers=["b:1"], topic="t")
    slices = list(out._messages.slices(chunk, 1000))
    assert [len(s) for s in slices] == [1000, 1000, 500]
    values = [v for s in slices for v in s]
    assert values == out._messages.of_chunk(chunk)
    assert [orjson.loads(v)["n"] for v in values] == list(range(2500))
    assert orjson.loads(values[2100])["raw"] == "\\xff\x00"


async def test_overlapping_writes_complete_each_on_its_own(kafka_broker: Broker, topic: str) -> None:
    """The delivery loop has several writes in flight (concurrent_writes): a small write begun while a big
    one still produces (its local queue of 100 messages keeps it waiting for room) returns as soon as its
    own messages are acknowledged, not when the producer's whole queue is."""
    assert KafkaOutput.concurrent_writes > 1
    out = await started(
        brokers=[kafka_broker.bootstrap], topic=topic, options={"queue.buffering.max.messages": 100}
    )
    try:
        await out.write(make_chunk([{"n": -1}]))  # connected, topic known
        big = asyncio.create_task(out.write(make_chunk([{"n": i, "log": "y" * 200} for i in range(20_000)])))
        await asyncio.sleep(0)  # the big write begins: it produces until the local queue is full
        await asyncio.wait_for(out.write(make_chunk([{"n": 20_000 + i} for i in range(10)])), 30)
        assert not big.done()
        await asyncio.wait_for(big, 60)
    finally:
        await out.stop()
    got = consume(kafka_broker.bootstrap, topic, 20_011)
    assert sorted(orjson.loads(r.value)["n"] for r in got) == list(range(-1, 20_010))


async def test_a_write_completes_when_the_last_reference_to_its_callback_goes() -> None:
    """What lets overlapping writes complete each on its own: librdkafka's client holds each message's
    callback until that message is reported; the write's completion resolves when the callback object is
    freed, and not before."""
    from forwardd.outputs.kafka.producer import KafkaClient, Reports

    client = KafkaClient("t", {})
    reports = Reports()
    held = [reports, reports]  # stands in for the references of two unreported messages
    done, ref = client.completion(reports)
    del reports
    await asyncio.sleep(0)
    held.pop()
    await asyncio.sleep(0)
    assert not done.done()
    held.pop()
    await asyncio.wait_for(done, 5)
    assert ref() is None
