"""What every command shares: the global options, the config, the store, output, exits."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import resource
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import asyncpg
import click
import uvloop
from rich.console import Console
from rich.table import Table
from rich.text import Text

from jobwire.api_models import BadInput
from jobwire.app import open_store, with_database_url
from jobwire.config import Config, ConfigError, DatabaseConfig, find_config_file, load_config
from jobwire.exit_codes import EXIT_INTERRUPTED as EXIT_INTERRUPTED
from jobwire.exit_codes import EXIT_NOTHING as EXIT_NOTHING  # re-exported: for the commands
from jobwire.exit_codes import EXIT_OK as EXIT_OK
from jobwire.exit_codes import EXIT_UNAVAILABLE as EXIT_UNAVAILABLE
from jobwire.exit_codes import EXIT_USAGE as EXIT_USAGE
from jobwire.logs import configure_logging, drain_log
from jobwire.redaction import redact, remember, secret_values
from jobwire.storable import json_problem
from jobwire.store.base import InvalidJobData, OperatorStore, StoreUnavailable
from jobwire.store.embedded import EmbeddedError
from jobwire.store.migrate import MigrationFailed, SchemaMismatch, SchemaUnreadable

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

# Commands that only talk to the database read only these sections of the config: an
# operator's shell need not hold the daemon's other secrets (admin token, broker passwords).
DB_SECTIONS = ("database", "logging")
# retry.max_attempts is a new job's default; handlers: the allow-list a handler is checked in.
ENQUEUE_SECTIONS = (*DB_SECTIONS, "retry", "handlers")
CONFIG_HELP = "Config file (default: $JOBWIRE_CONFIG, ./jobwire.yaml, /etc/jobwire/jobwire.yaml)."
URL_HELP = (
    "Use this PostgreSQL URL instead of database.url. Commands that only talk to the "
    "database read the config's database: and logging: sections (none of its other "
    "${VAR}s); without a config file, $JOBWIRE_DATABASE_URL is the default."
)


@dataclass
class Globals:
    """The global options, given before or after the subcommand (the later one wins)."""

    config_path: str | None = None
    database_url: str | None = None
    schema: str | None = None
    output: str | None = None
    verbose: int = 0


def globals_() -> Globals:
    """The current invocation's global options."""
    ctx = click.get_current_context()
    return ctx.ensure_object(Globals)


def _setter(field: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def store(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is None or value == ():
            return
        obj = ctx.ensure_object(Globals)
        if field == "verbose":
            obj.verbose += int(value)
        else:
            setattr(obj, field, value)

    return store


def global_options(fn: F) -> F:
    """The global options on a subcommand too, where operators used to give them.

    Their values go to ``Globals`` (ctx.obj), not to the command's function.
    """
    options = [
        click.option(
            "-v",
            "--verbose",
            count=True,
            default=None,
            expose_value=False,
            callback=_setter("verbose"),
            help="Log at info (-v) or debug (-vv) to stderr; warnings and errors only without.",
        ),
        click.option(
            "-o",
            "--output",
            type=click.Choice(["table", "json"]),
            default=None,
            expose_value=False,
            callback=_setter("output"),
            help="table for people, json for scripts (one JSON document).",
        ),
        click.option(
            "--schema",
            default=None,
            expose_value=False,
            callback=_setter("schema"),
            help="Use this schema instead of database.schema.",
        ),
        click.option(
            "--database-url",
            default=None,
            expose_value=False,
            callback=_setter("database_url"),
            help=URL_HELP,
        ),
        click.option(
            "-c",
            "--config",
            type=click.Path(dir_okay=False),
            default=None,
            expose_value=False,
            callback=_setter("config_path"),
            help=CONFIG_HELP,
        ),
    ]
    for option in options:
        fn = option(fn)
    return fn


def json_flag(fn: F) -> F:
    """``--json``: what ``-o json`` says, kept for the scripts that pass it."""
    return click.option(
        "--json",
        is_flag=True,
        default=None,
        expose_value=False,
        hidden=True,
        callback=lambda ctx, _p, v: _setter("output")(ctx, _p, "json" if v else None),
    )(fn)


def as_json(default: str = "table") -> bool:
    """Whether this command prints JSON (``-o json``)."""
    return (globals_().output or default) == "json"


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print an error to stderr and exit with ``code``."""
    drain_log()
    # Messages quote exceptions (a database or broker client's), which may quote a URL.
    click.echo(f"jobwire: {redact(message)}", err=True)
    sys.exit(code)


def report(problems: Iterable[object]) -> NoReturn:
    """Print every config problem and exit 2."""
    drain_log()
    for problem in problems:
        click.echo(f"error: {redact(str(problem))}", err=True)
    sys.exit(EXIT_USAGE)


def log_level(verbose: int, configured: str = "warning") -> str:
    """The CLI's log level: quiet (warnings) unless -v (info) or -vv (debug)."""
    if verbose >= 2:
        return "debug"
    return "info" if verbose == 1 else configured


def load(sections: tuple[str, ...] | None = None, daemon: bool = False) -> tuple[Config, str]:
    """The config with the global overrides applied, and the file it came from.

    ``daemon``: logs at the config's level (``jobwire run``); a command logs quietly.
    """
    g = globals_()
    database_url = g.database_url or os.environ.get("JOBWIRE_DATABASE_URL_OVERRIDE") or None
    if sections is not None and database_url is None and find_config_file(g.config_path) is None:
        # What the example config says (${JOBWIRE_DATABASE_URL:-embedded}), without one.
        database_url = os.environ.get("JOBWIRE_DATABASE_URL") or None
    try:
        config, path = load_config(g.config_path, sections=sections, database_url=database_url)
    except ConfigError as err:
        report(err.problems)
    config = with_database_url(config, database_url)
    if g.schema is not None:
        try:
            DatabaseConfig.model_validate({"schema": g.schema})
        except ValueError:
            fail(f"--schema {g.schema!r} must be a plain SQL identifier (letters, digits, _)")
        database = config.database.model_copy(update={"db_schema": g.schema})
        config = config.model_copy(update={"database": database})
    settle(config, daemon)
    return config, str(path) if path else "(built-in defaults)"


def settle(config: Config, daemon: bool = False) -> None:
    """Mask the config's secrets and log as it says: what every command does with its config."""
    # Before anything logs or prints: every line from here on masks them.
    remember(secret_values(config))
    level = config.logging.level if daemon else "warning"
    configure_logging(config.logging.format, log_level(globals_().verbose, level), daemon)


def load_db(sections: tuple[str, ...] = DB_SECTIONS) -> Config:
    """The config as a command that only talks to the database needs it."""
    return load(sections)[0]


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop; an unavailable database exits 1, a schema mismatch 2."""
    try:
        # uvloop: the same asyncio, with I/O and scheduling in C; the daemon is loop-bound.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    except StoreUnavailable as exc:
        fail(f"database unavailable: {exc}", EXIT_UNAVAILABLE)
    except EmbeddedError as exc:
        fail(str(exc), exc.exit_code)
    except (SchemaMismatch, SchemaUnreadable, MigrationFailed) as exc:
        # Not a transient state: restarting (systemd) or retrying changes nothing.
        fail(str(exc), EXIT_USAGE)
    except (InvalidJobData, BadInput, asyncpg.DataError) as exc:
        # A value the database refuses (a NUL in a payload, an id beyond bigint): bad input.
        fail(f"the database refused a value given: {exc}", EXIT_USAGE)
    except OSError as exc:
        if exc.errno not in (errno.EMFILE, errno.ENFILE):
            raise
        # The process's (or the system's) descriptor limit: a traceback from wherever the
        # next file or socket was opened would hide that the fix is outside jobwire.
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        fail(
            f"too many open files ({errno.errorcode[exc.errno]}; this process may open {soft}):"
            " raise the limit (systemd LimitNOFILE=, docker run --ulimit nofile=, ulimit -n)",
            EXIT_UNAVAILABLE,
        )


def with_store(config: Config, action: Callable[[OperatorStore], Awaitable[T]]) -> T:
    """Open the store (never migrating), run ``action`` on it, close it."""

    async def go() -> T:
        # Never migrates: only `jobwire migrate` and `jobwire run` change the schema.
        async with open_store(config, apply_migrations=False, wait=5.0) as store:
            return await action(store)

    return run(go())


# -- output --------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """A value as JSON holds it (times in ISO 8601)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def print_json(data: Any) -> None:
    """One JSON document on stdout: a list for lists, an object for one thing."""
    click.echo(json.dumps(plain(data), indent=2, sort_keys=True, default=str))


def fmt_time(value: datetime | None) -> str:
    """A time for a table, in local time."""
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def console(err: bool = False) -> Console:
    """A rich console: a terminal's width, or wide when piped (a script's lines stay whole)."""
    stream = sys.stderr if err else sys.stdout
    width = None if stream.isatty() else 200
    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


@dataclass(frozen=True)
class Column:
    """One table column: its header, alignment, and how it shortens (fold or ellipsis)."""

    header: str
    justify: str = "left"
    overflow: str = "fold"
    max_width: int | None = None


def print_table(
    columns: Sequence[Column], rows: Iterable[Sequence[Any]], caption: str | None = None
) -> None:
    """A table on stdout; cells are plain text (never rich markup: an error may hold [x])."""
    table = Table(box=None, header_style="bold", caption=caption, caption_justify="left")
    for c in columns:
        table.add_column(
            c.header,
            justify=c.justify,  # type: ignore[arg-type]
            overflow=c.overflow,  # type: ignore[arg-type]
            max_width=c.max_width,
        )
    for row in rows:
        table.add_row(*(Text("" if v is None else str(v)) for v in row))
    console().print(table)


def read_payload(text: str) -> Any:
    """A --payload option: JSON, or @FILE of JSON; refused (exit 2) when it cannot be a job's
    payload (not JSON, nested too deep, or something PostgreSQL's jsonb refuses)."""
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"--payload {text}: {exc}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"--payload is not valid JSON: {exc}")
    except RecursionError:
        fail("--payload is nested too deep")
    except ValueError as exc:  # an integer past Python's 4,300 digits
        fail(f"--payload cannot be read: {exc}")
    problem = json_problem(data, "--payload")
    if problem is not None:
        fail(f"--payload cannot be stored: {problem}")
    return data
