"""``jobwire schedules``: the periodic jobs of the config's schedules: section."""

from __future__ import annotations

import click

from jobwire.cli.common import (
    EXIT_NOTHING,
    Column,
    as_json,
    fail,
    fmt_time,
    global_options,
    load_db,
    print_json,
    print_table,
    with_store,
)
from jobwire.cli.group import main
from jobwire.scheduler import tick_spec
from jobwire.store.base import OperatorStore, ScheduleRow


@main.group()
def schedules() -> None:
    """Periodic jobs from the config's schedules: section."""


def _when(r: ScheduleRow) -> str:
    return r.cron or f"every {r.interval_s or 0:g}s"


@schedules.command("list")
@global_options
def schedules_list() -> None:
    """Every schedule as the daemon wrote it (at start-up): timing, state, runs."""
    rows = with_store(load_db(), lambda s: s.list_schedules())
    if as_json():
        print_json(
            [
                {
                    "name": r.name,
                    "when": _when(r),
                    "cron": r.cron,
                    "interval_s": r.interval_s,
                    "timezone": r.timezone,
                    "handler": r.handler,
                    "queue": r.queue,
                    "enabled": r.enabled,
                    "next_run_at": r.next_run_at,
                    "last_run_at": r.last_run_at,
                    "run_count": r.run_count,
                }
                for r in rows
            ]
        )
        return
    print_table(
        [
            Column("NAME"),
            Column("WHEN"),
            Column("STATE"),
            Column("NEXT RUN"),
            Column("LAST RUN"),
            Column("RUNS", justify="right"),
        ],
        [
            (
                r.name,
                _when(r),
                "enabled" if r.enabled else "paused",
                fmt_time(r.next_run_at),
                fmt_time(r.last_run_at),
                r.run_count,
            )
            for r in rows
        ],
    )


@schedules.command("run")
@click.argument("name")
@global_options
def schedules_run(name: str) -> None:
    """Enqueue one job from a schedule now (its regular ticks are not affected)."""

    async def action(store: OperatorStore) -> tuple[bool, int | None]:
        row = await store.get_schedule(name)
        if row is None:
            return False, None
        (job_id,) = await store.enqueue_many([tick_spec(row, None)])
        return True, job_id

    found, job_id = with_store(load_db(), action)
    if not found:
        fail(f"no schedule named {name!r}", EXIT_NOTHING)
    if as_json():
        print_json({"schedule": name, "id": job_id})
    else:
        click.echo(job_id)


def _set_enabled(name: str, enabled: bool) -> None:
    found = with_store(load_db(), lambda s: s.set_schedule_enabled(name, enabled))
    if not found:
        fail(f"no schedule named {name!r}", EXIT_NOTHING)
    if as_json():
        print_json({"schedule": name, "enabled": enabled})
        return
    click.echo(
        f"schedule {name} {'resumed' if enabled else 'paused'}"
        + ("" if enabled else " (until the daemon restarts: the config's enabled wins)")
    )


@schedules.command("pause")
@click.argument("name")
@global_options
def schedules_pause(name: str) -> None:
    """Stop firing a schedule."""
    _set_enabled(name, False)


@schedules.command("resume")
@click.argument("name")
@global_options
def schedules_resume(name: str) -> None:
    """Fire a paused schedule again."""
    _set_enabled(name, True)
