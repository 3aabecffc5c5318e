"""The registry: every filter and output type by its ``type:`` name, with its settings model and how it
is built from them.

This is the one place a new filter or output is added. The configuration model is assembled from it
(:mod:`forwardd.app.config`: each entry is the type's own settings plus ``type`` and, for an output,
``buffer``), and the builder asks it for each component (:mod:`forwardd.app.build`). The components keep
their settings beside their code and know nothing of this registry. Outputs whose library is an optional
dependency (Kafka, HTTP) are imported only when one is built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from forwardd.buffer import Batching
from forwardd.buffer.settings import BufferSettings
from forwardd.config.types import Frozen
from forwardd.filters.base import Filter, Journal
from forwardd.filters.docker_partial import DockerPartial, DockerPartialSettings
from forwardd.filters.docker_swarm import DockerSwarm, DockerSwarmSettings
from forwardd.filters.grep import Grep, GrepSettings
from forwardd.filters.parser import Parser, ParserSettings
from forwardd.filters.record_modify import RecordModify, RecordModifySettings
from forwardd.filters.tag_rewrite import TagRewrite, TagRewriteSettings
from forwardd.outputs.base import Output
from forwardd.outputs.debug import NullOutput, NullSettings, StdoutOutput, StdoutSettings
from forwardd.outputs.file import FileOutput, FileSettings
from forwardd.outputs.forward.settings import ForwardSettings
from forwardd.outputs.http.settings import HttpSettings
from forwardd.outputs.kafka.settings import KafkaSettings

__all__ = ["FILTERS", "OUTPUTS", "FilterKind", "FilterType", "JournalOpener", "OutputKind", "OutputType"]

S = TypeVar("S", bound=Frozen)
#: Opens the journal of one configured filter, for a filter that keeps what it holds across a restart.
JournalOpener = Callable[[], Journal]


class FilterKind(Protocol):
    """A filter type as the builder and the configuration see it, whatever its settings type."""

    @property
    def settings(self) -> type[Frozen]: ...

    def build(self, name: str, settings: Frozen, journal: JournalOpener | None = None) -> Filter:
        """The filter for ``settings`` (an instance of :attr:`settings`); ValueError for what only the
        filter can judge (templates, field accessors)."""
        ...


class OutputKind(Protocol):
    """An output type as the builder and the configuration see it, whatever its settings type."""

    @property
    def settings(self) -> type[Frozen]: ...
    @property
    def default_buffer(self) -> BufferSettings: ...

    def build(self, name: str, settings: Frozen, worker: int = 0) -> Output: ...

    def batching(self, settings: Frozen) -> Batching:
        """How long committed chunks may wait to be handed to the output together."""
        ...


def _narrow(settings: Frozen, model: type[S]) -> S:
    if not isinstance(settings, model):
        raise TypeError(f"expected {model.__name__}, got {type(settings).__name__}")
    return settings


@dataclass(frozen=True)
class FilterType(Generic[S]):
    settings: type[S]
    factory: Callable[[str, S, JournalOpener | None], Filter]

    def build(self, name: str, settings: Frozen, journal: JournalOpener | None = None) -> Filter:
        return self.factory(name, _narrow(settings, self.settings), journal)


def _no_batching(settings: Frozen) -> Batching:
    return Batching()


@dataclass(frozen=True)
class OutputType(Generic[S]):
    settings: type[S]
    factory: Callable[[str, S, int], Output]
    group: Callable[[S], Batching] | None = None
    default_buffer: BufferSettings = field(default_factory=BufferSettings)

    def build(self, name: str, settings: Frozen, worker: int = 0) -> Output:
        return self.factory(name, _narrow(settings, self.settings), worker)

    def batching(self, settings: Frozen) -> Batching:
        return Batching() if self.group is None else self.group(_narrow(settings, self.settings))


# --- filters --------------------------------------------------------------------------------------------


def _grep(name: str, s: GrepSettings, journal: JournalOpener | None) -> Filter:
    return Grep.from_settings(name, s)


def _record_modify(name: str, s: RecordModifySettings, journal: JournalOpener | None) -> Filter:
    return RecordModify.from_settings(name, s)


def _parser(name: str, s: ParserSettings, journal: JournalOpener | None) -> Filter:
    return Parser.from_settings(name, s)


def _tag_rewrite(name: str, s: TagRewriteSettings, journal: JournalOpener | None) -> Filter:
    return TagRewrite.from_settings(name, s)


def _docker_partial(name: str, s: DockerPartialSettings, journal: JournalOpener | None) -> Filter:
    return DockerPartial.from_settings(name, s, journal)


def _docker_swarm(name: str, s: DockerSwarmSettings, journal: JournalOpener | None) -> Filter:
    return DockerSwarm.from_settings(name, s)


#: Filter types by their ``type:`` name, in the order error messages list them.
FILTERS: Mapping[str, FilterKind] = {
    "grep": FilterType[GrepSettings](GrepSettings, _grep),
    "record_modify": FilterType[RecordModifySettings](RecordModifySettings, _record_modify),
    "parser": FilterType[ParserSettings](ParserSettings, _parser),
    "tag_rewrite": FilterType[TagRewriteSettings](TagRewriteSettings, _tag_rewrite),
    "docker_partial": FilterType[DockerPartialSettings](DockerPartialSettings, _docker_partial),
    "docker_swarm": FilterType[DockerSwarmSettings](DockerSwarmSettings, _docker_swarm),
}


# --- outputs --------------------------------------------------------------------------------------------


def _file(name: str, s: FileSettings, worker: int) -> Output:
    return FileOutput.from_settings(name, s, worker)


def _file_batching(s: FileSettings) -> Batching:
    return Batching(max_wait=s.flush_interval, enough_bytes=64 * 1024, small_enough_bytes=1024 * 1024)


def _kafka(name: str, s: KafkaSettings, worker: int) -> Output:
    from forwardd.outputs.kafka.output import KafkaOutput

    return KafkaOutput.from_settings(name, s)


def _http(name: str, s: HttpSettings, worker: int) -> Output:
    from forwardd.outputs.http.output import HttpOutput

    return HttpOutput.from_settings(name, s)


def _http_batching(s: HttpSettings) -> Batching:
    return Batching(max_wait=s.batch.max_wait, max_events=s.batch.max_events, max_bytes=s.batch.max_bytes)


def _forward(name: str, s: ForwardSettings, worker: int) -> Output:
    from forwardd.outputs.forward.output import ForwardOutput

    return ForwardOutput.from_settings(name, s)


def _stdout(name: str, s: StdoutSettings, worker: int) -> Output:
    return StdoutOutput.from_settings(name, s)


def _null(name: str, s: NullSettings, worker: int) -> Output:
    return NullOutput.from_settings(name, s)


#: Output types by their ``type:`` name. Kafka groups messages itself (librdkafka's linger.ms): no batching.
OUTPUTS: Mapping[str, OutputKind] = {
    "file": OutputType[FileSettings](FileSettings, _file, _file_batching),
    "kafka": OutputType[KafkaSettings](KafkaSettings, _kafka),
    "http": OutputType[HttpSettings](HttpSettings, _http, _http_batching),
    "forward": OutputType[ForwardSettings](ForwardSettings, _forward),
    "stdout": OutputType[StdoutSettings](
        StdoutSettings, _stdout, default_buffer=BufferSettings(type="memory")
    ),
    "null": OutputType[NullSettings](NullSettings, _null, default_buffer=BufferSettings(type="memory")),
}
