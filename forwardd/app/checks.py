"""Mistakes no single field shows, found once every section has its shape.

Each rule that belongs to a component is asked of it: a pattern of the router's
(:func:`~forwardd.router.table.pattern_error`), relabel cycles of its table
(:func:`~forwardd.router.table.relabel_cycles`), a section's own cross-field rules (its settings'
``problems()``), what only a filter can judge (it is built once, through the registry), and what two
sources cannot share (:func:`~forwardd.server.source.source_problems`). What is left here are the
references between sections: routes, labels and outputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from forwardd.app.registry import FILTERS
from forwardd.config.types import Loc, unknown
from forwardd.router.table import ROOT_LABEL, pattern_error, relabel_cycles
from forwardd.server.source import port_used, source_problems

if TYPE_CHECKING:
    from forwardd.app.config import Config, FilterEntry, RouteSettings

__all__ = ["cross_check"]


def all_routes(config: Config) -> Iterator[tuple[Loc, RouteSettings]]:
    """Every route with its key path: the root routes', then each label's."""
    for i, route in enumerate(config.routes):
        yield ("routes", i), route
    for label, routes in config.labels.items():
        for i, route in enumerate(routes):
            yield ("labels", label, i), route


def _filter_problems(f: FilterEntry, loc: Loc) -> list[tuple[Loc, str]]:
    own = [((*loc, *where), message) for where, message in f.problems()]
    if own:
        return own
    try:  # build it once, so that what only it can judge (templates, field accessors) fails here
        FILTERS[f.type].build(f.type, f)
    except ValueError as exc:
        return [(loc, str(exc))]
    return []


def cross_check(config: Config) -> list[tuple[Loc, str]]:
    """Returns ``(key path, message)`` pairs, empty when all is well."""
    problems: list[tuple[Loc, str]] = []
    add = problems.append
    outputs = list(config.outputs)
    labels = list(config.labels)

    for label in labels:
        if label == ROOT_LABEL:
            add((("labels", label), f"{ROOT_LABEL} is the root routes' name; put them under routes:"))

    edges: dict[str, list[tuple[Loc, str]]] = {}
    for loc, route in all_routes(config):
        error = pattern_error(route.match)
        if error:
            add(((*loc, "match"), error))
        for j, name in enumerate(route.outputs):
            if name not in config.outputs:
                add(((*loc, "outputs", j), unknown("output", name, outputs)))
        if route.relabel is not None:
            if route.relabel == ROOT_LABEL or route.relabel in config.labels:
                edges.setdefault(ROOT_LABEL if loc[0] == "routes" else loc[1], []).append(
                    ((*loc, "relabel"), route.relabel)
                )
            else:
                add(((*loc, "relabel"), unknown("label", route.relabel, labels)))
        if not route.outputs and route.relabel is None:
            add((loc, "a route needs outputs or relabel (use an output of type null to discard events)"))
        for j, f in enumerate(route.filters):
            problems.extend(_filter_problems(f, (*loc, "filters", j)))

    # Relabelling never changes a tag by itself, so a cycle of labels could pass an event round forever.
    for cycle in relabel_cycles(edges, sorted(edges)):
        add((cycle.location, f"relabel cycle: {cycle}"))

    problems.extend((("sources", *loc), message) for loc, message in source_problems(config.sources))
    if config.http_server is not None:
        clash = port_used(config.sources, config.http_server.bind, config.http_server.port)
        if clash:
            add((("http_server", "port"), clash))
    for i, src in enumerate(config.sources):
        if src.label is not None and src.label != ROOT_LABEL and src.label not in config.labels:
            add((("sources", i, "label"), unknown("label", src.label, labels)))

    for name, out in config.outputs.items():
        oloc = ("outputs", name)
        problems.extend(((*oloc, "buffer", *loc), message) for loc, message in out.buffer.problems())
        problems.extend(((*oloc, *loc), message) for loc, message in out.problems())
    return problems
