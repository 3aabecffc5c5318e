"""The Kafka output: :mod:`.output` (the output and its produce loop), :mod:`.messages` (values, keys,
headers), :mod:`.producer` (librdkafka's producer, its poll thread and delivery reports), :mod:`.outcomes`
(each message's report turned into the write's outcome), :mod:`.settings` (its configuration entry).

confluent-kafka is an optional dependency (the ``kafka`` extra): the names below are imported when first
used, so that reading a configuration (which needs only :mod:`.settings`) works without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from forwardd.outputs.kafka.outcomes import KafkaOutputStats
    from forwardd.outputs.kafka.output import KafkaOutput
    from forwardd.outputs.kafka.producer import is_permanent, producer_config

__all__ = ["KafkaOutput", "KafkaOutputStats", "is_permanent", "producer_config"]

_WHERE = {
    "KafkaOutput": "output",
    "KafkaOutputStats": "outcomes",
    "is_permanent": "producer",
    "producer_config": "producer",
}


def __getattr__(name: str) -> object:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
