"""Record encoders shared by the file, Kafka and HTTP outputs.

Three formats, each as a per-event function (Kafka and HTTP send one message per event) and a per-batch
function that returns one ``bytes`` for many events (the file output writes a batch with one syscall):

``json`` (JSON lines)
    ``{"time":"2024-01-02T03:04:05.123456789Z","tag":"docker.web",...record}`` and a newline. The event time
    goes under ``time_key`` as RFC 3339 UTC with always nine fraction digits (fixed width, so lines sort as
    text and nothing is lost), the tag under ``tag_key``; either key can be ``None`` to leave it out. Both
    come first; if the record already has that key, the injected value wins (as Fluentd's ``<inject>``).
``msgpack``
    ``[EventTime, record]`` per event: the PackedForward entry shape, so a file of them is exactly the
    ``entries`` of a forward message and can be replayed. The tag is not stored (put ``${tag}`` in the path);
    v1.5 per-event metadata is not written.
``fluentd``
    Fluentd ``out_file``'s default ``time<TAB>tag<TAB>json`` line, time as ``2024-01-02T03:04:05+00:00``
    (whole seconds, as Fluentd writes it) in UTC or local time. Tabs and newlines in the tag are escaped so
    a line stays a line.

Values JSON cannot hold natively (records are decoded with ``surrogateescape``, so strings may carry
undecodable bytes): ``bytes`` and invalid UTF-8 in strings and keys become text with ``\\xNN`` escapes
(``backslashreplace``; readable, and reversible unless the record itself contained such escapes), nested
EventTime values become the same RFC 3339 string as the event time, other msgpack ext values become
``{"ext": code, "data": base64}``, non-string keys become their JSON text (``1``, ``null``, ``1.5``) or, for
anything else (an ext value, an array), their Python text, integers beyond 64 bits become strings, NaN and
infinities become ``null`` (JSON has no such numbers). The common case pays nothing for this: orjson runs
first and only a record it rejects is sanitised.

Errors. A record that cannot be encoded at all raises :class:`~forwardd.errors.UnprocessableError`, and
nothing else does (every encoder here promises it; the delivery loop then isolates that event and
dead-letters it alone): JSON of a value nested deeper than :data:`MAX_JSON_DEPTH` containers (orjson's
limit; an ext value counts as one, being written as a map), an event time ``gmtime`` cannot represent
(about 6.7e16 seconds and more: past year two billion), and in the msgpack formats an integer beyond 64
bits, nesting past msgpack's packer limit or a string holding surrogates that did not come from undecodable
bytes (the last two only in records built in code, not in records decoded from msgpack).
"""

from __future__ import annotations

import base64
import functools
import struct
import time
from collections.abc import Callable, Sequence
from itertools import repeat
from types import ModuleType
from typing import Any, ParamSpec, TypeVar

import msgpack
import msgspec
import orjson

from forwardd.errors import UnprocessableError
from forwardd.model import EVENT_TIME_EXT, Chunk, Event, EventTime, PlainEntries

_jsonl: ModuleType | None
try:  # the C transcoder (forwardd/outputs/_jsonl.c); optional at build time, see native_json_lines
    from forwardd.outputs import _jsonl
except ImportError:  # pragma: no cover - exercised only where the extension could not be built
    _jsonl = None

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
    "fluentd_lines",
    "json_lines",
    "make_encoder",
    "make_plain_encoder",
    "msgpack_entries",
    "native_json_lines",
    "plain_json_lines",
    "rfc3339_ns",
    "unprocessable",
]

_NS = 1_000_000_000
_NL = orjson.OPT_APPEND_NEWLINE
_II = struct.Struct(">II")
_U32 = 0xFFFFFFFF
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
_ABSENT = object()  # a key no record holds

#: The most containers a record may nest (the record's own map included) and still be written as JSON: orjson
#: refuses deeper values, and the fallback does not recurse past it either (a Python recursion that deep
#: would end in RecursionError, which used to escape and stop the output).
MAX_JSON_DEPTH = 254

_P = ParamSpec("_P")
_R = TypeVar("_R")


def unprocessable(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Make ``fn`` raise nothing but :class:`UnprocessableError`: any exception while encoding (an odd
    value, RecursionError, MemoryError on one huge record, a time out of range) is about the data, and the
    delivery loop needs to know that, not the exception's type. A ``try`` costs nothing when nothing
    raises."""

    @functools.wraps(fn)
    def encode(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except UnprocessableError:
            raise
        except Exception as exc:
            raise UnprocessableError(f"cannot encode: {type(exc).__name__}: {exc}") from exc

    return encode


#: A batch encoder as the file output uses it: events of one tag → bytes.
Encoder = Callable[[Sequence[Event], str], bytes]
#: The same for a plain chunk's columns (:meth:`Chunk.plain_entries`), where a format has a faster way.
PlainEncoder = Callable[[PlainEntries, str], bytes]


def _second_utc(s: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s))


def rfc3339_ns(ns: int) -> str:
    """``2024-01-02T03:04:05.123456789Z``: the one time text of the JSON format."""
    s, n = divmod(ns, _NS)
    return f"{_second_utc(s)}.{n:09d}Z"


def _fix_str(s: str) -> str:
    """Valid UTF-8 text for a string holding surrogates: undecodable bytes shown as ``\\xNN``."""
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that did not come from surrogateescape
        return s.encode("utf-8", "backslashreplace").decode("ascii")


def _json_default(obj: Any) -> Any:
    """orjson's hook for the non-JSON values msgpack records carry."""
    t = type(obj)
    if t is bytes or t is bytearray or t is memoryview:
        return bytes(obj).decode("utf-8", "backslashreplace")
    if t is EventTime:
        return rfc3339_ns(obj.to_ns())
    if t is msgpack.ExtType:
        return {"ext": obj.code, "data": base64.b64encode(obj.data).decode("ascii")}
    raise TypeError(f"cannot encode {t.__name__} as JSON")


def _key(k: Any) -> str:
    t = type(k)
    if t is str:
        return _fix_str(k)
    if t is bytes:
        return k.decode("utf-8", "backslashreplace")  # type: ignore[no-any-return]
    if k is None or t is bool or (t is int and _INT_MIN <= k <= _INT_MAX) or t is float:
        return orjson.dumps(k).decode()
    try:
        return _fix_str(str(k))
    except Exception:  # a key whose str() raises: only code-built records can hold one
        return f"<{t.__name__}>"


def _too_deep() -> UnprocessableError:
    return UnprocessableError(f"a value nests more than {MAX_JSON_DEPTH} containers: cannot be JSON")


def _sanitise(obj: Any, room: int = MAX_JSON_DEPTH) -> Any:
    """A copy of ``obj`` that orjson accepts; only called for the rare record it rejected.

    ``room`` is how many more containers may nest here: past it the record cannot be JSON (orjson's own
    limit) and UnprocessableError says so before Python's recursion limit is anywhere near (loops, not
    comprehensions, so one frame per level).
    """
    t = type(obj)
    if t is str:
        return _fix_str(obj)
    if t is dict:
        if room <= 0:
            raise _too_deep()
        d: dict[str, Any] = {}
        for k, v in obj.items():
            d[_key(k)] = _sanitise(v, room - 1)
        return d
    if t is list or t is tuple:
        if room <= 0:
            raise _too_deep()
        out: list[Any] = []
        for v in obj:
            out.append(_sanitise(v, room - 1))
        return out
    if t is int and not _INT_MIN <= obj <= _INT_MAX:
        return str(obj)
    return obj


def _dumps(obj: Any, option: int, drop: tuple[str | None, str | None] = (None, None)) -> bytes:
    """orjson's text of ``obj``, sanitised if orjson refuses it; ``drop`` names keys of a record that the
    injected time and tag replace (a bytes key ``b"time"`` only reads as ``"time"`` once sanitised)."""
    try:
        return orjson.dumps(obj, default=_json_default, option=option)
    except TypeError:  # orjson.JSONEncodeError is a TypeError: surrogates, bytes keys, huge ints, depth
        pass
    clean = _sanitise(obj)
    if type(clean) is dict and (drop[0] in clean or drop[1] in clean):
        clean = {k: v for k, v in clean.items() if k != drop[0] and k != drop[1]}
    try:
        return orjson.dumps(clean, default=_json_default, option=option)
    except TypeError as exc:  # a value of a type no record decoded from msgpack holds
        raise UnprocessableError(f"cannot encode a record as JSON: {exc}") from exc


# ---------------------------------------------------------------------------------------------- JSON


def _without(rec: dict[Any, Any], k1: str | None, k2: str | None) -> dict[Any, Any]:
    """The record minus keys that the injected time/tag replace (a copy only when it has them)."""
    if (k1 is not None and k1 in rec) or (k2 is not None and k2 in rec):
        return {k: v for k, v in rec.items() if k != k1 and k != k2}
    return rec


_PLAIN_JSON = msgspec.json.Encoder()

#: True when the C transcoder was built: plain chunks then become JSON lines without a Python object per
#: event (about 0.3 us per docker-sized event, against about 2 us through msgspec).
NATIVE = _jsonl is not None


class JsonLines:
    """A chunk's JSON lines from the C transcoder: ``data`` holds one line per event, in chunk order;
    ``runs`` lists ``(second, end offset, end index)`` for each run of consecutive events whose time falls
    in the same second, so that callers that split by time (path templates) never parse the text."""

    __slots__ = ("count", "data", "runs")

    def __init__(self, data: bytes, runs: list[tuple[int, int, int]]) -> None:
        self.data = data
        self.runs = runs
        self.count = runs[-1][2]


@unprocessable
def native_json_lines(
    chunk: Chunk, *, time_key: str | None = "time", tag_key: str | None = "tag"
) -> JsonLines | None:
    """The text of :func:`plain_json_lines` for ``chunk``, written by the C transcoder straight from the
    entries' bytes; None when the extension is missing or an entry is not plain in its stricter sense
    (it also refuses duplicate keys, maps of more than 64 keys, fractions of a second >= 1 and years past
    9999), and then :func:`encode_json_lines` is the way."""
    if _jsonl is None or (time_key is not None and time_key == tag_key):
        return None
    out = _jsonl.json_lines(
        chunk.entries,
        chunk.count,
        chunk.received_ns,
        None if time_key is None else _json_str(time_key) + b':"',
        None if tag_key is None else _tag_field(tag_key, chunk.tag),
        None if time_key is None else _utf8(time_key),
        None if tag_key is None else _utf8(tag_key),
    )
    return None if out is None else JsonLines(*out)


def _json_str(text: str) -> bytes:
    """A JSON string; text holding surrogates (a tag that was not UTF-8) is made readable first."""
    try:
        return _PLAIN_JSON.encode(text)
    except UnicodeEncodeError:
        return _PLAIN_JSON.encode(_fix_str(text))


def _utf8(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def _tag_field(tag_key: str, tag: str) -> bytes:
    return _json_str(tag_key) + b":" + _json_str(tag)


@unprocessable
def plain_json_lines(
    plain: PlainEntries, tag: str, *, time_key: str | None = "time", tag_key: str | None = "tag"
) -> bytes:
    """:func:`json_lines` for a plain chunk's columns (string keys, JSON values: see
    :meth:`Chunk.plain_entries`), three to five times faster.

    Such records need none of the general path's hooks, so msgspec encodes all of them in one call, one
    line each. The injected keys are then spliced in front of every line by one bytes formatting over the
    whole batch (a raw newline never occurs inside a JSON line, so ``\\n{`` only ever starts a record).
    Batches with an empty record, or a record that has a key of an injected name, take
    :func:`_plain_json_dicts` instead. The text is the general path's except that floats in exponent form
    read ``1e16``, not ``1e+16``.
    """
    records = plain.records
    if (time_key is None and tag_key is None) or not records:
        return _PLAIN_JSON.encode_lines(records)
    if not tag.isascii():  # a tag that was not UTF-8 holds surrogates: written as the general path does
        tag = _fix_str(tag)
    if time_key is not None and time_key == tag_key:  # both in one key: the general path's rules
        return json_lines(plain.events(), tag, time_key=time_key, tag_key=tag_key)
    if {} in records or any(
        any(map(dict.__contains__, records, repeat(key))) for key in (time_key, tag_key) if key is not None
    ):
        return _plain_json_dicts(plain, tag, time_key, tag_key)
    parts = _PLAIN_JSON.encode_lines(records)[1:-1].split(b"\n{")  # each record without its "{"
    enc = _json_str
    fields: list[bytes] = []
    columns: list[Sequence[Any]] = []
    if time_key is not None:
        seconds = plain.seconds
        lo, hi = min(seconds), max(seconds)
        if lo == hi:  # one second for the whole batch (the usual case): only the fractions vary
            fields.append(enc(time_key) + b':"' + _esc(_second_utc(lo).encode()) + b'.%09dZ"')
        else:
            heads = {s: _second_utc(s).encode() + b"." for s in set(seconds)}
            fields.append(enc(time_key) + b':"%b%09dZ"')
            columns.append(list(map(heads.__getitem__, seconds)))
        columns.append(plain.nanos)
    if tag_key is not None:
        fields.append(_esc(_tag_field(tag_key, tag)))
    columns.append(parts)
    line = b"{" + b",".join(fields) + b",%b\n"
    k = len(columns)
    args: list[Any] = [None] * (k * len(parts))
    for i, col in enumerate(columns):
        args[i::k] = col
    return (line * len(parts)) % tuple(args)


def _esc(text: bytes) -> bytes:
    return text.replace(b"%", b"%%")


def _plain_json_dicts(plain: PlainEntries, tag: str, time_key: str | None, tag_key: str | None) -> bytes:
    """:func:`plain_json_lines` one dict per line, for batches with empty records or records that have a
    key of an injected name (the injected value wins, in first place)."""
    lines: list[dict[str, Any]] = []
    append = lines.append
    if time_key is None:
        assert tag_key is not None
        for rec in plain.records:
            d = {tag_key: tag, **rec}
            d[tag_key] = tag
            append(d)
        return _PLAIN_JSON.encode_lines(lines)
    ns_ = _NS
    last_s = -1
    head = ""
    for s, n, rec in zip(plain.seconds, plain.nanos, plain.records, strict=True):
        if s != last_s:
            last_s = s
            head = _second_utc(s) + "."
        tv = head + str(n + ns_)[1:] + "Z"  # n < 1e9: "1" and nine digits, the "1" cut off
        if tag_key is None:
            d = {time_key: tv, **rec}
            d[time_key] = tv
        else:
            d = {time_key: tv, tag_key: tag, **rec}
            d[time_key] = tv
            d[tag_key] = tag
        append(d)
    return _PLAIN_JSON.encode_lines(lines)


@unprocessable
def json_lines(
    events: Sequence[Event],
    tag: str,
    *,
    time_key: str | None = "time",
    tag_key: str | None = "tag",
) -> bytes:
    """JSON lines for events of one tag, built in one buffer.

    Each record is dumped alone and spliced after a prefix holding time and tag, so no per-event dict is
    built; the seconds part of the time text is formatted once per distinct second. (Plain chunks have
    the faster :func:`plain_json_lines`.)
    """
    tag_part = b""
    if tag_key is not None:
        tag_part = _dumps(tag_key, 0) + b":" + _dumps(tag, 0)
    buf = bytearray()
    if time_key is None and not tag_part:
        for ev in events:  # into one buffer: a list of orjson results is slow to free (heap trimming)
            buf += _dumps(ev.record, _NL)
        return bytes(buf)
    tk = b"{" + _dumps(time_key, 0) + b':"' if time_key is not None else b""
    mid = b'Z",' + tag_part if tag_part else b'Z"'
    static = b"{" + tag_part
    dumps = orjson.dumps
    dflt = _json_default
    nl = _NL
    k1: Any = _ABSENT if time_key is None else time_key
    k2: Any = _ABSENT if tag_key is None else tag_key
    last_s = -1
    head = b""
    pos = 0
    for ev in events:
        rec = ev.record
        if k1 in rec or k2 in rec:
            rec = _without(rec, time_key, tag_key)
        try:
            body = dumps(rec, default=dflt, option=nl)
        except TypeError:
            body = _dumps(rec, nl, (time_key, tag_key))
        if time_key is None:
            buf += static
        else:
            s, n = divmod(ev.time_ns, _NS)
            if s != last_s:
                last_s = s
                head = tk + _second_utc(s).encode() + b"."
            buf += b"%b%09d%b" % (head, n, mid)
        if len(body) == 3:  # b"{}\n": an empty record adds nothing after the injected keys
            buf += b"}\n"
        else:
            pos = len(buf)
            buf += body
            buf[pos] = 44  # the record's "{" becomes the "," after the injected keys
    return bytes(buf)


@unprocessable
def encode_json(
    event: Event,
    tag: str,
    *,
    time_key: str | None = "time",
    tag_key: str | None = "tag",
    newline: bool = False,
) -> bytes:
    """One event as a JSON object (the Kafka/HTTP message body); same fields as :func:`json_lines`."""
    line = json_lines((event,), tag, time_key=time_key, tag_key=tag_key)
    return line if newline else line[:-1]


@unprocessable
def encode_json_lines(chunk: Chunk, time_key: str | None = "time", tag_key: str | None = "tag") -> bytes:
    """Every event of ``chunk`` as JSON lines."""
    native = native_json_lines(chunk, time_key=time_key, tag_key=tag_key)
    if native is not None:
        return native.data
    plain = chunk.plain_entries()
    if plain is not None:
        return plain_json_lines(plain, chunk.tag, time_key=time_key, tag_key=tag_key)
    return json_lines(chunk.events(), chunk.tag, time_key=time_key, tag_key=tag_key)


# ------------------------------------------------------------------------------------------- msgpack


def _msgpack_default(obj: Any) -> Any:
    if type(obj) is EventTime:
        return obj.to_ext()
    raise TypeError(f"cannot encode {type(obj).__name__} as msgpack")


def _packer() -> msgpack.Packer:
    return msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape", default=_msgpack_default)


#: A 2-array header followed by the fixext8 EventTime type bytes.
_ENTRY_HEAD = b"\x92\xd7" + bytes((EVENT_TIME_EXT,))


@unprocessable
def msgpack_entries(events: Sequence[Event]) -> bytes:
    """``[EventTime, record]`` per event, concatenated: PackedForward entries."""
    pack = _packer().pack
    buf = bytearray()
    ii = _II.pack
    for ev in events:
        s, n = divmod(ev.time_ns, _NS)
        if s <= _U32:
            buf += _ENTRY_HEAD
            buf += ii(s, n)
        else:  # past 2106: EventTime cannot hold it; whole seconds as an integer still can
            buf += b"\x92"
            buf += pack(s)
        buf += pack(ev.record)
    return bytes(buf)


@unprocessable
def encode_msgpack(event: Event, tag: str = "") -> bytes:
    """One event as ``[EventTime, record]``; ``tag`` is accepted for symmetry and not stored."""
    return msgpack_entries((event,))


@unprocessable
def encode_msgpack_entries(chunk: Chunk) -> bytes:
    return msgpack_entries(chunk.events())


# ------------------------------------------------------------------------------------------- fluentd

_TAG_ESCAPES = str.maketrans({"\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _fluentd_second(s: int, utc: bool) -> str:
    if utc:
        return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(s))
    tm = time.localtime(s)
    off = tm.tm_gmtoff // 60
    sign = "+" if off >= 0 else "-"
    h, m = divmod(abs(off), 60)
    return time.strftime("%Y-%m-%dT%H:%M:%S", tm) + f"{sign}{h:02d}:{m:02d}"


@unprocessable
def fluentd_lines(events: Sequence[Event], tag: str, *, utc: bool = True) -> bytes:
    """Fluentd ``out_file`` lines: ``time<TAB>tag<TAB>json``."""
    tag_b = b"\t" + _fix_str(tag).translate(_TAG_ESCAPES).encode() + b"\t"
    buf = bytearray()
    last_s = -1
    stamp = b""
    for ev in events:
        s = ev.time_ns // _NS
        if s != last_s:
            last_s = s
            stamp = _fluentd_second(s, utc).encode() + tag_b
        buf += stamp
        buf += _dumps(ev.record, _NL)
    return bytes(buf)


@unprocessable
def encode_fluentd_line(event: Event, tag: str, *, utc: bool = True) -> bytes:
    return fluentd_lines((event,), tag, utc=utc)


@unprocessable
def encode_fluentd_lines(chunk: Chunk, utc: bool = True) -> bytes:
    return fluentd_lines(chunk.events(), chunk.tag, utc=utc)


# ------------------------------------------------------------------------------------------ selection


def make_plain_encoder(
    fmt: str, *, time_key: str | None = "time", tag_key: str | None = "tag"
) -> PlainEncoder | None:
    """The faster batch encoder for plain chunks, for the formats that have one (JSON lines)."""
    if fmt == "json":
        return lambda plain, tag: plain_json_lines(plain, tag, time_key=time_key, tag_key=tag_key)
    return None


FORMATS = ("json", "msgpack", "fluentd")


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
