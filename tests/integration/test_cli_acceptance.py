"""Acceptance: the real ``jobwire`` CLI in subprocesses against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from jobwire.models import JobSpec
from jobwire.store.postgres import PostgresStore
from tests.support.daemon import Daemon, jobwire, wait_until, write_config

pytestmark = pytest.mark.timeout(180)


def base_config(url: str, **workers: Any) -> dict[str, Any]:
    return {
        "database": {"url": url},
        "workers": {"poll_interval": "200ms", "lease": "3s", "shutdown_timeout": "5s", **workers},
        "retry": {"base": "100ms", "max": "1s"},
        "logging": {"format": "json"},
    }


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop_quietly()


def fetchval(url: str, sql: str, *args: Any) -> Any:
    async def go() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(go())


def stats(url: str) -> dict[str, dict[str, int]]:
    out = jobwire("stats", "--json", "--database-url", url).stdout
    return json.loads(out)["queues"]  # type: ignore[no-any-return]


@pytest.mark.slow
def test_ten_thousand_noop_jobs_one_daemon(
    database_url: str, tmp_path: Path, daemons: list[Daemon]
) -> None:
    n = 10_000

    async def fill() -> None:
        store = await PostgresStore.connect(database_url, min_size=1, max_size=2)
        try:
            for start in range(0, n, 1000):
                await store.enqueue_many([JobSpec("noop", i) for i in range(start, start + 1000)])
        finally:
            await store.close()

    asyncio.run(fill())
    config = write_config(tmp_path / "jobwire.yaml", base_config(database_url))
    daemon = Daemon(config, tmp_path / "daemon.log")
    daemons.append(daemon)
    wait_until(
        lambda: fetchval(
            database_url, "SELECT count(*) = $1 FROM jobwire.jobs WHERE status='succeeded'", n
        ),
        timeout=120,
        what=f"{n} jobs succeeded",
    )
    assert daemon.terminate() == 0
    assert stats(database_url) == {"default": {"succeeded": n}}
    assert fetchval(database_url, "SELECT count(*) FROM jobwire.job_runs") == n
    assert fetchval(database_url, "SELECT count(*) FROM jobwire.workers") == 0


def test_sigkill_mid_job_is_finished_by_another_instance(
    database_url: str, tmp_path: Path, daemons: list[Daemon]
) -> None:
    job_id = int(
        jobwire(
            "enqueue", "sleep", "--payload", '{"seconds": 2}', "--database-url", database_url
        ).stdout
    )
    config = write_config(tmp_path / "jobwire.yaml", base_config(database_url))
    first = Daemon(config, tmp_path / "first.log")
    daemons.append(first)
    wait_until(
        lambda: fetchval(
            database_url, "SELECT status = 'running' FROM jobwire.jobs WHERE id = $1", job_id
        ),
        what="job running in first daemon",
    )
    first.kill()
    second = Daemon(config, tmp_path / "second.log")
    daemons.append(second)
    wait_until(
        lambda: fetchval(
            database_url, "SELECT status = 'succeeded' FROM jobwire.jobs WHERE id = $1", job_id
        ),
        timeout=30,
        what="job finished by the second daemon",
    )
    assert second.terminate() == 0
    show = json.loads(jobwire("jobs", "show", str(job_id), "--database-url", database_url).stdout)
    assert [(r["attempt"], r["status"]) for r in show["runs"]] == [(1, "lost"), (2, "succeeded")]
    assert show["attempts"] == 2
    assert fetchval(database_url, "SELECT count(*) FROM jobwire.jobs WHERE status='running'") == 0
    # The dead instance's row stays (stale heartbeat); the clean one removed its own.
    assert fetchval(database_url, "SELECT count(*) FROM jobwire.workers") == 1


def test_sigterm_lets_short_jobs_finish_and_gives_long_ones_back(
    database_url: str, tmp_path: Path, daemons: list[Daemon]
) -> None:
    short = int(
        jobwire(
            "enqueue", "sleep", "--payload", '{"seconds": 1}', "--database-url", database_url
        ).stdout
    )
    long = int(
        jobwire(
            "enqueue", "sleep", "--payload", '{"seconds": 60}', "--database-url", database_url
        ).stdout
    )
    config = write_config(
        tmp_path / "jobwire.yaml", base_config(database_url, shutdown_timeout="2s")
    )
    daemon = Daemon(config, tmp_path / "daemon.log")
    daemons.append(daemon)
    wait_until(
        lambda: fetchval(
            database_url, "SELECT count(*) = 2 FROM jobwire.jobs WHERE status = 'running'"
        ),
        what="both jobs running",
    )
    assert daemon.terminate(timeout=30) == 0
    assert fetchval(database_url, "SELECT status FROM jobwire.jobs WHERE id=$1", short) == (
        "succeeded"
    )
    row = fetchval(
        database_url,
        "SELECT row(status, attempts, lease_until IS NULL)::text FROM jobwire.jobs WHERE id=$1",
        long,
    )
    assert row == "(pending,0,t)"
    assert daemon.has_event("jobs_released")


def test_cli_enqueue_list_show_retry_cancel(database_url: str) -> None:
    url = ["--database-url", database_url]
    job_id = int(
        jobwire(
            "enqueue",
            "echo",
            "--payload",
            '{"a": 1}',
            "--queue",
            "short",
            "--priority",
            "4",
            "--delay",
            "1h",
            "--max-attempts",
            "2",
            *url,
        ).stdout
    )
    dup = jobwire("enqueue", "echo", "--dedup-key", "x", *url)
    again = jobwire("enqueue", "echo", "--dedup-key", "x", *url)
    assert again.stdout.strip() == dup.stdout.strip()
    assert "duplicate" in again.stderr
    # One JSON document: a list (it was a line per job before issue 23).
    listed = json.loads(jobwire("jobs", "list", "-o", "json", "--queue", "short", *url).stdout)
    assert [(j["id"], j["priority"], j["max_attempts"], j["payload"]) for j in listed] == [
        (job_id, 4, 2, {"a": 1})
    ]
    assert "cancelled" in jobwire("jobs", "cancel", str(job_id), *url).stdout
    assert "1 retried, 0 skipped" in jobwire("jobs", "retry", str(job_id), *url).stdout
    show = json.loads(jobwire("jobs", "show", str(job_id), *url).stdout)
    assert show["status"] == "pending"
    assert jobwire("jobs", "show", "999999", *url, check=False).returncode == 1
    text = jobwire("jobs", "list", *url).stdout
    assert "STATUS" in text and "echo" in text
    bad = jobwire("enqueue", "echo", "--payload", "{nope", *url, check=False)
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr and "Traceback" not in bad.stderr
    huge = jobwire("enqueue", "echo", "--payload", '{"n": %s}' % ("9" * 5000), *url, check=False)
    assert huge.returncode == 2 and "4300 digits" in huge.stderr
    assert "Traceback" not in huge.stderr


BAD_CONFIGS = {
    "wrong type": ("workers: {concurrency: many}\n", "workers.concurrency"),
    "unknown key": ("workers: {threads: 4}\n", "workers.threads: unknown key"),
    "bad duration": ("workers: {lease: soon}\n", "workers.lease: invalid duration"),
    "missing env var": (
        "database: {url: '${JOBWIRE_TEST_UNSET_VAR}'}\n",
        "database.url: environment variable JOBWIRE_TEST_UNSET_VAR is not set",
    ),
    "invalid yaml": ("workers: {concurrency: 3\n", "invalid YAML"),
    "unloadable handler": (
        "handlers: {mail: nosuchmodule.jobs:send}\n",
        "handlers.mail: cannot load",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_exits_2_naming_file_and_key(case: str, tmp_path: Path) -> None:
    text, expected = BAD_CONFIGS[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    for command in ("check-config", "run"):
        proc = jobwire(command, "-c", str(path), check=False, timeout=30)
        assert proc.returncode == 2, proc.stderr
        assert str(path) in proc.stderr or expected.startswith("handlers"), proc.stderr
        assert expected in proc.stderr
        assert "Traceback" not in proc.stderr


def test_check_config_ok_for_the_example(tmp_path: Path) -> None:
    proc = jobwire("check-config", "-c", "config/jobwire.example.yaml")
    assert proc.stdout.strip() == "ok"


def test_unreachable_or_refusing_database_is_a_clear_error(database_url: str) -> None:
    missing = database_url.rsplit("/", 1)[0] + "/no_such_database_here"
    proc = jobwire("stats", "--database-url", missing, check=False)
    assert proc.returncode == 1
    assert "refused the connection" in proc.stderr and "Traceback" not in proc.stderr
    closed_port = "postgresql://postgres@127.0.0.1:1/x"
    proc = jobwire("stats", "--database-url", closed_port, check=False, timeout=60)
    assert proc.returncode == 1
    assert "database unavailable" in proc.stderr and "Traceback" not in proc.stderr
    for unusable in ("postgresql://u:pw-s3cret@[::1/db", "postgresql://u:pw-s3cret@h:port/db"):
        proc = jobwire("stats", "--database-url", unusable, check=False, timeout=60)
        assert proc.returncode == 1, proc.stderr
        assert "the database URL cannot be used" in proc.stderr
        assert "Traceback" not in proc.stderr and "pw-s3cret" not in proc.stderr
