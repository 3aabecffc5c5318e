"""Every field of an output's settings reaches the output: ``from_settings`` copies them one by one, and a
field added to the settings but not to that copy would be accepted in the configuration and then ignored.

Each test builds the output through ``from_settings`` with a subclass whose constructor only records the
keyword arguments it was given, so no broker and no file is needed.
"""

from __future__ import annotations

from typing import Any

from forwardd.outputs.file.output import FileOutput
from forwardd.outputs.file.settings import FileSettings
from forwardd.outputs.kafka.output import KafkaOutput
from forwardd.outputs.kafka.settings import KafkaSettings


def given_to_init(cls: type[Any], settings: Any, **extra: Any) -> dict[str, Any]:
    """The keyword arguments ``cls.from_settings`` passes to the constructor."""
    got: dict[str, Any] = {}

    class Spy(cls):  # type: ignore[misc, valid-type]
        def __init__(self, **kwargs: Any) -> None:
            got.update(kwargs)

    Spy.from_settings("out", settings, **extra)
    return got


def test_every_kafka_setting_reaches_the_output() -> None:
    settings = KafkaSettings.model_validate(
        {
            "brokers": ["127.0.0.1:9092"],
            "topic": "logs",
            "topic_key": "t",
            "message_key": "k",
            "headers": {"h": "v"},
            "headers_from_record": {"x": "y"},
            "compression": "zstd",
            "required_acks": "all",
            "idempotent": True,
            "max_message_size": 2048,
            "format": "msgpack",
            "options": {"linger.ms": 7},
        }
    )
    got = given_to_init(KafkaOutput, settings)
    assert got.pop("name") == "out"
    assert set(got) == set(KafkaSettings.model_fields), "a KafkaSettings field is not passed to KafkaOutput"
    for field, value in got.items():
        assert value == getattr(settings, field), field


#: FileSettings fields that from_settings leaves out on purpose, and where they go instead.
FILE_HANDLED_ELSEWHERE = {
    "flush_interval": "the delivery loop's batching (forwardd/app/registry.py)",
    "rotate": "split into rotate_interval and rotate_max_size",
}


def test_every_file_setting_reaches_the_output() -> None:
    settings = FileSettings.model_validate(
        {
            "path": "/var/log/x/${tag}.log",
            "format": "fluentd",
            "compress": "zstd",
            "rotate": {"interval": "1h", "max_size": "1MiB"},
            "symlink": "/var/log/x/current",
            "flush_interval": 0.2,
            "fsync": "grouped",
            "fsync_interval": 0.25,
        }
    )
    got = given_to_init(FileOutput, settings)
    assert got.pop("name") == "out"
    assert (got.pop("rotate_interval"), got.pop("rotate_max_size")) == (
        settings.rotate.interval,
        settings.rotate.max_size,
    )
    expected = set(FileSettings.model_fields) - set(FILE_HANDLED_ELSEWHERE)
    assert set(got) == expected, "a FileSettings field is not passed to FileOutput"
    for field, value in got.items():
        assert value == getattr(settings, field), field
    # The second worker writes its own files and leaves the symlink to the first.
    second = given_to_init(FileOutput, settings, worker=1)
    assert second["symlink"] is None
    assert second["path"] != settings.path
