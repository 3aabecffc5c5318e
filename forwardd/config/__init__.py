"""Configuration: YAML files validated into frozen, typed settings, with every mistake reported at once.

The bottom layer: it knows no component. :func:`load_config` and :func:`parse_config` validate a file (or
text) into any pydantic model, with each mistake pinned to its file, line and key path;
:mod:`.types` has the base and the scalar types every component's settings are made of, :mod:`.units`
sizes and durations. forwardd's own model, assembled from the components' settings, is
:class:`forwardd.app.Config` (``forwardd.app.load_config(path)`` reads one).
"""

from __future__ import annotations

from forwardd.config.errors import ConfigError, Problem
from forwardd.config.loader import load_config, parse_config
from forwardd.config.types import Frozen
from forwardd.config.units import parse_duration, parse_size

__all__ = [
    "ConfigError",
    "Frozen",
    "Problem",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_size",
]
