"""The config's JSON Schema: committed, complete, and in agreement with the daemon."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from jobwire.cli import main
from jobwire.config import DURATION_PATTERN, json_schema
from jobwire.durations import parse_duration

CONFIG_DIR = Path(__file__).parents[2] / "config"
SCHEMA_FILE = CONFIG_DIR / "jobwire.schema.json"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.yaml"))
REGENERATE = "regenerate it: .venv/bin/jobwire config schema > config/jobwire.schema.json"


def test_the_committed_schema_is_what_the_command_prints() -> None:
    result = CliRunner().invoke(main, ["config", "schema"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json_schema()
    assert SCHEMA_FILE.read_text(encoding="utf-8") == result.stdout, (
        f"{SCHEMA_FILE} does not match the config models; {REGENERATE}"
    )


def _properties(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every (model.field, field schema) in the schema, the top level's and the $defs'."""
    found = [(f"Config.{k}", v) for k, v in schema["properties"].items()]
    for model, definition in schema["$defs"].items():
        found += [(f"{model}.{k}", v) for k, v in definition.get("properties", {}).items()]
    return found


def _description(field: dict[str, Any], schema: dict[str, Any]) -> str | None:
    """A field's description, or (pydantic leaves out a copy of it) its model's."""
    if "$ref" in field and "description" not in field:
        field = schema["$defs"][field["$ref"].rpartition("/")[2]]
    return field.get("description")


def test_every_field_of_every_model_has_a_description() -> None:
    schema = json_schema()
    fields = _properties(schema)
    assert len(fields) > 100  # every source model is reached
    assert [name for name, field in fields if not _description(field, schema)] == []


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_config_files_validate_against_the_schema(path: Path) -> None:
    checker = Path(sys.executable).with_name("check-jsonschema")
    proc = subprocess.run(
        [str(checker), "--schemafile", str(SCHEMA_FILE), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_config_files_pass_check_config(path: Path) -> None:
    result = CliRunner().invoke(main, ["check-config", "-c", str(path)])
    assert (result.exit_code, result.stdout) == (0, "ok\n"), result.output


def test_the_example_points_editors_at_the_schema() -> None:
    first = (CONFIG_DIR / "jobwire.example.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert first == "# yaml-language-server: $schema=./jobwire.schema.json"


@pytest.mark.parametrize(
    "text",
    [
        "30s",
        "500ms",
        "1h30m",
        "1.5h",
        "2d",
        "10",
        "0.25",
        " 5 m ",
        "1h 30m",
        "5 minutes",
        "",
        "s",
        "1x",
        "-3s",
        "1.s",
    ],
)
def test_the_duration_pattern_accepts_what_the_parser_does(text: str) -> None:
    try:
        parse_duration(text)
        parsed = True
    except ValueError:
        parsed = False
    duration = {"anyOf": [{"type": "number"}, {"type": "string", "pattern": DURATION_PATTERN}]}
    assert jsonschema.Draft202012Validator(duration).is_valid(text) == parsed


def test_the_schema_catches_a_misspelt_key_and_a_bad_duration() -> None:
    validator = jsonschema.Draft202012Validator(json_schema())
    assert validator.is_valid({"workers": {"lease": "90s", "poll_interval": 0.5}})
    assert not validator.is_valid({"workers": {"concurency": 3}})
    assert not validator.is_valid({"workers": {"lease": "soon"}})
    source = {"name": "s", "type": "mqtt", "topics": ["a"], "route": {"handler": "echo"}}
    assert validator.is_valid({"sources": [source, {**source, "name": "t", "protocol": 5}]})
    assert not validator.is_valid({"sources": [{**source, "type": "amqp"}]})
