"""Tag routing: Fluentd tag patterns (:mod:`.match`) and the per-chunk router (:mod:`.router`)."""

from forwardd.router.match import PatternError, TagMatcher, compile_pattern, escape_tag
from forwardd.router.router import Route, Router, RouterStats, RoutingError

__all__ = [
    "PatternError",
    "Route",
    "Router",
    "RouterStats",
    "RoutingError",
    "TagMatcher",
    "compile_pattern",
    "escape_tag",
]
