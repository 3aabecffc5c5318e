"""``forwardd`` command line: ``run`` (the default), ``check-config``, ``reload``, ``top``, ``version``.

Its parts by role: the options and exit codes (:mod:`.usage`), the processes that run the daemon
(:mod:`.processes`: one, or ``workers: N`` forked and supervised), and here the commands.

Exit codes: 0 success, 1 a runtime failure (a port in use, a worker that died), 2 a configuration or usage
error, with every problem of the file printed at once, or a storage directory that another forwardd holds
(``storage.locked``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import structlog

from forwardd import __version__
from forwardd.app.config import Config
from forwardd.cli.processes import run_worker, run_workers
from forwardd.cli.usage import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    LOG_FORMATS,
    UsageError,
    load,
    parser,
    resolve,
)
from forwardd.config import ConfigError
from forwardd.lifecycle import RELOAD_SIGNAL, block_reload_signal, block_stop_signals
from forwardd.logging import configure_logging
from forwardd.storage import StorageLock, StorageLocked, holder

__all__ = ["main"]


def _top(argv: Sequence[str] | None, config: Config | None) -> int:
    """``forwardd top``: the endpoint from -c FILE's http_server, or --url, never both (exit 2)."""
    from forwardd.ops.top import endpoint_url, run_top

    ns = parser().parse_args(argv)
    url: str | None = ns.url
    if config is not None:
        if url is not None:
            print(
                "forwardd: error: give either -c/--config or --url to `forwardd top`, not both",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        if config.http_server is None:
            print(
                "forwardd: error: the configuration has no http_server to read (see README)", file=sys.stderr
            )
            return EXIT_CONFIG
        url = endpoint_url(config.http_server.bind, config.http_server.port)
    if ns.interval <= 0:
        print("forwardd: error: --interval must be above 0", file=sys.stderr)
        return EXIT_CONFIG
    return run_top(url or "http://127.0.0.1:24220", interval=ns.interval, once=ns.once)


def _reload(config: Config) -> int:
    """``forwardd reload``: SIGHUP to the forwardd holding the configuration's storage directory (with
    ``workers: N``, their parent, which forwards it once to each). The file was checked by then: one that
    does not load is refused here (exit 2), before the running forwardd is bothered."""
    path = str(config.storage.path)
    try:
        pid = holder(path)
    except OSError as exc:
        print(f"forwardd: error: cannot read the storage lock under {path}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if pid is None:
        print(f"forwardd: error: no forwardd is running on the storage directory {path}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        os.kill(pid, RELOAD_SIGNAL)
    except ProcessLookupError:
        print(f"forwardd: error: the forwardd of {path} (pid {pid}) is gone", file=sys.stderr)
        return EXIT_FAILURE
    except PermissionError as exc:
        print(f"forwardd: error: cannot signal pid {pid}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"forwardd: sent SIGHUP to pid {pid} (storage {path}); see its log for config.reloaded")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    try:
        command, opts = resolve(argv)
    except UsageError as exc:
        parser().print_usage(sys.stderr)
        print(f"forwardd: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if command == "version":
        from forwardd.outputs.formats import NATIVE
        from forwardd.protocol.entries import NATIVE as NATIVE_SCAN

        # Says whether the C modules were built: without them the file output is ~5x slower, and the edge
        # checks PackedForward entries several times slower.
        yes = {True: "yes", False: "no"}
        native = f"native json lines: {yes[NATIVE]}, native entry scan: {yes[NATIVE_SCAN]}"
        print(f"forwardd {__version__} ({native})")
        return EXIT_OK
    if command == "run":
        # Before any thread exists: SIGHUP is taken by the daemon's thread for it (ReloadSignals).
        block_reload_signal()
    if command == "top" and not opts["config"]:
        return _top(argv, None)
    try:
        config = load(opts["config"])
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    if command == "check-config":
        print(config.describe())
        return EXIT_OK
    if command == "top":
        return _top(argv, config if opts["config"] else None)
    if command == "reload":
        return _reload(config)
    configure_logging(
        opts["log_level"] or config.log.level, LOG_FORMATS[opts["log_format"] or config.log.format]
    )
    if config.workers > 1:
        shared = [s.name for s in config.sources if s.unix is not None or s.port == 0]
        if shared:
            print(
                f"workers: {config.workers} needs a fixed TCP port on every source, for the workers to share "
                f"it with SO_REUSEPORT; not possible for source(s) {', '.join(shared)} (a Unix socket or "
                "port 0)",
                file=sys.stderr,
            )
            return EXIT_CONFIG
    # From here a stop signal waits until the process that handles it is ready to (the daemon's loop, or
    # the parent of the workers once they are forked): a signal on the way must not kill a worker.
    block_stop_signals()
    # Before any worker exists: they inherit the lock, which then lasts as long as the last of them.
    lock = StorageLock(config.storage.path)
    try:
        lock.acquire()
    except StorageLocked as exc:
        structlog.get_logger("forwardd").error("storage.locked", path=exc.path, pid=exc.pid, error=str(exc))
        return EXIT_CONFIG
    except OSError as exc:
        structlog.get_logger("forwardd").error("storage.unusable", path=lock.path, error=str(exc))
        return EXIT_FAILURE
    try:
        if config.workers > 1:
            return run_workers(config, opts["config"])
        return run_worker(config, 0, reuse_port=False, path=opts["config"])
    finally:
        lock.release()
