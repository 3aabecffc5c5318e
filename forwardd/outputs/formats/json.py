"""The ``json`` format: JSON lines, ``{"time":"2024-01-02T03:04:05.123456789Z","tag":"docker.web",...record}``
and a newline, for the file output and as the bodies of HTTP requests and Kafka messages.

The event time goes under ``time_key`` as RFC 3339 UTC with always nine fraction digits (fixed width, so
lines sort as text and nothing is lost), the tag under ``tag_key``; either key can be ``None`` to leave it
out. Both come first; if the record already has that key, the injected value wins (as Fluentd's
``<inject>``).

Three ways to the same text, fastest first: :func:`native_json_lines` (the C transcoder,
``forwardd/outputs/_jsonl.c``, straight from a plain chunk's msgpack bytes), :func:`plain_json_lines`
(msgspec over a plain chunk's decoded columns), :func:`json_lines` (orjson over decoded events, any record).

Values JSON cannot hold natively (records are decoded with ``surrogateescape``, so strings may carry
undecodable bytes): ``bytes`` and invalid UTF-8 in strings and keys become text with ``\\xNN`` escapes
(``backslashreplace``; readable, and reversible unless the record itself contained such escapes), nested
EventTime values and msgpack Timestamps (ext -1) become the same RFC 3339 string as the event time (a
Timestamp outside gmtime's range keeps its bytes, as below), other msgpack ext values become
``{"ext": code, "data": base64}``, non-string keys become their JSON text (``1``, ``null``, ``1.5``) or, for
anything else (an ext value, an array), their Python text, integers beyond 64 bits become strings, NaN and
infinities become ``null`` (JSON has no such numbers). The common case pays nothing for this: orjson runs
first and only a record it rejects is sanitised. A value nested deeper than :data:`MAX_JSON_DEPTH`
containers (orjson's limit; an ext value counts as one, being written as a map) cannot be JSON:
UnprocessableError.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from itertools import repeat
from types import ModuleType
from typing import Any

import msgpack
import msgspec
import orjson

from forwardd.constants import NS
from forwardd.errors import UnprocessableError
from forwardd.model import Chunk, Event, EventTime, PlainEntries
from forwardd.outputs.formats.common import fix_str, rfc3339_ns, second_utc, unprocessable

_jsonl: ModuleType | None
try:  # the C transcoder (forwardd/outputs/_jsonl.c); optional at build time, see native_json_lines
    from forwardd.outputs import _jsonl
except ImportError:  # pragma: no cover - exercised only where the extension could not be built
    _jsonl = None

__all__ = [
    "MAX_JSON_DEPTH",
    "NATIVE",
    "JsonLines",
    "encode_json",
    "encode_json_lines",
    "json_lines",
    "native_json_lines",
    "native_json_values",
    "plain_json_lines",
    "to_json",
]

_NL = orjson.OPT_APPEND_NEWLINE
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
_ABSENT = object()  # a key no record holds

#: The most containers a record may nest (the record's own map included) and still be written as JSON: orjson
#: refuses deeper values, and the fallback does not recurse past it either (a Python recursion that deep
#: would end in RecursionError, which used to escape and stop the output).
MAX_JSON_DEPTH = 254


def _json_default(obj: Any) -> Any:
    """orjson's hook for the non-JSON values msgpack records carry."""
    t = type(obj)
    if t is bytes or t is bytearray or t is memoryview:
        return bytes(obj).decode("utf-8", "backslashreplace")
    if t is EventTime:
        return rfc3339_ns(obj.to_ns())
    if t is msgpack.ExtType:
        return {"ext": obj.code, "data": base64.b64encode(obj.data).decode("ascii")}
    if t is msgpack.Timestamp:  # msgpack's own timestamp (ext -1), which the unpacker builds itself
        try:
            return rfc3339_ns(obj.to_unix_nano())
        except (OverflowError, OSError, ValueError):  # outside what gmtime can write: keep its bytes
            return {"ext": -1, "data": base64.b64encode(obj.to_bytes()).decode("ascii")}
    raise TypeError(f"cannot encode {t.__name__} as JSON")


def _key(k: Any) -> str:
    t = type(k)
    if t is str:
        return fix_str(k)
    if t is bytes:
        return k.decode("utf-8", "backslashreplace")  # type: ignore[no-any-return]
    if k is None or t is bool or (t is int and _INT_MIN <= k <= _INT_MAX) or t is float:
        return orjson.dumps(k).decode()
    try:
        return fix_str(str(k))
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
        return fix_str(obj)
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


def to_json(obj: Any, option: int, drop: tuple[str | None, str | None] = (None, None)) -> bytes:
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
    chunk: Chunk,
    *,
    time_key: str | None = "time",
    tag_key: str | None = "tag",
    release_gil: bool = False,
) -> JsonLines | None:
    """The text of :func:`plain_json_lines` for ``chunk``, written by the C transcoder straight from the
    entries' bytes; None when the extension is missing or an entry is not plain in its stricter sense
    (it also refuses duplicate keys, maps of more than 64 keys, fractions of a second >= 1 and years past
    9999), and then :func:`encode_json_lines` is the way.

    ``release_gil``: from a thread other than the event loop's, a big chunk is written with the GIL
    released, beside the loop. Not from the loop itself: it would hand the GIL to other threads and then
    wait for it back."""
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
        release_gil,
    )
    return None if out is None else JsonLines(*out)


def native_json_values(
    chunk: Chunk, start: int, limit: int, *, time_key: str | None = "time", tag_key: str | None = "tag"
) -> tuple[list[bytes], int] | None:
    """The lines :func:`native_json_lines` writes, one ``bytes`` each without its newline, for at most
    ``limit`` entries from byte offset ``start`` of the chunk's entries: ``(values, offset after them)``.

    For a caller that walks a chunk in slices (one Kafka message per event): no text of the whole chunk is
    built and split again. None when the extension is missing or one of those entries is not plain; then
    :func:`encode_json_lines` has the rules, and its lines are these values for the entries they share."""
    if _jsonl is None or (time_key is not None and time_key == tag_key):
        return None
    try:
        got: tuple[list[bytes], int] | None = _jsonl.json_values(
            chunk.entries,
            start,
            limit,
            chunk.received_ns,
            None if time_key is None else _json_str(time_key) + b':"',
            None if tag_key is None else _tag_field(tag_key, chunk.tag),
            None if time_key is None else _utf8(time_key),
            None if tag_key is None else _utf8(tag_key),
        )
    except Exception as exc:  # out of memory on one huge record: as every encoder, about the data
        raise UnprocessableError(f"cannot encode: {type(exc).__name__}: {exc}") from exc
    return got


def _json_str(text: str) -> bytes:
    """A JSON string; text holding surrogates (a tag that was not UTF-8) is made readable first."""
    try:
        return _PLAIN_JSON.encode(text)
    except UnicodeEncodeError:
        return _PLAIN_JSON.encode(fix_str(text))


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
        tag = fix_str(tag)
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
            fields.append(enc(time_key) + b':"' + _esc(second_utc(lo).encode()) + b'.%09dZ"')
        else:
            heads = {s: second_utc(s).encode() + b"." for s in set(seconds)}
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
    ns_ = NS
    last_s = -1
    head = ""
    for s, n, rec in zip(plain.seconds, plain.nanos, plain.records, strict=True):
        if s != last_s:
            last_s = s
            head = second_utc(s) + "."
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
        tag_part = to_json(tag_key, 0) + b":" + to_json(tag, 0)
    buf = bytearray()
    if time_key is None and not tag_part:
        for ev in events:  # into one buffer: a list of orjson results is slow to free (heap trimming)
            buf += to_json(ev.record, _NL)
        return bytes(buf)
    tk = b"{" + to_json(time_key, 0) + b':"' if time_key is not None else b""
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
            body = to_json(rec, nl, (time_key, tag_key))
        if time_key is None:
            buf += static
        else:
            s, n = divmod(ev.time_ns, NS)
            if s != last_s:
                last_s = s
                head = tk + second_utc(s).encode() + b"."
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
