"""Values a Python caller can hand over that no jobwire column holds (NUL, a lone surrogate,
NaN, a type JSON lacks, a sub-microsecond timeout) are refused by the enqueue model, naming
the field, before any SQL. Before, they reached PostgreSQL: the caller got a driver error
(or an InvalidJobData) and, on its own connection, its whole transaction was aborted with its
own writes in it."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import reduce
from typing import Any

import asyncpg
import psycopg
import pytest

from jobwire import pg_sync
from jobwire.api_models import BadInput
from jobwire.client import Client, SyncClient
from jobwire.models import JobSpec
from tests.support.rows import job_count, scalar

pytestmark = pytest.mark.timeout(60)

# (field the refusal names, handler, payload, options)
BAD: dict[str, tuple[str, str, Any, dict[str, Any]]] = {
    "NUL in handler": ("handler", "a\x00b", {}, {}),
    "NUL in queue": ("queue", "noop", {}, {"queue": "q\x00"}),
    "NUL in dedup_key": ("dedup_key", "noop", {}, {"dedup_key": "k\x00"}),
    "NUL in concurrency_key": ("concurrency_key", "noop", {}, {"concurrency_key": "c\x00"}),
    "NUL in a header": ("headers", "noop", {}, {"headers": {"a": "b\x00"}}),
    "NUL in a header name": ("headers", "noop", {}, {"headers": {"a\x00": "b"}}),
    "surrogate in a header": ("headers", "noop", {}, {"headers": {"a": "\ud800"}}),
    "NUL in the payload": ("payload", "noop", {"a": ["\x00"]}, {}),
    "NUL in a payload key": ("payload", "noop", {"a\x00": 1}, {}),
    "surrogate in the payload": ("payload", "noop", "\udfff", {}),
    "NaN in the payload": ("payload", "noop", {"a": float("nan")}, {}),
    "Infinity as the payload": ("payload", "noop", float("inf"), {}),
    "bytes in the payload": ("payload", "noop", {"a": b"x"}, {}),
    "an integer json.dumps refuses": ("payload", "noop", 10**5000, {}),
    "nesting json.dumps cannot recurse": (
        "payload",
        "noop",
        reduce(lambda inner, _: [inner], range(3000), 1),
        {},
    ),
    "a timeout that rounds to no interval": ("timeout", "noop", {}, {"timeout": 1e-9}),
}
CASES = list(BAD)


@pytest.mark.parametrize("case", CASES)
async def test_client_on_the_callers_connection_keeps_its_transaction(
    case: str, database_url: str
) -> None:
    field, handler, payload, options = BAD[case]
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute("CREATE TABLE orders (id int)")
            with pytest.raises(BadInput) as caught:
                await Client().enqueue(handler, payload, conn=conn, **options)
            # The application's own writes still commit.
            await conn.execute("INSERT INTO orders VALUES (1)")
    finally:
        await conn.close()
    assert caught.value.field == field
    assert await scalar(database_url, "SELECT count(*) FROM orders") == 1
    assert await job_count(database_url) == 0


@pytest.mark.parametrize("case", CASES)
async def test_psycopg_helper_keeps_the_transaction(case: str, database_url: str) -> None:
    field, handler, payload, options = BAD[case]
    with psycopg.connect(database_url) as conn, conn.transaction():
        conn.execute("CREATE TABLE orders (id int)")
        with pytest.raises(BadInput) as caught:
            pg_sync.enqueue(conn, handler, payload, **options)
        conn.execute("INSERT INTO orders VALUES (1)")
    assert caught.value.field == field
    assert await scalar(database_url, "SELECT count(*) FROM orders") == 1
    assert await job_count(database_url) == 0


@pytest.mark.parametrize("case", CASES)
async def test_client_and_sync_client_name_the_field(case: str, database_url: str) -> None:
    field, handler, payload, options = BAD[case]
    async with Client(database_url) as client:
        with pytest.raises(BadInput) as caught:
            await client.enqueue(handler, payload, **options)
        assert caught.value.field == field
    with SyncClient(database_url) as sync_client, pytest.raises(BadInput) as caught:
        sync_client.enqueue(handler, payload, **options)
    assert caught.value.field == field
    assert await job_count(database_url) == 0


async def test_storable_values_still_go_in(database_url: str) -> None:
    """The checks refuse only what cannot be stored: unicode, numeric keys, a microsecond."""
    async with Client(database_url) as client:
        job_id = await client.enqueue(
            "noop",
            {"é": ["\U0001f600", 1.5, None, True, {1: 2}], "big": 10**1000},
            headers={"x-name": "Zoë"},
            dedup_key="ключ",
            timeout=1e-6,
        )
    payload = await scalar(
        database_url, "SELECT payload::text FROM jobwire.jobs WHERE id = $1", job_id
    )
    assert '"1": 2' in payload and "\U0001f600" in payload


# Client.enqueue_many takes JobSpecs, which check nothing themselves.
BAD_SPECS: dict[str, tuple[str, JobSpec]] = {
    "NUL in handler": ("handler", JobSpec("a\x00b")),
    "an empty handler": ("handler", JobSpec("")),
    "NaN in the payload": ("payload", JobSpec("noop", {"a": float("nan")})),
    "priority past int32": ("priority", JobSpec("noop", priority=2**31)),
    "an infinite delay": ("delay", JobSpec("noop", delay=float("inf"))),
    "a delay past timestamptz": ("delay", JobSpec("noop", delay=1e300)),
    "a negative timeout": ("timeout", JobSpec("noop", timeout=-1.0)),
    "an unknown unique mode": ("unique", JobSpec("noop", dedup_key="k", unique="sometimes")),
    "no attempts": ("max_attempts", JobSpec("noop", max_attempts=0)),
    "NUL in a header": ("headers", JobSpec("noop", headers={"a": "\x00"})),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
async def test_enqueue_many_checks_each_spec_and_keeps_the_transaction(
    case: str, database_url: str
) -> None:
    field, spec = BAD_SPECS[case]
    batch = [JobSpec("noop", {"n": 1}), spec]
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute("CREATE TABLE orders (id int)")
            with pytest.raises(BadInput) as caught:
                await Client().enqueue_many(batch, conn=conn)
            await conn.execute("INSERT INTO orders VALUES (1)")
    finally:
        await conn.close()
    assert caught.value.field == field and "specs[1]" in str(caught.value)
    assert await scalar(database_url, "SELECT count(*) FROM orders") == 1
    async with Client(database_url) as client:
        with pytest.raises(BadInput) as caught:
            await client.enqueue_many(batch)
    assert caught.value.field == field
    assert await job_count(database_url) == 0  # nothing of the batch, not even its good spec


BAD_RUN_AT: dict[str, tuple[object, float | None]] = {
    "not a datetime": ("garbage", None),
    "a delay past year 9999": (datetime(9999, 12, 1, tzinfo=UTC), 86400.0 * 365),
    "the last day Python has": (datetime.max.replace(tzinfo=UTC), None),
}


@pytest.mark.parametrize("case", list(BAD_RUN_AT))
async def test_psycopg_helper_refuses_a_run_at_python_cannot_read_back(
    case: str, database_url: str
) -> None:
    run_at, delay = BAD_RUN_AT[case]
    with psycopg.connect(database_url) as conn, conn.transaction():
        conn.execute("CREATE TABLE orders (id int)")
        with pytest.raises(BadInput) as caught:
            pg_sync.enqueue(conn, "noop", {}, run_at=run_at, delay=delay)  # type: ignore[arg-type]
        conn.execute("INSERT INTO orders VALUES (1)")
        # A far but readable time still goes in, and reads back.
        far = pg_sync.enqueue(conn, "noop", {}, run_at=datetime(9000, 1, 1, tzinfo=UTC))
    assert caught.value.field == "run_at"
    assert await scalar(database_url, "SELECT count(*) FROM orders") == 1
    async with Client(database_url) as client:
        job = await client.get(far)
    assert job is not None and job.run_at.year == 9000
