import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from click.testing import CliRunner

from jobwire import redaction
from jobwire.cli import main
from jobwire.config import Config, ConfigError, find_config_file, parse_config
from jobwire.handlers import HandlerLoadError, HandlerRegistry


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
    assert problems("workers: {concurency: 3}") == [
        "jobwire.yaml: workers.concurency: unknown key (did you mean 'concurrency'?)"
    ]


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
    # paho confirms QoS 2 before the row is stored: refused with the reason.
    (line,) = problems("sources: [{name: m, type: mqtt, topics: [a], qos: 2, route: {handler: x}}]")
    assert line.startswith("jobwire.yaml: sources[0].qos: 2 is not supported: paho confirms")
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


AMQP = "sources: [{name: a, type: amqp, queue: q, route: {handler: echo}, %s}]"
# Block style: an unquoted ${...} cannot stand in a {flow: mapping}, where { is syntax.
AMQP_BLOCK = """
sources:
  - name: a
    type: amqp
    queue: q
    route: {handler: echo}
"""


def test_an_unknown_key_gets_the_closest_known_one() -> None:
    assert problems(AMQP % "prefecth: 10") == [
        "jobwire.yaml: sources[0].prefecth: unknown key (did you mean 'prefetch'?)"
    ]
    assert problems("database: {shema: jw, pool: {mx: 3}}\nworkrs: {}") == [
        "jobwire.yaml: database.pool.mx: unknown key (did you mean 'max'?)",
        "jobwire.yaml: database.shema: unknown key (did you mean 'schema'?)",
        "jobwire.yaml: workrs: unknown key (did you mean 'workers'?)",
    ]
    assert problems("queues: {long: {timout: 2h}}") == [
        "jobwire.yaml: queues.long.timout: unknown key (did you mean 'timeout'?)"
    ]
    # Nothing close: no guess.
    assert problems("workers: {zzzzzz: 1}") == ["jobwire.yaml: workers.zzzzzz: unknown key"]


def test_double_dollar_is_a_literal_dollar() -> None:
    text = "database: {url: 'postgresql://u:pa$$word@db/x', schema: '$${HOME}'}"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml", {"HOME": "/root"})
    # Not substituted: the schema is the literal text, which is no identifier.
    (problem,) = info.value.problems
    assert (problem.key, problem.reason.split(" must")[0]) == ("database.schema", "'${HOME}'")
    config = parse_config(text.replace("'$${HOME}'", "jw"), "f.yaml", {})
    assert urlsplit(config.database.url).password == "pa$word"
    # A variable whose value holds $$ is not unescaped again.
    config = parse_config(AMQP_BLOCK + "    exchange: ${EX}\n", "f.yaml", {"EX": "a$$b"})
    assert config.sources[0].exchange == "a$$b"


def test_an_unquoted_value_that_expands_to_nothing_is_null() -> None:
    text = AMQP_BLOCK + '    exchange: ${EX:-}\n    dead_letter_routing_key: "${EX:-}"\n'
    source = parse_config(text, "f.yaml", {}).sources[0]
    # Unquoted: null (the field's "not set"); quoted: the empty string (AMQP's default exchange).
    assert (source.exchange, source.dead_letter_routing_key) == (None, "")
    assert parse_config(text, "f.yaml", {"EX": ""}).sources[0].exchange is None
    config = parse_config("http:\n  admin_token: ${TOKEN:-}", "f.yaml", {})
    assert config.http.admin_token is None
    (line,) = problems("http: {admin_token: '${TOKEN:-}'}")
    assert line.startswith("jobwire.yaml: http.admin_token: String should have at least 16")


def test_a_variable_falls_back_to_its_file(tmp_path: Path) -> None:
    secret = "from-a-file-4f1c@/:%"
    (tmp_path / "pw").write_text(secret + "\n")
    text = "database: {url: 'postgresql://jw:${DB_PASSWORD}@db:5432/jobs'}"
    config = parse_config(text, "f.yaml", {"DB_PASSWORD_FILE": str(tmp_path / "pw")})
    assert unquote(urlsplit(config.database.url).password or "") == secret
    assert secret in redaction.known()
    # The variable itself wins over its file.
    env = {"DB_PASSWORD": "direct", "DB_PASSWORD_FILE": str(tmp_path / "pw")}
    assert parse_config(text, "f.yaml", env).database.url == "postgresql://jw:direct@db:5432/jobs"


def test_a_variable_falls_back_to_a_systemd_credential(tmp_path: Path) -> None:
    (tmp_path / "ADMIN_TOKEN").write_text("token-from-credentials-dir-7d2e\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    config = parse_config("http: {admin_token: '${ADMIN_TOKEN}'}", "f.yaml", env)
    assert config.http.admin_token == "token-from-credentials-dir-7d2e"
    assert "token-from-credentials-dir-7d2e" in redaction.known()
    # A credential the directory does not hold: the default, or the usual problem.
    config = parse_config("http:\n  admin_token: ${OTHER:-}", "f.yaml", env)
    assert config.http.admin_token is None
    (line,) = problems("http: {admin_token: '${OTHER}'}", env)
    assert line.endswith("environment variable OTHER is not set and has no default")


def test_a_missing_secret_file_is_named_without_content(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    (line,) = problems("http: {admin_token: '${TOKEN}'}", {"TOKEN_FILE": str(missing)})
    assert line == (
        f"jobwire.yaml: http.admin_token: environment variable TOKEN_FILE names {missing}, "
        "which cannot be read: No such file or directory"
    )
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xffsecret-bytes")
    (line,) = problems("http: {admin_token: '${TOKEN}'}", {"TOKEN_FILE": str(binary)})
    assert line.endswith("which is not UTF-8 text")
    assert "secret-bytes" not in line


def test_a_secret_from_a_pipe_is_read_and_a_stuck_or_endless_one_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A FIFO nobody writes to made start-up wait for good; /dev/zero filled the memory.
    import os
    import threading
    import time

    from jobwire import interpolation

    monkeypatch.setattr(interpolation, "SECRET_PIPE_WAIT", 0.5)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    (line,) = problems("http: {admin_token: '${TOKEN}'}", {"TOKEN_FILE": str(fifo)})
    assert line.endswith("which cannot be read: nothing came through it within 0.5s")
    assert time.monotonic() - started < 5
    (line,) = problems("http: {admin_token: '${TOKEN}'}", {"TOKEN_FILE": "/dev/zero"})
    assert line.endswith("which cannot be read: larger than 1024 KiB: not a secret")

    # A pipe with a writer (process substitution, a secrets agent) gives its secret.
    def write() -> None:
        with fifo.open("w") as pipe:
            time.sleep(0.1)  # nothing to read at first: the reader must wait for it
            pipe.write("token-through-a-pipe-0001\n")

    # The writer's open waits for the reader's; the reader then waits on the pipe.
    writer = threading.Thread(target=write)
    writer.start()
    try:
        text = "http: {admin_token: '${TOKEN}'}"
        config = parse_config(text, "f.yaml", {"TOKEN_FILE": str(fifo)})
    finally:
        writer.join(5)
    assert config.http.admin_token == "token-through-a-pipe-0001"


def test_a_file_secret_is_masked_in_problems(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("file-secret-91ab\n")
    (line,) = problems("database: {schema: '${PW}'}", {"PW_FILE": str(tmp_path / "pw")})
    assert line.startswith("jobwire.yaml: database.schema: '***' must be a plain SQL identifier")


@pytest.mark.parametrize(
    ("text", "scheme"),
    [
        ("database: {url: 'postgresql://${USER}:${PASS}@db.internal:5432/jobs'}", "postgresql"),
        (AMQP % "url: 'amqp://${USER}:${PASS}@${HOST}:5672/%2F'", "amqp"),
    ],
)
def test_a_variable_in_a_url_password_is_percent_encoded(text: str, scheme: str) -> None:
    password = "p@ss/w:rd%41#?"
    config = parse_config(text, "f.yaml", {"USER": "job@wire", "PASS": password, "HOST": "mq"})
    url = config.database.url if scheme == "postgresql" else config.sources[0].url
    parts = urlsplit(url)
    assert parts.scheme == scheme
    assert (unquote(parts.username or ""), unquote(parts.password or "")) == ("job@wire", password)
    assert parts.hostname in ("db.internal", "mq")


def test_only_a_url_userinfo_is_encoded() -> None:
    env = {"DB_URL": "postgresql://u:p@ss@db/x", "DB": "my/db", "PASS": "a@b"}
    # The whole URL from one variable is taken as it is: it is the operator's URL.
    assert parse_config("database: {url: '${DB_URL}'}", "f", env).database.url == env["DB_URL"]
    config = parse_config("database: {url: 'postgresql://u:${PASS}@db/${DB}'}", "f", env)
    assert config.database.url == "postgresql://u:a%40b@db/my/db"
    # A default is written in the file, as it should appear in the URL.
    config = parse_config("database: {url: 'postgresql://u:${NONE:-p%40w}@db/x'}", "f", env)
    assert config.database.url == "postgresql://u:p%40w@db/x"


def test_every_handler_that_fails_to_import_is_reported(tmp_path: Path) -> None:
    handlers = {"mail": "nosuchmodule.jobs:send", "echo2": "json:no_such_function"}
    with pytest.raises(HandlerLoadError) as info:
        HandlerRegistry.from_config({**handlers, "ok": "json:dumps"})
    assert [f.name for f in info.value.failures] == ["mail", "echo2"]
    path = tmp_path / "jobwire.yaml"
    path.write_text(
        "handlers: {mail: 'nosuchmodule.jobs:send', ok: 'json:dumps',"
        " echo2: 'json:no_such_function'}\n"
    )
    result = CliRunner().invoke(main, ["check-config", "-c", str(path)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"error: {path}: handlers.mail: cannot load 'nosuchmodule.jobs:send': "
        "ModuleNotFoundError: No module named 'nosuchmodule'",
        f"error: {path}: handlers.echo2: cannot load 'json:no_such_function': "
        "AttributeError: module 'json' has no attribute 'no_such_function'",
    ]


def test_http_idle_timeout_is_a_finite_positive_duration() -> None:
    for bad in ("0", ".inf", ".nan", "2d"):
        (line,) = problems(f"http: {{idle_timeout: {bad}}}")
        assert line.startswith("jobwire.yaml: http.idle_timeout: "), line


def test_a_handler_no_call_can_satisfy_stops_the_start(tmp_path: Path) -> None:
    module = tmp_path / "sigs_mod.py"
    module.write_text(
        "def none(): pass\n"
        "def three(payload, ctx, extra): pass\n"
        "def keyword(payload, *, tenant): pass\n"
        "async def agen(payload):\n    yield payload\n"
        "def gen(payload):\n    yield payload\n"
        "def fine(payload, ctx=None, extra=1, *, opt=2): pass\n"
        "def star(*args): pass\n"
        "class Callable:\n    def __call__(self, payload): pass\n"
        "instance = Callable()\n"
        "import functools\n"
        "def inject(fn):\n"
        "    @functools.wraps(fn)\n"
        "    def wrapper(payload, ctx):\n"
        "        return fn(payload, ctx, db='db', tenant='t')\n"
        "    return wrapper\n"
        "@inject\n"
        "def decorated(payload, ctx, db, *, tenant): pass\n"
    )
    bad = {f"h_{n}": f"sigs_mod:{n}" for n in ("none", "three", "keyword", "agen", "gen")}
    good = {f"h_{n}": f"sigs_mod:{n}" for n in ("fine", "star", "instance", "decorated")}
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(HandlerLoadError) as info:
            HandlerRegistry.from_config({**bad, **good, "c_func": "json:dumps"})
        HandlerRegistry.from_config(good)  # these load
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("sigs_mod", None)
    reasons = {f.name: f.reason for f in info.value.failures}
    assert sorted(reasons) == sorted(bad)
    assert reasons["h_none"].startswith("it takes no positional argument")
    assert reasons["h_three"].startswith("it needs 3 arguments (payload, ctx, extra)")
    assert reasons["h_keyword"].startswith("it needs keyword-only arguments (tenant)")
    assert reasons["h_agen"].startswith("it is a generator function")
    assert reasons["h_gen"].startswith("it is a generator function")
    assert all("(payload) or (payload, ctx)" in reasons[n] for n in ("h_none", "h_three"))
