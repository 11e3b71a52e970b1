"""YAML configuration: look-up, ``${VAR}`` interpolation and validated pydantic models."""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from jobwire.config_yaml import CoercedKey, FileProblem, load_yaml, read_config_text
from jobwire.durations import parse_duration
from jobwire.interpolation import interpolate
from jobwire.limits import check_rate
from jobwire.redaction import (
    MASK,
    MIN_REPLACED,
    SECRET,
    is_secret_name,
    raw_secret_values,
    redact,
    remember,
    secret_field_names,
)
from jobwire.selectors import parse_selector
from jobwire.ticks import TickRule, never_fires, valid_cron

# What parse_duration accepts (spaces between parts included), for editors' schema checks.
DURATION_PATTERN = r"^ *([0-9]+(\.[0-9]+)?|([0-9]+(\.[0-9]+)? *(ms|s|m|h|d) *)+) *$"

# Ten years: past that a duration is a typo, and PostgreSQL's timestamps (now() + lease)
# and asyncio's timers overflow or misbehave long before the float does.
MAX_DURATION_S = 3650 * 86400.0


def _config_duration(value: object) -> float:
    """A config duration: what parse_duration takes, at most ``MAX_DURATION_S``."""
    seconds = parse_duration(value)
    if seconds > MAX_DURATION_S:
        raise ValueError("a duration must be at most 3650d (10 years)")
    return seconds


Duration = Annotated[
    float,
    BeforeValidator(_config_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": MAX_DURATION_S},
                {"type": "string", "pattern": DURATION_PATTERN},
            ]
        }
    ),
]
"""Seconds, written in the config as ``500ms``, ``30s``, ``5m``, ``1h``."""

DEFAULT_PATHS = (Path("jobwire.yaml"), Path("/etc/jobwire/jobwire.yaml"))
# Lower case only: the schema is quoted where it is created but not in the connections'
# search_path, where PostgreSQL folds an unquoted name to lower case.
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class PoolConfig(_Strict):
    """Size of the asyncpg connection pool."""

    min: int = Field(2, ge=1, description="Connections kept open at least.")
    max: int = Field(10, ge=1, description="Connections open at most.")

    @model_validator(mode="after")
    def _min_not_above_max(self) -> PoolConfig:
        if self.min > self.max:
            raise ValueError(f"pool.min ({self.min}) is larger than pool.max ({self.max})")
        return self


class DatabaseConfig(_Strict):
    """Where jobs live: ``embedded`` or a ``postgresql://`` URL."""

    url: str = Field(
        "embedded",
        description="'embedded' (a bundled PostgreSQL under data_dir) or a postgresql:// URL.",
    )
    data_dir: Path = Field(
        Path("./var/jobwire"), description="Where the embedded server keeps its data."
    )
    db_schema: str = Field(
        "jobwire", alias="schema", description="The PostgreSQL schema all tables live in."
    )
    pool: PoolConfig = Field(PoolConfig(), description="The connection pool's size.")
    # 0 passed the check and then made every statement time out at once ("database
    # unavailable"); asyncpg takes no 0 for "none".
    command_timeout: Duration = Field(
        30.0, gt=0, description="A statement slower than this counts as the database being down."
    )
    migrate: bool = Field(
        True,
        description="`jobwire run` applies pending migrations first; false: it refuses an "
        "outdated schema instead (run `jobwire migrate`).",
    )

    @field_validator("db_schema")
    @classmethod
    def _plain_identifier(cls, value: str) -> str:
        if not _IDENT.match(value):
            raise ValueError(
                f"{value!r} must be a plain SQL identifier (lower-case letters, digits, _)"
            )
        return value

    @field_validator("url")
    @classmethod
    def _embedded_or_postgres(cls, value: str) -> str:
        if value != "embedded" and not value.startswith(("postgres://", "postgresql://")):
            raise ValueError("must be 'embedded' or a postgresql:// URL")
        return value


def _process_count(value: Any) -> Any:
    """``workers.processes``: 1 to 1024 or ``auto``, with one message for anything else."""
    if value == "auto":
        return value
    text = str(value).strip()
    # ASCII digits only: str.isdigit() also takes an Arabic-Indic or a fullwidth 4 (which
    # int() reads as 4) and a superscript 3 (which int() refuses with a message of its own).
    digits = text.isascii() and text.isdigit()
    if isinstance(value, bool | float) or not digits or not 1 <= int(text) <= 1024:
        raise ValueError("must be a number of processes from 1 to 1024, or auto")
    return int(text)


ProcessCount = Annotated[
    int | Literal["auto"],
    BeforeValidator(_process_count),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": 1024},
                {"type": "string", "const": "auto"},
            ]
        }
    ),
]


class WorkersConfig(_Strict):
    """The worker pool as a whole."""

    # 256, not a few dozen: a slot costs nothing until a job takes it (a coroutine; a
    # blocking handler's thread is made on first use), and with few slots each claim and
    # each intake batch hands over only a few jobs, so a busy pool spends its time waiting
    # on round trips (bench/defaults.py). Handlers that must not run that wide say so with
    # queues.NAME.concurrency or rate.
    concurrency: int = Field(
        256, ge=1, le=10_000, description="Jobs running at once in this instance, all queues."
    )
    # More than 1: a supervisor runs that many daemon processes (jobwire.processes), each
    # an instance with this concurrency. Not "auto" by default until child 0's /metrics and
    # single HTTP port are settled for everyone.
    processes: ProcessCount = Field(
        1,
        description="Daemon processes under one supervisor, each with this concurrency; "
        "'auto': one per available core (cgroup CPU quota included).",
    )
    poll_interval: Duration = Field(
        1.0, description="Fallback polling for ready jobs (inserts also wake the workers)."
    )
    # false is for a transaction-pooling PgBouncer, where LISTEN does not work.
    listen: bool = Field(True, description="LISTEN/NOTIFY wake-ups; false: polling only.")
    lease: Duration = Field(
        60.0, description="A running job's lease, renewed every lease/3 (at least 1s)."
    )
    shutdown_timeout: Duration = Field(
        30.0, description="On SIGTERM, how long running jobs may finish before being given back."
    )
    completion_batch: int = Field(200, ge=1, description="Outcomes written per statement at most.")
    # Waiting costs the broker nothing (the deliveries stay unacknowledged) and saves each
    # job a claim; with other instances on the database the batch is stored at once instead,
    # so that idle workers elsewhere can claim it.
    hand_off_wait: Duration = Field(
        0.5,
        le=5.0,
        description="While the pool is full (and no other instance could claim those jobs "
        "instead), how long a source's batch may wait for a free slot (then it starts with "
        "no claim) before it is stored as ready jobs; 0: never wait.",
    )
    completion_delay: Duration = Field(
        0.005, description="How long an outcome may wait for others to share its write."
    )
    # Flow control: a flood waits in the broker rather than in the database.
    max_backlog: int | None = Field(
        100_000,
        ge=1,
        description="Above this many ready jobs the sources stop taking messages; null: no limit.",
    )
    backlog_resume: int | None = Field(
        None,
        ge=0,
        description="The sources go on at or below this many ready jobs "
        "(null: 80% of max_backlog).",
    )

    @model_validator(mode="after")
    def _check(self) -> WorkersConfig:
        if self.lease < 1:
            raise ValueError("lease must be at least 1s")
        if self.poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        if (
            self.max_backlog is not None
            and self.backlog_resume is not None
            and self.backlog_resume >= self.max_backlog
        ):
            raise ValueError("backlog_resume must be below max_backlog")
        return self


RateText = Annotated[str, BeforeValidator(check_rate)]
"""A rate written ``50/s``, ``10/m``, ``1000/h`` or ``2/d``."""


class QueueConfig(_Strict):
    """Limits of one named queue."""

    concurrency: int | None = Field(
        None, ge=1, description="Jobs of this queue running at once; null: no own limit."
    )
    timeout: Duration | None = Field(
        None, description="An attempt running longer is cancelled and fails; null: none."
    )
    rate: RateText | None = Field(
        None,
        description="Jobs of this queue started per unit of time across all instances, "
        "written 50/s, 10/m or 1000/h; null: no limit.",
    )
    burst: int | None = Field(
        None,
        ge=1,
        description="With rate: the most jobs started at once after a quiet spell; null: a "
        "tenth of a second's worth of the rate, at least 1.",
    )
    key_concurrency: int = Field(
        1,
        ge=1,
        description="Jobs of one concurrency key (in this queue) running at once, across all "
        "instances.",
    )
    ordered: bool = Field(
        False,
        description="Jobs of one concurrency key start in enqueue order: a job waits while "
        "an older one of its key waits or retries.",
    )


class HandlerLimitConfig(_Strict):
    """A rate limit on one handler, whatever queue its jobs are in."""

    rate: RateText = Field(
        description="Jobs of this handler started per unit of time across all instances, "
        "written 50/s, 10/m or 1000/h."
    )
    burst: int | None = Field(
        None,
        ge=1,
        description="The most jobs started at once after a quiet spell; null: a tenth of a "
        "second's worth of the rate, at least 1.",
    )


class RetryConfig(_Strict):
    """Default retry policy: exponential backoff with full jitter."""

    max_attempts: int = Field(5, ge=1, description="Attempts of a job that sets none itself.")
    base: Duration = Field(2.0, description="The delay before the second attempt.")
    factor: float = Field(2.0, ge=1.0, description="Each further delay is this times the last.")
    max: Duration = Field(600.0, description="The longest delay between attempts.")
    jitter: bool = Field(True, description="Draw each delay uniformly from [0, computed delay].")


class HandlerRetryConfig(_Strict):
    """One handler's retry policy; a key left out keeps the global ``retry:`` value."""

    max_attempts: int | None = Field(
        None, ge=1, description="Attempts of this handler's jobs that set none themselves."
    )
    base: Duration | None = Field(None, description="The delay before the second attempt.")
    factor: float | None = Field(
        None, ge=1.0, description="Each further delay is this times the last."
    )
    max: Duration | None = Field(None, description="The longest delay between attempts.")
    jitter: bool | None = Field(None, description="Draw each delay from [0, computed delay].")


class HandlerDefaultsConfig(_Strict):
    """Defaults of one handler's jobs: above the queue's and the global ones, below the job's."""

    timeout: Duration | None = Field(
        None, description="An attempt running longer is cancelled and fails; null: the queue's."
    )
    retry: HandlerRetryConfig = Field(
        HandlerRetryConfig(), description="Retry policy; keys left out: the global retry:."
    )


def _check_selector(value: str | None) -> str | None:
    if value is not None and value != "none":
        parse_selector(value)
    return value


SelectorText = Annotated[str, BeforeValidator(lambda v: _check_selector(v))]
"""A selector written ``header:NAME``, ``json:$.path`` or ``property:NAME``."""


class RouteConfig(_Strict):
    """How a source's messages become jobs."""

    # notify is Koha's JobsNotificationMethod: the producer writes the row itself.
    mode: Literal["job", "notify"] = Field(
        "job",
        description='job: each message becomes a job; notify: each message is {"job_id": N} '
        "for a job a producer already wrote, and only wakes the pool.",
    )
    notify_wait: Duration = Field(
        30.0,
        description="notify: how long a job_id not yet visible is NACKed before the message "
        "is dropped.",
    )
    handler: str | None = Field(None, description="The handler of every job (a handlers: name).")
    handler_from: SelectorText | None = Field(
        None,
        description="Where the message names its handler: header:NAME, json:$.path or "
        "property:NAME.",
    )
    queue: str = Field("default", description="The jobwire queue the jobs go to.")
    priority: int | SelectorText = Field(
        0, description="A number (higher runs first) or a selector such as header:priority."
    )
    max_attempts: int | None = Field(
        None, ge=1, description="Attempts per job; null: retry.max_attempts."
    )
    delay: Duration = Field(0.0, description="Run no earlier than this after arrival.")
    timeout: Duration | None = Field(
        None,
        gt=0,
        description="How long one attempt of these jobs may run (wins over the queue's "
        "timeout); null: the queue's.",
    )
    dedup_key: SelectorText | None = Field(
        None,
        description="A selector for the deduplication key; null: the source type's default; "
        "'none': no deduplication.",
    )
    concurrency_key: SelectorText | None = Field(
        None,
        description="A selector for the job's concurrency key (json:$.tenant, header:NAME, "
        "property:key for a Kafka message key); null: none.",
    )

    @model_validator(mode="after")
    def _one_handler(self) -> RouteConfig:
        if self.mode == "notify":
            if self.handler is not None or self.handler_from is not None:
                raise ValueError("mode notify takes no handler: the job row names it")
            return self
        if (self.handler is None) == (self.handler_from is None):
            raise ValueError("give exactly one of handler (a name) or handler_from (a selector)")
        return self


class TlsConfig(_Strict):
    """TLS for a broker connection (amqps://, mqtts://, ...)."""

    ca_file: Path | None = Field(None, description="CA certificates (PEM); null: the system's.")
    cert_file: Path | None = Field(None, description="Client certificate (PEM).")
    key_file: Path | None = Field(None, description="The client certificate's private key (PEM).")
    verify: bool = Field(True, description="Check the server's certificate and host name.")


class SourceBase(_Strict):
    """Settings shared by every source type."""

    # The broker hands each message to whichever consumer has room in its window (AMQP's
    # and STOMP's prefetch): a consumer that holds deliveries back leaves the rest to the
    # others. Kafka's partitions and MQTT's shared subscriptions are handed out whatever
    # each consumer's pace (see worker/fleet.py).
    competing: ClassVar[bool] = False

    name: str = Field(
        pattern=r"^[A-Za-z0-9_.-]+$", description="Unique; used in logs, stats and dedup keys."
    )
    route: RouteConfig = Field(description="How the source's messages become jobs.")
    on_invalid: Literal["fail", "dead-letter"] = Field(
        "fail",
        description="An invalid message: fail (a failed job with the reason) or dead-letter "
        "(to the broker's dead-letter queue).",
    )
    max_body_bytes: int = Field(1_048_576, ge=1, description="Larger messages are invalid.")
    batch_size: int = Field(500, ge=1, le=10_000, description="Messages per INSERT at most.")
    # 0: under load batches still form, from what arrives while the previous batch is being
    # stored, and a lone message is not held back (a delay mostly adds latency;
    # ``latency(batch_delay=...)`` in bench/__main__.py measures it).
    batch_delay: Duration = Field(
        0.0, description="How long the first message of a batch waits for others; 0: none."
    )
    required: bool = Field(False, description="Reserved for readiness checks.")


def no_requeue(source: SourceBase, why: str) -> None:
    """Refuse the options that need a broker-side NACK or dead-letter queue."""
    if source.route.mode == "notify":
        raise ValueError(
            f"route.mode notify needs a broker that redelivers a NACKed message; {why}"
        )
    if source.on_invalid == "dead-letter":
        raise ValueError(
            f"on_invalid dead-letter needs a broker dead-letter queue; {why}; use fail"
        )


# Failed publishes of one reply before it is set aside: a reply is worth little late (its
# requester has likely given up), and a topic the broker answers with a disconnect would
# otherwise hold up every reply of its source, with backoff, for ten tries.
REPLY_MAX_ATTEMPTS = 3


def reply_needs_jobs(source: SourceBase) -> None:
    """Refuse ``reply: true`` on a source whose messages make no jobs (route.mode notify)."""
    if getattr(source, "reply", False) and source.route.mode == "notify":
        raise ValueError(
            "reply needs route.mode job: a notify message wakes a job another producer "
            "wrote, and has no result to reply with"
        )


class OutputBase(_Strict):
    """Settings shared by every output type (a named destination handlers publish to)."""

    batch_size: int = Field(
        500, ge=1, le=10_000, description="Outbox rows the relay claims and publishes at once."
    )
    poll_interval: Duration = Field(
        0.2, description="How often an idle relay looks for new outbox rows."
    )
    publish_timeout: Duration = Field(
        30.0, description="How long a batch waits for the broker's confirmations."
    )
    max_attempts: int = Field(
        10,
        ge=1,
        description="Failed publishes of one message before it is set aside (failed_at).",
    )


# The source models live with their adapters (jobwire.adapters.<type>.config) and build on
# the classes above, so the registry is imported here, after them: importing an adapter's
# config module first works too (jobwire.adapters imports this module before any of them).
# The registry and those modules import no broker library (an import-linter contract).
from jobwire.adapters.registry import (  # noqa: E402
    OUTPUT_TYPES,
    OUTPUTS,
    SOURCE_TYPES,
    SOURCES,
    output_union,
    source_union,
)

# The same for the built-in handlers' settings (jobwire.builtins.settings builds on _Strict).
from jobwire.builtins.settings import KINDS as BUILTIN_KINDS  # noqa: E402
from jobwire.builtins.settings import BuiltinsConfig, builtin_kind  # noqa: E402
from jobwire.publish_builtin import PUBLISH_KIND  # noqa: E402

if TYPE_CHECKING:
    SourceConfig = SourceBase
    OutputConfig = OutputBase
else:
    SourceConfig = source_union()
    OutputConfig = output_union()


MAX_EVERY_S = 3650 * 86400.0
EARLIEST_SCHEDULE_TIME = datetime(2, 1, 1, tzinfo=UTC)
LATEST_SCHEDULE_TIME = datetime(9998, 12, 31, 23, 59, 59, tzinfo=UTC)


class ScheduleConfig(_Strict):
    """A periodic job: a cron expression or an interval, firing one job per tick."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]+$", description="Unique name of the schedule.")
    cron: str | None = Field(
        None, description="Five cron fields, or @hourly @daily @weekly @monthly @yearly."
    )
    every: Duration | None = Field(None, description="A fixed interval (1s to 3650d) instead.")
    timezone: str = Field("UTC", description="The zone cron is read in (IANA name).")
    handler: str = Field(description="The handler of each job (a handlers: name or built-in).")
    payload: Any = Field(None, description="The payload of each job.")
    queue: str = Field("default", description="The queue the jobs go to.")
    priority: int = Field(0, description="Higher runs first.")
    max_attempts: int | None = Field(
        None, ge=1, description="Attempts per job; null: retry.max_attempts."
    )
    start_at: datetime | None = Field(
        None, description="No ticks before this (ISO 8601 with an offset)."
    )
    end_at: datetime | None = Field(None, description="No ticks after this.")
    max_runs: int | None = Field(None, ge=1, description="Disabled after this many runs.")
    enabled: bool = Field(True, description="false: the schedule does not fire.")
    catch_up: Literal["none", "latest", "all"] = Field(
        "latest",
        description="After downtime: none (skip missed ticks), latest (one run for them), "
        "all (every one).",
    )

    @model_validator(mode="after")
    def _timing(self) -> ScheduleConfig:
        if (self.cron is None) == (self.every is None):
            raise ValueError("give exactly one of cron or every")
        if self.cron is not None and not valid_cron(self.cron):
            raise ValueError(f"cron {self.cron!r} is not a valid five-field or @ expression")
        if self.cron is not None and never_fires(self.cron):
            raise ValueError(f"cron {self.cron!r} never fires (no such day in any year)")
        if self.every is not None and not 1 <= self.every <= MAX_EVERY_S:
            raise ValueError("every must be at least 1s and at most 3650d")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {self.timezone!r}") from None
        for key in ("start_at", "end_at"):
            value = getattr(self, key)
            if value is None:
                continue
            if value.tzinfo is None:
                raise ValueError(f"{key} needs a time zone offset (e.g. 2026-01-01T00:00:00Z)")
            # PostgreSQL stores the calendar's first and last instants as -infinity and
            # infinity, which read back as times with no zone: a schedule with one stopped
            # the scheduler (found by a drill).
            if not EARLIEST_SCHEDULE_TIME <= value <= LATEST_SCHEDULE_TIME:
                hint = " (leave end_at out for a schedule that never ends)" * (key == "end_at")
                raise ValueError(f"{key} must lie between the years 2 and 9998{hint}")
        return self

    def rule(self) -> TickRule:
        """The timing, for computing ticks."""
        return TickRule(
            cron=self.cron,
            every=self.every,
            timezone=self.timezone,
            start_at=self.start_at,
            end_at=self.end_at,
        )


class RetentionConfig(_Strict):
    """How long finished jobs (and their runs) are kept; purged by the scheduler's leader."""

    enabled: bool = Field(True, description="false: finished jobs are kept for good.")
    finished: Duration = Field(
        30 * 86400.0, description="Finished jobs older than this are deleted."
    )
    every: Duration = Field(600.0, description="How often the leader purges.")
    batch: int = Field(1000, ge=1, le=100_000, description="Rows per DELETE.")
    outbox_sent: Duration = Field(
        7 * 86400.0, description="Outbox messages sent longer ago than this are deleted."
    )


class LoggingConfig(_Strict):
    """How log lines look."""

    format: Literal["auto", "console", "json"] = Field(
        "auto", description="auto: console on a TTY, JSON lines otherwise."
    )
    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="The least severe level logged."
    )


class DashboardConfig(_Strict):
    """The web dashboard under /ui/: off unless enabled; sign-in by token."""

    enabled: bool = Field(False, description="true: serve the dashboard under /ui/.")
    read_token: str | None = Field(
        None,
        min_length=16,
        json_schema_extra=SECRET,
        description="Token of the read-only role (http.admin_token signs in as admin).",
    )
    session_ttl: Duration = Field(
        28800.0, description="How long a sign-in lasts (sessions also end at a restart)."
    )


class HttpConfig(_Strict):
    """The daemon's HTTP server: health, readiness, metrics and the admin API."""

    enabled: bool = Field(True, description="false: no HTTP server.")
    listen: str = Field(
        "127.0.0.1:8080",
        description="host:port to listen on; port 0 picks a free one (logged as http_listening).",
    )
    admin_token: str | None = Field(
        None,
        min_length=16,
        json_schema_extra=SECRET,
        description="Bearer token for mutations (enqueue, retry, cancel); null: they are refused.",
    )
    read_token: str | None = Field(
        None,
        min_length=16,
        json_schema_extra=SECRET,
        description="Bearer token for /api/v1 reads (admin_token reads too); null: admin only.",
    )
    public_reads: bool = Field(
        False,
        description="true: /api/v1 reads need no token (mutations still need admin_token).",
    )
    dashboard: DashboardConfig = Field(
        DashboardConfig(), description="The web dashboard under /ui/ (off by default)."
    )
    # Without these, a client that opens connections and never finishes a request holds
    # them for aiohttp's hour, and enough of them take the descriptors the database and
    # brokers need. Past the cap a new connection is closed at once: the ones open go on.
    idle_timeout: Duration = Field(
        60.0,
        gt=0,
        le=86_400,
        description="Close a connection with no request under way (headers unfinished, "
        "or idle between requests), or whose answers are not read, after this long.",
    )
    max_connections: int = Field(
        512,
        ge=1,
        le=100_000,
        description="Open connections at most; a new one past this is closed at once.",
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError("must be host:port, such as 127.0.0.1:8080 or 0.0.0.0:8080")
        return value

    def address(self) -> tuple[str, int]:
        """(host, port) to bind; brackets around an IPv6 host are removed."""
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class Config(_Strict):
    """The whole jobwire configuration."""

    database: DatabaseConfig = Field(DatabaseConfig(), description="Where jobs live.")
    workers: WorkersConfig = Field(WorkersConfig(), description="The worker pool as a whole.")
    queues: dict[str, QueueConfig] = Field(
        default_factory=lambda: {"default": QueueConfig()},
        description="Queues this instance serves (and always default), by name.",
    )
    retry: RetryConfig = Field(RetryConfig(), description="The default retry policy.")
    handlers: dict[str, str] = Field(
        default_factory=dict,
        description="The allow-list: handler name -> 'package.module:function'.",
    )
    handler_limits: dict[str, HandlerLimitConfig] = Field(
        default_factory=dict,
        description="Rate limits per handler name, across all queues and instances.",
    )
    handler_defaults: dict[str, HandlerDefaultsConfig] = Field(
        default_factory=dict,
        description="Timeout and retry policy per handler name: over the queue's and retry:, "
        "under a job's own.",
    )
    builtins: BuiltinsConfig = Field(
        BuiltinsConfig(),
        description="Settings of the built-in handlers (handlers: {name: 'builtin:KIND'}).",
    )
    sources: list[SourceConfig] = Field(
        default_factory=list, description="Broker sources whose messages become jobs."
    )
    schedules: list[ScheduleConfig] = Field(
        default_factory=list, description="Periodic jobs (cron or interval)."
    )
    outputs: dict[str, OutputConfig] = Field(
        default_factory=dict,
        description="Named destinations handlers publish to through the outbox "
        "(ctx.publish, the publish built-in), by name.",
    )
    retention: RetentionConfig = Field(
        RetentionConfig(), description="How long finished jobs are kept."
    )
    logging: LoggingConfig = Field(LoggingConfig(), description="How log lines look.")
    http: HttpConfig = Field(
        HttpConfig(), description="The HTTP server: health, metrics and the admin API."
    )

    @field_validator("sources", "schedules")
    @classmethod
    def _unique_names(cls, value: list[Any], info: ValidationInfo) -> list[Any]:
        names = [item.name for item in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            kind = "source" if info.field_name == "sources" else "schedule"
            raise ValueError(f"{kind} names must be unique; repeated: {', '.join(dupes)}")
        return value

    @field_validator("handlers")
    @classmethod
    def _dotted_paths(cls, value: dict[str, str]) -> dict[str, str]:
        for name, target in value.items():
            kind = builtin_kind(target)
            if kind is not None and kind not in (*BUILTIN_KINDS, PUBLISH_KIND):
                known = ", ".join((*BUILTIN_KINDS, PUBLISH_KIND))
                raise ValueError(f"{name}: unknown built-in {kind!r}; built-ins: {known}")
            if not re.fullmatch(r"[\w.]+[:.]\w+", target):
                raise ValueError(
                    f"{name}: {target!r} is not a dotted path like 'myapp.jobs:send_email'"
                )
        return value

    @field_validator("outputs")
    @classmethod
    def _reply_names_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        # reply:<source> names the implicit output of a source with reply: true.
        taken = sorted(name for name in value if name.startswith("reply:"))
        if taken:
            raise ValueError(f"output names starting with reply: are reserved: {', '.join(taken)}")
        return value

    @model_validator(mode="after")
    def _publish_outputs(self) -> Config:
        # builtin:publish sends to the output named like the handler: it must exist.
        for name, target in self.handlers.items():
            if builtin_kind(target) == PUBLISH_KIND and name not in self.outputs:
                known = ", ".join(sorted(self.outputs)) or "none configured"
                raise ValueError(
                    f"handlers.{name}: builtin:publish sends to the output named {name!r}, "
                    f"and there is none (outputs: {known})"
                )
        return self

    @model_validator(mode="after")
    def _builtin_settings(self) -> Config:
        # builtin:http and builtin:email cannot run on defaults (no allow-list, no server).
        for name, target in self.handlers.items():
            kind = builtin_kind(target)
            if kind in ("http", "email") and getattr(self.builtins, kind) is None:
                raise ValueError(f"handlers.{name} is {target}: it needs a builtins.{kind} section")
        return self

    def queue_names(self) -> list[str]:
        """Queues this instance serves: the configured ones, ``default`` always among them."""
        names = list(self.queues)
        if "default" not in names:
            names.insert(0, "default")
        return names

    def queue(self, name: str) -> QueueConfig:
        """Settings of one queue (defaults for a queue not in the config)."""
        return self.queues.get(name) or QueueConfig()


_SECRET_KEYS = secret_field_names(Config)


def json_schema() -> dict[str, Any]:
    """The config file's JSON Schema (``jobwire config schema``), for editors and checkers."""
    schema = Config.model_json_schema(by_alias=True)
    schema["title"] = "jobwire configuration"
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config file."""

    file: str
    key: str
    reason: str

    def __str__(self) -> str:
        return (
            f"{self.file}: {self.key}: {self.reason}" if self.key else f"{self.file}: {self.reason}"
        )

    def redacted(self, secrets: frozenset[str] | set[str]) -> ConfigProblem:
        """The same problem with URL passwords and these secrets masked in its reason."""
        return ConfigProblem(self.file, self.key, redact(self.reason, secrets))


class ConfigError(Exception):
    """The config could not be loaded; carries every problem found."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _loc_to_key(loc: tuple[int | str, ...]) -> str:
    key = ""
    previous: int | str | None = None
    for index, part in enumerate(loc):
        if loc[0] == "outputs" and index == 2 and part in OUTPUT_TYPES:
            continue  # outputs.<name>.<type tag>: the tag is no key the user wrote
        if previous == 0 or isinstance(previous, int):
            if part in SOURCE_TYPES:  # the discriminated union's tag: not a key the user wrote
                previous = part
                continue
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
        previous = part
    return key


def _unwrap(annotation: Any) -> Any:
    """``X`` of ``Annotated[X, ...]`` and of ``X | None``; anything else as it is."""
    while True:
        if typing.get_origin(annotation) is Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        if typing.get_origin(annotation) is typing.Union or isinstance(annotation, types.UnionType):
            options = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(options) == 1:
                annotation = options[0]
                continue
        return annotation


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model whose keys sit at ``loc`` (a pydantic error location), if any."""
    current: Any = Config
    for part in loc:
        current = _unwrap(current)
        origin, args = typing.get_origin(current), typing.get_args(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            fields = current.model_fields.items()
            current = next((f.annotation for n, f in fields if part in (n, f.alias)), None)
        elif isinstance(part, str) and part in SOURCES and loc[0] == "sources":  # union tag
            current = SOURCES[part].model
        elif isinstance(part, str) and part in OUTPUTS and loc[0] == "outputs":
            current = OUTPUTS[part].model
        elif origin is list and isinstance(part, int):
            current = args[0]
        elif origin is dict and isinstance(part, str):
            current = args[1]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _did_you_mean(loc: tuple[int | str, ...]) -> str:
    """`` (did you mean 'x'?)`` when an unknown key is close to one of its model's keys."""
    model = _model_at(loc[:-1])
    if model is None or not isinstance(loc[-1], str):
        return ""
    keys = [key for name, f in model.model_fields.items() for key in (name, f.alias) if key]
    close = difflib.get_close_matches(loc[-1], keys, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerced_key(
    loc: tuple[int | str, ...], value: Any, coerced: list[CoercedKey]
) -> ConfigProblem | None:
    """A mapping key that must be a name, which YAML 1.1 read as a boolean, number or null."""
    if not loc or loc[-1] != "[key]" or isinstance(value, str):
        return None
    # The loc holds the key as read (False for no): find the text it was written as.
    match = next(
        (c for c in coerced if type(c.value) is type(value) and c.value == value),
        None,
    )
    if match is None:
        return None
    where = _loc_to_key(loc[:-2])
    reason = (
        f"the key {match.text} (line {match.line}) was read as {match.kind}, not a name: "
        f"quote it ('{match.text}')"
    )
    return ConfigProblem("", where, reason)


def _from_env(reason: str, value: Any, names: list[str]) -> str:
    """``reason`` without a value that came from the environment: it may be anything."""
    text = str(value)
    if len(text) >= MIN_REPLACED:
        # As a validator quotes it ({value!r}) and as it is.
        reason = reason.replace(repr(text)[1:-1], MASK).replace(text, MASK)
    variables = ", ".join(f"${{{name}}}" for name in dict.fromkeys(names))
    return f"{reason} (got the value of environment variable {variables})"


def _pydantic_problems(
    err: ValidationError,
    file: str,
    coerced: list[CoercedKey] | None = None,
    origins: Mapping[str, list[str]] | None = None,
) -> list[ConfigProblem]:
    problems = []
    for item in err.errors():
        loc = tuple(
            p for p in item["loc"] if not (isinstance(p, str) and p.startswith("function-"))
        )
        key = _loc_to_key(loc)
        as_key = _coerced_key(loc, item.get("input"), coerced or [])
        if as_key is not None:
            problems.append(ConfigProblem(file, as_key.key, as_key.reason))
            continue
        if item["type"] == "extra_forbidden":
            reason = "unknown key" + _did_you_mean(loc)
        elif item["type"] == "missing":
            reason = "required key is missing"
        elif item["type"] in ("union_tag_invalid", "union_tag_not_found"):
            kind, types_ = (
                ("output", OUTPUT_TYPES) if loc[0] == "outputs" else ("source", SOURCE_TYPES)
            )
            tag = (item.get("ctx") or {}).get("tag")
            if item["type"] == "union_tag_invalid":
                reason = f"unknown {kind} type {tag!r}; supported: {', '.join(types_)}"
            else:
                reason = f"every {kind} needs a type: {', '.join(types_)}"
            key = _join(key, "type")
        else:
            reason = str(item["msg"]).removeprefix("Value error, ")
            names = (origins or {}).get(key)
            if names and "input" in item and not isinstance(item["input"], dict | list):
                reason = _from_env(reason, item["input"], names)
            elif "input" in item and not isinstance(item["input"], dict | list):
                # A secret field's value is never echoed, however wrong it is (a short one
                # would escape the verbatim redaction in parse_config).
                field = next((p for p in reversed(loc) if isinstance(p, str)), "")
                secret = field in _SECRET_KEYS or is_secret_name(field)
                reason += f" (got {MASK if secret else repr(item['input'])})"
        problems.append(ConfigProblem(file, key, reason))
    return problems


def parse_config(
    text: str,
    file: str,
    env: Mapping[str, str] | None = None,
    *,
    sections: Collection[str] | None = None,
    database_url: str | None = None,
) -> Config:
    """Parse and validate config text; raise ConfigError naming file, key and reason.

    ``sections``: read only these top-level keys (the rest keep their defaults), so a command
    that needs the database alone never reads another section's ``${VAR}`` or secret.
    ``database_url`` replaces ``database.url`` as given (no ``${VAR}`` substitution in it).
    """
    env = os.environ if env is None else env
    try:
        parsed = load_yaml(text)  # a SafeLoader: plain data only
    except FileProblem as exc:
        raise ConfigError([ConfigProblem(file, exc.where, redact(exc.problem))]) from None
    raw = parsed.data
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([ConfigProblem(file, "", "the top level must be a mapping of keys")])
    if sections is not None:
        raw = {key: value for key, value in raw.items() if key in sections}
    override = bool(database_url) and isinstance(raw.get("database"), dict)
    if override:
        # The file's url is never read (its ${VAR} may be unset); the given one is set after
        # substitution, so a "$$" or "${" in its password is taken as written.
        raw = {**raw, "database": {k: v for k, v in raw["database"].items() if k != "url"}}
    env_problems: list[tuple[str, str]] = []
    file_secrets: set[str] = set()
    origins: dict[str, list[str]] = {}
    data = interpolate(raw, env, "", env_problems, file_secrets, origins)
    if override and isinstance(data, dict) and isinstance(data.get("database"), dict):
        # A copy: an alias may share this mapping with another key.
        data["database"] = {**data["database"], "url": database_url}
    # Before any message is built: whatever prints from here on masks them.
    remember(file_secrets)
    problems = [ConfigProblem(file, key, reason) for key, reason in env_problems]
    try:
        config = Config.model_validate(data)
    except ValidationError as err:
        # A key whose variable is missing already has its problem; skip the echo it causes.
        env_keys = {key for key, _ in env_problems}
        found = _pydantic_problems(err, file, parsed.coerced_keys, origins)
        problems.extend(p for p in found if p.key not in env_keys)
        # No model to ask which values are secret: take them from the tree as written (after
        # ${VAR} interpolation), wherever a validator's message may have quoted them.
        secrets = raw_secret_values(data, _SECRET_KEYS) | file_secrets
        raise ConfigError([p.redacted(secrets) for p in problems]) from None
    if problems:
        raise ConfigError(problems)
    return config


def find_config_file(explicit: str | None, env: Mapping[str, str] | None = None) -> Path | None:
    """Pick the config file: ``-c``, then ``$JOBWIRE_CONFIG``, then the default paths."""
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit)
    if env.get("JOBWIRE_CONFIG"):
        return Path(env["JOBWIRE_CONFIG"])
    for candidate in DEFAULT_PATHS:
        if candidate.is_file():
            return candidate
    return None


def load_config(
    explicit: str | None = None,
    *,
    sections: Collection[str] | None = None,
    database_url: str | None = None,
) -> tuple[Config, Path | None]:
    """Load the config by the look-up order; built-in defaults when no file is found."""
    path = find_config_file(explicit)
    if path is None:
        return Config(), None
    try:
        text = read_config_text(path)
    except FileProblem as exc:
        raise ConfigError([ConfigProblem(str(path), exc.where, exc.problem)]) from None
    return parse_config(text, str(path), sections=sections, database_url=database_url), path
