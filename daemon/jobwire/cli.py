"""The ``jobwire`` command: run, migrate, check-config, enqueue, jobs, stats."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import uvloop

from jobwire import __version__
from jobwire.adapters import build_adapter
from jobwire.app import Daemon, ListenError, open_store, with_database_url
from jobwire.config import Config, ConfigError, load_config
from jobwire.durations import parse_duration
from jobwire.handlers import HandlerLoadError, HandlerRegistry
from jobwire.logs import configure_logging
from jobwire.models import Job, JobSpec, JobStatus, job_as_dict
from jobwire.redaction import redact, redact_data, remember, secret_values
from jobwire.routing import route_problems
from jobwire.scheduler import tick_spec
from jobwire.store.base import AdminStore, OperatorStore, StoreUnavailable

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 1
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


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


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    # Messages quote exceptions (a database or broker client's), which may quote a URL.
    click.echo(f"jobwire: {redact(message)}", err=True)
    sys.exit(code)


def _load(config_path: str | None, database_url: str | None) -> Config:
    config, _ = _load_with_path(config_path, database_url)
    return config


def _load_with_path(config_path: str | None, database_url: str | None) -> tuple[Config, str]:
    try:
        config, path = load_config(config_path)
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
        _report([f"{file}: {exc}"])
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


def _with_store(config: Config, action: Callable[[OperatorStore], Awaitable[T]]) -> T:
    async def go() -> T:
        async with open_store(config, wait=5.0) as store:
            return await action(store)

    return _run(go())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="jobwire")
def main() -> None:
    """jobwire: broker messages in, durable jobs out."""


@main.command()
@_config_options
def run(config_path: str | None, database_url: str | None) -> None:
    """Run the daemon until SIGTERM, SIGINT or SIGHUP."""
    config, file = _load_with_path(config_path, database_url)
    registry = _registry(config, file)

    async def go() -> None:
        daemon = Daemon(config, registry)
        daemon.install_signal_handlers()
        await daemon.run()

    try:
        _run(go())
    except ListenError as exc:
        _fail(str(exc), EXIT_USAGE)


@main.command()
@_config_options
def migrate(config_path: str | None, database_url: str | None) -> None:
    """Create or upgrade the database schema."""
    config = _load(config_path, database_url)

    async def nothing(store: AdminStore) -> None:
        return None

    _with_store(config, nothing)
    click.echo(f"schema {config.database.db_schema} is up to date")


@main.command("check-config")
@_config_options
def check_config(config_path: str | None, database_url: str | None) -> None:
    """Validate the config (and import every handler); print ok or every problem."""
    config, file = _load_with_path(config_path, database_url)
    _registry(config, file)
    click.echo("ok")


@main.command()
@click.argument("handler")
@click.option("--payload", default="null", help="JSON payload (or @file to read it from a file).")
@click.option("--queue", default="default", show_default=True)
@click.option("--priority", default=0, type=int, show_default=True, help="Higher runs first.")
@click.option("--delay", default="0s", help="Run no earlier than this from now (e.g. 30s, 5m).")
@click.option("--dedup-key", default=None, help="A second job with this key is not created.")
@click.option("--max-attempts", default=None, type=click.IntRange(min=1))
@_config_options
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
) -> None:
    """Add a job and print its id."""
    config = _load(config_path, database_url)
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
@_config_options
def jobs_list(
    status: str | None,
    queue: str | None,
    limit: int,
    as_json: bool,
    config_path: str | None,
    database_url: str | None,
) -> None:
    """List jobs, newest first."""
    config = _load(config_path, database_url)
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
@_config_options
def jobs_show(job_id: int, config_path: str | None, database_url: str | None) -> None:
    """Show one job with its attempts, as JSON."""
    config = _load(config_path, database_url)

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
@_config_options
def jobs_retry(
    job_ids: tuple[int, ...], status: str | None, config_path: str | None, database_url: str | None
) -> None:
    """Run failed or cancelled jobs again."""
    if not job_ids and not status:
        _fail("give job ids or --status")
    config = _load(config_path, database_url)
    retried = _with_store(config, lambda s: s.retry(job_ids, status))
    click.echo(f"{len(retried)} job(s) requeued")


@jobs.command("cancel")
@click.argument("job_id", type=int)
@_config_options
def jobs_cancel(job_id: int, config_path: str | None, database_url: str | None) -> None:
    """Cancel a waiting job, or stop a running one."""
    config = _load(config_path, database_url)
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
@_config_options
def stats(as_json: bool, config_path: str | None, database_url: str | None) -> None:
    """Job counts by queue and status, and every instance with its sources' state."""
    config = _load(config_path, database_url)

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
@_config_options
def schedules_list(config_path: str | None, database_url: str | None) -> None:
    """Every schedule as the daemon wrote it (at start-up): timing, state, runs."""
    config = _load(config_path, database_url)
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
@_config_options
def schedules_run(name: str, config_path: str | None, database_url: str | None) -> None:
    """Enqueue one job from a schedule now (its regular ticks are not affected)."""
    config = _load(config_path, database_url)

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
    name: str, enabled: bool, config_path: str | None, database_url: str | None
) -> None:
    config = _load(config_path, database_url)
    found = _with_store(config, lambda s: s.set_schedule_enabled(name, enabled))
    if not found:
        _fail(f"no schedule named {name!r}", 1)
    click.echo(
        f"schedule {name} {'resumed' if enabled else 'paused'}"
        + ("" if enabled else " (until the daemon restarts: the config's enabled wins)")
    )


@schedules.command("pause")
@click.argument("name")
@_config_options
def schedules_pause(name: str, config_path: str | None, database_url: str | None) -> None:
    """Stop firing a schedule."""
    _set_enabled(name, False, config_path, database_url)


@schedules.command("resume")
@click.argument("name")
@_config_options
def schedules_resume(name: str, config_path: str | None, database_url: str | None) -> None:
    """Fire a paused schedule again."""
    _set_enabled(name, True, config_path, database_url)
