"""Sizes and durations: the spellings people use, and nothing else."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwardd.config.units import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (0, 0),
        (4096, 4096),
        ("4096", 4096),
        ("512MiB", 512 * 1024**2),
        ("1GiB", 1024**3),
        ("16KiB", 16 * 1024),
        ("1KB", 1000),
        ("2MB", 2_000_000),
        ("1GB", 1_000_000_000),
        ("8k", 8192),
        ("8K", 8192),
        ("64m", 64 * 1024**2),
        ("2g", 2 * 1024**3),
        ("1.5MiB", 1536 * 1024),
        (" 10 MiB ", 10 * 1024**2),
    ],
)
def test_size_spellings(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["lots", "", "-1", -1, "1 parsec", "MiB", True, None, [1], "1.5.5k"])
def test_size_rejects(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (0, 0.0),
        (1.5, 1.5),
        ("10", 10.0),
        ("500ms", 0.5),
        ("10s", 10.0),
        ("5m", 300.0),
        ("72h", 259200.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("250us", 0.00025),
    ],
)
def test_duration_spellings(text, expected):
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("bad", ["soon", "", "5 minutes", "-5s", -1, "s", True, None, float("inf"), "10x"])
def test_duration_rejects(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


@given(st.integers(min_value=0, max_value=2**50))
def test_format_size_round_trips(n):
    assert parse_size(format_size(n)) == n


@given(st.integers(min_value=0, max_value=10**7))
def test_format_duration_round_trips_milliseconds(ms):
    seconds = ms / 1000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)
