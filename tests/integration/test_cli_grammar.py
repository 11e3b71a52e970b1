"""Issue 23: one grammar for the CLI (global options, -o, exit codes, quiet logs) and the
bulk actions (retry, cancel, delete by filter), in subprocesses against a real database."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import pytest

from jobwire.models import JobSpec, JobStatus, Outcome
from jobwire.routing import UNROUTABLE
from jobwire.store.base import ClaimRequest
from jobwire.store.postgres import PostgresStore
from tests.support.daemon import jobwire, write_config

pytestmark = pytest.mark.timeout(120)


def sql(url: str, query: str, *args: Any) -> Any:
    async def go() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    return asyncio.run(go())


def statuses(url: str) -> dict[int, str]:
    return {r["id"]: r["status"] for r in sql(url, "SELECT id, status FROM jobwire.jobs")}


def seed(url: str) -> dict[str, int]:
    """Jobs in every interesting state: name -> id."""

    async def go() -> dict[str, int]:
        store = await PostgresStore.connect(url, min_size=1, max_size=2)
        try:
            specs = {
                "failed_a": JobSpec("echo", queue="q1"),
                "failed_b": JobSpec("echo", queue="q1"),
                "failed_q2": JobSpec("echo", queue="q2"),
                "done": JobSpec("echo", queue="q1"),
                "running": JobSpec("echo", queue="q1"),
            }
            made = await store.enqueue_many(list(specs.values()))
            ids = {name: i for name, i in zip(specs, made, strict=True) if i is not None}
            claimed = await store.claim(ClaimRequest({"q1": 10, "q2": 10}, 10, "w", 300))
            assert len(claimed) == 5
            outcomes = [
                Outcome(ids[n], 1, JobStatus.FAILED, 0.1, error="boom")
                for n in ("failed_a", "failed_b", "failed_q2")
            ]
            outcomes.append(Outcome(ids["done"], 1, JobStatus.SUCCEEDED, 0.1))
            assert await store.complete_many("w", outcomes) == 4
            poison = [
                JobSpec(UNROUTABLE, queue="q1", failed_reason="no route matched"),
                JobSpec("echo", queue="q1", failed_reason="payload is not JSON"),
            ]
            unroutable, never_ran = await store.enqueue_many(poison)
            assert unroutable is not None and never_ran is not None
            ids |= {"unroutable": unroutable, "never_ran": never_ran}
            return ids
        finally:
            await store.close()

    return asyncio.run(go())


def out_json(*args: str, check: bool = True) -> Any:
    proc = jobwire(*args, "-o", "json", check=check)
    return json.loads(proc.stdout)


# -- exit codes ---------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> Path:
    """A config naming this database, a handler allow-list, JSON logs at info level."""
    return write_config(
        tmp_path / "jobwire.yaml",
        {
            "database": {"url": database_url},
            "handlers": {"mail": "json:dumps"},
            "logging": {"format": "json", "level": "info"},
        },
    )


EXIT_CODES: list[tuple[list[str], int, str]] = [
    (["jobs", "show", "999999"], 1, "no job 999999"),
    (["jobs", "retry", "12345"], 1, "no matching job"),
    (["jobs", "cancel", "12345"], 1, "no matching job"),
    (["jobs", "delete", "12345"], 1, "no matching job"),
    (["schedules", "run", "nope"], 1, "no schedule named"),
    (["schedules", "pause", "nope"], 1, "no schedule named"),
    (["enqueue", "nosuch"], 2, "allow-list (echo, fail, mail, noop, sleep)"),
    (["enqueue", "echo", "--payload", "{nope"], 2, "not valid JSON"),
    (["jobs", "retry"], 2, "give job ids or a filter"),
    (["jobs", "retry", "--status", "running", "--yes"], 2, "acts on failed, cancelled"),
    (["jobs", "delete", "--status", "running", "--yes"], 2, "not running"),
    (["jobs", "list", "--before", "soon"], 2, "neither a time"),
    (["jobs", "list", "-o", "yaml"], 2, "Invalid value"),
    (["jobs", "list"], 0, ""),
    (["enqueue", "mail"], 0, ""),
]


@pytest.mark.parametrize(("args", "code", "says"), EXIT_CODES, ids=lambda v: str(v))
def test_exit_codes(args: list[str], code: int, says: str, config: Path) -> None:
    proc = jobwire(*args, "-c", str(config), check=False)
    assert proc.returncode == code, proc.stderr
    assert says in proc.stderr
    assert "Traceback" not in proc.stderr


# -- output ---------------------------------------------------------------------------------


def test_json_is_one_document_for_every_printing_command(config: Path, database_url: str) -> None:
    ids = seed(database_url)
    c = ["-c", str(config)]
    listed = out_json("jobs", "list", *c)
    assert isinstance(listed, list) and {j["id"] for j in listed} == set(ids.values())
    shown = out_json("jobs", "show", str(ids["done"]), *c)
    assert shown["id"] == ids["done"] and [r["status"] for r in shown["runs"]] == ["succeeded"]
    assert set(out_json("stats", *c)) == {"queues", "instances", "paused", "outbox"}
    assert out_json("schedules", "list", *c) == []
    enqueued = out_json("enqueue", "echo", *c)
    assert enqueued == {"id": enqueued["id"], "duplicate": False}
    assert out_json("check-config", *c)["ok"] is True
    assert out_json("migrate", "--status", *c)["problem"] is None
    retried = out_json("jobs", "retry", str(ids["failed_a"]), *c)
    assert retried["retried"] == [ids["failed_a"]] and retried["matched"] == 1
    # --json, as scripts passed it before -o, says the same.
    stats = json.loads(jobwire("stats", "--json", *c).stdout)
    assert stats.keys() == {"queues", "instances", "paused", "outbox"}


def test_tables_fold_long_names_and_hint_the_next_page(database_url: str) -> None:
    long_handler = "a_remarkably_long_handler_name_" * 4
    store_ids = []

    async def go() -> None:
        store = await PostgresStore.connect(database_url, min_size=1, max_size=2)
        try:
            store_ids.extend(await store.enqueue_many([JobSpec(long_handler)] * 3))
        finally:
            await store.close()

    asyncio.run(go())
    url = ["--database-url", database_url]
    text = jobwire("jobs", "list", "--limit", "2", *url).stdout
    assert "HANDLER" in text and "a_remarkably_long" in text
    assert f"--before-id {store_ids[1]}" in text
    older = out_json("jobs", "list", "--before-id", str(store_ids[1]), *url)
    assert [j["id"] for j in older] == [store_ids[0]]


def test_global_options_before_or_after_the_subcommand(database_url: str, tmp_path: Path) -> None:
    seed(database_url)
    after = out_json("jobs", "list", "--database-url", database_url)
    before = json.loads(
        jobwire("--database-url", database_url, "-o", "json", "jobs", "list").stdout
    )
    assert before == after and len(before) == 7
    config = write_config(tmp_path / "c.yaml", {"database": {"url": database_url}})
    mixed = jobwire("-c", str(config), "jobs", "list", "--status", "failed", "-o", "json")
    assert len(json.loads(mixed.stdout)) == 5
    # --schema too: a schema that does not exist is refused, whichever side it is on.
    for args in (["--schema", "nope", "jobs", "list"], ["jobs", "list", "--schema", "nope"]):
        proc = jobwire(*args, "--database-url", database_url, check=False)
        assert proc.returncode == 2 and "schema nope does not exist" in proc.stderr


def test_no_log_lines_without_verbose(config: Path) -> None:
    proc = jobwire("jobs", "list", "-c", str(config))
    assert proc.stderr == ""
    assert '"event"' not in proc.stdout and "ID" in proc.stdout
    assert '"event"' not in jobwire("jobs", "list", "-c", str(config), "-o", "json").stdout


# -- bulk actions -----------------------------------------------------------------------


def test_retry_by_filter_acts_on_the_frozen_set_and_skips_poison(database_url: str) -> None:
    ids = seed(database_url)
    url = ["--database-url", database_url]
    preview = out_json("jobs", "retry", "--queue", "q1", "--dry-run", *url)
    assert preview["matched"] == 2 and preview["poison_left_out"] == 2
    assert statuses(database_url)[ids["failed_a"]] == "failed"  # a dry run changes nothing
    done = out_json("jobs", "retry", "--queue", "q1", "--status", "failed", "--yes", *url)
    assert sorted(done["retried"]) == sorted([ids["failed_a"], ids["failed_b"]])
    assert done["skipped"] == [] and done["poison_left_out"] == 2
    now = statuses(database_url)
    assert now[ids["failed_a"]] == now[ids["failed_b"]] == "pending"
    assert now[ids["failed_q2"]] == "failed"  # another queue
    assert now[ids["unroutable"]] == now[ids["never_ran"]] == "failed"  # poison
    text = jobwire("jobs", "retry", "--queue", "q1", "--include-poison", "-y", *url).stdout
    assert "2 retried, 0 skipped" in text
    assert statuses(database_url)[ids["unroutable"]] == "pending"
    again = jobwire("jobs", "retry", "--queue", "q1", "--yes", *url, check=False)
    assert again.returncode == 1 and "no matching job" in again.stderr


def test_a_filter_without_yes_and_no_terminal_is_refused(database_url: str) -> None:
    ids = seed(database_url)
    for action in ("retry", "cancel", "delete"):
        proc = jobwire("jobs", action, "--queue", "q2", "--database-url", database_url, check=False)
        if action == "cancel":
            assert proc.returncode == 1  # nothing waiting in q2: nothing to ask about
            continue
        assert proc.returncode == 2, proc.stderr
        assert "pass --yes" in proc.stderr
    assert statuses(database_url)[ids["failed_q2"]] == "failed"


def test_time_filters(database_url: str) -> None:
    ids = seed(database_url)
    url = ["--database-url", database_url]
    sql(
        database_url,
        "UPDATE jobwire.jobs SET created_at = now() - interval '3 hours' WHERE id = $1",
        ids["failed_b"],
    )
    old = out_json("jobs", "list", "--before", "2h", *url)
    assert [j["id"] for j in old] == [ids["failed_b"]]
    recent = out_json("jobs", "list", "--after", "2h", "--status", "failed", *url)
    assert ids["failed_b"] not in {j["id"] for j in recent} and len(recent) == 4
    iso = out_json("jobs", "list", "--before", "2000-01-01T00:00:00+00:00", *url)
    assert iso == []


def test_delete_removes_finished_jobs_and_their_runs_never_running_ones(
    database_url: str,
) -> None:
    ids = seed(database_url)
    url = ["--database-url", database_url]
    running, done = ids["running"], ids["done"]
    assert sql(database_url, "SELECT count(*) FROM jobwire.job_runs WHERE job_id = $1", done)[0][0]
    out = out_json("jobs", "delete", str(running), str(done), *url)
    assert out["deleted"] == [done] and out["matched"] == 1
    left = statuses(database_url)
    assert done not in left and left[running] == "running"
    assert (
        sql(database_url, "SELECT count(*) FROM jobwire.job_runs WHERE job_id = $1", done)[0][0]
        == 0
    )
    by_filter = out_json("jobs", "delete", "--queue", "q2", "--yes", *url)
    assert by_filter["deleted"] == [ids["failed_q2"]]


def test_cancel_by_filter_stops_running_and_cancels_waiting(database_url: str) -> None:
    ids = seed(database_url)
    url = ["--database-url", database_url]
    waiting = int(jobwire("enqueue", "echo", "--queue", "q1", "--delay", "1h", *url).stdout)
    out = out_json("jobs", "cancel", "--queue", "q1", "--yes", *url)
    assert out["running_asked_to_stop"] == [ids["running"]]
    assert statuses(database_url)[waiting] == "cancelled"


# -- publish --topic ------------------------------------------------------------------------


def _mosquitto_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 1883), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _mosquitto_up(), reason="no Mosquitto at 127.0.0.1:1883")
def test_publish_to_a_wildcard_mqtt_source_needs_a_topic(tmp_path: Path, database_url: str) -> None:
    prefix = f"jw-grammar/{uuid.uuid4().hex[:8]}"
    config = write_config(
        tmp_path / "jobwire.yaml",
        {
            "database": {"url": database_url},
            "sources": [
                {
                    "name": "sensors",
                    "type": "mqtt",
                    "url": "mqtt://127.0.0.1:1883",
                    "topics": [f"{prefix}/+/reading"],
                    "route": {"handler": "echo"},
                }
            ],
        },
    )
    c = ["-c", str(config)]
    refused = jobwire("publish", "sensors", "--body", "{}", *c, check=False)
    assert refused.returncode == 2 and "--topic" in refused.stderr
    wrong = jobwire("publish", "sensors", "--body", "{}", "--topic", "elsewhere/x", *c, check=False)
    assert wrong.returncode == 2 and "matches none" in wrong.stderr
    topic = f"{prefix}/kitchen/reading"

    async def receive() -> tuple[str, bytes]:
        async with aiomqtt.Client("127.0.0.1", 1883, identifier=f"jw-{uuid.uuid4().hex[:8]}") as cl:
            await cl.subscribe(f"{prefix}/#", qos=1)
            proc = await asyncio.to_thread(
                jobwire, "publish", "sensors", "--body", '{"t": 21}', "--topic", topic, *c
            )
            assert proc.stdout.strip() == "published 1, confirmed 1"
            async with asyncio.timeout(10):
                async for message in cl.messages:
                    assert isinstance(message.payload, bytes)
                    return str(message.topic), message.payload
        raise AssertionError("no message")

    assert asyncio.run(receive()) == (topic, b'{"t": 21}')
