"""The edge's log lines: safe whatever a peer sent, never a reason for a connection to fail, and bounded.

A peer chooses the bytes of its tags, host names and user names; tags are decoded with ``surrogateescape``
so that they go out again as they came. A ``str`` holding surrogates cannot be encoded as UTF-8, so a JSON
renderer raised on it, out of a log call in ``data_received``, and the transport was aborted with acks owed.
Here every value is made renderable first (surrogates become ``\\udcff``-style escapes), and a log call that
raises all the same (a renderer, a full disk under the log file) is swallowed and counted: logging is not
worth a connection.

What a peer can make happen once per connection (a protocol error, a slow client closing mid-frame, a
refused connection) could flood the log: those lines go through :meth:`EdgeLog.limited`, at most ``burst``
per event name every ``period`` seconds. The next line that gets through, or :meth:`EdgeLog.flush` (called
by the listener every period and when it stops), says how many were suppressed, so nobody wonders whether
something was lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

__all__ = ["EdgeLog", "safe"]


def safe(value: Any) -> Any:
    """``value`` as any renderer can write it: text without surrogates, containers of such values."""
    t = type(value)
    if t is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return value
    if t in (int, float, bool) or value is None:
        return value
    if t is bytes or t is bytearray:
        return bytes(value).decode("utf-8", "backslashreplace")
    if t in (tuple, list):
        return [safe(v) for v in value]
    if t is dict:
        return {safe(k) if type(k) is str else safe(repr(k)): safe(v) for k, v in value.items()}
    return safe(repr(value))


class EdgeLog:
    """Log lines for the edge (see the module docstring)."""

    def __init__(
        self,
        logger: Any = None,
        period: float = 10.0,
        burst: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger if logger is not None else structlog.get_logger("forwardd.server")
        self._clock = clock
        self.period = period
        self.burst = burst
        self._windows: dict[str, list[Any]] = {}  # event -> [window start, lines, suppressed, level, context]
        #: Log calls that raised and were swallowed (a broken renderer or log file must not go unseen).
        self.failures = 0

    def log(self, level: str, event: str, **kw: Any) -> None:
        """One line, always; never raises."""
        try:
            getattr(self._log, level)(event, **{k: safe(v) for k, v in kw.items()})
        except Exception:
            self.failures += 1

    def limited(self, level: str, event: str, **kw: Any) -> None:
        """One line, unless ``burst`` lines of this event went out in the current period."""
        now = self._clock()
        w = self._windows.get(event)
        if w is None or now - w[0] >= self.period:
            if w is not None and w[2]:
                kw["suppressed_since_last"] = w[2]
            self._windows[event] = [now, 1, 0, level, None]
        elif w[1] < self.burst:
            w[1] += 1
        else:
            w[2] += 1
            w[3] = level
            w[4] = kw.get("listener")
            return
        self.log(level, event, **kw)

    def flush(self) -> None:
        """Say how many lines were suppressed in windows that ended (or all, at stop) with no line since."""
        now = self._clock()
        for event, w in list(self._windows.items()):
            if w[2] and now - w[0] >= self.period:
                self.log(w[3], event, suppressed_since_last=w[2], listener=w[4], summary=True)
                del self._windows[event]
            elif now - w[0] >= self.period:
                del self._windows[event]

    def flush_all(self) -> None:
        """Say how many lines were suppressed, whatever the windows (the listener stops)."""
        for event, w in list(self._windows.items()):
            if w[2]:
                self.log(w[3], event, suppressed_since_last=w[2], listener=w[4], summary=True)
        self._windows.clear()
