"""Tag routing: Fluentd tag patterns (:mod:`.match`), the checked route table (:mod:`.table`), the walk of
a chunk through filters, sinks and relabels (:mod:`.walk`, :mod:`.isolation`), its acceptance
(:mod:`.outcome`), the chunks kept while a reload holds the routes (:mod:`.pile`), and the router that puts
them together per tag (:mod:`.router`, the shapes of its per-tag decisions in :mod:`.decisions`)."""

from forwardd.router.isolation import FILTER_ISOLATION_BUDGET
from forwardd.router.match import PatternError, TagMatcher, compile_pattern, escape_tag
from forwardd.router.router import Router
from forwardd.router.stats import RouterStats
from forwardd.router.table import (
    ERROR_LABEL,
    ROOT_LABEL,
    RelabelCycle,
    Route,
    RouteTable,
    RoutingError,
    pattern_error,
    relabel_cycles,
)

__all__ = [
    "ERROR_LABEL",
    "FILTER_ISOLATION_BUDGET",
    "ROOT_LABEL",
    "PatternError",
    "RelabelCycle",
    "Route",
    "RouteTable",
    "Router",
    "RouterStats",
    "RoutingError",
    "TagMatcher",
    "compile_pattern",
    "escape_tag",
    "pattern_error",
    "relabel_cycles",
]
