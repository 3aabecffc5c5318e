"""``forwardd`` command line: ``run`` (the default), ``check-config``, ``reload``, ``top``, ``version``.

Exit codes: 0 success, 1 a runtime failure (a port in use, a worker that died), 2 a configuration or usage
error, with every problem of the file printed at once, or a storage directory that another forwardd holds
(``storage.locked``).
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Literal

import structlog

from forwardd import __version__
from forwardd.app.config import Config, default_config, load_config
from forwardd.config import ConfigError
from forwardd.lifecycle import (
    RELOAD_SIGNAL,
    STOP_SIGNALS,
    WORKER_RELOAD_SIGNAL,
    StopTimes,
    block_reload_signal,
    block_stop_signals,
    die_with_parent,
    unblock_stop_signals,
    watch_parent,
)
from forwardd.logging import configure_logging
from forwardd.storage import StorageLock, StorageLocked, holder

__all__ = ["main"]

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
_LOG_FORMATS: dict[str, Literal["auto", "json", "console"]] = {
    "auto": "auto",
    "json": "json",
    "console": "console",
}
_FLAGS = {"config": "-c/--config", "log_level": "--log-level", "log_format": "--log-format"}


class UsageError(Exception):
    """A command line that cannot mean one thing (exit code 2)."""


def _add_common(q: argparse.ArgumentParser, *, prefix: str) -> None:
    """The options accepted before and after the command, under separate names (``top_config`` and
    ``config``), so that neither can silently overwrite the other; :func:`_resolve` merges them. After the
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


def _parser() -> argparse.ArgumentParser:
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


def _resolve(argv: Sequence[str] | None) -> tuple[str, dict[str, str | None]]:
    """The command and its options, merged from before and after the command name; UsageError when two
    values conflict or an option is given to a command that does not read it."""
    ns = vars(_parser().parse_args(argv))
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


def _load(path: str | None) -> Config:
    return load_config(path) if path else default_config()


def _install_loop_policy() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio still works without it
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _run_worker(
    config: Config,
    worker: int,
    reuse_port: bool,
    parent_watch: int | None = None,
    ops: socket.socket | None = None,
    path: str | None = None,
) -> int:
    """Run one daemon until it is stopped. ``parent_watch``: a forked worker's end of the pipe that tells
    it its parent is gone (:func:`forwardd.lifecycle.watch_parent`); ``ops``: its channel to the parent's
    operators' endpoint; ``path``: the configuration file SIGHUP re-reads (None: the built-in one)."""
    from forwardd.app import Daemon, heap

    _install_loop_policy()
    # The disk buffer's writer thread needs the GIL back the moment its fsync returns, or every ack
    # waits for the event loop to yield it: Python's default 5 ms switch interval would be added to
    # each group commit. 0.5 ms keeps the loop's throughput and the commit latency both.
    sys.setswitchinterval(0.0005)
    # Buffers of hundreds of KiB stay in the heap instead of being mapped and faulted in each time.
    heap.tune()

    async def serve(daemon: Daemon) -> None:
        if parent_watch is not None:
            watch_parent(asyncio.get_running_loop(), parent_watch, worker)
        # A forked worker gets each group signal twice (see forwardd.lifecycle): a repeat is not an abort.
        await daemon.run(
            repeat_aborts=parent_watch is None,
            watchdog=True,
            reload_from=lambda: _load(path),
            reload_path=path or "<built-in>",
            # A forked worker reloads on the SIGHUP its parent forwards, once (see ReloadSignals).
            reload_only_from=os.getppid() if parent_watch is not None else None,
        )

    try:
        asyncio.run(serve(Daemon(config, worker=worker, reuse_port=reuse_port, ops_channel=ops)))
    except OSError as exc:
        structlog.get_logger("forwardd").error("forwardd.failed", error=str(exc), worker=worker)
        return EXIT_FAILURE
    finally:
        # The stop's watchdog (forwardd.lifecycle) guards the event loop's stop, which is over now (the
        # loop and its executors are closed). Left armed, it could fire while the interpreter finalizes
        # after a stop that used its whole budget, and walk thread states being freed: a stop that ended
        # well would exit by SIGSEGV (seen once, as -11, after a stop held to its deadline by a full buffer).
        faulthandler.cancel_dump_traceback_later()
    return EXIT_OK


def _run_workers(config: Config, path: str | None) -> int:
    """Fork ``workers`` processes sharing each port through SO_REUSEPORT and supervise them: they die with
    this process, and stop (within ``shutdown_timeout``) when it is told to or when one of them dies. This
    process serves the operators' endpoint for all of them."""
    from forwardd.ops.workers import WorkerChannels

    try:
        channels = WorkerChannels.for_config(config)
    except OSError as exc:
        structlog.get_logger("forwardd").error("forwardd.failed", error=f"http_server: {exc}")
        return EXIT_FAILURE
    parent = os.getpid()
    # Each worker watches the read end; this process holds the only write end: its end of file means this
    # process is gone, however it went (forwardd.lifecycle).
    watch_r, watch_w = os.pipe()
    children: dict[int, int] = {}
    for i in range(config.workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - exercised through the e2e tests in a subprocess
            code = EXIT_FAILURE
            try:
                os.close(watch_w)
                die_with_parent(parent)
                ops = channels.child(i) if channels else None
                code = _run_worker(config, i, reuse_port=True, parent_watch=watch_r, ops=ops, path=path)
            except BaseException:
                structlog.get_logger("forwardd").exception("forwardd.failed", worker=i)
            finally:
                os._exit(code)
        children[pid] = i
    os.close(watch_r)
    if channels:
        try:
            channels.serve()
        except Exception as exc:  # the workers run on; only the endpoint is missing, and says why
            structlog.get_logger("forwardd").error("http_server.failed", error=repr(exc))
    try:
        return _Supervisor(children, StopTimes(config.shutdown_timeout)).run()
    finally:
        if channels:
            channels.close()


class _Supervisor:
    """The parent of the workers: forwards the first stop signal, kills what is still running at the
    deadline, and stops every worker when one of them dies (the orchestrator then restarts the whole)."""

    def __init__(self, children: dict[int, int], times: StopTimes) -> None:
        self.children = children  # pid -> worker index
        self.times = times
        self.stopping = False
        self.signalled = False
        self.code = EXIT_OK
        self.log = structlog.get_logger("forwardd")

    def run(self) -> int:
        for s in STOP_SIGNALS:
            signal.signal(s, self._on_signal)
        signal.signal(signal.SIGALRM, self._on_deadline)
        signal.signal(RELOAD_SIGNAL, self._on_reload)
        unblock_stop_signals()  # a signal that came while the workers were forked is handled now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {RELOAD_SIGNAL})
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:  # pragma: no cover - every child is in self.children
                break
            worker = self.children.pop(pid, None)
            if worker is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                self.code = EXIT_FAILURE
            if not self.stopping:
                self.log.error("worker.exited", worker=worker, pid=pid, code=code)
                self.code = EXIT_FAILURE
                self._stop(signal.SIGTERM)
        signal.setitimer(signal.ITIMER_REAL, 0)
        block_stop_signals()  # a signal now, as this process exits, must not kill it by its default action
        return self.code

    def _stop(self, signum: int) -> None:
        self.stopping = True
        signal.setitimer(signal.ITIMER_REAL, self.times.parent_kill)
        self._send(signum)

    def _send(self, signum: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _on_signal(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if self.signalled:
            # Asked twice: abort. What the workers committed is on disk; their acks and drain are cut off.
            self.log.warning("workers.abort", signal=name, workers=len(self.children))
            self.code = EXIT_FAILURE
            self._send(signal.SIGKILL)
            return
        self.signalled = True
        self.log.info("workers.stopping", signal=name, workers=len(self.children), deadline=self.times.total)
        if not self.stopping:
            self._stop(signum)

    def _on_reload(self, _signum: int, _frame: object) -> None:
        """Pass SIGHUP on to each worker, once (as WORKER_RELOAD_SIGNAL): each reloads on its parent's copy
        and only logs a SIGHUP sent to it directly (one to the process group reaches it too), see
        ReloadSignals."""
        if self.stopping:
            return
        self.log.info("workers.reloading", workers=len(self.children))
        self._send(WORKER_RELOAD_SIGNAL)

    def _on_deadline(self, _signum: int, _frame: object) -> None:
        self.log.error(
            "workers.stop_deadline",
            workers=sorted(self.children.values()),
            after=round(self.times.parent_kill, 3),
            hint="killed: what they acked is on disk and is delivered at the next start",
        )
        self.code = EXIT_FAILURE
        self._send(signal.SIGKILL)


def _top(argv: Sequence[str] | None, config: Config | None) -> int:
    """``forwardd top``: the endpoint from -c FILE's http_server, or --url, never both (exit 2)."""
    from forwardd.ops.top import endpoint_url, run_top

    ns = _parser().parse_args(argv)
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
        command, opts = _resolve(argv)
    except UsageError as exc:
        _parser().print_usage(sys.stderr)
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
        config = _load(opts["config"])
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
        opts["log_level"] or config.log.level, _LOG_FORMATS[opts["log_format"] or config.log.format]
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
            return _run_workers(config, opts["config"])
        return _run_worker(config, 0, reuse_port=False, path=opts["config"])
    finally:
        lock.release()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
