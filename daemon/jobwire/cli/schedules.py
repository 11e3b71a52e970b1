"""``jobwire schedules``: list and show schedules; add, change and remove run-time ones;
pause, resume and run any of them."""

from __future__ import annotations

import getpass
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import datetime
from typing import Any, TypeVar

import click

from jobwire.cli.common import (
    ENQUEUE_SECTIONS,
    EXIT_NOTHING,
    EXIT_USAGE,
    Column,
    as_json,
    fail,
    fmt_time,
    global_options,
    globals_,
    load,
    load_db,
    print_json,
    print_table,
    read_payload,
    with_store,
)
from jobwire.cli.group import main
from jobwire.config import find_config_file
from jobwire.handlers import BUILTINS
from jobwire.schedule_admin import (
    ScheduleRefused,
    Who,
    add_schedule,
    check_schedule,
    remove_schedule,
    run_now,
    set_enabled,
    update_schedule,
)
from jobwire.store.base import OperatorStore, ScheduleRow

T = TypeVar("T")
# The options that take "none" to clear a value on update.
_CLEARABLE = ("start_at", "end_at", "max_runs", "max_attempts")


@main.group()
def schedules() -> None:
    """Periodic jobs: the config's schedules: section and those added at run time."""


def _when(r: ScheduleRow) -> str:
    return r.cron or f"every {r.interval_s or 0:g}s"


def _runs(r: ScheduleRow) -> str:
    return f"{r.run_count}" if r.max_runs is None else f"{r.run_count}/{r.max_runs}"


def _who() -> Who:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name (a container's numeric uid)
        user = "unknown"
    return Who(f"cli:{user}", "cli")


def _act(action: Callable[[OperatorStore], Awaitable[T]], sections: tuple[str, ...] = ()) -> T:
    """Run a schedule action; a refusal exits 1 (no such schedule) or 2 (bad input, conflict)."""
    config = load(sections)[0] if sections else load_db()
    try:
        return with_store(config, action)
    except ScheduleRefused as exc:
        fail(exc.message, EXIT_NOTHING if exc.status == 404 else EXIT_USAGE)


def _allowed() -> frozenset[str] | None:
    """The handler allow-list when a config file is known (None: no file to check against)."""
    config = load(ENQUEUE_SECTIONS)[0]
    if find_config_file(globals_().config_path) is None:
        return None
    return frozenset({*BUILTINS, *config.handlers})


def _as_dict(r: ScheduleRow) -> dict[str, Any]:
    return {"when": _when(r), **asdict(r)}


def _print_row(r: ScheduleRow) -> None:
    if as_json():
        print_json(_as_dict(r))
        return
    print_table(
        [Column("FIELD"), Column("VALUE", overflow="fold")],
        [
            (k, fmt_time(v) if isinstance(v, datetime) else json.dumps(v) if k == "payload" else v)
            for k, v in _as_dict(r).items()
        ],
    )


@schedules.command("list")
@global_options
def schedules_list() -> None:
    """Every schedule: timing, state, runs, and where it was defined (config or api)."""
    rows = with_store(load_db(), lambda s: s.list_schedules())
    if as_json():
        print_json([_as_dict(r) for r in rows])
        return
    print_table(
        [
            Column("NAME"),
            Column("WHEN"),
            Column("STATE"),
            Column("ORIGIN"),
            Column("NEXT RUN"),
            Column("LAST RUN"),
            Column("RUNS", justify="right"),
        ],
        [
            (
                r.name,
                _when(r),
                "enabled" if r.enabled else "paused",
                r.origin,
                fmt_time(r.next_run_at),
                fmt_time(r.last_run_at),
                _runs(r),
            )
            for r in rows
        ],
    )


@schedules.command("show")
@click.argument("name")
@global_options
def schedules_show(name: str) -> None:
    """One schedule, every field."""
    row = with_store(load_db(), lambda s: s.get_schedule(name))
    if row is None:
        fail(f"no schedule named {name!r}", EXIT_NOTHING)
    _print_row(row)


def _fields(options: dict[str, Any]) -> dict[str, Any]:
    """The options given, as schedule fields ("none" clears a clearable one)."""
    fields: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        if key in _CLEARABLE and isinstance(value, str) and value.lower() == "none":
            fields[key] = None
        elif key in ("max_runs", "max_attempts"):
            try:
                fields[key] = int(value)
            except ValueError:
                fail(f"--{key.replace('_', '-')} must be a whole number (or none)")
        elif key == "payload":
            fields[key] = read_payload(value)
        else:
            fields[key] = value
    return fields


def _schedule_options(fn: Callable[..., None]) -> Callable[..., None]:
    """The options add and update share."""
    options = [
        click.option("--cron", default=None, help="Five cron fields, or @hourly @daily ..."),
        click.option("--every", default=None, help="An interval instead of cron (30s, 5m, 1h)."),
        click.option("--handler", default=None, help="The handler of each job (allow-listed)."),
        click.option("--payload", default=None, help="JSON payload (or @file)."),
        click.option("--queue", default=None, help="Queue of the jobs (default: default)."),
        click.option("--priority", default=None, type=int, help="Higher runs first."),
        click.option("--timezone", default=None, help="IANA zone cron is read in (UTC)."),
        click.option("--start", "start_at", default=None, help="No ticks before (ISO 8601)."),
        click.option("--end", "end_at", default=None, help="No ticks after (ISO 8601)."),
        click.option("--max-runs", default=None, help="Stop after this many runs."),
        click.option("--max-attempts", default=None, help="Attempts per job."),
        click.option(
            "--catch-up",
            default=None,
            type=click.Choice(["none", "latest", "all"]),
            help="After downtime: skip missed ticks, run one, or run all.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@schedules.command("add")
@click.argument("name")
@_schedule_options
@click.option("--paused", is_flag=True, help="Add it paused (resume it later).")
@global_options
def schedules_add(name: str, paused: bool, **options: Any) -> None:
    """Add a run-time schedule (kept across restarts; the config file's names are refused)."""
    fields = {"name": name, **_fields(options), "enabled": not paused}
    allowed = _allowed()
    try:
        check_schedule(fields, allowed)  # bad input fails before the database is opened
    except ScheduleRefused as exc:
        fail(exc.message)
    row = _act(lambda s: add_schedule(s, fields, allowed, _who()), ENQUEUE_SECTIONS)
    if as_json():
        print_json(_as_dict(row))
    else:
        click.echo(f"schedule {row.name} added; next run {fmt_time(row.next_run_at)}")


@schedules.command("update")
@click.argument("name")
@_schedule_options
@global_options
def schedules_update(name: str, **options: Any) -> None:
    """Change a run-time schedule: only the options given ("none" clears --start, --end,
    --max-runs, --max-attempts)."""
    changes = _fields(options)
    if not changes:
        fail("nothing to change: give at least one option")
    allowed = _allowed()
    row = _act(lambda s: update_schedule(s, name, changes, allowed, _who()), ENQUEUE_SECTIONS)
    if as_json():
        print_json(_as_dict(row))
    else:
        click.echo(f"schedule {row.name} updated; next run {fmt_time(row.next_run_at)}")


@schedules.command("remove")
@click.argument("name")
@global_options
def schedules_remove(name: str) -> None:
    """Delete a run-time schedule (the jobs it made stay)."""
    _act(lambda s: remove_schedule(s, name, _who()))
    if as_json():
        print_json({"schedule": name, "removed": True})
    else:
        click.echo(f"schedule {name} removed")


@schedules.command("run")
@click.argument("name")
@global_options
def schedules_run(name: str) -> None:
    """Enqueue one job from a schedule now (its regular ticks are not affected)."""
    job_id = _act(lambda s: run_now(s, name, _who()))
    if as_json():
        print_json({"schedule": name, "id": job_id})
    else:
        click.echo(job_id)


def _set_enabled(name: str, enabled: bool) -> None:
    row = _act(lambda s: set_enabled(s, name, enabled, _who()))
    if as_json():
        print_json({"schedule": name, "enabled": enabled})
        return
    lasting = enabled or row.origin == "api"
    click.echo(
        f"schedule {name} {'resumed' if enabled else 'paused'}"
        + ("" if lasting else " (until the daemon restarts: the config's enabled wins)")
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
