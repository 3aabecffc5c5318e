"""``forwardd`` command line: ``run`` (the default), ``check-config``, ``version``.

Exit codes: 0 success, 1 a runtime failure (a port in use, a worker that died), 2 a configuration or usage
error, with every problem of the file printed at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence

from forwardd import __version__
from forwardd.config import Config, ConfigError, default_config, load_config
from forwardd.logging import configure_logging

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="forwardd", description="A durable Fluentd forward-protocol receiver.")
    sub = p.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the receiver (the default command)")
    for q in (p, run):
        q.add_argument("-c", "--config", help="YAML configuration file (default: built-in configuration)")
        q.add_argument(
            "--log-level", choices=["debug", "info", "warning", "error"], help="override log.level"
        )
        q.add_argument("--log-format", choices=["auto", "json", "console"], help="override log.format")
    check = sub.add_parser("check-config", help="validate a configuration and print its routes")
    check.add_argument("config", nargs="?", help="YAML configuration file (default: built-in)")
    sub.add_parser("version", help="print the version")
    return p


def _load(path: str | None) -> Config:
    return load_config(path) if path else default_config()


def _install_loop_policy() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio still works without it
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _run_worker(config: Config, worker: int, reuse_port: bool) -> int:
    from forwardd.app import Daemon

    _install_loop_policy()
    # The disk buffer's writer thread needs the GIL back the moment its fsync returns, or every ack
    # waits for the event loop to yield it: Python's default 5 ms switch interval would be added to
    # each group commit. 0.5 ms keeps the loop's throughput and the commit latency both.
    sys.setswitchinterval(0.0005)
    try:
        asyncio.run(Daemon(config, worker=worker, reuse_port=reuse_port).run())
    except OSError as exc:
        import structlog

        structlog.get_logger("forwardd").error("forwardd.failed", error=str(exc), worker=worker)
        return EXIT_FAILURE
    return EXIT_OK


def _run_workers(config: Config) -> int:
    """Fork ``workers`` processes sharing each port through SO_REUSEPORT; forward signals to them."""
    children: list[int] = []
    for i in range(config.workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - exercised through the e2e test in a subprocess
            code = _run_worker(config, i, reuse_port=True)
            os._exit(code)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for pid in children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = EXIT_OK
    for pid in children:
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            code = EXIT_FAILURE
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "run"
    if command == "version":
        from forwardd.outputs.formats import NATIVE
        from forwardd.protocol.entries import NATIVE as NATIVE_SCAN

        # Says whether the C modules were built: without them the file output is ~5x slower, and the edge
        # checks PackedForward entries several times slower.
        yes = {True: "yes", False: "no"}
        native = f"native json lines: {yes[NATIVE]}, native entry scan: {yes[NATIVE_SCAN]}"
        print(f"forwardd {__version__} ({native})")
        return EXIT_OK
    if command == "check-config":
        try:
            config = _load(args.config)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return EXIT_CONFIG
        print(config.describe())
        return EXIT_OK
    try:
        config = _load(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(args.log_level or config.log.level, args.log_format or config.log.format)
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
        return _run_workers(config)
    return _run_worker(config, 0, reuse_port=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
