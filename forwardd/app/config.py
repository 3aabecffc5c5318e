"""forwardd's configuration model, assembled from the registry, and how a file becomes one.

Each ``outputs:`` entry is its type's own settings (:mod:`forwardd.outputs.file.settings`...) plus ``type``
and ``buffer``; each filter entry its type's settings plus ``type``; ``sources:`` entries are
:class:`~forwardd.server.source.ForwardSource`. ``type:`` fields are closed discriminated unions built from
:mod:`forwardd.app.registry`, so an unknown type is reported with the known ones. Checks that need more
than one section (references between routes, labels and outputs, ports, relabel cycles) run once the
shapes are valid (:mod:`forwardd.app.checks`), so that each mistake is reported with its own key path.

Field names follow Fluentd and Fluent Bit where those have one (``shared_key``, ``add_tag_prefix``,
``@ERROR``...). Sizes are ints (bytes) and durations floats (seconds); see :mod:`forwardd.config.units`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BeforeValidator, ConfigDict, Discriminator, Field, Tag, create_model, field_validator
from pydantic import model_validator as _model_validator

from forwardd import config as _loader
from forwardd.app.checks import cross_check
from forwardd.app.describe import describe
from forwardd.app.registry import FILTERS, OUTPUTS
from forwardd.buffer.settings import BufferSettings
from forwardd.config.errors import ConfigError, Problem, format_path
from forwardd.config.types import Count, Frozen, LabelName, Name, NonEmpty, PositiveDuration
from forwardd.ops.settings import HttpServer
from forwardd.router.table import ROOT_LABEL
from forwardd.server.source import ForwardSource

__all__ = [
    "FILTER_ENTRIES",
    "OUTPUT_ENTRIES",
    "Config",
    "FilterEntry",
    "LogSettings",
    "OutputEntry",
    "RouteSettings",
    "StorageSettings",
    "default_config",
    "load_config",
    "parse_config",
]


class FilterEntry(Frozen):
    """What every filter entry has besides its type's own settings."""

    type: str


class OutputEntry(Frozen):
    """What every output entry has besides its type's own settings: the buffer in front of it."""

    type: str
    buffer: BufferSettings = Field(default_factory=BufferSettings)

    def describe(self) -> str:
        return self.type


def _null_type(value: Any) -> Any:
    # Unquoted `type: null` is YAML's null; the author meant the output named null.
    return "null" if value is None else value


def _entry(kind: str, settings: type[Frozen], base: type[Frozen], suffix: str, **extra: Any) -> Any:
    name = "".join(part.title() for part in kind.split("_")) + suffix
    tag: Any = Literal.__getitem__(kind)
    if kind == "null":
        tag = Annotated[tag, BeforeValidator(_null_type)]
    return create_model(name, __base__=(settings, base), __module__=__name__, type=(tag, ...), **extra)


#: The model of each filter entry, by type: the type's settings with ``type``.
FILTER_ENTRIES: Mapping[str, type[FilterEntry]] = {
    kind: _entry(kind, f.settings, FilterEntry, "Filter") for kind, f in FILTERS.items()
}
#: The model of each output entry, by type: the type's settings with ``type`` and ``buffer``.
OUTPUT_ENTRIES: Mapping[str, type[OutputEntry]] = {
    kind: _entry(
        kind,
        o.settings,
        OutputEntry,
        "Output",
        buffer=(BufferSettings, Field(default_factory=lambda d=o.default_buffer: d)),
    )
    for kind, o in OUTPUTS.items()
}


def _output_tag(value: Any) -> Any:
    if isinstance(value, dict):
        if "type" in value and value["type"] is None:
            return "null"
        return value.get("type")
    return getattr(value, "type", None)


if TYPE_CHECKING:
    AnyFilter = FilterEntry
    AnyOutput = OutputEntry
else:
    AnyFilter = Annotated[Union[tuple(FILTER_ENTRIES.values())], Field(discriminator="type")]  # noqa: UP007
    AnyOutput = Annotated[
        Union[tuple(Annotated[m, Tag(k)] for k, m in OUTPUT_ENTRIES.items())],  # noqa: UP007
        Discriminator(_output_tag),
    ]


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class RouteSettings(Frozen):
    """One route (Fluentd's ``<match>``), before its pattern is compiled and its filters built."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    #: Fluentd glob patterns (``*``, ``**``, ``{a,b}``, ``/re/``), space-separated alternatives.
    match: NonEmpty
    filters: tuple[AnyFilter, ...] = ()
    outputs: Annotated[tuple[Name, ...], BeforeValidator(_as_list)] = ()
    relabel: LabelName | None = None
    continue_: bool = Field(default=False, alias="continue")


class LogSettings(Frozen):
    level: Literal["debug", "info", "warning", "error"] = "info"
    #: auto = console rendering on a TTY, JSON lines otherwise.
    format: Literal["auto", "console", "json"] = "auto"


class StorageSettings(Frozen):
    #: Root for buffers and dead letters; relative paths are relative to the working directory.
    path: Path = Path("forwardd-data")


class Config(Frozen):
    """A complete, validated configuration. Buffer paths are resolved against ``storage.path``."""

    log: LogSettings = Field(default_factory=LogSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    #: SO_REUSEPORT worker processes.
    workers: Count = 1
    #: The longest a stop (SIGTERM, SIGINT) takes, from the signal to the exit of every process (see
    #: forwardd.lifecycle). Default 8 s: inside the 10 s Docker and Swarm wait before SIGKILL.
    shutdown_timeout: PositiveDuration = 8.0
    sources: Annotated[tuple[ForwardSource, ...], Field(min_length=1)]
    #: The root label's routes, in order; the first match wins unless it says ``continue: true``.
    routes: tuple[RouteSettings, ...] = ()
    labels: dict[LabelName, tuple[RouteSettings, ...]] = Field(default_factory=dict)
    outputs: dict[Name, AnyOutput] = Field(default_factory=dict)
    #: The operators' HTTP endpoint; None (the default): no port is opened.
    http_server: HttpServer | None = None

    @field_validator("sources", mode="before")
    @classmethod
    def _default_source_names(cls, value: Any) -> Any:
        # A source may go unnamed, as in Fluentd; it still needs a name in logs and metrics.
        if isinstance(value, list | tuple):
            return [
                {"name": f"source{i}", **item} if isinstance(item, dict) and "name" not in item else item
                for i, item in enumerate(value)
            ]
        return value

    @_model_validator(mode="after")
    def _check_and_resolve(self) -> Config:
        problems = cross_check(self)
        if problems:
            raise ConfigError(
                [Problem("<config>", None, format_path(loc), msg, loc) for loc, msg in problems]
            )
        resolved = {}
        for name, out in self.outputs.items():
            buf = out.buffer
            update: dict[str, Path] = {}
            if buf.path is None:
                update["path"] = self.storage.path / "buffer" / name
            if buf.dead_letter_path is None:
                update["dead_letter_path"] = self.storage.path / "dead-letter" / name
            resolved[name] = (
                out.model_copy(update={"buffer": buf.model_copy(update=update)}) if update else out
            )
        # Frozen models refuse attribute assignment; this is the one place that completes one.
        object.__setattr__(self, "outputs", resolved)
        return self

    def label_routes(self, label: str | None) -> tuple[RouteSettings, ...]:
        """The routes of a label; None or ``@ROOT`` means the root routes."""
        if label is None or label == ROOT_LABEL:
            return self.routes
        return self.labels[label]

    def describe(self) -> str:
        """A human-readable summary for ``check-config``: what listens, where each tag goes, and how."""
        return describe(self)


def parse_config(text: str, filename: str = "<string>", env: Mapping[str, str] | None = None) -> Config:
    """Validate configuration text; ``filename`` is used in messages and to resolve relative includes."""
    return _loader.parse_config(text, Config, filename, env)


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a configuration file (and its includes); raises ConfigError listing every problem."""
    return _loader.load_config(path, Config, env)


def default_config(env: Mapping[str, str] | None = None) -> Config:
    """What forwardd runs without a file: forward on 0.0.0.0:24224 (TCP + UDP heartbeat), every tag to
    JSON-lines files under ``$FORWARDD_DATA_DIR`` (default ``./forwardd-data``), behind a disk buffer.
    ``$FORWARDD_HTTP_PORT`` turns the operators' endpoint on (on 127.0.0.1): the image sets it so that its
    health check can ask ``/health``."""
    env = os.environ if env is None else env
    data_dir = env.get("FORWARDD_DATA_DIR") or "./forwardd-data"
    http_port = env.get("FORWARDD_HTTP_PORT")
    return Config.model_validate(
        {
            "http_server": {"bind": "127.0.0.1", "port": http_port} if http_port else None,
            "storage": {"path": data_dir},
            "sources": [{"name": "main", "type": "forward", "bind": "0.0.0.0", "port": 24224}],
            "routes": [{"match": "**", "outputs": ["files"]}],
            "outputs": {
                "files": {
                    "type": "file",
                    "path": os.path.join(data_dir, "logs", "${tag}", "%Y%m%d.log"),
                    "format": "json",
                    "buffer": {"type": "disk"},
                }
            },
        }
    )
