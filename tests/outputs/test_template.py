"""The placeholder syntax the file paths and the HTTP endpoint share (forwardd/outputs/template.py)."""

from __future__ import annotations

import pytest

from forwardd.outputs.file import PathTemplate
from forwardd.outputs.http import HttpOutput
from forwardd.outputs.template import RECORD, TAG, TAG_PART, Template, UnknownPlaceholder, record_value


def _raw(t: Template, tag: str, record: dict[str, object] | None = None) -> str:
    return t.expand(tag, record, escape=lambda i, v: f"<{v}>", missing=lambda tok: "?")


def test_tokens_and_expansion() -> None:
    t = Template("/a/${tag}/${tag[1]}/${tag[-1]}/${record.k.n}.log")
    assert [kind for kind, _ in t.tokens if kind != "lit"] == [TAG, TAG_PART, TAG_PART, RECORD]
    assert _raw(t, "x.y.z", {"k": {"n": 7}}) == "/a/<x.y.z>/<y>/<z>/<7>.log"
    assert _raw(t, "x", {}) == "/a/<x>/?/<x>/?.log"  # a part or a key that is not there


def test_substituted_text_is_never_expanded_again() -> None:
    t = Template("${tag}/${record.k}")
    assert _raw(t, "${tag}", {"k": "${record.k}"}) == "<${tag}>/<${record.k}>"


def test_names_may_have_spaces_and_a_missing_brace_is_an_error() -> None:
    assert Template("${ tag[0] }").tokens == [(TAG_PART, 0)]
    with pytest.raises(ValueError, match="unterminated"):
        Template("/logs/${tag.log")
    with pytest.raises(UnknownPlaceholder):
        Template("${hostname}")
    with pytest.raises(UnknownPlaceholder):
        Template("${record.k}", record=False)


def test_record_values_are_scalars() -> None:
    assert record_value({"a": {"b": b"\xffx"}}, ("a", "b")) == "\ufffdx"
    assert record_value({"a": 1.5}, ("a",)) == "1.5"
    assert record_value({"a": {"b": 1}}, ("a", "b")) == "1"
    for rec in ({}, {"a": None}, {"a": [1]}, {"a": "s"}, {"a": {"b": None}}, {"a": {"b": {}}}):
        assert record_value(rec, ("a", "b")) is None


def test_both_outputs_read_the_same_syntax(tmp_path) -> None:
    """One grammar: what the file output accepts in a path the HTTP output accepts in an endpoint (bar
    record keys), each with its own escaping and its own check of the result."""
    path = PathTemplate(str(tmp_path) + "/${ tag[0] }/${tag}.log")
    assert path.resolve("a/b.c") == f"{tmp_path}/a_b/a_b.c.log"
    out = HttpOutput(name="h", endpoint="http://h/${ tag[0] }/${tag}", allowed_hosts=["h"])
    assert str(out.endpoint_for("a/b.c")) == "http://h/a%2Fb/a%2Fb.c"
    for bad in ("/logs/${tag.log", "/logs/${tag}/${x"):
        with pytest.raises(ValueError, match="unterminated"):
            PathTemplate(bad)
        with pytest.raises(ValueError, match="unterminated"):
            HttpOutput(name="h", endpoint="http://h" + bad, allowed_hosts=["h"])
