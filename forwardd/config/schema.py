"""The typed, frozen settings that a configuration file is validated into.

Each component gets its own small model (a source gets :class:`ForwardSource`, an output its
``*Output`` model) so that it can be handed exactly its settings and nothing else. ``type:`` fields are
closed discriminated unions: the union *is* the registry (no plugin lookup by name).

Field names follow Fluentd and Fluent Bit where those have one (``shared_key``, ``add_tag_prefix``,
``source_address_key``, ``@ERROR``...). Sizes are ints (bytes) and durations floats (seconds); see
:mod:`forwardd.config.units`. Checks that need more than one field (references between routes, labels and
outputs, port clashes, relabel cycles) live in :func:`cross_check`, run once the shapes are valid, so that
every such mistake is reported with its own key path.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
)
from pydantic import model_validator as _model_validator
from pydantic_core import PydanticCustomError

from forwardd.config.errors import ConfigError, Problem, format_path
from forwardd.config.units import Duration, Size, format_duration, format_size, show_value

__all__ = [
    "ROOT_LABEL",
    "BufferSettings",
    "Config",
    "DockerPartialFilter",
    "DockerSwarmFilter",
    "FileOutput",
    "Filter",
    "ForwardOutput",
    "ForwardSource",
    "GrepFilter",
    "GrepRule",
    "HttpOutput",
    "KafkaOutput",
    "Limits",
    "LogSettings",
    "NullOutput",
    "Output",
    "ParserFilter",
    "RecordModifyFilter",
    "RetrySettings",
    "Route",
    "Security",
    "ServerTls",
    "StdoutOutput",
    "StorageSettings",
    "TagRewriteFilter",
    "cross_check",
]

#: The name by which a relabel (or a source's ``label``) means the root routes, as in Fluentd >= 1.14.
ROOT_LABEL = "@ROOT"
#: Where events go when the pipeline fails for them, as in Fluentd.
ERROR_LABEL = "@ERROR"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- small validated scalar types -----------------------------------------------------------------------

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_LABEL_RE = re.compile(r"@?[A-Za-z0-9][A-Za-z0-9_.-]*")


def _name(value: str) -> str:
    # Output names become directory names (buffers, dead letters): keep them path-safe.
    if not _NAME_RE.fullmatch(value):
        raise PydanticCustomError(
            "name",
            "expected a name of letters, digits, '_', '.' and '-', got {got}",
            {"got": show_value(value)},
        )
    return value


def _label(value: str) -> str:
    if not _LABEL_RE.fullmatch(value):
        raise PydanticCustomError(
            "label", "expected a label name like audit or @ERROR, got {got}", {"got": show_value(value)}
        )
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise PydanticCustomError(
            "regex",
            "expected a regular expression, got {got}: {why}",
            {"got": show_value(value), "why": str(exc)},
        ) from None
    return value


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise PydanticCustomError(
        "scalar", "expected a string, number, true/false or null, got {got}", {"got": show_value(value)}
    )


def _scalar_str(value: Any) -> Any:
    # Header values and the like: `X-Count: 5` in YAML is an int, but the author meant the text "5".
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _file_mode(value: Any) -> Any:
    # YAML 1.1 reads an unquoted 0660 as octal already (432); a quoted "0660" arrives as text.
    if isinstance(value, str) and re.fullmatch(r"0?o?[0-7]{3,4}", value):
        return int(value.replace("o", ""), 8)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o7777:
        return value
    raise PydanticCustomError(
        "file_mode", 'expected a file mode like "0660", got {got}', {"got": show_value(value)}
    )


def _tls_version(value: Any) -> Any:
    text = str(value).upper().replace("TLSV", "").replace("TLS", "").replace("_", ".").strip()
    return text if text in ("1.2", "1.3") else value


def _acks(value: Any) -> Any:
    if value in (-1, "-1"):
        return "all"
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _broker(value: str) -> str:
    if not re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]/]+)(:\d{1,5})?", value):
        raise PydanticCustomError("broker", "expected host:port, got {got}", {"got": show_value(value)})
    return value


def _url(value: str) -> str:
    # ${tag[N]} placeholders would read as an IPv6 literal: check the URL's shape without them.
    try:
        parts = urlsplit(re.sub(r"\$\{[^}]*\}", "x", value))
    except ValueError:
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PydanticCustomError(
            "url", "expected an http:// or https:// URL, got {got}", {"got": show_value(value)}
        )
    return value


def _method(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError(
            "blank", "expected a non-empty string, got {got}", {"got": show_value(value)}
        )
    return value


Name = Annotated[str, AfterValidator(_name)]
LabelName = Annotated[str, AfterValidator(_label)]
Regex = Annotated[str, AfterValidator(_regex)]
Scalar = Annotated[Any, AfterValidator(_scalar)]
Text = Annotated[str, BeforeValidator(_scalar_str)]
NonEmpty = Annotated[str, AfterValidator(_not_blank)]
Port = Annotated[int, Field(ge=0, le=65535)]
Count = Annotated[int, Field(ge=1)]


# --- global sections ------------------------------------------------------------------------------------


class LogSettings(_Frozen):
    level: Literal["debug", "info", "warning", "error"] = "info"
    #: auto = console rendering on a TTY, JSON lines otherwise.
    format: Literal["auto", "console", "json"] = "auto"


class StorageSettings(_Frozen):
    #: Root for buffers and dead letters; relative paths are relative to the working directory.
    path: Path = Path("forwardd-data")


# --- sources --------------------------------------------------------------------------------------------


class UnixSocket(_Frozen):
    path: Path
    mode: Annotated[int, BeforeValidator(_file_mode)] = 0o660


class ServerTls(_Frozen):
    cert_file: Path
    key_file: Path
    key_password: str | None = Field(default=None, repr=False)
    ca_file: Path | None = None
    client_auth: Literal["none", "optional", "required"] = "none"
    min_version: Annotated[Literal["1.2", "1.3"], BeforeValidator(_tls_version)] = "1.2"


class User(_Frozen):
    username: NonEmpty
    password: str = Field(repr=False)


class Client(_Frozen):
    """Fluentd's ``<client>``: the peer's address picks the shared key and the users it may log in as."""

    host: str | None = None
    network: str | None = None
    shared_key: str | None = Field(default=None, repr=False)
    users: tuple[str, ...] = ()

    @field_validator("network")
    @classmethod
    def _network(cls, value: str | None) -> str | None:
        import ipaddress

        if value is not None:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise PydanticCustomError(
                    "network", "expected a network like 10.0.0.0/8, got {got}", {"got": show_value(value)}
                ) from None
        return value


class Security(_Frozen):
    """The secure-forward handshake (HELO/PING/PONG); present means required for every connection."""

    self_hostname: str = Field(default_factory=socket.gethostname)
    shared_key: str = Field(repr=False)
    user_auth: bool = False
    allow_anonymous_source: bool = True
    users: tuple[User, ...] = ()
    clients: tuple[Client, ...] = ()


class Limits(_Frozen):
    max_frame_size: Size = 64 * 1024**2
    max_decompressed_size: Size = 256 * 1024**2
    chunk_size_warn: Size = 16 * 1024**2
    #: The frame limit before the handshake is done (security on): a PING is a few hundred bytes.
    max_handshake_frame_size: Size = 64 * 1024
    max_connections: Count = 10000
    #: Bytes all connections of the source may hold at once (frames not yet whole, big requests being
    #: finished); beyond it, connections holding some stop reading until it falls. 0 = no budget.
    max_buffered_size: Size = 256 * 1024**2
    handshake_timeout: Duration = 10.0
    #: 0 = never close an idle connection.
    idle_timeout: Duration = 0.0
    #: Chunks of one connection awaiting their ack at once; reading pauses beyond it.
    max_inflight: Count = 64


class ForwardSource(_Frozen):
    name: Name
    type: Literal["forward"] = "forward"
    bind: str = "0.0.0.0"
    port: Port = 24224
    unix: UnixSocket | None = None
    udp_heartbeat: bool = True
    tls: ServerTls | None = None
    security: Security | None = None
    limits: Limits = Field(default_factory=Limits)
    deny_keepalive: bool = False
    json_mode: bool = False
    tag: str | None = None
    add_tag_prefix: str | None = None
    source_address_key: str | None = None
    source_hostname_key: str | None = None
    label: LabelName | None = None

    def address(self) -> str:
        if self.unix is not None:
            return f"unix:{self.unix.path}"
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"{'tls' if self.tls else 'tcp'}://{host}:{self.port}"


# --- filters --------------------------------------------------------------------------------------------


class GrepRule(_Frozen):
    key: NonEmpty
    pattern: Regex


class GrepFilter(_Frozen):
    type: Literal["grep"]
    regexp: tuple[GrepRule, ...] = ()
    exclude: tuple[GrepRule, ...] = ()
    #: How regexp rules combine: and = all must match, or = any. An event matching any exclude is dropped.
    combine: Literal["and", "or"] = "and"

    def to_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`forwardd.filters.Grep` (add ``name``)."""
        return {
            "regexp": [(r.key, r.pattern) for r in self.regexp],
            "exclude": [(r.key, r.pattern) for r in self.exclude],
            "regexp_mode": self.combine,
        }


class RecordModifyFilter(_Frozen):
    type: Literal["record_modify"]
    set: dict[str, Text] = Field(default_factory=dict)
    remove: tuple[str, ...] = ()
    rename: dict[str, str] = Field(default_factory=dict)
    keep_keys: tuple[str, ...] | None = None

    def to_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`forwardd.filters.RecordModify` (add ``name``)."""
        return {
            "set": dict(self.set),
            "remove_keys": self.remove,
            "rename": dict(self.rename),
            "keep_keys": self.keep_keys,
        }


class ParserFilter(_Frozen):
    type: Literal["parser"]
    key: NonEmpty = "log"
    format: Literal["json", "regex", "logfmt"] = "json"
    pattern: Regex | None = None
    reserve_data: bool = True
    remove_key_name_field: bool = False
    hash_value_field: str | None = None

    def to_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`forwardd.filters.Parser` (add ``name``)."""
        return {
            "key_name": self.key,
            "format": self.format,
            "pattern": self.pattern,
            "reserve_data": self.reserve_data,
            "remove_key_name_field": self.remove_key_name_field,
            "hash_value_field": self.hash_value_field,
        }


class TagRule(_Frozen):
    key: NonEmpty
    pattern: Regex
    tag: NonEmpty


class TagRewriteFilter(_Frozen):
    type: Literal["tag_rewrite"]
    rules: Annotated[tuple[TagRule, ...], Field(min_length=1)]
    keep_unmatched: bool = True

    def to_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`forwardd.filters.TagRewrite` (add ``name``)."""
        return {
            "rules": [(r.key, r.pattern, r.tag) for r in self.rules],
            "keep_unmatched": self.keep_unmatched,
        }


class DockerPartialFilter(_Frozen):
    type: Literal["docker_partial"]
    flush_timeout: Duration = 5.0
    max_size: Size = 1024**2
    max_pending: Count = 10000
    #: Commit held pieces to a journal under <storage>/journal before acking them (see DockerPartial).
    journal: bool = True

    def to_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`forwardd.filters.DockerPartial` (add ``name``)."""
        return {
            "flush_timeout": self.flush_timeout,
            "max_size": self.max_size,
            "max_pending": self.max_pending,
        }


class DockerSwarmFilter(_Frozen):
    """Swarm's identity of a line (service, task, slot or node) from docker's record; see DockerSwarm."""

    type: Literal["docker_swarm"]
    #: Field names to write; null leaves that field out.
    service_key: str | None = "service"
    task_key: str | None = "task"
    slot_key: str | None = "slot"
    node_key: str | None = "node"
    #: Replace a field the record already has (off: keep the record's own value).
    overwrite: bool = False
    #: Drop the com.docker.swarm.* labels once read.
    remove_labels: bool = False

    def to_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`forwardd.filters.DockerSwarm` (add ``name``)."""
        return {
            "service_key": self.service_key,
            "task_key": self.task_key,
            "slot_key": self.slot_key,
            "node_key": self.node_key,
            "overwrite": self.overwrite,
            "remove_labels": self.remove_labels,
        }


Filter = Annotated[
    GrepFilter
    | RecordModifyFilter
    | ParserFilter
    | TagRewriteFilter
    | DockerPartialFilter
    | DockerSwarmFilter,
    Field(discriminator="type"),
]


# --- routes ---------------------------------------------------------------------------------------------


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class Route(_Frozen):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    #: Fluentd glob patterns (``*``, ``**``, ``{a,b}``, ``/re/``), space-separated alternatives.
    match: NonEmpty
    filters: tuple[Filter, ...] = ()
    outputs: Annotated[tuple[Name, ...], BeforeValidator(_as_list)] = ()
    relabel: LabelName | None = None
    continue_: bool = Field(default=False, alias="continue")


# --- outputs --------------------------------------------------------------------------------------------


class RetrySettings(_Frozen):
    initial: Duration = 1.0
    max: Duration = 300.0
    multiplier: Annotated[float, Field(ge=1.0)] = 2.0
    #: Each delay is multiplied by a random factor in [1 - jitter, 1 + jitter].
    jitter: Annotated[float, Field(ge=0.0, le=1.0)] = 0.125
    #: Give up (dead-letter the chunk) after this many failed attempts; null = no limit.
    max_attempts: Count | None = None
    #: Give up on a chunk this long after its first attempt; null = no limit.
    max_age: Duration | None = 72 * 3600.0


class BufferSettings(_Frozen):
    type: Literal["disk", "memory"] = "disk"
    #: Resolved when the Config is validated: default ``<storage.path>/buffer/<output name>``.
    path: Path | None = None
    #: Resolved likewise: default ``<storage.path>/dead-letter/<output name>``.
    dead_letter_path: Path | None = None
    fsync: Literal["always", "interval", "never"] = "always"
    fsync_interval: Duration = 1.0
    max_size: Size = 1024**3
    segment_size: Size = 16 * 1024**2
    when_full: Literal["block", "drop_oldest"] = "block"
    retry: RetrySettings = Field(default_factory=RetrySettings)


class _OutputBase(_Frozen):
    buffer: BufferSettings = Field(default_factory=BufferSettings)


class Rotate(_Frozen):
    interval: Duration | None = 86400.0
    max_size: Size | None = 256 * 1024**2


class FileOutput(_OutputBase):
    type: Literal["file"]
    #: ``${tag}`` and strftime codes are expanded per chunk; relative paths are relative to the working dir.
    path: NonEmpty
    format: Literal["json", "msgpack", "fluentd"] = "json"
    compress: Literal["none", "gzip", "zstd"] = "none"
    rotate: Rotate = Field(default_factory=Rotate)
    symlink: str | None = None
    #: The longest a committed event waits to be written, so that writes and fsyncs are grouped.
    flush_interval: Duration = 0.1


class ClientTls(_Frozen):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify: bool = True


class Sasl(_Frozen):
    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
    username: NonEmpty
    password: str = Field(repr=False)


class KafkaOutput(_OutputBase):
    type: Literal["kafka"]
    brokers: Annotated[tuple[Annotated[str, AfterValidator(_broker)], ...], Field(min_length=1)]
    topic: NonEmpty
    topic_key: str | None = None
    message_key: str | None = None
    headers: dict[str, Text] = Field(default_factory=dict)
    headers_from_record: dict[str, str] = Field(default_factory=dict)
    #: lz4 by default: measured end to end, it cut the broker's CPU per event by 3x for +0.1 us of ours
    #: (docs/kafka-output.md).
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    required_acks: Annotated[Literal["all", "1", "0"], BeforeValidator(_acks)] = "all"
    idempotent: bool = False
    max_message_size: Size = 1024**2
    format: Literal["json", "msgpack"] = "json"
    tls: ClientTls | None = None
    sasl: Sasl | None = None
    options: dict[str, Scalar] = Field(default_factory=dict)


class BasicAuth(_Frozen):
    username: str
    password: str = Field(repr=False)


class HttpAuth(_Frozen):
    basic: BasicAuth | None = None
    bearer: str | None = Field(default=None, repr=False)


class HttpBatch(_Frozen):
    max_events: Count = 1000
    max_bytes: Size = 1024**2
    max_wait: Duration = 1.0


class HttpTimeout(_Frozen):
    connect: Duration = 5.0
    total: Duration = 30.0


class HttpOutput(_OutputBase):
    type: Literal["http"]
    endpoint: Annotated[str, AfterValidator(_url)]
    method: Annotated[Literal["POST", "PUT", "PATCH"], BeforeValidator(_method)] = "POST"
    headers: dict[str, Text] = Field(default_factory=dict)
    auth: HttpAuth | None = None
    format: Literal["ndjson", "json_array", "msgpack"] = "ndjson"
    compress: Literal["none", "gzip"] = "none"
    batch: HttpBatch = Field(default_factory=HttpBatch)
    tls: ClientTls | None = None
    timeout: HttpTimeout = Field(default_factory=HttpTimeout)
    #: Hosts a templated endpoint may resolve to; required when the endpoint has ``${...}`` placeholders.
    allowed_hosts: tuple[str, ...] = ()


class ForwardServer(_Frozen):
    """One receiver of a forward output (Fluentd's ``<server>``)."""

    host: NonEmpty
    port: Annotated[int, Field(ge=1, le=65535)] = 24224
    #: Share of the writes among the regular servers that are up; 0 keeps it out of the rotation.
    weight: Annotated[int, Field(ge=0, le=10000)] = 60
    #: Used only while no regular server is up.
    standby: bool = False
    #: How logs and stats name it (default host:port).
    name: Name | None = None


class ForwardTls(_Frozen):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    key_password: str | None = Field(default=None, repr=False)
    verify: bool = True
    #: The name the server certificate must carry (default: each server's host).
    server_name: str | None = None
    min_version: Annotated[Literal["1.2", "1.3"], BeforeValidator(_tls_version)] = "1.2"


class ForwardSecurity(_Frozen):
    """The client side of the secure-forward handshake (Fluentd's out_forward ``<security>``)."""

    self_hostname: str = Field(default_factory=socket.gethostname)
    shared_key: str = Field(repr=False)
    username: str = ""
    password: str = Field(default="", repr=False)


PositiveDuration = Annotated[Duration, Field(gt=0)]


class ForwardOutput(_OutputBase):
    type: Literal["forward"]
    servers: Annotated[tuple[ForwardServer, ...], Field(min_length=1)]
    #: Wait for the receiver's ack before a chunk leaves the buffer (off: delivered once written).
    require_ack_response: bool = True
    ack_response_timeout: PositiveDuration = 30.0
    compress: Literal["none", "gzip", "zstd"] = "none"
    #: Entry bytes per request (before compression); a bigger chunk goes as several pipelined requests.
    max_message_size: Annotated[Size, Field(ge=1)] = 1024**2
    #: event_time: odd time shapes become EventTime; integer: Fluentd's time_as_integer; as_received.
    time_format: Literal["event_time", "integer", "as_received"] = "event_time"
    keepalive: bool = True
    keepalive_timeout: PositiveDuration = 60.0
    connect_timeout: PositiveDuration = 10.0
    send_timeout: PositiveDuration = 60.0
    heartbeat_type: Literal["transport", "udp", "none"] = "transport"
    heartbeat_interval: PositiveDuration = 1.0
    #: An up server with no successful heartbeat for this long is marked down.
    hard_timeout: PositiveDuration = 60.0
    #: A server marked down is not used again for this long.
    recover_wait: Duration = 10.0
    #: Host names are resolved again this often (0 = only at start and when no server is left).
    dns_refresh: Duration = 30.0
    tls: ForwardTls | None = None
    security: ForwardSecurity | None = None


class StdoutOutput(_OutputBase):
    type: Literal["stdout"]
    format: Literal["json", "fluentd"] = "json"
    buffer: BufferSettings = Field(default_factory=lambda: BufferSettings(type="memory"))


class NullOutput(_OutputBase):
    type: Annotated[Literal["null"], BeforeValidator(lambda v: "null" if v is None else v)]
    buffer: BufferSettings = Field(default_factory=lambda: BufferSettings(type="memory"))


def _output_tag(value: Any) -> Any:
    # Unquoted `type: null` is YAML's null; the author meant the output named null.
    if isinstance(value, dict):
        if "type" in value and value["type"] is None:
            return "null"
        return value.get("type")
    return getattr(value, "type", None)


Output = Annotated[
    Annotated[FileOutput, Tag("file")]
    | Annotated[KafkaOutput, Tag("kafka")]
    | Annotated[HttpOutput, Tag("http")]
    | Annotated[ForwardOutput, Tag("forward")]
    | Annotated[StdoutOutput, Tag("stdout")]
    | Annotated[NullOutput, Tag("null")],
    Discriminator(_output_tag),
]


# --- the whole configuration ----------------------------------------------------------------------------


class Config(_Frozen):
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
    routes: tuple[Route, ...] = ()
    labels: dict[LabelName, tuple[Route, ...]] = Field(default_factory=dict)
    outputs: dict[Name, Output] = Field(default_factory=dict)

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

    def label_routes(self, label: str | None) -> tuple[Route, ...]:
        """The routes of a label; None or ``@ROOT`` means the root routes."""
        if label is None or label == ROOT_LABEL:
            return self.routes
        return self.labels[label]

    def describe(self) -> str:
        """A human-readable summary for ``check-config``: what listens, where each tag goes, and how."""
        lines = [f"workers: {self.workers}    storage: {self.storage.path}    log: {self.log.level}"]
        lines.append("sources:")
        for src in self.sources:
            extras = []
            if src.unix is None and src.udp_heartbeat:
                extras.append("udp heartbeat")
            if src.tls is not None:
                extras.append(f"tls client_auth={src.tls.client_auth}")
            if src.security is not None:
                extras.append("shared_key" + (" + users" if src.security.user_auth else ""))
            if src.tag is not None:
                extras.append(f"tag={src.tag}")
            if src.add_tag_prefix is not None:
                extras.append(f"add_tag_prefix={src.add_tag_prefix}")
            where = f"label {src.label}" if src.label and src.label != ROOT_LABEL else "root routes"
            more = f" ({', '.join(extras)})" if extras else ""
            lines.append(f"  {src.name}: forward {src.address()}{more} -> {where}")
        lines.append("routes (root):")
        lines.extend(_describe_routes(self.routes))
        for label, routes in self.labels.items():
            lines.append(f"label {label}:")
            lines.extend(_describe_routes(routes))
        lines.append("outputs:")
        used = {name for _, route in _all_routes(self) for name in route.outputs}
        for name, out in self.outputs.items():
            note = "" if name in used else "  [not used by any route]"
            lines.append(f"  {name}: {_describe_output(out)}{note}")
            buf = out.buffer
            retry = buf.retry
            lines.append(
                f"    buffer: {buf.type}"
                + (f" {buf.path} fsync={buf.fsync}" if buf.type == "disk" else "")
                + f" max_size={format_size(buf.max_size)} when_full={buf.when_full}"
                + f" retry={format_duration(retry.initial)}..{format_duration(retry.max)}"
                + (f" max_age={format_duration(retry.max_age)}" if retry.max_age is not None else "")
            )
        return "\n".join(lines)


def _describe_routes(routes: tuple[Route, ...]) -> list[str]:
    if not routes:
        return ["  (none: events are dropped)"]
    out = []
    for i, route in enumerate(routes, 1):
        text = f"  {i}. match {route.match!r}"
        if route.filters:
            text += f" | filters: {', '.join(f.type for f in route.filters)}"
        targets = list(route.outputs) + ([f"label {route.relabel}"] if route.relabel else [])
        text += f" -> {', '.join(targets)}"
        if route.continue_:
            text += " (continue)"
        out.append(text)
    return out


def _describe_output(out: Output) -> str:
    if isinstance(out, FileOutput):
        return f"file {out.path} format={out.format} compress={out.compress}"
    if isinstance(out, KafkaOutput):
        topic = out.topic if out.topic_key is None else f"<{out.topic_key}> (default {out.topic})"
        return f"kafka {','.join(out.brokers)} topic={topic} acks={out.required_acks} format={out.format}"
    if isinstance(out, HttpOutput):
        return f"http {out.method} {out.endpoint} format={out.format} compress={out.compress}"
    if isinstance(out, ForwardOutput):
        servers = ", ".join(
            f"{srv.host}:{srv.port}" + (" (standby)" if srv.standby else "") + f" w{srv.weight}"
            for srv in out.servers
        )
        ack = "acked" if out.require_ack_response else "no acks"
        return f"forward {servers} {ack} compress={out.compress} heartbeat={out.heartbeat_type}"
    if isinstance(out, StdoutOutput):
        return f"stdout format={out.format}"
    return "null (discard)"


# --- checks across fields -------------------------------------------------------------------------------


def _all_routes(config: Config) -> Iterator[tuple[tuple[Any, ...], Route]]:
    for i, route in enumerate(config.routes):
        yield ("routes", i), route
    for label, routes in config.labels.items():
        for i, route in enumerate(routes):
            yield ("labels", label, i), route


def _unknown(kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"unknown {kind} {name!r} (did you mean {close[0]!r}?)"
    if not known:
        return f"unknown {kind} {name!r} (none is defined)"
    return f"unknown {kind} {name!r} (defined: {', '.join(sorted(known))})"


def _check_pattern(text: str) -> str | None:
    try:
        from forwardd.router.match import compile_pattern
    except ImportError:  # the router is built separately; its absence must not block loading a config
        return None
    try:
        compile_pattern(text)
    except ValueError as exc:
        return str(exc)  # the router's message names the pattern and what is wrong with it
    return None


_FILTER_CLASSES = {
    "grep": "Grep",
    "record_modify": "RecordModify",
    "parser": "Parser",
    "tag_rewrite": "TagRewrite",
    "docker_partial": "DockerPartial",
    "docker_swarm": "DockerSwarm",
}


def _check_filter(f: Filter) -> str | None:
    """Build the filter once, so that what only it can judge (templates, field accessors) fails here."""
    try:
        import forwardd.filters as filters
    except ImportError:  # built separately; its absence must not block loading a config
        return None
    cls = getattr(filters, _FILTER_CLASSES[f.type], None)
    if cls is None:
        return None
    try:
        cls(name=f.type, **f.to_kwargs())
    except ValueError as exc:
        return str(exc)
    return None


def cross_check(config: Config) -> list[tuple[tuple[Any, ...], str]]:
    """Mistakes no single field shows: returns ``(key path, message)`` pairs, empty when all is well."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    add = problems.append
    outputs = list(config.outputs)
    labels = list(config.labels)

    for label in labels:
        if label == ROOT_LABEL:
            add((("labels", label), f"{ROOT_LABEL} is the root routes' name; put them under routes:"))

    for loc, route in _all_routes(config):
        error = _check_pattern(route.match)
        if error:
            add(((*loc, "match"), error))
        for j, name in enumerate(route.outputs):
            if name not in config.outputs:
                add(((*loc, "outputs", j), _unknown("output", name, outputs)))
        if route.relabel is not None and route.relabel != ROOT_LABEL and route.relabel not in config.labels:
            add(((*loc, "relabel"), _unknown("label", route.relabel, labels)))
        if not route.outputs and route.relabel is None:
            add((loc, "a route needs outputs or relabel (use an output of type null to discard events)"))
        for j, f in enumerate(route.filters):
            floc = (*loc, "filters", j)
            before = len(problems)
            if isinstance(f, GrepFilter) and not f.regexp and not f.exclude:
                add((floc, "grep needs at least one regexp or exclude rule"))
            if isinstance(f, ParserFilter):
                if f.format == "regex" and f.pattern is None:
                    add(((*floc, "pattern"), "format regex needs a pattern"))
                elif f.format == "regex" and f.pattern is not None and not re.compile(f.pattern).groupindex:
                    add(((*floc, "pattern"), "a parser pattern needs named groups like (?P<level>\\w+)"))
                elif f.format != "regex" and f.pattern is not None:
                    add(((*floc, "pattern"), f"pattern only applies to format regex, not {f.format}"))
            if len(problems) == before:
                error = _check_filter(f)
                if error:
                    add((floc, error))

    _check_relabel_cycles(config, add)
    _check_sources(config, labels, add)

    for name, out in config.outputs.items():
        oloc = ("outputs", name)
        buf = out.buffer
        if buf.segment_size > buf.max_size:
            add(((*oloc, "buffer", "segment_size"), "must not exceed buffer.max_size"))
        if buf.retry.initial > buf.retry.max:
            add(((*oloc, "buffer", "retry", "initial"), "must not exceed retry.max"))
        if isinstance(out, KafkaOutput) and out.idempotent and out.required_acks != "all":
            add(((*oloc, "required_acks"), "idempotent: true needs required_acks: all"))
        if (
            isinstance(out, KafkaOutput)
            and out.tls is not None
            and bool(out.tls.cert_file) != bool(out.tls.key_file)
        ):
            add(((*oloc, "tls"), "cert_file and key_file go together"))
        if isinstance(out, ForwardOutput):
            _check_forward(out, oloc, add)
        if isinstance(out, HttpOutput):
            if "${" in out.endpoint and not out.allowed_hosts:
                add(((*oloc, "allowed_hosts"), "required when the endpoint has ${...} placeholders"))
            if out.auth is not None and (out.auth.basic is None) == (out.auth.bearer is None):
                add(((*oloc, "auth"), "set exactly one of basic or bearer"))
            if out.tls is not None and bool(out.tls.cert_file) != bool(out.tls.key_file):
                add(((*oloc, "tls"), "cert_file and key_file go together"))
    return problems


def _check_forward(out: ForwardOutput, loc: tuple[Any, ...], add: Any) -> None:
    regular = [srv for srv in out.servers if not srv.standby]
    if not regular:
        add(((*loc, "servers"), "every server is standby: at least one must take writes"))
    elif not any(srv.weight > 0 for srv in regular):
        add(((*loc, "servers"), "every regular server has weight 0: nothing would be sent"))
    names: dict[str, int] = {}
    for i, srv in enumerate(out.servers):
        label = srv.name or f"{srv.host}:{srv.port}"
        if label in names:
            add(((*loc, "servers", i), f"server {label} is already servers[{names[label]}]"))
        names.setdefault(label, i)
    if out.tls is not None and bool(out.tls.cert_file) != bool(out.tls.key_file):
        add(((*loc, "tls"), "cert_file and key_file go together"))
    if out.security is not None and out.security.password and not out.security.username:
        add(((*loc, "security", "password"), "a password needs a username"))


def _check_relabel_cycles(config: Config, add: Any) -> None:
    # Relabelling never changes a tag by itself, so a cycle of labels could pass an event round forever.
    edges: dict[str, list[tuple[tuple[Any, ...], str]]] = {}
    for loc, route in _all_routes(config):
        if route.relabel is None:
            continue
        src = ROOT_LABEL if loc[0] == "routes" else loc[1]
        dst = route.relabel
        if dst == ROOT_LABEL or dst in config.labels:
            edges.setdefault(src, []).append(((*loc, "relabel"), dst))
    reported: set[frozenset[str]] = set()

    def walk(node: str, trail: list[str]) -> None:
        for loc, nxt in edges.get(node, []):
            if nxt in trail:
                cycle = [*trail[trail.index(nxt) :], nxt]
                key = frozenset(cycle)
                if key not in reported:
                    reported.add(key)
                    add((loc, f"relabel cycle: {' -> '.join(cycle)}"))
            else:
                walk(nxt, [*trail, nxt])

    for start in sorted(edges):
        walk(start, [start])


def _check_sources(config: Config, labels: list[str], add: Any) -> None:
    seen_names: dict[str, int] = {}
    tcp: list[tuple[int, str, int]] = []
    unix: dict[str, int] = {}
    for i, src in enumerate(config.sources):
        loc: tuple[Any, ...] = ("sources", i)
        if src.name in seen_names:
            add(
                (
                    (*loc, "name"),
                    f"source name {src.name!r} is already used by sources[{seen_names[src.name]}]",
                )
            )
        seen_names.setdefault(src.name, i)
        if src.label is not None and src.label != ROOT_LABEL and src.label not in config.labels:
            add(((*loc, "label"), _unknown("label", src.label, labels)))
        if src.unix is not None:
            explicit = {"bind", "port"} & src.model_fields_set
            if explicit:
                add((loc, f"set either unix or {'/'.join(sorted(explicit))}, not both"))
            key = os.path.normpath(src.unix.path)
            if key in unix:
                add(((*loc, "unix", "path"), f"socket path {key} is already used by sources[{unix[key]}]"))
            unix.setdefault(key, i)
        elif src.port != 0:
            for j, bind, port in tcp:
                if port == src.port and (bind == src.bind or {bind, src.bind} & {"0.0.0.0", "::", ""}):
                    add(((*loc, "port"), f"port {port} is already used by sources[{j}] ({bind}:{port})"))
                    break
            tcp.append((i, src.bind, src.port))
        if src.tag is not None and src.add_tag_prefix is not None:
            add((loc, "set either tag or add_tag_prefix, not both"))
        if src.tls is not None and src.tls.client_auth != "none" and src.tls.ca_file is None:
            add(((*loc, "tls", "ca_file"), f"client_auth: {src.tls.client_auth} needs a ca_file"))
        sec = src.security
        if sec is not None:
            usernames = [u.username for u in sec.users]
            if sec.user_auth and not sec.users:
                add(((*loc, "security", "users"), "user_auth: true needs at least one user"))
            for k, client in enumerate(sec.clients):
                cloc = (*loc, "security", "clients", k)
                if (client.host is None) == (client.network is None):
                    add((cloc, "set exactly one of host or network"))
                for m, user in enumerate(client.users):
                    if user not in usernames:
                        add(((*cloc, "users", m), _unknown("user", user, usernames)))
