"""Record encoders shared by the file, Kafka and HTTP outputs, one module per format, and the choice of one
by its configured name.

Three formats, each as a per-event function (Kafka and HTTP send one message per event) and a per-batch
function that returns one ``bytes`` for many events (the file output writes a batch with one syscall):
``json`` (JSON lines, :mod:`.json`, with the C transcoder's glue), ``msgpack`` (forward entries, and the
maps HTTP and Kafka send, :mod:`.msgpack`) and ``fluentd`` (Fluentd ``out_file``'s line, :mod:`.fluentd`).

Errors. A record that cannot be encoded at all raises :class:`~forwardd.errors.UnprocessableError`, and
nothing else does (every encoder here promises it, see :func:`.common.unprocessable`; the delivery loop then
isolates that event and dead-letters it alone): JSON of a value nested deeper than :data:`MAX_JSON_DEPTH`
containers, an event time ``gmtime`` cannot represent (about 6.7e16 seconds and more: past year two
billion), and in the msgpack formats an integer beyond 64 bits, nesting past msgpack's packer limit or a
string holding surrogates that did not come from undecodable bytes (the last two only in records built in
code, not in records decoded from msgpack).
"""

from __future__ import annotations

from forwardd.outputs.formats.common import Encoder, PlainEncoder, rfc3339_ns, unprocessable
from forwardd.outputs.formats.fluentd import encode_fluentd_line, encode_fluentd_lines, fluentd_lines
from forwardd.outputs.formats.json import (
    MAX_JSON_DEPTH,
    NATIVE,
    JsonLines,
    encode_json,
    encode_json_lines,
    json_lines,
    native_json_lines,
    native_json_values,
    plain_json_lines,
)
from forwardd.outputs.formats.msgpack import (
    encode_msgpack,
    encode_msgpack_entries,
    encode_msgpack_maps,
    msgpack_entries,
)

__all__ = [
    "FORMATS",
    "MAX_JSON_DEPTH",
    "NATIVE",
    "Encoder",
    "JsonLines",
    "PlainEncoder",
    "encode_fluentd_line",
    "encode_fluentd_lines",
    "encode_json",
    "encode_json_lines",
    "encode_msgpack",
    "encode_msgpack_entries",
    "encode_msgpack_maps",
    "fluentd_lines",
    "json_lines",
    "make_encoder",
    "make_plain_encoder",
    "msgpack_entries",
    "native_json_lines",
    "native_json_values",
    "plain_json_lines",
    "rfc3339_ns",
    "unprocessable",
]

FORMATS = ("json", "msgpack", "fluentd")


def make_plain_encoder(
    fmt: str, *, time_key: str | None = "time", tag_key: str | None = "tag"
) -> PlainEncoder | None:
    """The faster batch encoder for plain chunks, for the formats that have one (JSON lines)."""
    if fmt == "json":
        return lambda plain, tag: plain_json_lines(plain, tag, time_key=time_key, tag_key=tag_key)
    return None


def make_encoder(
    fmt: str, *, time_key: str | None = "time", tag_key: str | None = "tag", utc: bool = True
) -> Encoder:
    """The batch encoder for a format name; raises ValueError for an unknown one."""
    if fmt == "json":
        return lambda events, tag: json_lines(events, tag, time_key=time_key, tag_key=tag_key)
    if fmt == "msgpack":
        return lambda events, tag: msgpack_entries(events)
    if fmt == "fluentd":
        return lambda events, tag: fluentd_lines(events, tag, utc=utc)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
