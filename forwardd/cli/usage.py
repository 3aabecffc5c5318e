"""The command line's usage: its options, which command reads which, and the exit codes it promises.

Apart from the commands (:mod:`forwardd.cli`) and the processes that run the daemon
(:mod:`forwardd.cli.processes`), since both read the same options and answer with the same codes.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Literal

from forwardd.app.config import Config, default_config, load_config

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_OK",
    "LOG_FORMATS",
    "UsageError",
    "load",
    "parser",
    "resolve",
]

#: The exit codes :mod:`forwardd.cli` documents.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


#: Which options each command reads. An option given to a command that does not read it is refused: a
#: silent default in its place is how a configuration checked one way gets run another way.
_USES = {
    "run": {"config", "log_level", "log_format"},
    "check-config": {"config"},
    "version": set(),
    "top": {"config"},
    "reload": {"config"},
}
LOG_FORMATS: dict[str, Literal["auto", "json", "console"]] = {
    "auto": "auto",
    "json": "json",
    "console": "console",
}
_FLAGS = {"config": "-c/--config", "log_level": "--log-level", "log_format": "--log-format"}


class UsageError(Exception):
    """A command line that cannot mean one thing (exit code 2)."""


def _add_common(q: argparse.ArgumentParser, *, prefix: str) -> None:
    """The options accepted before and after the command, under separate names (``top_config`` and
    ``config``), so that neither can silently overwrite the other; :func:`resolve` merges them. After the
    command they default to SUPPRESS: absent means absent, not None."""
    dflt = None if prefix else argparse.SUPPRESS
    q.add_argument(
        "-c",
        "--config",
        dest=f"{prefix}config",
        default=dflt,
        help="YAML configuration file (default: built-in configuration)",
    )
    q.add_argument(
        "--log-level",
        dest=f"{prefix}log_level",
        choices=["debug", "info", "warning", "error"],
        default=dflt,
        help="override log.level",
    )
    q.add_argument(
        "--log-format",
        dest=f"{prefix}log_format",
        choices=["auto", "json", "console"],
        default=dflt,
        help="override log.format",
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="forwardd",
        description="A durable Fluentd forward-protocol receiver.",
        epilog="Options may be given before or after the command: `forwardd -c F check-config` and "
        "`forwardd check-config -c F` (or `forwardd check-config F`) mean the same.",
    )
    _add_common(p, prefix="top_")
    sub = p.add_subparsers(dest="command", metavar="{run,check-config,reload,top,version}")
    _add_common(sub.add_parser("run", help="run the receiver (the default command)"), prefix="")
    check = sub.add_parser("check-config", help="validate a configuration and print its routes")
    _add_common(check, prefix="")
    check.add_argument("path", nargs="?", default=None, help="YAML configuration file (same as -c)")
    reload = sub.add_parser(
        "reload",
        help="make the running forwardd re-read its configuration (SIGHUP)",
        description="Checks -c FILE (the built-in configuration without it), finds the forwardd that holds "
        "its storage directory (the pid in <storage>/forwardd.lock) and sends it SIGHUP. The outcome is in "
        "that forwardd's log: config.reloaded, or config.reload_failed and the old configuration runs on.",
    )
    _add_common(reload, prefix="")
    _add_common(sub.add_parser("version", help="print the version"), prefix="")
    top = sub.add_parser(
        "top",
        help="live view of a running forwardd (its http_server's /status)",
        description="Rates per source, output and tag, queue depth and the oldest queued age, read from "
        "the http_server endpoint: the one configured in -c FILE, or --url (default http://127.0.0.1:24220).",
    )
    _add_common(top, prefix="")
    top.add_argument("--url", default=None, help="the endpoint, e.g. http://127.0.0.1:24220 (not with -c)")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    top.add_argument("--once", action="store_true", help="print one frame (rates over one interval) and exit")
    return p


def resolve(argv: Sequence[str] | None) -> tuple[str, dict[str, str | None]]:
    """The command and its options, merged from before and after the command name; UsageError when two
    values conflict or an option is given to a command that does not read it."""
    ns = vars(parser().parse_args(argv))
    command: str = ns.get("command") or "run"
    values: dict[str, str | None] = {}
    for key, flag in _FLAGS.items():
        before, after = ns.get(f"top_{key}"), ns.get(key)
        if before is not None and after is not None and before != after:
            raise UsageError(f"{flag} given twice with different values: {before!r} and {after!r}")
        values[key] = after if after is not None else before
    path = ns.get("path")
    if path is not None:
        if values["config"] is not None and values["config"] != path:
            raise UsageError(f"two configuration files given: {values['config']!r} and {path!r}")
        values["config"] = path
    unused = [_FLAGS[k] for k, v in values.items() if v is not None and k not in _USES[command]]
    if unused:
        raise UsageError(f"{', '.join(unused)} not used by `forwardd {command}`")
    return command, values


def load(path: str | None) -> Config:
    """The configuration ``-c`` names, else the built-in one: the same at start and on each SIGHUP."""
    return load_config(path) if path else default_config()
