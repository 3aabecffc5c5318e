"""The harness's machine probe: what it takes off an ack's latency is the machine's stall that overlapped
that ack, no more, and never a stall of the daemon (which the probe cannot see)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hostile.harness import PROBE_PAUSE, MachineProbe, excused_latencies


def rounds(*spans: tuple[float, float]) -> list[tuple[float, float, float]]:
    """Probe rounds back to back from 0, each ``(length, stall)``."""
    out, t = [], 0.0
    for length, stall in spans:
        out.append((t, t + length, stall))
        t += length
    return out


def test_a_stall_inside_an_ack_is_taken_off_it() -> None:
    probe = rounds((0.01, 0.0), (0.35, 0.34), (0.01, 0.0))
    assert excused_latencies([(0.005, 0.36)], probe) == pytest.approx([0.02])


def test_only_the_overlap_of_a_stall_is_taken_off() -> None:
    # The stall's round runs 0.01-0.36; the ack was sent at 0.30 and waited 0.10: 0.06 of it overlaps.
    probe = rounds((0.01, 0.0), (0.35, 0.34), (0.01, 0.0), (0.01, 0.0))
    assert excused_latencies([(0.30, 0.10)], probe) == pytest.approx([0.04])


def test_an_ack_the_machine_did_not_stall_keeps_its_latency() -> None:
    # A stall of the daemon's loop: the probe ran its rounds on time all along.
    probe = rounds(*[(0.006, 0.001)] * 200)
    latencies = excused_latencies([(0.1, 0.4), (0.6, 0.002)], probe)
    assert latencies[0] == pytest.approx(0.399)  # one round's millisecond at most
    assert latencies[1] == pytest.approx(0.001)


def test_a_stall_before_or_after_an_ack_is_not_its_excuse() -> None:
    probe = rounds((0.5, 0.49), (0.01, 0.0), (0.01, 0.0), (0.5, 0.49))
    assert excused_latencies([(0.505, 0.01)], probe) == pytest.approx([0.01])
    assert excused_latencies([], probe) == []
    assert excused_latencies([(0.1, 0.3)], []) == pytest.approx([0.3])


def test_the_probe_times_synced_writes_and_cleans_up(tmp_path: Path) -> None:
    probe = MachineProbe(tmp_path)
    probe.start()
    try:
        while len(probe.rounds) < 5:
            probe.join(PROBE_PAUSE)
    finally:
        probe.stop()
    assert not probe.is_alive()
    assert all(r0 < r1 and stall >= 0.0 for r0, r1, stall in probe.rounds)
    assert all(a[1] <= b[0] for a, b in zip(probe.rounds, probe.rounds[1:], strict=False))
    assert not probe.path.exists()
