"""``jobwire jobs``: list and show jobs; retry, cancel and delete them by id or by filter."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from jobwire.cli.bulk import BULK_ACTIONS, bulk_command
from jobwire.cli.common import (
    EXIT_NOTHING,
    Column,
    as_json,
    fail,
    fmt_time,
    global_options,
    json_flag,
    load_db,
    print_json,
    print_table,
    with_store,
)
from jobwire.cli.filters import filter_options, job_filter
from jobwire.cli.group import main
from jobwire.models import Job, job_as_dict
from jobwire.scheduler import schedule_name
from jobwire.store.base import AdminStore


@main.group()
def jobs() -> None:
    """Inspect and act on jobs."""


def _job_row(job: Job) -> tuple[Any, ...]:
    error = job.last_error.splitlines()[0] if job.last_error else ""
    return (
        job.id,
        job.status,
        job.queue,
        job.handler,
        f"{job.attempts}/{job.max_attempts}",
        fmt_time(job.created_at),
        error,
    )


JOB_COLUMNS = [
    Column("ID", justify="right"),
    Column("STATUS"),
    Column("QUEUE"),
    Column("HANDLER"),
    Column("TRY", justify="right"),
    Column("CREATED"),
    Column("LAST ERROR", overflow="ellipsis", max_width=60),
]


@jobs.command("list")
@click.argument("job_ids", type=int, nargs=-1)
@filter_options
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--before-id", type=int, default=None, help="Page on: jobs older than this id.")
@json_flag
@global_options
def jobs_list(
    job_ids: tuple[int, ...],
    status: str | None,
    queue: str | None,
    handler: str | None,
    source: str | None,
    before: str | None,
    after: str | None,
    limit: int,
    before_id: int | None,
) -> None:
    """List jobs, newest first (through the status's index when --status is given)."""
    where = job_filter(job_ids, status, queue, handler, source, before, after)
    config = load_db()

    async def action(store: AdminStore) -> list[Job]:
        return await store.jobs_by_ids(await store.select_ids(where, limit, before_id))

    found = with_store(config, action)
    if as_json():
        print_json([job_as_dict(j) for j in found])
        return
    more = f"more: --before-id {found[-1].id}" if len(found) == limit else None
    print_table(JOB_COLUMNS, [_job_row(j) for j in found], caption=more)


@jobs.command("show")
@click.argument("job_id", type=int)
@global_options
def jobs_show(job_id: int) -> None:
    """Show one job with its attempts (JSON unless -o table)."""
    config = load_db()

    async def action(store: AdminStore) -> tuple[Job | None, list[dict[str, Any]]]:
        return await store.get(job_id), await store.runs(job_id)

    job, runs = with_store(config, action)
    if job is None:
        fail(f"no job {job_id}", EXIT_NOTHING)
    data = job_as_dict(job)
    if job.schedule_id is not None:
        data["schedule"] = schedule_name(job)  # provenance: the schedule that made it
    data["runs"] = runs
    # JSON by default, as before -o existed: scripts read it.
    if as_json(default="json"):
        print_json(data)
        return
    fields = {k: v for k, v in data.items() if k != "runs"}
    print_table(
        [Column("FIELD"), Column("VALUE", overflow="fold")],
        [(k, fmt_time(v) if isinstance(v, datetime) else v) for k, v in fields.items()],
    )
    click.echo()
    print_table(
        [
            Column("ATTEMPT", justify="right"),
            Column("STATUS"),
            Column("WORKER"),
            Column("STARTED"),
            Column("SECONDS", justify="right"),
            Column("ERROR", overflow="ellipsis", max_width=60),
        ],
        [
            (
                r["attempt"],
                r["status"],
                r["worker_id"],
                fmt_time(r["started_at"]),
                f"{r['duration']:.3f}" if r.get("duration") is not None else "-",
                (r.get("error") or "").split("\n")[0],
            )
            for r in runs
        ],
    )


for _action in BULK_ACTIONS:
    jobs.add_command(bulk_command(_action))
