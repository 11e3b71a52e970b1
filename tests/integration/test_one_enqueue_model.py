"""The HTTP API, the CLI and the Client check an enqueue with one model (api_models), so the
same bad value is refused the same way, naming the same field, whichever way it comes in."""

from __future__ import annotations

import pytest

from jobwire import Client
from jobwire.api_models import BadInput, check_enqueue
from tests.support.daemon import jobwire

BAD = [
    ("priority", {"priority": 2**40}, ["--priority", str(2**40)]),
    ("delay", {"delay": "soon"}, ["--delay", "soon"]),
    ("max_attempts", {"max_attempts": 0}, ["--max-attempts", "0"]),
    ("dedup_key", {"dedup_key": ""}, ["--dedup-key", ""]),
]


@pytest.mark.parametrize(("field", "fields", "_args"), BAD, ids=[b[0] for b in BAD])
def test_the_model_names_the_field(field: str, fields: dict[str, object], _args: object) -> None:
    with pytest.raises(BadInput) as caught:
        check_enqueue({"handler": "noop", **fields})
    assert caught.value.field == field


@pytest.mark.parametrize(("field", "fields", "args"), BAD, ids=[b[0] for b in BAD])
def test_the_cli_refuses_it_naming_the_option(
    field: str, fields: dict[str, object], args: list[str], database_url: str
) -> None:
    out = jobwire("enqueue", "noop", *args, "--database-url", database_url, check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"--{field.replace('_', '-')}" in out.stderr


@pytest.mark.parametrize(("field", "fields", "_args"), BAD, ids=[b[0] for b in BAD])
async def test_the_client_refuses_it_naming_the_field(
    field: str, fields: dict[str, object], _args: object, database_url: str
) -> None:
    async with Client(database_url) as client:
        with pytest.raises(BadInput) as caught:
            await client.enqueue("noop", {}, **fields)  # type: ignore[arg-type]
        assert caught.value.field == field
        # Good values still go in, durations as the CLI takes them.
        assert await client.enqueue("noop", {}, delay="5m", priority=3) > 0
