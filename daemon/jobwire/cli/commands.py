"""The daemon and its set-up (run, migrate, check-config), enqueue, stats and publish."""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click
import structlog

from jobwire import gc_tuning
from jobwire.adapters import build_adapter
from jobwire.adapters.http.config import http_source_problems
from jobwire.api_models import BadInput, check_enqueue
from jobwire.app import Daemon, ListenError, database_dsn, migrate_schema, retry_unavailable
from jobwire.cli.common import (
    DB_SECTIONS,
    ENQUEUE_SECTIONS,
    EXIT_NOTHING,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    Column,
    as_json,
    fail,
    fmt_time,
    global_options,
    globals_,
    json_flag,
    load,
    print_json,
    print_table,
    read_payload,
    report,
    run,
    settle,
    with_store,
)
from jobwire.cli.group import main
from jobwire.cli.outbox import backlog_json, print_backlog
from jobwire.cli.publishing import publish_topic
from jobwire.config import Config, ConfigProblem, find_config_file, json_schema
from jobwire.handlers import BUILTINS, HandlerLoadError, HandlerRegistry
from jobwire.models import JobStatus
from jobwire.processes import (
    ChildRole,
    ConfigHandover,
    HandoverMissing,
    Supervisor,
    SupervisorGone,
    process_problems,
    receive_config,
    resolve_processes,
)
from jobwire.redaction import redact_data
from jobwire.routing import route_problems
from jobwire.store.base import AdminStore, OutboxBacklog
from jobwire.store.migrate import SchemaState, latest_version, migration_script, read_schema_state


def _registry(config: Config, file: str) -> HandlerRegistry:
    """Import the allow-listed handlers and check every route against them (exit 2 if not)."""
    try:
        registry = HandlerRegistry.from_config(config.handlers)
    except HandlerLoadError as exc:
        report(
            ConfigProblem(file, f"handlers.{f.name}", f"cannot load {f.target!r}: {f.reason}")
            for f in exc.failures
        )
    problems = route_problems(config, registry.names(), file)
    problems += http_source_problems(config, file)
    problems += process_problems(config, file)
    if problems:
        report(problems)
    return registry


@main.command("run")
@click.option(
    "--migrate/--no-migrate",
    "migrate_first",
    default=None,
    help="Apply pending migrations before starting (default: database.migrate, true). "
    "--no-migrate refuses to start on a schema this jobwire does not match (exit 2).",
)
@global_options
def run_daemon(migrate_first: bool | None) -> None:
    """Run the daemon until SIGTERM, SIGINT or SIGHUP."""
    role = ChildRole.from_env()
    if role is None:
        config, file = load(daemon=True)
    else:
        # The config its supervisor validated at the service's start, never the file as it
        # is now: a child started again after an edit runs what its siblings run.
        try:
            config, file = receive_config()
        except HandoverMissing as exc:
            fail(str(exc), EXIT_UNAVAILABLE)
        settle(config, daemon=True)
    if migrate_first is not None:
        database = config.database.model_copy(update={"migrate": migrate_first})
        config = config.model_copy(update={"database": database})
    registry = _registry(config, file)
    if role is None:
        processes = resolve_processes(config.workers.processes, config.database.url == "embedded")
        if processes > 1:
            supervisor = Supervisor(
                sys.argv[1:],
                processes,
                config.workers.shutdown_timeout,
                handover=ConfigHandover(config, file),
            )
            sys.exit(run(supervisor.run()))
    else:
        try:
            role.attach()
        except SupervisorGone as exc:
            fail(str(exc), EXIT_UNAVAILABLE)
        config = role.config(config)

    daemons: list[Daemon] = []

    async def go() -> None:
        # The process is the daemon's (an embedded Daemon, as in the tests, leaves its
        # process's collector alone): set for a long run before anything connects.
        gc_tuning.settle_before_start()
        daemon = Daemon(config, registry)
        daemons.append(daemon)
        daemon.install_signal_handlers()
        await daemon.run()

    try:
        run(go())
    except ListenError as exc:
        fail(str(exc), EXIT_USAGE)
    except RuntimeError as exc:
        if _LOOP_STOPPED not in str(exc):
            raise
        # A handler called loop.stop(): the daemon ended mid-run with only a traceback.
        pool = daemons[0].pool if daemons else None
        log.error(
            "event_loop_stopped",
            handlers=sorted(set(pool.state.started_lately)) if pool is not None else [],
            note="stopped by loop.stop() (a handler?); running jobs return after their leases",
        )
        sys.exit(EXIT_UNAVAILABLE)
    _exit_past_stray_threads()


# asyncio's (and uvloop's) words when the loop stops before the daemon's run has ended.
_LOOP_STOPPED = "Event loop stopped before Future completed"


log = structlog.get_logger("jobwire.cli")
# How long a stopped daemon waits for threads it did not start (not daemon threads) to end.
_STRAY_THREAD_GRACE = 2.0


def _exit_past_stray_threads() -> None:
    """Exit now if threads a handler started (not daemon threads) still run: the interpreter
    waits for them at exit, so a drill's daemon logged daemon_stopped, then never exited."""
    deadline = time.monotonic() + _STRAY_THREAD_GRACE
    stray = []
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.daemon:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            stray.append(thread.name)
    if not stray:
        return
    log.warning(
        "threads_left_running",
        threads=sorted(stray),
        note="started by a handler and never ended; exiting without them",
    )
    # What a normal exit would still do (exit hooks such as a tracing exporter's flush),
    # without the wait for the threads that comes first.
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _state_data(state: SchemaState) -> dict[str, Any]:
    applied = {a.version: a for a in state.applied}
    mismatch = state.mismatch()
    return {
        "schema": state.schema,
        "version": state.version,
        "needs": latest_version(),
        "migrations": [
            {
                "label": m.label,
                "state": "applied" if m.version in applied else "pending",
                "applied_at": applied[m.version].applied_at if m.version in applied else None,
            }
            for m in state.known
        ]
        + [
            {"label": a.label, "state": "unknown", "applied_at": a.applied_at}
            for a in state.unknown
        ],
        "problem": None if mismatch is None else str(mismatch),
    }


def _print_status(state: SchemaState) -> None:
    data = _state_data(state)
    if as_json():
        print_json(data)
        return
    version = "does not exist" if state.version is None else f"is at {state.version:04d}"
    click.echo(f"schema {state.schema} {version}; this jobwire needs {latest_version():04d}")
    # Plain lines, as before -o existed (scripts and tests read them by position).
    for m in data["migrations"]:
        note = "  (a newer jobwire's)" if m["state"] == "unknown" else ""
        click.echo(f"{m['state']:<8} {m['label']:<32} {fmt_time(m['applied_at'])}{note}")
    click.echo(data["problem"] or "up to date")


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
@global_options
def migrate(show_status: bool, dry_run: bool, show_sql: bool) -> None:
    """Create or upgrade the database schema (the only command that changes it, with run).

    Reads only the config's database: and logging: sections.
    """
    if show_status + dry_run + show_sql > 1:
        fail("give at most one of --status, --dry-run, --sql")
    config, _ = load(DB_SECTIONS)
    name = config.database.db_schema
    latest = latest_version()
    done: list[str] = []

    def applied(label: str, seconds: float) -> None:
        done.append(label)
        if not as_json():
            click.echo(f"applied {label} ({seconds:.2f}s)")

    async def go() -> SchemaState | list[str]:
        async with database_dsn(config) as dsn:
            if show_status or dry_run or show_sql:
                return await retry_unavailable(lambda: read_schema_state(dsn, name), 5.0)
            return await migrate_schema(dsn, name, 5.0, on_applied=applied)

    result = run(go())
    if isinstance(result, list):
        if as_json():
            print_json({"schema": name, "version": latest, "applied": done})
        elif result:
            click.echo(f"schema {name} is now at {latest:04d}")
        else:
            click.echo(f"schema {name} is up to date at {latest:04d}")
        return
    state = result
    if show_status:
        _print_status(state)
        sys.exit(0 if state.mismatch() is None else EXIT_NOTHING)
    if state.unknown:
        fail(str(state.mismatch()), EXIT_USAGE)
    if show_sql:
        click.echo(migration_script(name, state.pending), nl=False)
        return
    if as_json():
        print_json({"schema": name, "would_apply": [m.label for m in state.pending]})
        return
    for m in state.pending:
        click.echo(f"would apply {m.label}")
    if state.pending:
        click.echo(f"schema {name} would then be at {latest:04d}")
    else:
        click.echo(f"schema {name} is up to date at {latest:04d}; nothing would run")


@main.command("check-config")
@global_options
def check_config() -> None:
    """Validate the config (and import every handler); print ok or every problem."""
    config, file = load()
    _registry(config, file)
    if as_json():
        print_json({"ok": True, "file": file})
    else:
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
@click.option("--timeout", default=None, help="How long one attempt may run (e.g. 30s, 5m).")
@click.option("--concurrency-key", default=None, help="Jobs sharing a key are limited together.")
@click.option(
    "--unique",
    type=click.Choice(["forever", "active"]),
    default="forever",
    show_default=True,
    help="How long --dedup-key stays taken: active lets it go when the job finishes.",
)
@global_options
def enqueue(
    handler: str,
    payload: str,
    queue: str,
    priority: int,
    delay: str,
    dedup_key: str | None,
    max_attempts: int | None,
    timeout: str | None,
    concurrency_key: str | None,
    unique: str,
) -> None:
    """Add a job and print its id (exit 2 for a handler the config does not allow)."""
    config, _ = load(ENQUEUE_SECTIONS)
    if find_config_file(globals_().config_path) is not None:
        # A known config: a job for a handler outside its allow-list could only fail.
        allowed = sorted({*BUILTINS, *config.handlers})
        if handler not in allowed:
            fail(f"handler {handler!r} is not in the config's allow-list ({', '.join(allowed)})")
    data = read_payload(payload)
    try:
        # The same checks as the HTTP API and the Client (one model, api_models).
        request = check_enqueue(
            {
                "handler": handler,
                "payload": data,
                "queue": queue,
                "priority": priority,
                "delay": delay,
                "dedup_key": dedup_key,
                "max_attempts": max_attempts,
                "timeout": timeout,
                "concurrency_key": concurrency_key,
                "unique": unique,
            }
        )
    except BadInput as exc:
        fail(f"--{exc.field.replace('_', '-')}: {exc.message}")
    spec = request.spec(source="cli")

    async def action(store: AdminStore) -> tuple[int, bool]:
        # Twice at most: a unique "active" holder may let its key go between the two steps.
        for _ in range(2):
            (job_id,) = await store.enqueue_many([spec])
            if job_id is not None:
                return job_id, False
            assert dedup_key is not None
            held = await store.ids_by_dedup_key([dedup_key])
            if dedup_key in held:
                return held[dedup_key], True
        fail(f"--dedup-key {dedup_key!r} is being taken and released; try again")

    job_id, duplicate = with_store(config, action)
    if as_json():
        print_json({"id": job_id, "duplicate": duplicate})
        return
    if duplicate:
        click.echo(f"duplicate dedup key; existing job {job_id}", err=True)
    click.echo(job_id)


def _sources_shown(state: Any) -> str:
    sources = state.get("sources") if isinstance(state, dict) else None
    if not isinstance(sources, dict):
        return "-"
    return ", ".join(_source_shown(name, src) for name, src in sorted(sources.items())) or "-"


def _source_shown(name: str, src: Any) -> str:
    """``name=state``, then the last error of a source not up, and the deliveries waiting
    to be stored (with how long the oldest was held back for a free slot)."""
    if not isinstance(src, dict):
        return f"{name}=?"
    shown = f"{name}={src.get('state')}"
    if src.get("state") != "up" and src.get("last_error"):
        shown += f" ({src['last_error']})"
    waiting = src.get("waiting")
    if isinstance(waiting, int) and not isinstance(waiting, bool) and waiting > 0:
        shown += f" [{waiting} waiting"
        held = src.get("held_back_s")
        if isinstance(held, int | float) and not isinstance(held, bool) and held > 0:
            shown += f", held back {held:.1f}s"
        shown += "]"
    return shown


@main.command()
@json_flag
@global_options
def stats() -> None:
    """Job counts by queue and status, and every instance with its sources' state."""
    config, _ = load(DB_SECTIONS)

    async def action(
        store: AdminStore,
    ) -> tuple[Any, list[dict[str, Any]], list[str], dict[str, OutboxBacklog]]:
        paused = [s.queue for s in await store.queue_states() if s.paused]
        outbox = await store.outbox_pending()
        return await store.stats(), await store.list_workers(), paused, outbox

    counts, workers, paused, outbox = with_store(config, action)
    # The published state holds sources' last errors; a daemon masks its own secrets there,
    # this masks URL passwords again for rows of daemons that did not.
    workers = [
        {**w, "state": redact_data(w["state"]), "heartbeat_age": float(w["heartbeat_age"])}
        for w in workers
    ]
    if as_json():
        pending = backlog_json(outbox)
        print_json({"queues": counts, "instances": workers, "paused": paused, "outbox": pending})
        return
    statuses = [s.value for s in JobStatus]
    print_table(
        [Column("QUEUE"), *(Column(s.upper(), justify="right") for s in statuses)],
        [(q, *(by.get(s, 0) for s in statuses)) for q, by in sorted(counts.items())],
    )
    if paused:
        click.echo(f"paused queues (nothing starts there): {', '.join(paused)}")
    if outbox:
        click.echo()
        print_backlog(outbox)
    click.echo()
    rows = []
    for w in workers:
        age = w["heartbeat_age"]
        running = w["state"].get("running", 0) if isinstance(w["state"], dict) else 0
        beat = f"{age:.0f}s ago" if age < 3600 else "stale"
        rows.append((w["id"], beat, running, _sources_shown(w["state"])))
    print_table(
        [
            Column("INSTANCE"),
            Column("HEARTBEAT", justify="right"),
            Column("RUNNING", justify="right"),
            Column("SOURCES"),
        ],
        rows,
    )


@main.command()
@click.argument("source_name", metavar="SOURCE")
@click.option("--body", required=True, help="Message body (JSON or text), or @file to read it.")
@click.option("--header", "headers", multiple=True, help="A header as key=value; repeatable.")
@click.option("--content-type", default="application/json", show_default=True)
@click.option("--count", default=1, type=click.IntRange(min=1), show_default=True)
@click.option(
    "--topic",
    default=None,
    help="The topic (MQTT, Kafka) or routing key (AMQP) to publish to: needed when the "
    "source's is a wildcard; must be one the source reads.",
)
@global_options
def publish(
    source_name: str,
    body: str,
    headers: tuple[str, ...],
    content_type: str,
    count: int,
    topic: str | None,
) -> None:
    """Send test messages through a configured source's broker (with publisher confirms)."""
    config, _ = load()
    source = next((s for s in config.sources if s.name == source_name), None)
    if source is None:
        names = ", ".join(s.name for s in config.sources) or "none configured"
        fail(f"no source named {source_name!r} (sources: {names})")
    problem = publish_topic(source, topic)
    if problem is not None:
        fail(problem)
    try:
        data = Path(body[1:]).read_bytes() if body.startswith("@") else body.encode()
    except (OSError, UnicodeEncodeError) as exc:
        fail(f"--body {body[:100]}: {exc}")
    parsed: dict[str, str] = {}
    for item in headers:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--header {item!r} is not key=value")
        parsed[key] = value
    adapter = build_adapter(source)
    try:
        confirmed = asyncio.run(adapter.publish(data, parsed, count, content_type, topic=topic))
    except Exception as exc:  # noqa: BLE001 - an operator command: report, no traceback
        fail(f"publish to {source_name} failed: {type(exc).__name__}: {exc}", EXIT_UNAVAILABLE)
    if as_json():
        print_json(
            {"source": source_name, "topic": topic, "published": count, "confirmed": confirmed}
        )
    else:
        click.echo(f"published {count}, confirmed {confirmed}")
