"""The Kafka output: :mod:`.output` (the output and its produce loop), :mod:`.messages` (values, keys,
headers), :mod:`.producer` (librdkafka's producer, its poll thread and delivery reports), :mod:`.outcomes`
(each message's report turned into the write's outcome), :mod:`.settings` (the shape of its configuration
entry)."""

from forwardd.outputs.kafka.outcomes import KafkaOutputStats
from forwardd.outputs.kafka.output import KafkaOutput
from forwardd.outputs.kafka.producer import is_permanent, producer_config

__all__ = ["KafkaOutput", "KafkaOutputStats", "is_permanent", "producer_config"]
