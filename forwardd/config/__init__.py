"""Configuration: YAML files validated into frozen, typed settings, with every mistake reported at once.

``load_config(path)`` for files, ``parse_config(text)`` for tests, ``default_config()`` when no file is
given. See ``conf/forwardd.yaml`` for every key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from forwardd.config.errors import ConfigError, Problem
from forwardd.config.loader import load_config, parse_config
from forwardd.config.schema import Config
from forwardd.config.units import parse_duration, parse_size

__all__ = [
    "Config",
    "ConfigError",
    "Problem",
    "default_config",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_size",
]


def default_config(env: Mapping[str, str] | None = None) -> Config:
    """What forwardd runs without a file: forward on 0.0.0.0:24224 (TCP + UDP heartbeat), every tag to
    JSON-lines files under ``$FORWARDD_DATA_DIR`` (default ``./forwardd-data``), behind a disk buffer."""
    env = os.environ if env is None else env
    data_dir = env.get("FORWARDD_DATA_DIR") or "./forwardd-data"
    return Config.model_validate(
        {
            "storage": {"path": data_dir},
            "sources": [{"name": "main", "type": "forward", "bind": "0.0.0.0", "port": 24224}],
            "routes": [{"match": "**", "outputs": ["files"]}],
            "outputs": {
                "files": {
                    "type": "file",
                    "path": os.path.join(data_dir, "logs", "${tag}", "%Y%m%d.log"),
                    "format": "json",
                    "buffer": {"type": "disk"},
                }
            },
        }
    )
