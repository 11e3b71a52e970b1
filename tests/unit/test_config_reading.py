"""Reading a config file: bounded work, no tracebacks, no duplicate keys, no echoed
tokens, and keys YAML 1.1 did not read as names (all found by a drill)."""

import os
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobwire.cli import main
from jobwire.config import ConfigError, load_config, parse_config


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml", env or {})
    return [str(p) for p in info.value.problems]


def laughs(levels: int) -> str:
    lines = ["anchors:", '  - &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for n in range(1, levels + 1):
        lines.append(f"  - &a{n} [" + ",".join([f"*a{n - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [7, 9])
def test_a_billion_laughs_is_refused_at_once(levels: int) -> None:
    # 7 levels took 114 s and 1.2 GB: each alias was copied by the ${VAR} step.
    started = time.monotonic()
    (line,) = problems(laughs(levels))
    assert time.monotonic() - started < 1
    assert line.startswith("f.yaml: line ")
    assert "expands to more than 100000 values through its aliases" in line


def test_aliases_are_interpolated_once_and_still_work() -> None:
    text = """
queues:
  a: &limits {concurrency: "${C}"}
  b: *limits
  c: {<<: *limits, timeout: 5s}
"""
    config = parse_config(text, "f.yaml", {"C": "3"})
    assert [config.queues[q].concurrency for q in "abc"] == [3, 3, 3]
    assert config.queues["c"].timeout == 5


def test_an_environment_value_in_a_shared_alias_is_named_at_every_key() -> None:
    # The alias is interpolated once; its second use was not known to hold the variable's
    # value, so its problem quoted the value instead of naming the variable.
    text = """
queues:
  a: &limits {concurrency: "${C}"}
  b: *limits
"""
    lines = problems(text, {"C": "not-a-number-7f3a"})
    assert len(lines) == 2
    assert all("not-a-number-7f3a" not in line for line in lines)
    assert all(line.endswith("(got the value of environment variable ${C})") for line in lines)
    assert {line.split(": ")[1] for line in lines} == {
        "queues.a.concurrency",
        "queues.b.concurrency",
    }


def test_an_alias_inside_itself_is_refused() -> None:
    (line,) = problems("a: &x [1, *x]")
    assert "refers to a node that contains it" in line


def test_deep_nesting_is_a_config_error_not_a_traceback() -> None:
    (line,) = problems("a: " + "{b: " * 2000 + "1" + "}" * 2000)
    assert line.startswith("f.yaml: line 1, column ")
    assert "nested deeper than 100 levels" in line


def test_deep_nesting_through_aliases_is_refused() -> None:
    lines = ["- &a0 [1]"] + [f"- &a{n} [*a{n - 1}]" for n in range(1, 150)]
    (line,) = problems("x:\n" + "\n".join("  " + x for x in lines))
    assert "nested deeper than 100 levels through its aliases" in line


def test_bytes_that_are_not_utf8_are_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"database:\n  url: 'postgresql://u:p\xe4ss@h/x'\n")
    result = CliRunner().invoke(main, ["check-config", "-c", str(path)])
    assert result.exit_code == 2
    assert result.stderr == f"error: {path}: line 2, byte 25: not UTF-8 text (save it as UTF-8)\n"


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    outcome: list[str] = []

    def load() -> None:
        try:
            load_config(str(fifo))
        except ConfigError as err:
            outcome.append(str(err))

    thread = threading.Thread(target=load, daemon=True)  # the old code blocked in open()
    thread.start()
    thread.join(5)
    assert outcome == [f"{fifo}: cannot read: not a regular file (a directory, device or pipe)"]


def test_a_device_is_refused() -> None:
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config("/dev/null")


@pytest.mark.parametrize(
    ("text", "where", "key"),
    [
        ("workers:\n  concurrency: 5\nworkers:\n  concurrency: 7\n", "line 3", "'workers'"),
        ("workers:\n  concurrency: 5\n  concurrency: 7\n", "line 3", "'concurrency'"),
        ("queues: {a: {}, a: {concurrency: 1}}", "line 1", "'a'"),
        # no and false are the same key to YAML 1.1: the second would win silently.
        ("queues:\n  no: {}\n  false: {}\n", "line 3", "False"),
    ],
)
def test_duplicate_keys_are_refused(text: str, where: str, key: str) -> None:
    (line,) = problems(text)
    assert line.startswith(f"f.yaml: {where}, column ")
    assert f"duplicate key {key}" in line


def test_merged_keys_may_be_overridden() -> None:
    text = "x: &d {concurrency: 1}\nqueues: {a: {<<: *d, concurrency: 2}}\n"
    with pytest.raises(ConfigError) as info:  # x is unknown; the merge itself is fine
        parse_config(text, "f.yaml", {})
    assert [p.key for p in info.value.problems] == ["x"]


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("http:\n  admin_token: !Sekr3tTagPw\n", "Sekr3tTagPw"),
        ("http:\n  admin_token: *Sekr3tAliasPw\n", "Sekr3tAliasPw"),
        ("http:\n  admin_token: &Sekr3tAnchor1 x\nb: &Sekr3tAnchor1 y\n", "Sekr3tAnchor1"),
    ],
)
def test_yaml_errors_do_not_quote_the_token(text: str, secret: str) -> None:
    (line,) = problems(text)
    assert secret not in line
    assert line.startswith("f.yaml: line ")


def test_yaml_errors_still_show_a_character() -> None:
    (line,) = problems("a:\n\tb: 1\n")
    assert "found character '\\t' that cannot start any token" in line


def test_keys_yaml_read_as_booleans_or_numbers_must_be_quoted() -> None:
    assert problems("queues:\n  no: {concurrency: 1}\n  0755: {}\n") == [
        "f.yaml: queues: the key no (line 2) was read as a boolean, not a name: quote it ('no')",
        "f.yaml: queues: the key 0755 (line 3) was read as a number, not a name: quote it ('0755')",
    ]


def test_quoted_keys_are_names() -> None:
    config = parse_config("queues: {'no': {}, '0755': {}}", "f.yaml", {})
    assert set(config.queues) == {"no", "0755"}


def test_a_value_from_the_environment_is_not_echoed() -> None:
    env = {"SCHEMA": "Sch3ma-From-Env"}
    (line,) = problems("database: {schema: '${SCHEMA}'}", env)
    assert "Sch3ma-From-Env" not in line
    assert line.startswith("f.yaml: database.schema: ")
    assert "(got the value of environment variable ${SCHEMA})" in line


def test_a_value_written_in_the_file_is_still_echoed() -> None:
    (line,) = problems("workers: {concurrency: lots}")
    assert "(got 'lots')" in line
