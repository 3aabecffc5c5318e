from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwardd.filters import TagRewrite

from .helpers import make_chunk, records

RULES = [
    ("level", "^(error|fatal)$", "alert.$1.${tag_parts[1]}"),
    ("level", "^warn", "${tag}.warn"),
    ("$.k8s.ns", "^(\\w+)-(prod|dev)$", "ns.$2.$1"),
]


def test_all_events_to_one_new_tag_share_the_bytes():
    chunk = make_chunk("docker.web", [{"level": "error"}, {"level": "error"}])
    out = TagRewrite(rules=RULES)(chunk)
    assert not isinstance(out, list)
    assert out is not None
    assert out.tag == "alert.error.web"
    assert out.entries is chunk.entries


def test_no_rule_matches_returns_the_same_chunk():
    chunk = make_chunk("docker.web", [{"level": "info"}, {"other": 1}])
    assert TagRewrite(rules=RULES)(chunk) is chunk


def test_unmatched_dropped_when_asked():
    chunk = make_chunk("docker.web", [{"level": "info"}, {"level": "warning"}])
    out = TagRewrite(rules=RULES, keep_unmatched=False)(chunk)
    assert not isinstance(out, list)
    assert out is not None
    assert out.tag == "docker.web.warn"
    assert records(out) == [{"level": "warning"}]
    assert TagRewrite(rules=RULES, keep_unmatched=False)(make_chunk("t", [{"level": "info"}])) is None


def test_mixed_results_are_several_chunks_in_order_of_first_appearance():
    recs = [
        {"i": 0, "level": "info"},
        {"i": 1, "level": "fatal"},
        {"i": 2, "k8s": {"ns": "shop-prod"}},
        {"i": 3, "level": "info"},
        {"i": 4, "level": "warn"},
        {"i": 5, "level": "fatal", "k8s": {"ns": "shop-prod"}},
    ]
    out = TagRewrite(rules=RULES)(make_chunk("docker.api", recs))
    assert isinstance(out, list)
    assert [(c.tag, [r["i"] for r in records(c)]) for c in out] == [
        ("docker.api", [0, 3]),
        ("alert.fatal.api", [1, 5]),  # the first matching rule wins
        ("ns.prod.shop", [2]),
        ("docker.api.warn", [4]),
    ]
    assert [c.count for c in out] == [2, 2, 1, 1]


def test_unmatched_group_and_empty_tag():
    tr = TagRewrite(rules=[("m", "^(a)?(b)$", "x$1y"), ("m", "^(.*)$", "$1"), ("m", "", "fallback")])
    assert tr(make_chunk("t", [{"m": "b"}])).tag == "xy"  # type: ignore[union-attr]
    # "$1" renders "" for an empty value: no tag, so the next rule decides.
    assert tr(make_chunk("t", [{"m": ""}])).tag == "fallback"  # type: ignore[union-attr]


def test_non_string_values_match_on_their_text():
    out = TagRewrite(rules=[("code", "^5\\d\\d$", "http.5xx")])(make_chunk("t", [{"code": 503}]))
    assert out.tag == "http.5xx"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([], "at least one rule"),
        ([("k", "(a)", "t.$2")], r"uses \$2 but regex .* has 1 group"),
        ([("k", "(a", "t")], "bad regex"),
        ([("k", "a", "${record.k}")], "unknown placeholder"),
        ([("k", "a", "${time}")], "unknown placeholder"),
        ([("k", "a")], "expected \\(key, regex, new_tag\\)"),
        ([("", "a", "t")], "non-empty"),
    ],
)
def test_bad_settings(rules, message):
    with pytest.raises(ValueError, match=message):
        TagRewrite(rules=rules)


@given(
    values=st.lists(st.sampled_from(["a1", "b2", "c", "", "a"]) | st.none(), min_size=1, max_size=12),
    keep=st.booleans(),
)
def test_every_event_lands_once_under_its_rule_tag_in_order(values, keep):
    recs = [{"i": i} if v is None else {"i": i, "v": v} for i, v in enumerate(values)]
    tr = TagRewrite(rules=[("v", "^a(\\d)$", "A.$1"), ("v", "^([bc])", "${tag}.$1")], keep_unmatched=keep)
    chunk = make_chunk("in", recs)
    out = tr(chunk)
    chunks = [] if out is None else out if isinstance(out, list) else [out]
    assert len({c.tag for c in chunks}) == len(chunks)

    def expected_tag(rec):
        v = rec.get("v")
        if v and v[0] == "a" and v[1:].isdigit():
            return "A." + v[1:]
        if v and v[0] in "bc":
            return "in." + v[0]
        return "in" if keep else None

    got = [(c.tag, r) for c in chunks for r in records(c)]
    assert sorted(got, key=lambda x: x[1]["i"]) == [(expected_tag(r), r) for r in recs if expected_tag(r)]
    for c in chunks:
        idx = [r["i"] for r in records(c)]
        assert idx == sorted(idx)
