"""forwardd's own logs, through structlog: JSON lines when not on a terminal (one object per line, for
log shippers), readable colour on a terminal. Event names are stable (``conn.protocol_error``,
``chunk.rejected``, ``buffer.full``...) and carry their context as keys (listener, peer, tag, output).

Logging never raises. What reaches a log line is often what a peer sent: a tag that is not UTF-8 (decoded
with ``surrogateescape``, so the str holds lone surrogates), record keys, exception texts quoting them.
Before the renderer, :func:`safe_value` turns every value into plain data that renders whatever its bytes
(undecodable bytes as ``\\xNN``, bytes likewise, integers past 64 bits as text, any other object as its
``repr``, or a placeholder when even that raises). The whole chain runs under a guard: should a processor
or the renderer still fail, a minimal valid ``log.render_failed`` line is written instead, and a stream
that cannot be written to loses the line, never its caller (one such failure once stopped the delivery of
an output for good). The console renderer's text is made encodable for its stream's encoding.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import orjson
import structlog
from structlog.tracebacks import ExceptionDictTransformer

__all__ = ["MAX_TEXT", "configure_logging", "safe_text", "safe_value"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

#: Longest text kept from one value; a peer's 60 MiB tag must not make a 60 MiB log line.
MAX_TEXT = 8192
#: Deepest nesting of containers kept in a value; what is deeper is shown as its (bounded) text.
MAX_DEPTH = 16
#: Most items kept from one container.
MAX_ITEMS = 256
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1

Processor = Callable[[Any, str, Any], Any]


def safe_text(s: str) -> str:
    """``s`` as text every encoder takes: undecodable bytes (surrogates) as ``\\xNN``, cut at MAX_TEXT."""
    if len(s) > MAX_TEXT:
        s = s[:MAX_TEXT] + f"...({len(s)} chars)"
    if s.isascii():
        return s
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        pass
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # surrogates that were no escaped bytes
        return s.encode("utf-8", "backslashreplace").decode("ascii")


def _repr(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception:
        try:
            return f"<{type(obj).__name__} object (repr failed)>"
        except Exception:
            return "<unrepresentable object>"
    return safe_text(text) if type(text) is str else "<unrepresentable object>"


def _key(k: Any) -> str:
    if type(k) is str:
        return safe_text(k)
    if type(k) is bytes:
        return safe_text(k.decode("utf-8", "backslashreplace"))
    return _repr(k)


def safe_value(v: Any, depth: int = 0) -> Any:
    """``v`` as plain data (str, int, float, bool, None, lists and str-keyed dicts of them) that the JSON
    and console renderers take whatever it holds; never raises."""
    t = type(v)
    if t is str:
        return safe_text(v)
    if v is None or t is bool or t is float:
        return v
    if t is int:
        return v if _INT_MIN <= v <= _INT_MAX else str(v)
    if t is bytes or t is bytearray or t is memoryview:
        return safe_text(bytes(v[: MAX_TEXT + 1]).decode("utf-8", "backslashreplace"))
    if depth >= MAX_DEPTH:
        return _repr(v)
    if isinstance(v, Mapping):
        try:
            items = list(v.items())[:MAX_ITEMS]
        except Exception:
            return _repr(v)
        return {_key(k): safe_value(x, depth + 1) for k, x in items}
    if t is list or t is tuple or t is set or t is frozenset:
        return [safe_value(x, depth + 1) for x in list(v)[:MAX_ITEMS]]
    if isinstance(v, BaseException):
        return _repr(v)
    return _repr(v)


def _sanitise(_: Any, __: str, event_dict: Any) -> Any:
    """The processor just before the renderer: every key and value made safe (see :func:`safe_value`);
    ``exc_info`` is left to the renderer (its text is made safe after rendering)."""
    out: dict[str, Any] = {}
    for k, v in event_dict.items():
        out[_key(k)] = v if k == "exc_info" else safe_value(v)
    return out


class _Guarded:
    """The processor chain as one processor that cannot raise.

    It runs ``processors`` (the last one renders). If any raises, the line becomes a minimal
    ``log.render_failed`` one naming the original event and the error. Console text is made encodable for
    ``encoding`` (the stream's: a terminal or a pipe may be ASCII) with ``\\xNN``/``\\uNNNN`` escapes.
    """

    def __init__(self, processors: list[Processor], *, json: bool, encoding: str | None) -> None:
        self.processors = processors
        self.json = json
        enc = (encoding or "utf-8").lower().replace("_", "-")
        self.encoding = None if enc in ("utf-8", "utf8") else enc

    def __call__(self, logger: Any, name: str, event_dict: Any) -> Any:
        original = event_dict.get("event") if isinstance(event_dict, dict) else None
        try:
            for proc in self.processors:
                event_dict = proc(logger, name, event_dict)
            out = event_dict
            if not self.json:
                out = self._text(out)
            return out
        except structlog.DropEvent:
            raise
        except Exception as exc:
            return self._fallback(name, original, exc)

    def _text(self, out: Any) -> Any:
        if type(out) is not str:
            return out
        if not out.isascii():
            out = _fix_long(out)
            if self.encoding is not None:
                try:
                    out.encode(self.encoding)
                except (UnicodeEncodeError, LookupError):
                    try:
                        out = out.encode(self.encoding, "backslashreplace").decode(self.encoding)
                    except LookupError:
                        out = out.encode("ascii", "backslashreplace").decode("ascii")
        return out

    def _fallback(self, level: str, original: Any, exc: Exception) -> Any:
        try:
            error = f"{type(exc).__name__}: {_repr(exc)}"
        except Exception:
            error = "unknown"
        line = {
            "event": "log.render_failed",
            "level": "error",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "original_event": safe_value(original),
            "original_level": safe_text(str(level)),
            "error": safe_text(error),
        }
        if self.json:
            return orjson.dumps(line)
        text = " ".join(f"{k}={v!r}" if k != "event" else str(v) for k, v in line.items())
        return text.encode("ascii", "backslashreplace").decode("ascii")


def _fix_long(s: str) -> str:
    """:func:`safe_text` without the cut: a rendered line keeps its length."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        try:
            return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            return s.encode("utf-8", "backslashreplace").decode("ascii")


class _SafeBytesLogger(structlog.BytesLogger):
    """Writes a rendered line; a stream that cannot take it (closed, EPIPE, full disk) loses the line,
    never its caller."""

    def msg(self, message: bytes) -> None:
        try:
            super().msg(message)
        except Exception:
            pass

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _SafePrintLogger(structlog.PrintLogger):
    """:class:`_SafeBytesLogger` for text streams."""

    def msg(self, message: str) -> None:
        try:
            super().msg(message)
        except Exception:
            pass

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


#: Tracebacks as dicts, without frame locals: they would copy record contents (and secrets) into log lines.
_NO_LOCALS = ExceptionDictTransformer(show_locals=False, use_rich=False)


def configure_logging(
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    stream: Any = None,
    *,
    cache: bool = True,
) -> None:
    """Set up structlog for the daemon; ``auto`` picks console on a TTY, JSON otherwise.

    ``cache=False`` keeps loggers from binding to this configuration for good (tests that configure twice).
    """
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    chain: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        chain += [
            structlog.processors.ExceptionRenderer(_NO_LOCALS),
            _sanitise,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        binary = getattr(stream, "buffer", stream)
        factory: Any = lambda *_: _SafeBytesLogger(binary)  # noqa: E731
        guarded = _Guarded(chain, json=True, encoding="utf-8")
    else:
        colors = bool(getattr(stream, "isatty", lambda: False)())
        chain += [_sanitise, structlog.dev.ConsoleRenderer(colors=colors)]
        factory = lambda *_: _SafePrintLogger(stream)  # noqa: E731
        guarded = _Guarded(chain, json=False, encoding=getattr(stream, "encoding", None))
    structlog.configure(
        processors=[guarded],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=cache,
    )
