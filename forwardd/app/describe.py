"""``check-config``'s summary: what listens, where each tag goes, through which filters, into what."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from forwardd.config.units import format_duration, format_size
from forwardd.router.table import ROOT_LABEL

if TYPE_CHECKING:
    from forwardd.app.config import Config, RouteSettings

__all__ = ["describe"]


def describe(config: Config) -> str:
    lines = [f"workers: {config.workers}    storage: {config.storage.path}    log: {config.log.level}"]
    if config.http_server is not None:
        lines.append(f"http_server: {config.http_server.describe()}")
    lines.append("sources:")
    for src in config.sources:
        where = f"label {src.label}" if src.label and src.label != ROOT_LABEL else "root routes"
        lines.append(f"  {src.name}: {src.describe()} -> {where}")
    lines.append("routes (root):")
    lines.extend(_routes(config.routes))
    for label, routes in config.labels.items():
        lines.append(f"label {label}:")
        lines.extend(_routes(routes))
    lines.append("outputs:")
    used = {name for routes in (config.routes, *config.labels.values()) for r in routes for name in r.outputs}
    for name, out in config.outputs.items():
        note = "" if name in used else "  [not used by any route]"
        lines.append(f"  {name}: {out.describe()}{note}")
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


def _routes(routes: Sequence[RouteSettings]) -> list[str]:
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
