"""What a valid configuration turns into: interpolation, includes, defaults, the shipped files."""

import typing
from pathlib import Path
from textwrap import dedent

import pydantic
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forwardd.app import Config, build_filter, default_config, load_config, parse_config
from forwardd.config import ConfigError
from forwardd.filters import Grep, Parser
from forwardd.filters.grep import GrepRule, GrepSettings
from forwardd.filters.parser import ParserSettings
from forwardd.outputs.debug import NullSettings
from forwardd.outputs.file import FileSettings

REPO = Path(__file__).resolve().parents[2]
CONF_FILES = sorted((REPO / "conf").rglob("*.yaml"))
# What the shipped files expect from the environment, where they have no default.
CONF_ENV = {"FORWARDD_SHARED_KEY": "test-key"}

MINIMAL = """\
sources: [{name: main}]
routes: [{match: "**", outputs: [out]}]
outputs: {out: {type: stdout}}
"""


def test_env_interpolation_with_default_and_set():
    text = dedent(
        """\
        storage: {path: "${DATA:-/var/lib/forwardd}"}
        sources:
          - name: main
            port: ${PORT:-24224}
            security: {shared_key: "k-${KEY}-${KEY}"}
        routes: [{match: "**", outputs: [out]}]
        outputs:
          out: {type: file, path: "${LOGS:-/logs}/${tag}/$${LITERAL}.log"}
        """
    )
    config = parse_config(text, env={"KEY": "s3cret", "PORT": "5170"})
    assert config.storage.path == Path("/var/lib/forwardd")
    assert config.sources[0].port == 5170
    assert config.sources[0].security is not None
    assert config.sources[0].security.shared_key == "k-s3cret-s3cret"
    out = config.outputs["out"]
    assert isinstance(out, FileSettings)
    # Lower-case placeholders belong to the output; $${X} is the escape for a literal ${X}.
    assert out.path == "/logs/${tag}/${LITERAL}.log"


def test_file_interpolation_reads_a_secret_file(tmp_path):
    """Docker secrets are files: ${file:PATH} reads one (less the newline that `echo` and editors leave),
    a relative PATH from the including file's directory, and $${file:...} stays literal."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "shared_key").write_text("s3cret key\n")
    (secrets / "password").write_text("p4ss\r\n")
    main = tmp_path / "main.yaml"
    main.write_text(
        dedent(
            f"""\
            sources:
              - name: main
                security:
                  shared_key: "${{file:{secrets}/shared_key}}"
                  user_auth: true
                  users: [{{username: alice, password: "${{file:secrets/password}}-${{KEY:-x}}"}}]
            routes: [{{match: "**", outputs: [out]}}]
            outputs:
              out: {{type: file, path: "/logs/$${{file:x}}/${{tag}}.log"}}
            """
        )
    )
    config = load_config(main, env={})
    security = config.sources[0].security
    assert security is not None
    assert security.shared_key == "s3cret key"
    assert security.users[0].password == "p4ss-x"
    out = config.outputs["out"]
    assert isinstance(out, FileSettings)
    assert out.path == "/logs/${file:x}/${tag}.log"


def test_empty_default_is_allowed():
    config = parse_config(MINIMAL + "log: {level: '${LEVEL:-}info'}\n", env={})
    assert config.log.level == "info"


def test_include_merging(tmp_path):
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "base.yaml").write_text(
        dedent(
            """\
            log: {level: debug, format: json}
            sources: [{name: base, port: 24224}]
            routes: [{match: "base.**", outputs: [base]}]
            labels:
              audit: [{match: "a.**", outputs: [base]}]
            outputs: {base: {type: stdout}}
            """
        )
    )
    (tmp_path / "conf.d" / "10-app.yaml").write_text(
        dedent(
            """\
            routes: [{match: "app.**", outputs: [app]}]
            labels:
              audit: [{match: "**", outputs: [app]}]
            outputs: {app: {type: null}}
            """
        )
    )
    (tmp_path / "main.yaml").write_text(
        dedent(
            """\
            include: [base.yaml, conf.d/*.yaml, empty.d/*.yaml]
            log: {level: warning}
            sources: [{name: main, port: 24225}]
            routes: [{match: "**", outputs: [base]}]
            """
        )
    )
    config = load_config(tmp_path / "main.yaml", env={})
    # Maps merged, the including file's scalars winning; lists appended, included entries first.
    assert (config.log.level, config.log.format) == ("warning", "json")
    assert [s.name for s in config.sources] == ["base", "main"]
    assert [r.match for r in config.routes] == ["base.**", "app.**", "**"]
    assert [r.outputs for r in config.labels["audit"]] == [("base",), ("app",)]
    assert set(config.outputs) == {"base", "app"}
    assert isinstance(config.outputs["app"], NullSettings)


def test_include_relative_to_the_including_file(tmp_path):
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    (tmp_path / "a" / "main.yaml").write_text("include: [b/more.yaml]\n" + MINIMAL)
    (nested / "more.yaml").write_text("include: [leaf.yaml]\n")
    (nested / "leaf.yaml").write_text("workers: 3\n")
    assert load_config(tmp_path / "a" / "main.yaml", env={}).workers == 3


def test_unquoted_null_output_type_and_yaml_octal_mode():
    config = parse_config(MINIMAL.replace("{type: stdout}", "{type: null}"), env={})
    assert isinstance(config.outputs["out"], NullSettings)
    unix = parse_config(
        MINIMAL.replace("{name: main}", "{name: main, unix: {path: /run/f.sock, mode: 0640}}"), env={}
    )
    assert unix.sources[0].unix is not None
    assert unix.sources[0].unix.mode == 0o640
    quoted = parse_config(
        MINIMAL.replace("{name: main}", '{name: main, unix: {path: /run/f.sock, mode: "0600"}}'), env={}
    )
    assert quoted.sources[0].unix is not None
    assert quoted.sources[0].unix.mode == 0o600


def test_settings_are_frozen():
    config = parse_config(MINIMAL, env={})
    with pytest.raises(pydantic.ValidationError):
        config.workers = 4  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        config.sources[0].port = 1  # type: ignore[misc]


def test_buffer_paths_resolved_against_storage():
    config = parse_config(
        MINIMAL.replace("{type: stdout}", "{type: stdout, buffer: {type: disk}}")
        + "storage: {path: /data}\n",
        env={},
    )
    buf = config.outputs["out"].buffer
    assert buf.path == Path("/data/buffer/out")
    assert buf.dead_letter_path == Path("/data/dead-letter/out")
    explicit = parse_config(MINIMAL.replace("{type: stdout}", "{type: stdout, buffer: {path: /b}}"), env={})
    assert explicit.outputs["out"].buffer.path == Path("/b")


def test_filters_and_their_constructor_arguments():
    text = MINIMAL.replace(
        "outputs: [out]}",
        'outputs: [out], filters: [{type: grep, combine: or, regexp: [{key: a, pattern: "x"}]},'
        " {type: parser, key: message}]}",
    )
    route = parse_config(text, env={}).routes[0]
    grep, parser = route.filters
    assert isinstance(grep, GrepSettings)
    assert (grep.regexp, grep.exclude, grep.combine) == ((GrepRule(key="a", pattern="x"),), (), "or")
    built = build_filter(grep, 0)
    assert isinstance(built, Grep)
    assert built.name == "grep[0]"
    assert built.keep({"a": "x"})
    assert not built.keep({"a": "y"})
    assert isinstance(parser, ParserSettings)
    built_parser = build_filter(parser, 1)
    assert isinstance(built_parser, Parser)
    assert built_parser.key_name == "message"


def test_secrets_stay_out_of_repr():
    config = parse_config(
        MINIMAL.replace("{name: main}", "{name: main, security: {shared_key: hunter2}}"), env={}
    )
    assert "hunter2" not in repr(config)


def test_default_config(tmp_path):
    config = default_config(env={"FORWARDD_DATA_DIR": str(tmp_path)})
    (source,) = config.sources
    assert (source.bind, source.port, source.udp_heartbeat, source.unix) == ("0.0.0.0", 24224, True, None)
    (route,) = config.routes
    assert route.match == "**"
    out = config.outputs[route.outputs[0]]
    assert isinstance(out, FileSettings)
    assert out.format == "json"
    assert out.path.startswith(f"{tmp_path}/logs/")
    assert out.buffer.type == "disk"
    assert out.buffer.path == tmp_path / "buffer" / route.outputs[0]
    assert default_config(env={}).storage.path == Path("forwardd-data")
    assert config.http_server is None, "the operators' endpoint is off by default"
    ops = default_config(env={"FORWARDD_HTTP_PORT": "24220"}).http_server
    assert ops is not None
    assert (ops.bind, ops.port) == ("127.0.0.1", 24220)


def test_describe_shows_where_each_tag_goes():
    text = dedent(
        """\
        sources:
          - {name: main, port: 24224}
          - {name: private, unix: {path: /run/f.sock}, label: audit}
        routes:
          - {match: "docker.**", filters: [{type: docker_partial}], outputs: [files, k], continue: true}
          - {match: "**", outputs: [files]}
        labels:
          audit: [{match: "**", outputs: [k]}]
        outputs:
          files: {type: file, path: /logs/x.log}
          k: {type: kafka, brokers: ["b:9092"], topic: logs}
          spare: {type: null}
        """
    )
    summary = parse_config(text, env={}).describe()
    for line in (
        "  main: forward tcp://0.0.0.0:24224 (udp heartbeat) -> root routes",
        "  private: forward unix:/run/f.sock -> label audit",
        "  1. match 'docker.**' | filters: docker_partial -> files, k (continue)",
        "  2. match '**' -> files",
        "label audit:",
        "  k: kafka b:9092 topic=logs acks=all format=json",
        "  spare: null (discard)  [not used by any route]",
    ):
        assert line in summary.splitlines()


@pytest.mark.parametrize("path", CONF_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_configuration_loads(path):
    config = load_config(path, env=CONF_ENV)
    assert config.sources
    assert config.describe()


def test_shipped_files_exist():
    names = {str(p.relative_to(REPO)) for p in CONF_FILES}
    assert {
        "conf/forwardd.yaml",
        "conf/examples/docker-host.yaml",
        "conf/examples/swarm-aggregator.yaml",
        "conf/examples/test-setup.yaml",
    } <= names


def _all_keys(model: type[pydantic.BaseModel], seen: set[type]) -> set[str]:
    keys: set[str] = set()
    if model in seen:
        return keys
    seen.add(model)
    for name, field in model.model_fields.items():
        keys.add(field.alias or name)
        stack = [field.annotation]
        while stack:
            tp = stack.pop()
            if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
                keys |= _all_keys(tp, seen)
            stack.extend(typing.get_args(tp))
    return keys


def test_reference_documents_every_key():
    text = (REPO / "conf" / "forwardd.yaml").read_text()
    missing = sorted(k for k in _all_keys(Config, set()) if f"{k}:" not in text and f"{k}: " not in text)
    assert missing == []


yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 70000),
    st.sampled_from(["**", "x", "1GiB", "5s", "file", "null"]),
)
yaml_keys = st.sampled_from(
    [
        "sources",
        "routes",
        "outputs",
        "labels",
        "name",
        "port",
        "type",
        "match",
        "buffer",
        "max_size",
        "path",
        "x",
    ]
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(yaml_keys, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(yaml_keys, yaml_values, max_size=5))
def test_any_document_gives_a_config_or_located_problems(doc):
    text = yaml.safe_dump(doc)
    problems = []
    try:
        parse_config(text, "fuzz.yaml", env={})
    except ConfigError as exc:
        problems = exc.problems
        message = str(exc)
    else:
        return  # a valid configuration: nothing to locate
    assert problems
    for problem in problems:
        assert problem.file == "fuzz.yaml"
        assert problem.line is not None
        assert 1 <= problem.line <= max(1, text.count("\n"))
        assert problem.message
    assert message.splitlines() == [str(p) for p in problems]
