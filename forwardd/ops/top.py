"""``forwardd top``: a live terminal view of a running forwardd, read from its ``/status`` (like
``vector top``): per source, output and tag, rates over the last interval, queue depth and the oldest
queued chunk's age.

Rates are differences between two reads of the counters, so nothing in forwardd keeps rates for it. The
ack p99 is over the interval too (from the difference of the histogram's buckets: an upper bound, to the
bucket). ``--once`` reads twice, one interval apart, prints one frame and exits (scripts, tests).
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from typing import Any, TextIO

import orjson

__all__ = ["endpoint_url", "fetch", "render", "run_top"]

#: Clear the screen and go home: every frame replaces the last one.
CLEAR = "\x1b[H\x1b[2J"


def endpoint_url(bind: str, port: int) -> str:
    """The URL to reach an endpoint configured as ``bind``: a wildcard bind is reached on loopback."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(bind, bind)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def fetch(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """The endpoint's ``/status``; raises OSError (URLError included) when it cannot be read."""
    with urllib.request.urlopen(f"{url.rstrip('/')}/status", timeout=timeout) as resp:
        data: dict[str, Any] = orjson.loads(resp.read())
        return data


def _rate(cur: dict[str, Any], prev: dict[str, Any] | None, key: str, dt: float) -> float:
    if prev is None or dt <= 0:
        return 0.0
    return max(0.0, (cur.get(key) or 0) - (prev.get(key) or 0)) / dt


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover - the loop returns


def _num(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e4:
        return f"{n / 1e3:.1f}k"
    return f"{n:.1f}" if n and n < 100 else f"{n:.0f}"


def _p99(cur: dict[str, Any] | None, prev: dict[str, Any] | None) -> str:
    """The 99th percentile of the interval's observations, as the bucket's upper bound."""
    if not cur:
        return "-"
    counts = list(cur["counts"])
    if prev and prev.get("bounds") == cur["bounds"]:
        counts = [max(0, a - b) for a, b in zip(counts, prev["counts"], strict=True)]
    total = sum(counts)
    if not total:
        return "-"
    want = total * 0.99
    running = 0
    for bound, n in zip([*cur["bounds"], None], counts, strict=True):
        running += n
        if running >= want:
            return f">{cur['bounds'][-1]:g}s" if bound is None else f"{bound * 1000:g}ms"
    return "-"  # pragma: no cover - the last bucket always reaches the total


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [
            c.ljust(w) if i == 0 or i == len(r) - 1 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def render(cur: dict[str, Any], prev: dict[str, Any] | None, url: str) -> str:
    """One frame: the state in ``cur``, rates against ``prev`` (None: no rates yet)."""
    dt = cur["time"] - prev["time"] if prev is not None else 0.0
    workers = cur.get("workers", [])
    up = sum(1 for w in workers if w.get("up"))
    state = "ready" if cur.get("ready") else "NOT READY"
    lines = [
        f"forwardd {cur.get('version', '?')}  {url}  workers {up}/{len(workers)} up  {state}"
        + (f"  (rates over {dt:.1f}s)" if prev is not None else ""),
    ]
    lines += [f"  ! {r}" for r in cur.get("reasons", [])]
    lines.append("")
    psrc = (prev or {}).get("sources", {})
    rows = []
    for name, s in sorted(cur.get("sources", {}).items()):
        p = psrc.get(name)
        errors = sum(
            s.get(k, 0)
            for k in ("rejected", "invalid_entries", "protocol_errors", "handshake_failures", "nacks")
        )
        rows.append(
            [
                name,
                str(s.get("open_connections", 0)),
                _num(_rate(s, p, "events", dt)),
                _size(_rate(s, p, "bytes", dt)) + "/s",
                _num(_rate(s, p, "acks", dt)),
                _p99(s.get("ack_latency"), (p or {}).get("ack_latency")),
                str(errors),
                "up" if s.get("listening") else "DOWN",
            ]
        )
    lines += _table(["SOURCE", "CONN", "EVENTS/S", "BYTES/S", "ACKS/S", "ACK P99", "ERRORS", "STATE"], rows)
    lines.append("")
    pout = (prev or {}).get("outputs", {})
    rows = []
    tag_rows = []
    for name, o in sorted(cur.get("outputs", {}).items()):
        p = pout.get(name)
        if o.get("failing_seconds"):
            status = f"failing {o['failing_seconds']:.0f}s: {o.get('last_error')}"
        elif o.get("full"):
            status = "buffer full"
        elif not o.get("loop_alive", True):
            status = "delivery loop down"
        else:
            status = "ok"
        rows.append(
            [
                name,
                str(o.get("type")),
                _num(_rate(o, p, "delivered_events", dt)),
                str(o.get("queued_chunks", 0)),
                _size(o.get("queued_bytes", 0)),
                f"{o.get('oldest_age_seconds', 0.0):.1f}s",
                _num(_rate(o, p, "retries", dt)),
                str(o.get("dead_lettered_events", 0)),
                status,
            ]
        )
        ptags = (p or {}).get("tags", {})
        for tag, n in o.get("tags", {}).items():
            before = ptags.get(tag)
            rate = max(0.0, (n - before) / dt) if before is not None and dt > 0 else 0.0
            tag_rows.append((rate, n, tag, name))
    lines += _table(
        ["OUTPUT", "TYPE", "EVENTS/S", "QUEUED", "QUEUED BYTES", "OLDEST", "RETRIES/S", "DEAD", "STATE"], rows
    )
    lines.append("")
    tag_rows.sort(key=lambda r: (-r[0], -r[1], r[2]))
    lines += _table(
        ["TAG", "OUTPUT", "EVENTS/S", "DELIVERED"],
        [[tag, out, _num(rate), str(n)] for rate, n, tag, out in tag_rows[:20]],
    )
    return "\n".join(lines) + "\n"


def run_top(url: str, *, interval: float = 1.0, once: bool = False, out: TextIO = sys.stdout) -> int:
    """Show the endpoint at ``url`` every ``interval`` seconds until Ctrl-C; 1 when it cannot be read."""
    prev: dict[str, Any] | None = None
    try:
        while True:
            try:
                cur = fetch(url)
            except (OSError, ValueError) as exc:
                if once:
                    print(f"forwardd top: cannot read {url}/status: {exc}", file=sys.stderr)
                    return 1
                out.write(f"{CLEAR}forwardd top: cannot read {url}/status: {exc} (retrying)\n")
                out.flush()
                prev = None
                time.sleep(interval)
                continue
            if once and prev is None:
                prev = cur
                time.sleep(interval)  # the interval the rates are measured over
                continue
            frame = render(cur, prev, url)
            if once:
                out.write(frame)
                return 0
            out.write(CLEAR + frame)
            out.flush()
            prev = cur
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
