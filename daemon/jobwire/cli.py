"""The ``jobwire`` command: run, migrate, check-config, enqueue, jobs, stats."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import uvloop

from jobwire import __version__
from jobwire.adapters import build_adapter
from jobwire.app import (
    Daemon,
    ListenError,
    database_dsn,
    migrate_schema,
    open_store,
    retry_unavailable,
    with_database_url,
)
from jobwire.config import (
    Config,
    ConfigError,
    ConfigProblem,
    DatabaseConfig,
    find_config_file,
    json_schema,
    load_config,
)
from jobwire.durations import parse_duration
from jobwire.handlers import HandlerLoadError, HandlerRegistry
from jobwire.logs import configure_logging
from jobwire.models import Job, JobSpec, JobStatus, job_as_dict
from jobwire.redaction import redact, redact_data, remember, secret_values
from jobwire.routing import route_problems
from jobwire.scheduler import tick_spec
from jobwire.store.base import AdminStore, OperatorStore, StoreUnavailable
from jobwire.store.migrate import (
    SchemaMismatch,
    SchemaState,
    latest_version,
    migration_script,
    read_schema_state,
)

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 1
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

# Commands that only talk to the database read only these sections of the config: an
# operator's shell need not hold the daemon's other secrets (admin token, broker passwords).
DB_SECTIONS = ("database", "logging")
ENQUEUE_SECTIONS = (*DB_SECTIONS, "retry")  # retry.max_attempts: a new job's default


def _config_options(fn: F) -> F:
    fn = click.option(
        "--database-url",
        envvar="JOBWIRE_DATABASE_URL_OVERRIDE",
        default=None,
        help="Use this PostgreSQL URL instead of database.url.",
    )(fn)
    fn = click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="Config file (default: $JOBWIRE_CONFIG, ./jobwire.yaml, /etc/jobwire/jobwire.yaml).",
    )(fn)
    return fn


def _db_options(fn: F) -> F:
    fn = click.option(
        "--schema",
        default=None,
        help="Use this schema instead of database.schema.",
    )(fn)
    fn = click.option(
        "--database-url",
        envvar="JOBWIRE_DATABASE_URL_OVERRIDE",
        default=None,
        help="Use this PostgreSQL URL instead of database.url. Only the config's database: "
        "and logging: sections are read (none of its other ${VAR}s); without a config file, "
        "$JOBWIRE_DATABASE_URL is the default.",
    )(fn)
    fn = click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="Config file (default: $JOBWIRE_CONFIG, ./jobwire.yaml, /etc/jobwire/jobwire.yaml).",
    )(fn)
    return fn


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    # Messages quote exceptions (a database or broker client's), which may quote a URL.
    click.echo(f"jobwire: {redact(message)}", err=True)
    sys.exit(code)


def _load(config_path: str | None, database_url: str | None) -> Config:
    config, _ = _load_with_path(config_path, database_url)
    return config


def _load_db(
    config_path: str | None,
    database_url: str | None,
    schema: str | None,
    sections: tuple[str, ...] = DB_SECTIONS,
) -> Config:
    """The config as a command that only talks to the database needs it."""
    if database_url is None and find_config_file(config_path) is None:
        # What the example config says (${JOBWIRE_DATABASE_URL:-embedded}), without one.
        database_url = os.environ.get("JOBWIRE_DATABASE_URL") or None
    config, _ = _load_with_path(config_path, database_url, sections)
    if schema is not None:
        try:
            DatabaseConfig.model_validate({"schema": schema})
        except ValueError:
            _fail(f"--schema {schema!r} must be a plain SQL identifier (letters, digits, _)")
        database = config.database.model_copy(update={"db_schema": schema})
        config = config.model_copy(update={"database": database})
    return config


def _load_with_path(
    config_path: str | None, database_url: str | None, sections: tuple[str, ...] | None = None
) -> tuple[Config, str]:
    try:
        config, path = load_config(config_path, sections=sections, database_url=database_url)
    except ConfigError as err:
        _report(err.problems)
    config = with_database_url(config, database_url)
    # Before anything logs or prints: every line from here on masks them.
    remember(secret_values(config))
    configure_logging(config.logging.format, config.logging.level)
    return config, str(path) if path else "(built-in defaults)"


def _report(problems: Iterable[object]) -> NoReturn:
    for problem in problems:
        click.echo(f"error: {redact(str(problem))}", err=True)
    sys.exit(EXIT_USAGE)


def _registry(config: Config, file: str) -> HandlerRegistry:
    """Import the allow-listed handlers and check every route against them (exit 2 if not)."""
    try:
        registry = HandlerRegistry.from_config(config.handlers)
    except HandlerLoadError as exc:
        _report(
            ConfigProblem(file, f"handlers.{f.name}", f"cannot load {f.target!r}: {f.reason}")
            for f in exc.failures
        )
    problems = route_problems(config, registry.names(), file)
    if problems:
        _report(problems)
    return registry


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        # uvloop: the same asyncio, with I/O and scheduling in C; the daemon is loop-bound.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    except StoreUnavailable as exc:
        _fail(f"database unavailable: {exc}", EXIT_UNAVAILABLE)
    except SchemaMismatch as exc:
        # Not a transient state: restarting (systemd) or retrying changes nothing.
        _fail(str(exc), EXIT_USAGE)


def _with_store(config: Config, action: Callable[[OperatorStore], Awaitable[T]]) -> T:
    async def go() -> T:
        # Never migrates: only `jobwire migrate` and `jobwire run` change the schema.
        async with open_store(config, apply_migrations=False, wait=5.0) as store:
            return await action(store)

    return _run(go())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="jobwire")
def main() -> None:
    """jobwire: broker messages in, durable jobs out."""


@main.command()
@click.option(
    "--migrate/--no-migrate",
    "migrate_first",
    default=None,
    help="Apply pending migrations before starting (default: database.migrate, true). "
    "--no-migrate refuses to start on a schema this jobwire does not match (exit 2).",
)
@_config_options
def run(config_path: str | None, database_url: str | None, migrate_first: bool | None) -> None:
    """Run the daemon until SIGTERM, SIGINT or SIGHUP."""
    config, file = _load_with_path(config_path, database_url)
    if migrate_first is not None:
        database = config.database.model_copy(update={"migrate": migrate_first})
        config = config.model_copy(update={"database": database})
    registry = _registry(config, file)

    async def go() -> None:
        daemon = Daemon(config, registry)
        daemon.install_signal_handlers()
        await daemon.run()

    try:
        _run(go())
    except ListenError as exc:
        _fail(str(exc), EXIT_USAGE)


def _print_status(state: SchemaState) -> None:
    version = "does not exist" if state.version is None else f"is at {state.version:04d}"
    click.echo(f"schema {state.schema} {version}; this jobwire needs {latest_version():04d}")
    applied = {a.version: a for a in state.applied}
    for m in state.known:
        row = applied.get(m.version)
        when = _fmt_time(row.applied_at) if row is not None else ""
        click.echo(f"{'applied' if row is not None else 'pending':<8} {m.label:<32} {when}")
    for a in state.unknown:
        click.echo(f"{'unknown':<8} {a.label:<32} {_fmt_time(a.applied_at)}  (a newer jobwire's)")
    mismatch = state.mismatch()
    click.echo(str(mismatch) if mismatch is not None else "up to date")


@main.command()
@click.option(
    "--status",
    "show_status",
    is_flag=True,
    help="List applied and pending migrations; exit 0 when the schema is what this jobwire "
    "needs, 1 when not (pending, missing, or newer).",
)
@click.option("--dry-run", is_flag=True, help="List the migrations that would run; run none.")
@click.option("--sql", "show_sql", is_flag=True, help="Print the SQL that would run; run none.")
@_db_options
def migrate(
    show_status: bool,
    dry_run: bool,
    show_sql: bool,
    config_path: str | None,
    database_url: str | None,
    schema: str | None,
) -> None:
    """Create or upgrade the database schema (the only command that changes it, with run).

    Reads only the config's database: and logging: sections.
    """
    if show_status + dry_run + show_sql > 1:
        _fail("give at most one of --status, --dry-run, --sql")
    config = _load_db(config_path, database_url, schema)
    name = config.database.db_schema
    latest = latest_version()

    def applied(label: str, seconds: float) -> None:
        click.echo(f"applied {label} ({seconds:.2f}s)")

    async def go() -> SchemaState | list[str]:
        async with database_dsn(config) as dsn:
            if show_status or dry_run or show_sql:
                return await retry_unavailable(lambda: read_schema_state(dsn, name), 5.0)
            return await migrate_schema(dsn, name, 5.0, on_applied=applied)

    result = _run(go())
    if isinstance(result, list):
        if result:
            click.echo(f"schema {name} is now at {latest:04d}")
        else:
            click.echo(f"schema {name} is up to date at {latest:04d}")
        return
    state = result
    if show_status:
        _print_status(state)
        sys.exit(0 if state.mismatch() is None else 1)
    if state.unknown:
        mismatch = state.mismatch()
        _fail(str(mismatch), EXIT_USAGE)
    if show_sql:
        click.echo(migration_script(name, state.pending), nl=False)
        return
    for m in state.pending:
        click.echo(f"would apply {m.label}")
    if state.pending:
        click.echo(f"schema {name} would then be at {latest:04d}")
    else:
        click.echo(f"schema {name} is up to date at {latest:04d}; nothing would run")


@main.command("check-config")
@_config_options
def check_config(config_path: str | None, database_url: str | None) -> None:
    """Validate the config (and import every handler); print ok or every problem."""
    config, file = _load_with_path(config_path, database_url)
    _registry(config, file)
    click.echo("ok")


@main.group("config")
def config_group() -> None:
    """The configuration file's format."""


@config_group.command("schema")
def config_schema() -> None:
    """Print the config file's JSON Schema (for editors: see config/jobwire.schema.json)."""
    click.echo(json.dumps(json_schema(), indent=2))


@main.command()
@click.argument("handler")
@click.option("--payload", default="null", help="JSON payload (or @file to read it from a file).")
@click.option("--queue", default="default", show_default=True)
@click.option("--priority", default=0, type=int, show_default=True, help="Higher runs first.")
@click.option("--delay", default="0s", help="Run no earlier than this from now (e.g. 30s, 5m).")
@click.option("--dedup-key", default=None, help="A second job with this key is not created.")
@click.option("--max-attempts", default=None, type=click.IntRange(min=1))
@_db_options
def enqueue(
    handler: str,
    payload: str,
    queue: str,
    priority: int,
    delay: str,
    dedup_key: str | None,
    max_attempts: int | None,
    config_path: str | None,
    database_url: str | None,
    schema: str | None,
) -> None:
    """Add a job and print its id."""
    config = _load_db(config_path, database_url, schema, ENQUEUE_SECTIONS)
    if payload.startswith("@"):
        payload = Path(payload[1:]).read_text(encoding="utf-8")
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        _fail(f"--payload is not valid JSON: {exc}")
    try:
        delay_s = parse_duration(delay)
    except ValueError as exc:
        _fail(f"--delay: {exc}")
    spec = JobSpec(
        handler=handler,
        payload=data,
        queue=queue,
        priority=priority,
        delay=delay_s,
        dedup_key=dedup_key,
        max_attempts=max_attempts,
        source="cli",
    )

    async def action(store: AdminStore) -> int:
        (job_id,) = await store.enqueue_many([spec])
        if job_id is None:
            assert dedup_key is not None
            existing = (await store.ids_by_dedup_key([dedup_key]))[dedup_key]
            click.echo(f"duplicate dedup key; existing job {existing}", err=True)
            return existing
        return job_id

    click.echo(_with_store(config, action))


@main.group()
def jobs() -> None:
    """Inspect and act on jobs."""


def _fmt_time(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


@jobs.command("list")
@click.option("--status", type=click.Choice([s.value for s in JobStatus]), default=None)
@click.option("--queue", default=None)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@_db_options
def jobs_list(
    status: str | None,
    queue: str | None,
    limit: int,
    as_json: bool,
    config_path: str | None,
    database_url: str | None,
    schema: str | None,
) -> None:
    """List jobs, newest first."""
    config = _load_db(config_path, database_url, schema)
    found = _with_store(config, lambda s: s.list_jobs(status, queue, limit))
    if as_json:
        for job in found:
            click.echo(json.dumps(job_as_dict(job)))
        return
    click.echo(
        f"{'ID':>8}  {'STATUS':<9}  {'QUEUE':<10}  {'HANDLER':<16}  {'TRY':>5}  "
        f"{'CREATED':<19}  LAST ERROR"
    )
    for job in found:
        error = (job.last_error or "").splitlines()[0][:60] if job.last_error else ""
        click.echo(
            f"{job.id:>8}  {job.status:<9}  {job.queue:<10}  {job.handler:<16}  "
            f"{job.attempts:>2}/{job.max_attempts:<2}  {_fmt_time(job.created_at):<19}  "
            f"{error}"
        )


@jobs.command("show")
@click.argument("job_id", type=int)
@_db_options
def jobs_show(
    job_id: int, config_path: str | None, database_url: str | None, schema: str | None
) -> None:
    """Show one job with its attempts, as JSON."""
    config = _load_db(config_path, database_url, schema)

    async def action(store: AdminStore) -> tuple[Job | None, list[dict[str, Any]]]:
        return await store.get(job_id), await store.runs(job_id)

    job, runs = _with_store(config, action)
    if job is None:
        _fail(f"no job {job_id}", 1)
    data = job_as_dict(job)
    data["runs"] = [
        {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in r.items()} for r in runs
    ]
    click.echo(json.dumps(data, indent=2, default=str))


@jobs.command("retry")
@click.argument("job_ids", type=int, nargs=-1)
@click.option(
    "--status",
    type=click.Choice(["failed", "cancelled"]),
    default=None,
    help="Retry every job in this status.",
)
@_db_options
def jobs_retry(
    job_ids: tuple[int, ...],
    status: str | None,
    config_path: str | None,
    database_url: str | None,
    schema: str | None,
) -> None:
    """Run failed or cancelled jobs again."""
    if not job_ids and not status:
        _fail("give job ids or --status")
    config = _load_db(config_path, database_url, schema)
    retried = _with_store(config, lambda s: s.retry(job_ids, status))
    click.echo(f"{len(retried)} job(s) requeued")


@jobs.command("cancel")
@click.argument("job_id", type=int)
@_db_options
def jobs_cancel(
    job_id: int, config_path: str | None, database_url: str | None, schema: str | None
) -> None:
    """Cancel a waiting job, or stop a running one."""
    config = _load_db(config_path, database_url, schema)
    status = _with_store(config, lambda s: s.cancel(job_id))
    if status is None:
        _fail(f"no job {job_id}", 1)
    elif status == "running":
        click.echo(f"job {job_id} is running; its worker was asked to stop it")
    elif status == "cancelled":
        click.echo(f"job {job_id} cancelled")
    else:
        click.echo(f"job {job_id} is already {status}; nothing to cancel")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@_db_options
def stats(
    as_json: bool, config_path: str | None, database_url: str | None, schema: str | None
) -> None:
    """Job counts by queue and status, and every instance with its sources' state."""
    config = _load_db(config_path, database_url, schema)

    async def action(store: AdminStore) -> tuple[Any, list[dict[str, Any]]]:
        return await store.stats(), await store.list_workers()

    counts, workers = _with_store(config, action)
    # The published state holds sources' last errors; a daemon masks its own secrets there,
    # this masks URL passwords again for rows of daemons that did not.
    workers = [{**w, "state": redact_data(w["state"])} for w in workers]
    if as_json:
        instances = [
            {
                **w,
                "started_at": w["started_at"].isoformat(),
                "heartbeat_at": w["heartbeat_at"].isoformat(),
                "heartbeat_age": float(w["heartbeat_age"]),
            }
            for w in workers
        ]
        click.echo(json.dumps({"queues": counts, "instances": instances}, sort_keys=True))
        return
    statuses = [s.value for s in JobStatus]
    click.echo(f"{'QUEUE':<12}" + "".join(f"{s:>11}" for s in statuses))
    for queue, by_status in sorted(counts.items()):
        click.echo(f"{queue:<12}" + "".join(f"{by_status.get(s, 0):>11}" for s in statuses))
    click.echo(f"\n{'INSTANCE':<32} {'HEARTBEAT':>10} {'RUNNING':>8}  SOURCES")
    for w in workers:
        age = float(w["heartbeat_age"])
        beat = f"{age:.0f}s ago" if age < 3600 else "stale"
        sources = w["state"].get("sources", {}) if isinstance(w["state"], dict) else {}
        shown = (
            ", ".join(
                f"{name}={src.get('state')}"
                + (
                    f" ({src['last_error']})"
                    if src.get("state") != "up" and src.get("last_error")
                    else ""
                )
                for name, src in sorted(sources.items())
            )
            or "-"
        )
        running = w["state"].get("running", 0) if isinstance(w["state"], dict) else 0
        click.echo(f"{w['id']:<32} {beat:>10} {running:>8}  {shown}")


@main.command()
@click.argument("source_name", metavar="SOURCE")
@click.option("--body", required=True, help="Message body (JSON or text), or @file to read it.")
@click.option("--header", "headers", multiple=True, help="A header as key=value; repeatable.")
@click.option("--content-type", default="application/json", show_default=True)
@click.option("--count", default=1, type=click.IntRange(min=1), show_default=True)
@_config_options
def publish(
    source_name: str,
    body: str,
    headers: tuple[str, ...],
    content_type: str,
    count: int,
    config_path: str | None,
    database_url: str | None,
) -> None:
    """Send test messages through a configured source's broker (with publisher confirms)."""
    config = _load(config_path, database_url)
    source = next((s for s in config.sources if s.name == source_name), None)
    if source is None:
        names = ", ".join(s.name for s in config.sources) or "none configured"
        _fail(f"no source named {source_name!r} (sources: {names})")
    data = Path(body[1:]).read_bytes() if body.startswith("@") else body.encode()
    parsed: dict[str, str] = {}
    for item in headers:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--header {item!r} is not key=value")
        parsed[key] = value
    adapter = build_adapter(source)
    try:
        confirmed = asyncio.run(adapter.publish(data, parsed, count, content_type))
    except Exception as exc:  # noqa: BLE001 - an operator command: report, no traceback
        _fail(f"publish to {source_name} failed: {type(exc).__name__}: {exc}", EXIT_UNAVAILABLE)
    click.echo(f"published {count}, confirmed {confirmed}")


@main.group()
def schedules() -> None:
    """Periodic jobs from the config's schedules: section."""


@schedules.command("list")
@_db_options
def schedules_list(config_path: str | None, database_url: str | None, schema: str | None) -> None:
    """Every schedule as the daemon wrote it (at start-up): timing, state, runs."""
    config = _load_db(config_path, database_url, schema)
    rows = _with_store(config, lambda s: s.list_schedules())
    click.echo(f"{'NAME':<20} {'WHEN':<16} {'STATE':<8} {'NEXT RUN':<19}  {'LAST RUN':<19}  RUNS")
    for r in rows:
        when = r.cron or f"every {r.interval_s or 0:g}s"
        state = "enabled" if r.enabled else "paused"
        click.echo(
            f"{r.name:<20} {when:<16} {state:<8} {_fmt_time(r.next_run_at):<19}  "
            f"{_fmt_time(r.last_run_at):<19}  {r.run_count}"
        )


@schedules.command("run")
@click.argument("name")
@_db_options
def schedules_run(
    name: str, config_path: str | None, database_url: str | None, schema: str | None
) -> None:
    """Enqueue one job from a schedule now (its regular ticks are not affected)."""
    config = _load_db(config_path, database_url, schema)

    async def action(store: OperatorStore) -> int | None:
        row = await store.get_schedule(name)
        if row is None:
            return None
        (job_id,) = await store.enqueue_many([tick_spec(row, None)])
        return job_id

    job_id = _with_store(config, action)
    if job_id is None:
        _fail(f"no schedule named {name!r}", 1)
    click.echo(job_id)


def _set_enabled(
    name: str, enabled: bool, config_path: str | None, database_url: str | None, schema: str | None
) -> None:
    config = _load_db(config_path, database_url, schema)
    found = _with_store(config, lambda s: s.set_schedule_enabled(name, enabled))
    if not found:
        _fail(f"no schedule named {name!r}", 1)
    click.echo(
        f"schedule {name} {'resumed' if enabled else 'paused'}"
        + ("" if enabled else " (until the daemon restarts: the config's enabled wins)")
    )


@schedules.command("pause")
@click.argument("name")
@_db_options
def schedules_pause(
    name: str, config_path: str | None, database_url: str | None, schema: str | None
) -> None:
    """Stop firing a schedule."""
    _set_enabled(name, False, config_path, database_url, schema)


@schedules.command("resume")
@click.argument("name")
@_db_options
def schedules_resume(
    name: str, config_path: str | None, database_url: str | None, schema: str | None
) -> None:
    """Fire a paused schedule again."""
    _set_enabled(name, True, config_path, database_url, schema)
