from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwardd.filters import Grep

from .helpers import make_chunk, records


def test_regexp_keeps_matching_events_and_reencodes_only_them():
    chunk = make_chunk(
        "app", [{"level": "error", "n": 1}, {"level": "info", "n": 2}, {"level": "warn", "n": 3}]
    )
    out = Grep(regexp=[("level", "^(error|warn)$")])(chunk)
    assert out is not None
    assert out is not chunk
    assert out.tag == "app"
    assert out.count == 2
    assert records(out) == [{"level": "error", "n": 1}, {"level": "warn", "n": 3}]
    assert [e.time_ns for e in out.events()] == [1_700_000_000 * 10**9, 1_700_000_002 * 10**9]


def test_keeping_everything_returns_the_same_chunk():
    chunk = make_chunk("app", [{"level": "error"}, {"level": "errors"}])
    assert Grep(regexp=[("level", "error")])(chunk) is chunk


def test_dropping_everything_returns_none():
    chunk = make_chunk("app", [{"level": "info"}, {"level": "debug"}])
    assert Grep(regexp=[("level", "error")])(chunk) is None


def test_exclude_drops_matching_events():
    chunk = make_chunk("app", [{"path": "/healthz"}, {"path": "/api"}])
    assert records(Grep(exclude=[("path", "^/healthz$")])(chunk)) == [{"path": "/api"}]


def test_regexp_and_exclude_together():
    chunk = make_chunk("a", [{"l": "error", "m": "x"}, {"l": "error", "m": "noisy"}, {"l": "info", "m": "x"}])
    out = Grep(regexp=[("l", "error")], exclude=[("m", "noisy")])(chunk)
    assert records(out) == [{"l": "error", "m": "x"}]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("and", [{"a": "1", "b": "1"}]),
        ("or", [{"a": "1", "b": "1"}, {"a": "1", "b": "0"}, {"a": "0", "b": "1"}]),
    ],
)
def test_regexp_mode(mode, expected):
    chunk = make_chunk(
        "t", [{"a": "1", "b": "1"}, {"a": "1", "b": "0"}, {"a": "0", "b": "1"}, {"a": "0", "b": "0"}]
    )
    out = Grep(regexp=[("a", "1"), ("b", "1")], regexp_mode=mode)(chunk)
    assert records(out) == expected


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("or", [{"a": "0", "b": "0"}]),
        ("and", [{"a": "1", "b": "0"}, {"a": "0", "b": "1"}, {"a": "0", "b": "0"}]),
    ],
)
def test_exclude_mode(mode, expected):
    chunk = make_chunk(
        "t", [{"a": "1", "b": "1"}, {"a": "1", "b": "0"}, {"a": "0", "b": "1"}, {"a": "0", "b": "0"}]
    )
    out = Grep(exclude=[("a", "1"), ("b", "1")], exclude_mode=mode)(chunk)
    assert records(out) == expected


@pytest.mark.parametrize(
    ("key", "record"),
    [
        ("k8s.ns", {"k8s": {"ns": "prod"}}),
        ("$.k8s.ns", {"k8s": {"ns": "prod"}}),
        ("$['k8s']['ns']", {"k8s": {"ns": "prod"}}),
        ("$['com.docker.ns']", {"com.docker.ns": "prod"}),
        ('$["a"][1]', {"a": ["dev", "prod"]}),
        ("$.a[-1].ns", {"a": [{"ns": "dev"}, {"ns": "prod"}]}),
    ],
)
def test_nested_keys(key, record):
    g = Grep(regexp=[(key, "^prod$")])
    assert g.keep(record)
    assert not g.keep({"other": "prod"})


def test_plain_dotted_key_is_nesting_not_a_literal_key():
    assert not Grep(regexp=[("com.docker.ns", "prod")]).keep({"com.docker.ns": "prod"})


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        (404, "^404$"),
        (1.5, r"^1\.5$"),
        (True, "^true$"),
        (False, "^false$"),
        (None, "^$"),
        ({"a": 1}, '^{"a":1}$'),
        (["x", 2], r'^\["x",2\]$'),
        (b"bin\xffary", "^bin.ary$"),
    ],
)
def test_non_string_values_match_on_their_text(value, pattern):
    assert Grep(regexp=[("v", pattern)]).keep({"v": value})


def test_missing_key_matches_no_rule():
    record = {"other": "x"}
    assert not Grep(regexp=[("v", "^$")]).keep(record)
    assert not Grep(regexp=[("v", ".*")]).keep(record)
    assert Grep(exclude=[("v", ".*")]).keep(record)
    assert not Grep(regexp=[("a.b", ".*")]).keep({"a": "not a map"})


def test_pattern_is_searched_not_anchored():
    assert Grep(regexp=[("m", "needle")]).keep({"m": "hay needle hay"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "at least one"),
        ({"regexp": [("k", "(unclosed")]}, "bad regex"),
        ({"exclude": [("k", "[z-a]")]}, "exclude[0]: bad regex"),
        ({"regexp": [("a..b", "x")]}, "empty part"),
        ({"regexp": [("$.a[", "x")]}, "cannot parse"),
        ({"regexp": [("k",)]}, "expected (key, pattern)"),
        ({"regexp": [("k", "x")], "regexp_mode": "xor"}, "regexp_mode"),
        ({"exclude": [("k", "x")], "exclude_mode": "AND"}, "exclude_mode"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        Grep(**kwargs)


_values = st.one_of(st.text(alphabet="abx01 ", max_size=4), st.integers(-3, 20), st.booleans(), st.none())
_record = st.dictionaries(st.sampled_from(["a", "b", "c"]), _values, max_size=3)
_rules = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["a", "^x", "1$", "^$", "true", "b|0", "."])),
    min_size=1,
    max_size=3,
)


@given(recs=st.lists(_record, min_size=1, max_size=8), rules=_rules, mode=st.sampled_from(["and", "or"]))
def test_regexp_and_exclude_with_the_same_rules_partition_the_events(recs, rules, mode):
    tagged = [{**r, "_i": i} for i, r in enumerate(recs)]
    chunk = make_chunk("t", tagged)
    kept = records(Grep(regexp=rules, regexp_mode=mode)(chunk))
    excluded = records(Grep(exclude=rules, exclude_mode=mode)(chunk))
    assert sorted(kept + excluded, key=lambda r: r["_i"]) == tagged
    assert not {r["_i"] for r in kept} & {r["_i"] for r in excluded}
    # order within each side is the input order
    assert [r["_i"] for r in kept] == sorted(r["_i"] for r in kept)
