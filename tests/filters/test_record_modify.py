from __future__ import annotations

import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwardd.filters import RecordModify
from forwardd.model import Chunk, Event

from .helpers import make_chunk, records


def one(rm: RecordModify, record: dict, tag: str = "app.web.prod", ns: int | None = None) -> dict:
    chunk = make_chunk(tag, [record]) if ns is None else Chunk.from_events(tag, [Event(ns, record)], 0)
    (rec,) = records(rm(chunk))
    return rec


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("${tag}", "app.web.prod"),
        ("${tag_parts[0]}", "app"),
        ("${tag_parts[-1]}", "prod"),
        ("${tag_parts[3]}", ""),
        ("${tag_prefix[1]}", "app.web"),
        ("${tag_prefix[-1]}", "app.web.prod"),
        ("${tag_suffix[1]}", "web.prod"),
        ("${tag_suffix[-1]}", "prod"),
        ("x-${tag_parts[1]}-${tag_parts[2]}!", "x-web-prod!"),
        ("${hostname}", socket.gethostname()),
        ("cost $5 ${record['n']}$", "cost $5 7$"),
        ('${record["user"]["name"]}@${record.user.host}', "ann@h1"),
        ('<${record["missing"]}>', "<>"),
        ("${record.flag} ${record.user}", 'true {"name":"ann","host":"h1"}'),
        ("$1 literal outside tag_rewrite", "$1 literal outside tag_rewrite"),
    ],
)
def test_set_templates(template, expected):
    rec = {"n": 7, "flag": True, "user": {"name": "ann", "host": "h1"}}
    assert one(RecordModify(set={"out": template}), rec)["out"] == expected


def test_time_is_iso8601_utc_with_nanoseconds():
    ns = 1_700_000_000 * 10**9 + 123_456_789
    out = one(RecordModify(set={"t": "${time}"}), {}, ns=ns)
    assert out["t"] == "2023-11-14T22:13:20.123456789Z"
    out = one(RecordModify(set={"t": "at ${time}"}), {}, ns=ns - 10**9 + 1)
    assert out["t"] == "at 2023-11-14T22:13:19.123456790Z"


def test_a_single_record_placeholder_keeps_the_type():
    rm = RecordModify(set={"copy": "${record.n}", "nested": "${record.user}", "gone": "${record.nope}"})
    out = one(rm, {"n": 7, "user": {"a": [1, 2]}})
    assert out["copy"] == 7
    assert out["nested"] == {"a": [1, 2]}
    assert out["gone"] is None


def test_nested_set_creates_maps_and_does_not_touch_the_original_event():
    chunk = make_chunk("t", [{"k8s": {"ns": "a", "pod": "p"}, "x": "y"}, {"k8s": "scalar"}])
    rm = RecordModify(set={"k8s.cluster": "c1", "$['with.dot']": "d"})
    out = rm(chunk)
    assert records(out) == [
        {"k8s": {"ns": "a", "pod": "p", "cluster": "c1"}, "x": "y", "with.dot": "d"},
        {"k8s": {"cluster": "c1"}, "with.dot": "d"},
    ]
    # The input chunk's cached events are shared with any other route: unchanged.
    assert [e.record for e in chunk.events()] == [
        {"k8s": {"ns": "a", "pod": "p"}, "x": "y"},
        {"k8s": "scalar"},
    ]


def test_remove_rename_keep():
    rec = {"a": 1, "b": {"c": 2, "d": 3}, "e": 4, "f": 5}
    assert one(RecordModify(remove_keys=["a", "b.c", "nope", "b.nope.x"]), rec) == {
        "b": {"d": 3},
        "e": 4,
        "f": 5,
    }
    assert one(RecordModify(rename={"a": "z.y", "b.c": "c"}), rec) == {
        "b": {"d": 3},
        "e": 4,
        "f": 5,
        "z": {"y": 1},
        "c": 2,
    }
    assert one(RecordModify(keep_keys=["e", "b.d", "nope"]), rec) == {"e": 4, "b": {"d": 3}}


def test_order_rename_keep_set_remove_and_templates_see_the_arriving_record():
    rm = RecordModify(
        rename={"msg": "message"},
        keep_keys=["message", "level"],
        set={"orig": "${record.msg}|${record.secret}", "level": "${record.level}!"},
        remove_keys=["secret", "level"],
    )
    out = one(rm, {"msg": "hi", "secret": "s3", "level": "info", "junk": 1})
    assert out == {"message": "hi", "orig": "hi|s3"}


def test_no_change_returns_the_same_chunk():
    chunk = make_chunk("t", [{"a": "x"}, {"a": "x", "b": 1}])
    assert RecordModify(remove_keys=["zzz", "a.b"])(chunk) is chunk
    assert RecordModify(set={"a": "x"})(chunk) is chunk
    assert RecordModify(rename={"nope": "other"})(chunk) is chunk


def test_partly_changed_chunk_keeps_every_event_in_order():
    chunk = make_chunk("t", [{"a": 1}, {"b": 2}, {"a": 3, "c": 4}])
    out = RecordModify(remove_keys=["a"])(chunk)
    assert records(out) == [{}, {"b": 2}, {"c": 4}]
    assert [e.time_ns for e in out.events()] == [e.time_ns for e in chunk.events()]


def test_templates_bind_per_tag():
    rm = RecordModify(set={"svc": "${tag_parts[1]}"})
    assert records(rm(make_chunk("a.one", [{}]))) == [{"svc": "one"}]
    assert records(rm(make_chunk("a.two", [{}]))) == [{"svc": "two"}]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "at least one"),
        ({"set": {"x": "${foo}"}}, "unknown placeholder"),
        ({"set": {"x": "${tag"}}, "unclosed"),
        ({"set": {"x": "${record[oops]}"}}, "cannot parse"),
        ({"set": {"x": "${time_key}"}}, "unknown placeholder"),
        ({"set": {"$.a[0]": "v"}}, "list indexes"),
        ({"remove_keys": ["a..b"]}, "empty part"),
        ({"rename": {"a": ""}}, "non-empty"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RecordModify(**kwargs)


_flat = st.dictionaries(
    st.sampled_from("abcdef"), st.integers(-(2**63), 2**63 - 1) | st.text(max_size=3), max_size=6
)


@given(
    rec=_flat,
    remove=st.lists(st.sampled_from("abcdef"), min_size=1, max_size=4),
    keep=st.lists(st.sampled_from("abcdef")),
)
def test_remove_and_keep_are_set_operations(rec, remove, keep):
    assert one(RecordModify(remove_keys=remove), rec) == {k: v for k, v in rec.items() if k not in remove}
    assert one(RecordModify(keep_keys=keep), rec) == {k: v for k, v in rec.items() if k in keep}


def test_time_placeholder_on_a_time_gmtime_cannot_write():
    """Integer seconds far past year 9999 (a client's odd time): the event keeps going, its time written as
    seconds, instead of the filter raising for the whole chunk."""
    ns = 2**62 * 10**9 + 7
    out = one(RecordModify(set={"t": "${time}"}), {}, ns=ns)
    assert out == {"t": f"{2**62}.000000007"}
