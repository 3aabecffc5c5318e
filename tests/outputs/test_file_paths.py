"""Path templates: placeholders, grouping, and untrusted tags/values that must never leave the root."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwardd.errors import PermanentError
from forwardd.model import Event
from forwardd.outputs.file import NAME_MAX, PathTemplate, sanitise_component

ROOT = "/srv/logs"
T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
NS = 10**9


def assert_safe(path: str, root: str = ROOT) -> None:
    assert path.startswith(root + "/")
    assert os.path.normpath(path) == path
    assert "\0" not in path
    for seg in path[len(root) + 1 :].split("/"):
        assert seg
        assert not seg.startswith(".")
        assert len(seg.encode("utf-8")) <= NAME_MAX


def test_placeholders_resolve():
    t = PathTemplate(ROOT + "/${tag[0]}/${tag[-1]}/%Y%m%d%H/${tag}.${record.kubernetes.ns}.log")
    assert t.root == ROOT
    rec = {"kubernetes": {"ns": "prod"}}
    assert (
        t.resolve("docker.web.api", T0 * NS, rec) == ROOT + "/docker/api/2023111422/docker.web.api.prod.log"
    )
    # missing key, non-scalar value, out-of-range tag part
    assert t.resolve("a", T0 * NS, {}) == ROOT + "/a/a/2023111422/a._.log"
    assert t.resolve("a", T0 * NS, {"kubernetes": {"ns": {"x": 1}}}).endswith("/a._.log")
    assert PathTemplate(ROOT + "/${tag[3]}.log").resolve("a.b") == ROOT + "/_.log"


def test_local_time_and_fixed_root_and_relative_template(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t = PathTemplate("out/x/%Y/${tag}.log", utc=True)
    assert t.root == str(tmp_path / "out" / "x")
    assert t.resolve("a", T0 * NS) == str(tmp_path / "out/x/2023/a.log")


def test_extension_is_added_once():
    assert PathTemplate(ROOT + "/a.log", extension=".gz").template == ROOT + "/a.log.gz"
    assert PathTemplate(ROOT + "/a.log.gz", extension=".gz").template == ROOT + "/a.log.gz"


def test_substituted_text_is_never_expanded():
    t = PathTemplate(ROOT + "/%Y/${tag}/${record.k}.log")
    assert t.resolve("%Y${tag}", T0 * NS, {"k": "%d${record.k}"}) == ROOT + "/2023/%Y${tag}/%d${record.k}.log"


def test_unknown_placeholder_is_a_config_error():
    with pytest.raises(ValueError, match="unknown placeholder"):
        PathTemplate(ROOT + "/${hostname}.log")


def test_template_leaving_no_room_is_a_config_error():
    with pytest.raises(ValueError, match="too little room"):
        PathTemplate(ROOT + "/" + "x" * 220 + "${tag}.log")


@pytest.mark.parametrize(
    ("tag", "name"),
    [
        ("../../etc/passwd", "_.._.._etc_passwd"),
        ("/abs", "_abs"),
        ("a/../../b", "a_.._.._b"),
        ("..", "_.."),
        (".", "_."),
        (".hidden", "_.hidden"),
        ("", "_"),
        ("nul\0byte", "nul_byte"),
        ("back\\slash", "back_slash"),
        ("new\nline\x7f", "new_line_"),
        ("docker/nginx:1.25@sha256:ab", "docker_nginx:1.25@sha256:ab"),
        ("svc.1.k2x9", "svc.1.k2x9"),
        ("日本語.ログ", "日本語.ログ"),
        (b"bad\xff\xfe".decode("utf-8", "surrogateescape"), "bad\ufffd\ufffd"),
        ("lone\ud800", "lone?"),
    ],
)
def test_hostile_tags(tag, name):
    t = PathTemplate(ROOT + "/${tag}/app.log")
    path = t.resolve(tag)
    assert path == f"{ROOT}/{name}/app.log"
    assert_safe(path)


def test_hostile_tag_parts_and_record_values():
    t = PathTemplate(ROOT + "/${tag[1]}/${record.dir}/x.log")
    path = t.resolve("a.....b", 0, {"dir": "../../.."})
    assert path == f"{ROOT}/_/_.._.._../x.log"
    assert_safe(path)


def test_long_tag_is_truncated_with_a_hash_and_stays_distinct():
    t = PathTemplate(ROOT + "/${tag}.log")
    long_a = "é" * 200 + "a"  # 401 bytes, and a cut inside a two-byte character must not break it
    long_b = "é" * 200 + "b"
    pa, pb = t.resolve(long_a), t.resolve(long_b)
    assert pa != pb
    assert_safe(pa)
    name = os.path.basename(pa)
    assert len(name.encode()) <= NAME_MAX - 16
    assert name.startswith("éééé")
    assert "~" in name
    assert t.resolve(long_a) == pa  # deterministic


def test_sanitise_component_budget():
    out = sanitise_component("x" * 300, budget=40)
    assert len(out.encode()) <= 40
    assert out.startswith("x" * 20)


def test_escape_check_is_the_last_line_of_defence():
    t = PathTemplate(ROOT + "/${tag}.log")
    for bad in (ROOT + "/../etc/x", "/etc/x", ROOT + "/a/./b", ROOT + "/a\0b", ROOT + "x/y"):
        with pytest.raises(PermanentError):
            t._check(bad)


def test_group_by_second_and_record_keeps_order():
    t = PathTemplate(ROOT + "/%H/${record.app}.log")
    evs = [
        Event(T0 * NS, {"app": "a", "i": 0}),
        Event(T0 * NS + 1, {"app": "b", "i": 1}),
        Event((T0 + 3600) * NS, {"app": "a", "i": 2}),
        Event(T0 * NS + 2, {"app": "a", "i": 3}),
    ]
    groups = {p: [e.record["i"] for e in g] for p, g in t.group(evs, "tag")}
    assert groups == {ROOT + "/22/a.log": [0, 3], ROOT + "/22/b.log": [1], ROOT + "/23/a.log": [2]}


def test_group_without_placeholders_is_the_chunk():
    t = PathTemplate(ROOT + "/${tag}.log")
    evs = [Event(T0 * NS + i, {}) for i in range(3)]
    [(path, group)] = t.group(evs, "x")
    assert path == ROOT + "/x.log"
    assert group is evs
    assert t.group([], "x") == []


_hostile = st.one_of(
    st.text(),
    st.binary().map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.lists(st.sampled_from(["..", ".", "/", "\0", "a", "é", "\\", "%Y", "${tag}"]), max_size=40).map(
        "".join
    ),
    st.text(min_size=200, max_size=600),
)


@settings(max_examples=150, deadline=None)
@given(tag=_hostile, value=_hostile)
def test_any_tag_or_value_stays_under_the_root(tag, value):
    for template in (
        ROOT + "/${tag}/app.log",
        ROOT + "/${tag[0]}/${tag[-1]}/%Y/${tag}-${record.v}.log",
        ROOT + "/x${tag}",
    ):
        path = PathTemplate(template).resolve(tag, T0 * NS, {"v": value})
        assert_safe(path)
