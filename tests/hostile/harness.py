"""What every hostile-peer test needs: the real daemon as a process with its memory watched, a well-behaved
acking client that measures its own ack latency, and readers for what the outputs wrote.

The rule of each test (issue 14, item 6): while one class of attack runs, a well-behaved client on another
connection sends numbered events with acks, one in flight at a time (as docker and Fluentd's out_forward
wait for acks); afterwards every event it got an ack for is in the output files, its ack latency stayed
within its bounds, the daemon's RSS came back, and the attack left a structured log line (and, where the
issue asks, a counter).

The latency bounds are the issue's p99 <= 250 ms and no wait over 1 s "on this machine class", held against
the client's own latency just before the attack, on the same daemon in the same run: on a loaded machine
(CI, other processes on its two cores) the unhostile latency rises too, and a fixed 250 ms failed at 254,
277 and 374 ms while the daemon was doing nothing wrong. What the bounds are for is a peer that stalls the
event loop: that costs every other client a wait as long as the stall, whatever the load, many times its
unhostile latency.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from forwardd.buffer import read_dead_letter
from forwardd.testing.client import AckError, ForwardClient
from tests.e2e.helpers import Proc

MiB = 1024 * 1024

#: The daemon is killed (and the test fails) when its RSS grows past its start by this much: the unfixed
#: daemon buffers 4-5x every near-limit frame, and the attacks here would take the shared machine down.
RSS_CAP = 1536 * MiB
#: After an attack, RSS must come back to within this much of where it was before it. Large enough for
#: what a run legitimately keeps (the malloc arenas of the threads, the disk queue's segment buffers, the
#: well-behaved client's own traffic), small enough that a single retained ~63 MiB frame buffer (the
#: smallest thing the memory attacks leave behind when a closed session is not freed) fails it.
RSS_SLACK = 64 * MiB
#: Ack latency bounds of the well-behaved client (issue 14, item 3): the issue's p99 and worst wait, both
#: scaled up by the same ratio when P99_FACTOR times the client's p99 before the attack (BASELINE_ACKS
#: requests on the same daemon, just before it) is over P99_FLOOR. Measured with 100 peers pushing 63 MiB
#: frames (test_memory): the p99 before was 1.9 ms quiet and 8-19 ms with the 2 cores loaded, the attack's
#: 250 ms quiet and 270-390 ms loaded (the fixed 250 ms failed); a scan of each frame on the event loop
#: (~100 ms each, brought back on purpose) gave 510 ms, over its bound of 337 ms, ~200 ms gave 820 ms.
P99_FLOOR = 0.250
P99_FACTOR = 40.0
WORST_FLOOR = 1.0
BASELINE_ACKS = 100


def base_config(tmp: Path, **source: Any) -> dict[str, Any]:
    """A plain TCP listener ``in`` on an ephemeral port, one file output with durable defaults (disk
    buffer, fsync always), JSON lines under ``tmp/out/<tag>/<day>.log``, storage under ``tmp/data``."""
    return {
        "storage": {"path": str(tmp / "data")},
        "sources": [{"name": "in", "bind": "127.0.0.1", "port": 0, "udp_heartbeat": False, **source}],
        "routes": [{"match": "**", "outputs": ["files"]}],
        "outputs": {"files": {"type": "file", "path": str(tmp / "out" / "${tag}" / "%Y%m%d.log")}},
    }


class RssWatch(threading.Thread):
    """Samples the daemon's RSS every 20 ms: keeps the peak since :meth:`reset_peak`, and kills the daemon
    if it passes ``start + cap`` (the test then fails on :attr:`blown`)."""

    def __init__(self, process: psutil.Process, cap: int) -> None:
        super().__init__(daemon=True, name="rss-watch")
        self.process = process
        self.start_rss = process.memory_info().rss
        self.limit = self.start_rss + cap
        self.peak = self.start_rss
        self.blown: int | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.02):
            try:
                rss = self.process.memory_info().rss
            except psutil.Error:
                return
            self.peak = max(self.peak, rss)
            if rss > self.limit and self.blown is None:
                self.blown = rss
                with contextlib.suppress(psutil.Error):
                    self.process.kill()
                return

    def reset_peak(self) -> int:
        rss = self.process.memory_info().rss
        self.peak = rss
        return rss

    def stop(self) -> None:
        self._stop_event.set()


class Daemon:
    """A real ``forwardd run`` process (tests/e2e/helpers.Proc) with its RSS watched."""

    def __init__(self, tmp: Path, config: dict[str, Any], *args: str, rss_cap: int = RSS_CAP) -> None:
        self.tmp = tmp
        self.proc = Proc(config, tmp, *args)
        ready = self.proc.wait_event("forwardd.ready")
        self.ports = [int(addr.rsplit(":", 1)[1]) for addr in ready["listeners"] if ":" in addr]
        self.port = self.ports[0]
        self.process = psutil.Process(self.proc.proc.pid)
        self.watch = RssWatch(self.process, rss_cap)
        self.watch.start()
        self.code: int | None = None

    # -- memory

    def rss(self) -> int:
        self.check_alive()
        return int(self.process.memory_info().rss)

    def check_alive(self) -> None:
        if self.watch.blown is not None:
            raise AssertionError(
                f"the daemon's RSS reached {self.watch.blown / MiB:.0f} MiB (started at "
                f"{self.watch.start_rss / MiB:.0f} MiB): killed to protect the machine"
            )
        if self.proc.proc.poll() is not None and self.code is None:
            raise AssertionError("the daemon died:\n" + "\n".join(self.proc.raw[-30:]))

    def wait_rss_back(self, baseline: int, timeout: float = 20.0) -> int:
        """Wait until RSS is within RSS_SLACK of ``baseline`` (the daemon hands freed heap back to the OS
        every 10 s, so this can take that long); returns the RSS reached, failing past ``timeout``."""
        deadline = time.monotonic() + timeout
        rss = self.rss()
        while rss > baseline + RSS_SLACK:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"RSS stayed at {rss / MiB:.0f} MiB, {(rss - baseline) / MiB:.0f} MiB over its "
                    f"{baseline / MiB:.0f} MiB before the attack (allowed: {RSS_SLACK / MiB:.0f} MiB)"
                )
            _wait(0.1)
            rss = self.rss()
        return rss

    # -- log lines

    def lines(self, event: str | Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        pred = (lambda line: line.get("event") == event) if isinstance(event, str) else event
        return [line for line in list(self.proc.lines) if pred(line)]

    def wait_lines(
        self, event: str | Callable[[dict[str, Any]], bool], n: int = 1, timeout: float = 20.0
    ) -> list[dict[str, Any]]:
        """At least ``n`` log lines matching ``event`` (a name or a predicate), waiting for them."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.lines(event)
            if len(found) >= n:
                return found
            self.check_alive()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"expected {n} log line(s) {event!r}, found {len(found)}; last lines:\n"
                    + "\n".join(self.proc.raw[-25:])
                )
            with contextlib.suppress(AssertionError):
                self.proc.wait_next(min(left, 0.5))

    def not_json(self) -> list[str]:
        """Lines the daemon wrote that are not JSON: a log line that failed to render falls back to
        asyncio's own text logging (e.g. 'Fatal error: protocol.data_received() call failed')."""
        return [line["text"] for line in list(self.proc.lines) if line.get("event") == "<not json>"]

    # -- stopping

    def stop(self) -> dict[str, dict[str, Any]]:
        """SIGTERM, wait for the exit; returns the counters logged at stop: ``source.stats`` per listener
        and ``output.stats`` per output (keyed by name)."""
        self.check_alive()
        self.watch.stop()
        self.code = self.proc.terminate(60)
        assert self.code == 0, "\n".join(self.proc.raw[-30:])
        stats: dict[str, dict[str, Any]] = {}
        for line in self.proc.lines:
            if line.get("event") == "source.stats":
                stats[f"source:{line['listener']}"] = line
            elif line.get("event") == "output.stats":
                stats[f"output:{line['output']}"] = line
        return stats

    def kill(self) -> None:
        """Teardown: the daemon and anything it forked, at once (a process the watch already killed
        too: this reaps it and closes its pipe)."""
        self.watch.stop()
        self.proc.close(grace=0)
        self.code = -9

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.code is None:
            self.kill()


def _wait(seconds: float) -> None:
    """Pause between polls of a condition (RSS, files): not a synchronisation, a polling interval."""
    threading.Event().wait(seconds)


#: How long the machine probe pauses between two of its synced writes.
PROBE_PAUSE = 0.005


class MachineProbe(threading.Thread):
    """Stalls of the machine itself, as the test's process sees them: an append of a few bytes to a file
    on the file system under test, its fdatasync and a short pause, timed over and over. A disk that stops
    for its journal (CI once: one ack of 339 ms after a baseline p99 of 6.5 ms, in a test whose attack
    costs the daemon 14 ms), a paused virtual machine or the test process's own GIL hold up the
    well-behaved client whatever the daemon does; they hold up the probe as well. A stall of the daemon's
    event loop does not: the daemon is another process. :meth:`Steady.check_latency` takes from each
    ack's latency the longest stall of the probe that overlapped it (:func:`excused_latencies`)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(daemon=True, name="machine-probe")
        self.path = directory / f"forwardd-machine-probe-{os.getpid()}-{id(self)}"
        #: (start, end, stall) of each round: stall is how much longer than its pause it took.
        self.rounds: list[tuple[float, float, float]] = []
        #: perf_counter() when the round under way began.
        self.round_since = time.perf_counter()
        self._halt = threading.Event()

    def run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while not self._halt.is_set():
                t0 = self.round_since = time.perf_counter()
                os.write(fd, b"probe\n")  # the size changes: the sync waits for the journal, as a commit does
                os.fdatasync(fd)
                self._halt.wait(PROBE_PAUSE)
                t1 = time.perf_counter()
                self.rounds.append((t0, t1, max(0.0, t1 - t0 - PROBE_PAUSE)))
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def stalled_now(self) -> float:
        """How long the round under way has overrun its pause (what a wait for an ack right now owes to
        the machine)."""
        return max(0.0, time.perf_counter() - self.round_since - PROBE_PAUSE)

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


def excused_latencies(
    acks: list[tuple[float, float]], rounds: list[tuple[float, float, float]]
) -> list[float]:
    """Each ack ``(sent, latency)`` less the longest stall of the machine probe (its ``rounds``, in order)
    that overlapped it, counting no more of a stall than the overlap: what is left is the daemon's."""
    starts = [r[0] for r in rounds]
    out = []
    for sent, latency in acks:
        end = sent + latency
        excuse = 0.0
        # The rounds follow one another (one thread): walk back from the last that started before the
        # ack's end to the first that ended before it was sent.
        i = bisect.bisect_left(starts, end)
        while i > 0:
            i -= 1
            r0, r1, stall = rounds[i]
            if r1 <= sent:
                break
            excuse = max(excuse, min(stall, min(end, r1) - max(sent, r0)))
        out.append(max(0.0, latency - excuse))
    return out


class Steady(threading.Thread):
    """The well-behaved client: numbered events ``{"n": i}``, alternately one Message and a PackedForward
    of two, each waiting for its ack before the next (window 1), at most one request every ``pace``
    seconds. It times each request from send to ack; ``acked`` holds the numbers of acked events."""

    def __init__(self, port: int, tag: str = "steady", first: int = 0, pace: float = 0.005) -> None:
        super().__init__(daemon=True, name="steady-client")
        self.port = port
        self.tag = tag
        self.next = first
        self.first = first
        self.pace = pace
        self.acked: list[int] = []
        self.sent: list[int] = []
        self.latencies: list[float] = []
        #: perf_counter() when each of ``latencies``' requests was sent.
        self.sent_at: list[float] = []
        #: The machine probe running beside the client, if any (see :class:`MachineProbe`).
        self.probe: MachineProbe | None = None
        self.error: BaseException | None = None
        #: perf_counter() when the request in flight was sent; None between requests.
        self.in_flight_since: float | None = None
        #: How long the request in flight had waited when the client was stopped because of it.
        self.abandoned_wait: float | None = None
        #: Where the attack's latencies start in ``latencies``, the p99 before it, and the bounds set from it
        #: (the floors until :meth:`measure_baseline`).
        self.attack_from = 0
        self.baseline_p99 = 0.0
        self.p99_bound = P99_FLOOR
        self.worst_bound = WORST_FLOOR
        self._client: ForwardClient | None = None
        self._halt = threading.Event()
        self._some = threading.Event()

    def run(self) -> None:
        try:
            with ForwardClient(port=self.port, timeout=30.0) as c:
                self._client = c
                while not self._halt.is_set():
                    n = self.next
                    t0 = self.in_flight_since = time.perf_counter()
                    if n % 3 == 0:
                        self.sent.append(n)
                        c.message(self.tag, {"n": n}, ack=True)
                        numbers = [n]
                    else:
                        self.sent += [n, n + 1]
                        c.packed(self.tag, [{"n": n}, {"n": n + 1}], ack=True)
                        numbers = [n, n + 1]
                    self.sent_at.append(t0)
                    self.latencies.append(time.perf_counter() - t0)
                    self.in_flight_since = None
                    self.acked += numbers
                    self.next = numbers[-1] + 1
                    if len(self.latencies) >= 20:
                        self._some.set()
                    self._halt.wait(self.pace)
        except (OSError, AckError) as exc:
            self.error = exc
        finally:
            self._some.set()

    def stalled(self) -> bool:
        """Whether an ack during the attack has already taken longer than the worst allowed (the test has
        failed: waiting for the attack to end would only make a failing run slow)."""
        since = self.in_flight_since
        waiting = time.perf_counter() - since if since is not None else 0.0
        if self.probe is not None and waiting:
            waiting = max(0.0, waiting - self.probe.stalled_now())
        worst = max(self.attack_latencies(), default=0.0)
        return max(waiting, worst) > self.worst_bound or self.error is not None

    def attack_latencies(self) -> list[float]:
        """The latencies of the acks since the attack began, less what the machine's own stalls account
        for when the probe ran (see :class:`MachineProbe`)."""
        n = min(len(self.sent_at), len(self.latencies))
        during = self.latencies[self.attack_from : n]
        if self.probe is None:
            return during
        sent = self.sent_at[self.attack_from : n]
        return excused_latencies(list(zip(sent, during, strict=True)), self.probe.rounds)

    def wait_acks(self, n: int, timeout: float = 30.0) -> None:
        """Until ``n`` more requests were acked (events acked after whatever came before this call)."""
        target = len(self.latencies) + n
        deadline = time.monotonic() + timeout
        while len(self.latencies) < target:
            if self.stalled() or time.monotonic() > deadline or not self.is_alive():
                return  # check_latency() says why
            _wait(0.02)

    def wait_started(self, timeout: float = 20.0) -> None:
        """Until the client has had a few acks (the daemon serves it before the attack begins)."""
        assert self._some.wait(timeout), "the well-behaved client got no acks before the attack"
        assert self.error is None, f"the well-behaved client failed before the attack: {self.error!r}"

    def measure_baseline(self, n: int = BASELINE_ACKS, timeout: float = 60.0) -> None:
        """Time ``n`` requests before the attack (after the first few, which warm up the connection and the
        output), and set the bounds of the attack's latencies from them; what comes after is the attack's."""
        warm = len(self.latencies)
        deadline = time.monotonic() + timeout
        while len(self.latencies) < warm + n:
            assert self.error is None, f"the well-behaved client failed before the attack: {self.error!r}"
            assert time.monotonic() < deadline, (
                f"only {len(self.latencies) - warm} of {n} acks before the attack"
            )
            _wait(0.02)
        self.attack_from = len(self.latencies)
        self.baseline_p99, self.p99_bound, self.worst_bound = latency_bounds(
            self.latencies[warm : self.attack_from]
        )

    def finish(self) -> None:
        self._halt.set()
        since = self.in_flight_since
        if since is not None and time.perf_counter() - since > self.worst_bound and self._client is not None:
            # Failed already: do not wait out the stall, end the request in flight.
            self.abandoned_wait = time.perf_counter() - since
            with contextlib.suppress(OSError):
                self._client.sock.shutdown(socket.SHUT_RDWR)
        self.join(60)
        assert not self.is_alive(), "the well-behaved client is stuck waiting for an ack"

    def check_latency(self) -> None:
        """During the attack: p99 and worst wait within their bounds (see :func:`measure_baseline`), and no
        failure (a missing ack is a wait without end)."""
        lat = sorted(self.latencies)
        raw = self.latencies[self.attack_from :]
        during = sorted(self.attack_latencies())
        bounds = (
            f"bounds {self.p99_bound * 1000:.0f} ms and {self.worst_bound * 1000:.0f} ms; p99 before the "
            f"attack {self.baseline_p99 * 1000:.1f} ms"
        )
        if self.abandoned_wait is not None:
            raise AssertionError(
                f"the well-behaved client waited {self.abandoned_wait * 1000:.0f} ms for an ack (and was "
                f"still waiting; {bounds}) after {len(during)} acks during the attack"
            )
        assert self.error is None, f"the well-behaved client failed: {self.error!r} after {len(lat)} acks"
        assert len(lat) >= 20, f"only {len(lat)} acks"
        assert during, "no ack during the attack"
        p99 = percentile(during, 99)
        worst = during[-1]
        what = (
            f"ack latency of the well-behaved client during the attack: p99 {p99 * 1000:.0f} ms, worst "
            f"{worst * 1000:.0f} ms over {len(during)} acks ({bounds})"
        )
        if self.probe is not None:
            what += (
                f"; before taking out the machine's own stalls p99 {percentile(raw, 99) * 1000:.0f} ms, "
                f"worst {max(raw) * 1000:.0f} ms; the machine probe's longest stall "
                f"{max((r[2] for r in self.probe.rounds), default=0.0) * 1000:.0f} ms"
            )
        assert p99 <= self.p99_bound, what
        assert worst <= self.worst_bound, what


def latency_bounds(baseline: list[float]) -> tuple[float, float, float]:
    """The p99 of a client's ack latencies ``baseline`` (measured just before an attack, on the same server
    in the same run) and the bounds of its p99 and worst wait during the attack: the floors P99_FLOOR and
    WORST_FLOOR, both scaled by the same ratio once P99_FACTOR times that p99 is over P99_FLOOR (see the
    module doc: a loaded machine slows every ack, a stalled loop many times more)."""
    p99 = percentile(baseline, 99)
    scale = max(1.0, P99_FACTOR * p99 / P99_FLOOR)
    return p99, P99_FLOOR * scale, WORST_FLOOR * scale


def percentile(values: list[float], pct: int) -> float:
    """The ``pct``-th percentile of ``values`` (the nearest rank at or above it)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, (len(ordered) * pct) // 100)]


@contextlib.contextmanager
def steady(port: int, tag: str = "steady", first: int = 0) -> Iterator[Steady]:
    """A running well-behaved client for the ``with`` block (started and serving when it is entered), with
    a machine probe beside it on the file system of the tests' temporary files (pytest's ``tmp_path``)."""
    s = Steady(port, tag, first)
    s.probe = MachineProbe(Path(tempfile.gettempdir()))
    s.probe.start()
    s.start()
    try:
        s.wait_started()
        s.measure_baseline()
        yield s
    finally:
        s.finish()
        s.probe.stop()


def wait_until(
    cond: Callable[[], bool], what: str, timeout: float = 60.0, client: Steady | None = None
) -> bool:
    """Poll ``cond`` until it holds; fails past ``timeout``. Returns False early (without failing) when
    ``client`` has stalled: the test fails on its latency then, without waiting out the attack."""
    deadline = time.monotonic() + timeout
    while not cond():
        if client is not None and client.stalled():
            return False
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        _wait(0.05)
    return True


def await_ack(client: ForwardClient, chunk: str, steady_client: Steady, timeout: float = 60.0) -> bool:
    """Wait for the ack of ``chunk`` on an attacker's connection; False (no failure) if the well-behaved
    client stalled meanwhile: the test fails on that, without waiting out the attack."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = client.read_value(timeout=0.1)
            break
        except AckError as exc:
            if "in time" not in str(exc):
                raise
            if steady_client.stalled():
                return False
            if time.monotonic() > deadline:
                raise AssertionError(f"no ack for {chunk!r} within {timeout:.0f} s") from None
    assert reply == {"ack": chunk}, reply
    return True


def read_records(root: Path) -> list[dict[str, Any]]:
    """Every JSON line under ``root`` (the file output's files), as parsed objects."""
    out: list[dict[str, Any]] = []
    if not root.exists():
        return out
    for f in sorted(root.rglob("*.log")):
        for line in f.read_bytes().splitlines():
            if line:
                out.append(json.loads(line))
    return out


def numbers(records: list[dict[str, Any]], key: str = "n") -> list[int]:
    return [r[key] for r in records if isinstance(r.get(key), int)]


def wait_delivered(root: Path, expected: set[int], key: str = "n", timeout: float = 30.0) -> list[int]:
    """Wait until every number of ``expected`` is in the files under ``root``; returns all numbers found
    (to check for duplicates and strays), failing with the missing ones past ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        found = numbers(read_records(root), key)
        missing = expected - set(found)
        if not missing:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(missing)} of {len(expected)} acked events not delivered after {timeout:.0f} s, "
                f"e.g. {sorted(missing)[:10]}"
            )
        _wait(0.1)


def check_delivered(root: Path, client: Steady, timeout: float = 30.0) -> None:
    """Every acked event of ``client`` is in the files, exactly once (nothing here is delivered twice:
    no daemon is killed and no output fails part-way), and nothing it did not send is there."""
    found = wait_delivered(root, set(client.acked), timeout=timeout)
    dups = sorted({n for n in found if found.count(n) > 1}) if len(found) != len(set(found)) else []
    assert not dups, f"delivered twice: {dups[:10]}"
    strays = set(found) - set(client.sent)
    assert not strays, f"delivered but never sent: {sorted(strays)[:10]}"


def dead_letters(root: Path) -> list[Any]:
    """The chunks in the dead-letter folder ``root`` (recursively)."""
    return [read_dead_letter(str(p)) for p in sorted(root.rglob("*.chunk"))] if root.exists() else []


def raw_connection(port: int, timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s
