from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from forwardd.filters import Parser
from forwardd.filters.parser import parse_logfmt

from .helpers import make_chunk, records


def test_json_is_merged_over_the_record():
    chunk = make_chunk("app", [{"log": '{"level":"info","n":1,"source":"json"}', "source": "stdout"}])
    assert records(Parser()(chunk)) == [
        {"log": '{"level":"info","n":1,"source":"json"}', "source": "json", "level": "info", "n": 1}
    ]


def test_reserve_data_false_keeps_only_the_parsed_map():
    chunk = make_chunk("app", [{"log": ' {"a": [1, {"b": null}]}\n', "source": "stdout"}])
    assert records(Parser(reserve_data=False)(chunk)) == [{"a": [1, {"b": None}]}]


def test_remove_key_name_field_drops_the_source_field_but_not_a_parsed_one():
    p = Parser(remove_key_name_field=True)
    assert records(p(make_chunk("t", [{"log": '{"a":1}', "s": 1}]))) == [{"s": 1, "a": 1}]
    assert records(p(make_chunk("t", [{"log": '{"log":"inner"}'}]))) == [{"log": "inner"}]


def test_hash_value_field_nests_the_parsed_map():
    chunk = make_chunk("t", [{"log": '{"a":1}', "s": 1}])
    assert records(Parser(hash_value_field="parsed")(chunk)) == [
        {"log": '{"a":1}', "s": 1, "parsed": {"a": 1}}
    ]
    assert records(Parser(hash_value_field="p", reserve_data=False)(chunk)) == [{"p": {"a": 1}}]


def test_nested_key_name():
    chunk = make_chunk("t", [{"k": {"raw": '{"a":1}'}}])
    assert records(Parser(key_name="k.raw", remove_key_name_field=True)(chunk)) == [{"k": {}, "a": 1}]


def test_bytes_field_is_parsed():
    assert records(Parser()(make_chunk("t", [{"log": b'{"a":1}'}]))) == [{"log": b'{"a":1}', "a": 1}]


@pytest.mark.parametrize("text", ["plain text", "[1,2]", "42", '"s"', '{"a":', "{not json}", "", "null"])
def test_failures_pass_unchanged_and_are_counted(text):
    p = Parser()
    chunk = make_chunk("t", [{"log": text}])
    assert p(chunk) is chunk
    assert p.failures == 1
    assert p.skipped == 0


def test_missing_or_non_text_field_is_skipped_not_failed():
    p = Parser()
    chunk = make_chunk("t", [{"msg": "x"}, {"log": 5}, {"log": None}])
    assert p(chunk) is chunk
    assert (p.failures, p.skipped) == (0, 3)


def test_mixed_chunk_keeps_order_and_unparsed_events():
    p = Parser()
    chunk = make_chunk("t", [{"log": "a"}, {"log": '{"x":1}'}, {"log": "b"}, {"log": '{"x":2}'}])
    out = p(chunk)
    assert records(out) == [
        {"log": "a"},
        {"log": '{"x":1}', "x": 1},
        {"log": "b"},
        {"log": '{"x":2}', "x": 2},
    ]
    assert [e.time_ns for e in out.events()] == [e.time_ns for e in chunk.events()]
    assert p.failures == 2


def test_failure_logging_is_rate_limited_to_powers_of_two():
    p = Parser(name="p1")
    chunk = make_chunk("svc.a", [{"log": "not json"}] * 9)
    with capture_logs() as logs:
        p(chunk)
    assert p.failures == 9
    assert [(e["event"], e["tag"], e["failures"], e["log_level"]) for e in logs] == [
        ("filter.parse_failed", "svc.a", n, "warning") for n in (1, 2, 4, 8)
    ]


def test_regex_format_named_groups():
    p = Parser(format="regex", pattern=r"^(?P<ip>\S+) (?P<verb>[A-Z]+) (?P<path>\S+)(?: (?P<extra>.+))?$")
    out = p(make_chunk("t", [{"log": "1.2.3.4 GET /x"}, {"log": "garbage"}]))
    assert records(out) == [
        {"log": "1.2.3.4 GET /x", "ip": "1.2.3.4", "verb": "GET", "path": "/x"},
        {"log": "garbage"},
    ]
    assert p.failures == 1


def test_logfmt_format():
    out = Parser(format="logfmt")(make_chunk("t", [{"log": 'level=info msg="hello \\"you\\"" dry n=3 e='}]))
    assert records(out) == [
        {
            "log": 'level=info msg="hello \\"you\\"" dry n=3 e=',
            "level": "info",
            "msg": 'hello "you"',
            "dry": True,
            "n": "3",
            "e": "",
        }
    ]


@pytest.mark.parametrize("text", ['a="unterminated', "", "   ", '"quoted"=x', 'a="x"y'])
def test_logfmt_refuses_what_does_not_tokenise(text):
    assert parse_logfmt(text) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "xml"}, "format must be"),
        ({"format": "regex"}, "needs a pattern"),
        ({"format": "regex", "pattern": "(unclosed"}, "bad regex"),
        ({"format": "regex", "pattern": "(\\d+)"}, "no named group"),
        ({"pattern": "(?P<a>x)"}, "only for format 'regex'"),
        ({"key_name": ""}, "non-empty"),
        ({"hash_value_field": ""}, "must not be empty"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Parser(**kwargs)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=50)
@given(parsed=st.dictionaries(st.text(max_size=6), _json, min_size=1, max_size=5), other=st.text(max_size=5))
def test_json_round_trip(parsed, other):
    text = orjson.dumps(parsed).decode()
    out = Parser()(make_chunk("t", [{"log": text, "zz_other": other}]))
    assert records(out) == [{"log": text, "zz_other": other, **parsed}]
