"""Each kind of mistake, reported with its file, line, key path and what was expected (exact text)."""

from pathlib import Path
from textwrap import dedent

import pytest

from forwardd.config import ConfigError, load_config, parse_config

OUTPUTS = """\
    outputs:
      files: {type: file, path: /tmp/x.log}
"""


def errors(tmp_path: Path, text: str, env=None, **files: str) -> str:  # files: name -> content
    """Write main.yaml (and any extra files), load it, return the error text with tmp_path cut off."""
    for name, content in files.items():
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(dedent(content))
    main = tmp_path / "main.yaml"
    main.write_text(dedent(text))
    with pytest.raises(ConfigError) as info:
        load_config(main, env={} if env is None else env)
    return str(info.value).replace(f"{tmp_path}/", "")


def test_wrong_type(tmp_path):
    text = """\
    sources:
      - name: main
        port: twenty
    routes: [{match: "**", outputs: [files]}]
    """
    assert (
        errors(tmp_path, dedent(text) + dedent(OUTPUTS))
        == "main.yaml:3: sources[0].port: expected an integer, got 'twenty'"
    )


def test_wrong_choice(tmp_path):
    text = """\
    sources: [{name: main}]
    routes: [{match: "**", outputs: [files]}]
    outputs:
      files:
        type: file
        path: /tmp/x.log
        compress: rar
    """
    assert errors(tmp_path, text) == (
        "main.yaml:7: outputs.files.compress: expected one of 'none', 'gzip' or 'zstd', got 'rar'"
    )


def test_unknown_key_suggests_the_right_one(tmp_path):
    text = """\
    sources: [{name: main}]
    routes: [{match: "**", outputs: [files]}]
    outputs:
      files:
        type: file
        path: /tmp/x.log
        bufer: {max_size: 1GiB}
    """
    assert errors(tmp_path, text) == "main.yaml:7: outputs.files.bufer: unknown key (did you mean 'buffer'?)"


def test_unknown_key_lists_the_valid_ones(tmp_path):
    text = """\
    log: {level: info, colour: green}
    sources: [{name: main}]
    """
    assert errors(tmp_path, text) == "main.yaml:1: log.colour: unknown key (expected one of: level, format)"


def test_missing_required_key(tmp_path):
    text = """\
    sources: [{name: main}]
    routes: [{match: "**", outputs: [k]}]
    outputs:
      k:
        type: kafka
        brokers: [127.0.0.1:9092]
    """
    assert errors(tmp_path, text) == "main.yaml:4: outputs.k.topic: required, but not set"


def test_route_to_missing_output(tmp_path):
    text = """\
    sources: [{name: main}]
    routes:
      - match: "**"
        outputs: [file]
    """
    assert errors(tmp_path, dedent(text) + dedent(OUTPUTS)) == (
        "main.yaml:4: routes[0].outputs[0]: unknown output 'file' (did you mean 'files'?)"
    )


def test_unknown_relabel_target(tmp_path):
    text = """\
    sources: [{name: main}]
    routes:
      - match: "**"
        relabel: audit
    labels:
      audits: [{match: "**", outputs: [files]}]
    """
    assert errors(tmp_path, dedent(text) + dedent(OUTPUTS)) == (
        "main.yaml:4: routes[0].relabel: unknown label 'audit' (did you mean 'audits'?)"
    )


def test_relabel_cycle(tmp_path):
    text = """\
    sources: [{name: main}]
    routes: [{match: "**", relabel: a}]
    labels:
      a: [{match: "**", relabel: b}]
      b: [{match: "x.**", outputs: [files]}, {match: "**", relabel: a}]
    """
    assert (
        errors(tmp_path, dedent(text) + dedent(OUTPUTS))
        == "main.yaml:5: labels.b[1].relabel: relabel cycle: a -> b -> a"
    )


def test_bad_regex_in_filter(tmp_path):
    text = """\
    sources: [{name: main}]
    routes:
      - match: "**"
        filters:
          - type: grep
            regexp:
              - key: log
                pattern: "(unclosed"
        outputs: [files]
    """
    assert errors(tmp_path, dedent(text) + dedent(OUTPUTS)) == (
        "main.yaml:8: routes[0].filters[0].regexp[0].pattern: expected a regular expression, "
        "got '(unclosed': missing ), unterminated subpattern at position 0"
    )


def test_unknown_filter_type(tmp_path):
    text = """\
    sources: [{name: main}]
    routes:
      - match: "**"
        filters:
          - type: record_transformer
        outputs: [files]
    """
    assert errors(tmp_path, dedent(text) + dedent(OUTPUTS)) == (
        "main.yaml:5: routes[0].filters[0].type: unknown filter type 'record_transformer' "
        "(expected one of: grep, record_modify, parser, tag_rewrite, docker_partial, docker_swarm)"
    )


def test_filter_setting_only_the_filter_can_judge(tmp_path):
    text = """\
    sources: [{name: main}]
    routes:
      - match: "**"
        filters:
          - type: record_modify
            set: {where: "${hostnme}"}
        outputs: [files]
    """
    assert errors(tmp_path, dedent(text) + dedent(OUTPUTS)) == (
        "main.yaml:5: routes[0].filters[0]: record_modify set['where']: template '${hostnme}': "
        "unknown placeholder ${hostnme}"
    )


def test_bad_tag_pattern(tmp_path):
    text = """\
    sources: [{name: main}]
    routes:
      - match: "docker.{a,b"
        outputs: [files]
    """
    assert errors(tmp_path, dedent(text) + dedent(OUTPUTS)) == (
        "main.yaml:3: routes[0].match: tag pattern 'docker.{a,b' has 1 unclosed '{'"
    )


def test_bad_size(tmp_path):
    text = """\
    sources: [{name: main}]
    routes: [{match: "**", outputs: [main]}]
    outputs:
      main:
        type: stdout
        buffer:
          max_size: lots
    """
    assert errors(tmp_path, text) == (
        "main.yaml:7: outputs.main.buffer.max_size: expected a size like 512MiB, got 'lots'"
    )


def test_bad_duration(tmp_path):
    text = """\
    sources:
      - name: main
        limits: {handshake_timeout: soon}
    routes: [{match: "**", outputs: [files]}]
    """
    assert errors(tmp_path, dedent(text) + dedent(OUTPUTS)) == (
        "main.yaml:3: sources[0].limits.handshake_timeout: "
        "expected a duration like 10s, 500ms or 5m, got 'soon'"
    )


def test_missing_env_var(tmp_path):
    text = """\
    sources:
      - name: main
        security:
          shared_key: ${FORWARDD_SHARED_KEY}
    routes: [{match: "**", outputs: [files]}]
    """
    assert errors(tmp_path, dedent(text) + dedent(OUTPUTS), env={"OTHER": "x"}) == (
        "main.yaml:4: sources[0].security.shared_key: environment variable FORWARDD_SHARED_KEY is not set "
        "(write ${FORWARDD_SHARED_KEY:-default} to give a default)"
    )


def test_include_not_found(tmp_path):
    text = """\
    include:
      - base.yaml
      - missing.yaml
    sources: [{name: main}]
    routes: [{match: "**", outputs: [files]}]
    """
    assert errors(tmp_path, text, **{"base.yaml": OUTPUTS}) == (
        "main.yaml:3: include[1]: file not found: missing.yaml"
    )


def test_include_cycle(tmp_path):
    text = """\
    include: [a.yaml]
    sources: [{name: main}]
    """
    assert errors(tmp_path, text, **{"a.yaml": "include: [main.yaml]\n"}) == (
        "a.yaml:1: include[0]: include cycle: main.yaml is already being read"
    )


def test_duplicate_output_across_includes(tmp_path):
    text = """\
    include: [conf.d/*.yaml]
    sources: [{name: main}]
    routes: [{match: "**", outputs: [files]}]
    """
    found = errors(
        tmp_path,
        text,
        **{"conf.d/a.yaml": OUTPUTS, "conf.d/b.yaml": "    # the same name again\n" + OUTPUTS},
    )
    assert found == (
        "conf.d/b.yaml:3: outputs.files: output 'files' is defined twice: "
        "in conf.d/a.yaml:2 and in conf.d/b.yaml:3"
    )


def test_duplicate_key_in_one_file(tmp_path):
    text = """\
    sources: [{name: main}]
    routes: [{match: "**", outputs: [files]}]
    workers: 2
    workers: 3
    """
    assert (
        errors(tmp_path, dedent(text) + dedent(OUTPUTS))
        == "main.yaml:4: workers: duplicate key 'workers' (first at line 3)"
    )


def test_two_sources_on_one_port(tmp_path):
    text = """\
    sources:
      - {name: a, bind: 127.0.0.1, port: 24224}
      - {name: b, port: 24224}
      - {name: c, bind: 127.0.0.2, port: 24225}
      - {name: d, bind: 127.0.0.3, port: 24225}
    routes: [{match: "**", outputs: [files]}]
    """
    assert errors(tmp_path, dedent(text) + dedent(OUTPUTS)) == (
        "main.yaml:3: sources[1].port: port 24224 is already used by sources[0] (127.0.0.1:24224)"
    )


def test_invalid_yaml_names_the_line(tmp_path):
    text = """\
    sources:
      - name: main
    routes: [{match: "**", outputs: [files]
    """
    assert errors(tmp_path, text) == (
        "main.yaml:4: invalid YAML: expected ',' or '}', but got '<stream end>' "
        "(while parsing a flow mapping at line 3)"
    )


def test_two_errors_at_once_are_both_reported(tmp_path):
    text = """\
    workers: many
    sources: [{name: main}]
    routes: [{match: "**", outputs: [files]}]
    outputs:
      files:
        type: file
        path: /tmp/x.log
        rotate: {interval: weekly}
    """
    assert errors(tmp_path, text).splitlines() == [
        "main.yaml:1: workers: expected an integer, got 'many'",
        "main.yaml:8: outputs.files.rotate.interval: expected a duration like 10s, 500ms or 5m, got 'weekly'",
    ]


def test_errors_from_several_files_sorted_by_file_and_line(tmp_path):
    text = """\
    include: [z.yaml]
    sources: [{name: main, port: -1}]
    routes: [{match: "**", outputs: [files]}]
    """
    z = "outputs:\n  files:\n    type: file\n    path: /tmp/x.log\n    buffer: {fsync: sometimes}\n"
    assert errors(tmp_path, text, **{"z.yaml": z}).splitlines() == [
        "main.yaml:2: sources[0].port: expected a number >= 0, got -1",
        "z.yaml:5: outputs.files.buffer.fsync: "
        "expected one of 'always', 'interval' or 'never', got 'sometimes'",
    ]


def test_parse_config_names_the_string():
    with pytest.raises(ConfigError) as info:
        parse_config("sources: []\n")
    assert str(info.value) == "<string>:1: sources: expected at least 1 item, got 0"
    (problem,) = info.value.problems
    assert (problem.file, problem.line, problem.path) == ("<string>", 1, "sources")
