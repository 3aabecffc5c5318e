"""The application: the registry of filter and output types, the configuration model assembled from it,
the typed builder, and the daemon that runs what it builds.

- :mod:`.registry`: every ``type:`` of filter and output, with its settings model and factory.
- :mod:`.config`: :class:`Config` (sources, routes, labels, outputs) and :func:`load_config`.
- :mod:`.checks`: mistakes across sections, asked of the components that own each rule.
- :mod:`.describe`: ``check-config``'s summary.
- :mod:`.build`: outputs, their buffers, filters and routes, from their settings.
- :mod:`.daemon`: :class:`Daemon`, one process's forwardd (start, report, stop, run).
- :mod:`.reload`: what a reload may change, and what changed; :mod:`.reloading`: the daemon's hot reload.

The top of the package's layers: it imports the components, none of them imports it.
"""

from __future__ import annotations

from forwardd.app.build import build_filter, build_output, build_routes, build_sink
from forwardd.app.config import Config, default_config, load_config, parse_config
from forwardd.app.daemon import STATS_INTERVAL, Daemon
from forwardd.config.errors import ConfigError
from forwardd.router import ROOT_LABEL
from forwardd.server.source import listener_settings

__all__ = [
    "ROOT_LABEL",
    "STATS_INTERVAL",
    "Config",
    "ConfigError",
    "Daemon",
    "build_filter",
    "build_output",
    "build_routes",
    "build_sink",
    "default_config",
    "listener_settings",
    "load_config",
    "parse_config",
]
