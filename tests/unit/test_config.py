from pathlib import Path

import pytest

from jobwire.config import Config, ConfigError, find_config_file, parse_config


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "jobwire.yaml", env or {})
    return [str(p) for p in info.value.problems]


def test_empty_file_gives_defaults() -> None:
    config = parse_config("", "x.yaml", {})
    assert config == Config()
    assert config.database.url == "embedded"
    assert config.workers.poll_interval == 1.0
    assert config.queue_names() == ["default"]


def test_full_example_file_is_valid() -> None:
    example = Path(__file__).parents[2] / "config" / "jobwire.example.yaml"
    config = parse_config(example.read_text(), str(example), {})
    assert config.workers.concurrency >= 1


def test_durations_and_env_interpolation() -> None:
    text = """
database: {url: "${DB_URL:-postgresql://localhost/x}", schema: "${SCHEMA}"}
workers: {poll_interval: 500ms, lease: 2m, concurrency: "${CONC:-8}"}
queues: {long: {concurrency: 2, timeout: 2h}}
"""
    config = parse_config(text, "f.yaml", {"SCHEMA": "jw"})
    assert config.database.url == "postgresql://localhost/x"
    assert config.database.db_schema == "jw"
    assert config.workers.poll_interval == 0.5
    assert config.workers.lease == 120
    assert config.workers.concurrency == 8
    assert config.queues["long"].timeout == 7200
    assert config.queue_names() == ["default", "long"]


def test_unknown_key_is_named_with_its_path() -> None:
    assert problems("workers: {concurency: 3}") == ["jobwire.yaml: workers.concurency: unknown key"]


def test_wrong_type_is_named() -> None:
    (line,) = problems("workers: {concurrency: lots}")
    assert line.startswith("jobwire.yaml: workers.concurrency: ")
    assert "integer" in line


def test_bad_duration_is_named() -> None:
    (line,) = problems("workers: {poll_interval: 5 minutes}")
    assert line.startswith("jobwire.yaml: workers.poll_interval: invalid duration")


def test_missing_env_var_without_default_is_named() -> None:
    (line,) = problems("database: {url: '${NOPE}'}")
    assert line == (
        "jobwire.yaml: database.url: environment variable NOPE is not set and has no default"
    )


def test_invalid_yaml_gives_line_and_column() -> None:
    (line,) = problems("workers:\n  concurrency: [1,\n")
    assert line.startswith("jobwire.yaml: line ")
    assert "invalid YAML" in line


def test_every_problem_is_reported_not_just_the_first() -> None:
    lines = problems("workers: {concurrency: x, lease: y}\nbogus: 1")
    keys = sorted(line.split(": ")[1] for line in lines)
    assert keys == ["bogus", "workers.concurrency", "workers.lease"]


def test_queue_and_handler_problems() -> None:
    assert problems("queues: {long: {concurrency: 0}}")[0].startswith(
        "jobwire.yaml: queues.long.concurrency: "
    )
    assert "dotted path" in problems("handlers: {email: 'not a path'}")[0]


def test_top_level_must_be_a_mapping() -> None:
    assert "mapping" in problems("- a\n- b")[0]


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert find_config_file(None, {}) is None
    (tmp_path / "jobwire.yaml").write_text("")
    assert find_config_file(None, {}) == Path("jobwire.yaml")
    assert find_config_file(None, {"JOBWIRE_CONFIG": "/x.yaml"}) == Path("/x.yaml")
    assert find_config_file("given.yaml", {"JOBWIRE_CONFIG": "/x.yaml"}) == Path("given.yaml")


def test_source_names_must_be_unique() -> None:
    text = (
        "sources: [{name: a, type: amqp, queue: q, route: {handler: x}},"
        " {name: a, type: stomp, destination: /queue/q, route: {handler: x}}]"
    )
    assert problems(text) == ["jobwire.yaml: sources: source names must be unique; repeated: a"]


def test_kafka_source_defaults_and_rules() -> None:
    config = parse_config(
        "sources: [{name: k, type: kafka, topics: [events], route: {handler: x}}]",
        "jobwire.yaml",
        {},
    )
    source = config.sources[0]
    assert (source.auto_offset_reset, source.isolation_level) == ("earliest", "read_committed")
    (line,) = problems("sources: [{name: k, type: kafka, topics: [e], route: {mode: notify}}]")
    assert line.startswith("jobwire.yaml: sources[0]: route.mode notify needs a broker")
    (line,) = problems("sources: [{name: k, type: kafka, topics: [], route: {handler: x}}]")
    assert line.startswith("jobwire.yaml: sources[0].topics: ")


def test_mqtt_source_defaults_and_rules() -> None:
    config = parse_config(
        "sources: [{name: m, type: mqtt, topics: [a/+/b], protocol: 3.1.1, route: {handler: x}}]",
        "jobwire.yaml",
        {},
    )
    source = config.sources[0]
    assert (source.qos, source.protocol, source.client_id) == (1, "3.1.1", None)
    (line,) = problems("sources: [{name: m, type: mqtt, topics: [a], qos: 0, route: {handler: x}}]")
    assert line.startswith("jobwire.yaml: sources[0].qos: ")
    (line,) = problems(
        "sources: [{name: m, type: mqtt, topics: [a], url: 'http://x', route: {handler: x}}]"
    )
    assert (
        line == "jobwire.yaml: sources[0].url: must be an mqtt:// or mqtts:// URL (got 'http://x')"
    )


def test_a_bad_secret_field_is_named_without_its_value() -> None:
    (line,) = problems("http: {admin_token: short-tok3n}")
    assert line == (
        "jobwire.yaml: http.admin_token: String should have at least 16 characters (got ***)"
    )
    (line,) = problems(
        "sources: [{name: m, type: mqtt, topics: [a], password: 12345678, route: {handler: x}}]"
    )
    assert line.startswith("jobwire.yaml: sources[0].password: Input should be a valid string")
    assert "12345678" not in line


def test_a_bad_url_is_shown_with_its_password_masked() -> None:
    (line,) = problems("database: {url: 'mysql://root:hunter2pw@db/x'}")
    assert line == (
        "jobwire.yaml: database.url: must be 'embedded' or a postgresql:// URL"
        " (got 'mysql://root:***@db/x')"
    )


def test_a_secret_quoted_by_any_problem_is_masked() -> None:
    # The same value as a URL's password and (by mistake) as the schema: the schema's
    # validator quotes it; the problem still names the key and what is wrong.
    text = "database: {url: 'postgresql://jw:${PW}@db/x', schema: '${PW}'}"
    (line,) = problems(text, {"PW": "pw-with-dash"})
    assert line.startswith("jobwire.yaml: database.schema: '***' must be a plain SQL identifier")
    assert "pw-with-dash" not in line
    token = "tok-0123456789abcdef"
    (line,) = problems("http: {admin_token: '${T}', listen: '${T}'}", {"T": token})
    assert line.startswith("jobwire.yaml: http.listen: must be host:port")
    assert token not in line
