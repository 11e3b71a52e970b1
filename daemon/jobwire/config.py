"""YAML configuration: look-up, ``${VAR}`` interpolation and validated pydantic models."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from jobwire.durations import parse_duration
from jobwire.redaction import (
    MASK,
    SECRET,
    is_secret_name,
    raw_secret_values,
    redact,
    secret_field_names,
)
from jobwire.selectors import parse_selector
from jobwire.ticks import TickRule, valid_cron

Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds, written in the config as ``500ms``, ``30s``, ``5m``, ``1h``."""

DEFAULT_PATHS = (Path("jobwire.yaml"), Path("/etc/jobwire/jobwire.yaml"))
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class PoolConfig(_Strict):
    """Size of the asyncpg connection pool."""

    min: int = Field(2, ge=1)
    max: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _min_not_above_max(self) -> PoolConfig:
        if self.min > self.max:
            raise ValueError(f"pool.min ({self.min}) is larger than pool.max ({self.max})")
        return self


class DatabaseConfig(_Strict):
    """Where jobs live: ``embedded`` or a ``postgresql://`` URL."""

    url: str = "embedded"
    data_dir: Path = Path("./var/jobwire")
    db_schema: str = Field("jobwire", alias="schema")
    pool: PoolConfig = PoolConfig()
    command_timeout: Duration = 30.0

    @field_validator("db_schema")
    @classmethod
    def _plain_identifier(cls, value: str) -> str:
        if not _IDENT.match(value):
            raise ValueError(f"{value!r} must be a plain SQL identifier (letters, digits, _)")
        return value

    @field_validator("url")
    @classmethod
    def _embedded_or_postgres(cls, value: str) -> str:
        if value != "embedded" and not value.startswith(("postgres://", "postgresql://")):
            raise ValueError("must be 'embedded' or a postgresql:// URL")
        return value


class WorkersConfig(_Strict):
    """The worker pool as a whole."""

    concurrency: int = Field(32, ge=1, le=10_000)
    poll_interval: Duration = 1.0
    # LISTEN/NOTIFY wake-ups. false: polling only (behind a transaction-pooling PgBouncer,
    # where LISTEN does not work).
    listen: bool = True
    lease: Duration = 60.0
    shutdown_timeout: Duration = 30.0
    completion_batch: int = Field(200, ge=1)
    completion_delay: Duration = 0.005
    # Flow control: above this many ready jobs the sources stop taking messages, so a
    # flood waits in the broker rather than in the database; they go on again at or below
    # backlog_resume (default: 80% of max_backlog). null: no limit.
    max_backlog: int | None = Field(100_000, ge=1)
    backlog_resume: int | None = Field(None, ge=0)

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


class QueueConfig(_Strict):
    """Limits of one named queue."""

    concurrency: int | None = Field(None, ge=1)
    timeout: Duration | None = None


class RetryConfig(_Strict):
    """Default retry policy: exponential backoff with full jitter."""

    max_attempts: int = Field(5, ge=1)
    base: Duration = 2.0
    factor: float = Field(2.0, ge=1.0)
    max: Duration = 600.0
    jitter: bool = True


def _check_selector(value: str | None) -> str | None:
    if value is not None and value != "none":
        parse_selector(value)
    return value


SelectorText = Annotated[str, BeforeValidator(lambda v: _check_selector(v))]
"""A selector written ``header:NAME``, ``json:$.path`` or ``property:NAME``."""


class RouteConfig(_Strict):
    """How a source's messages become jobs."""

    # job: each message becomes a job. notify: each message is {"job_id": N} for a job a
    # producer already wrote; it only wakes the pool (Koha's JobsNotificationMethod).
    mode: Literal["job", "notify"] = "job"
    # notify mode: how long a job_id that is not (yet) visible is NACKed before the message
    # is dropped as naming no job.
    notify_wait: Duration = 30.0
    handler: str | None = None
    handler_from: SelectorText | None = None
    queue: str = "default"
    priority: int | SelectorText = 0
    max_attempts: int | None = Field(None, ge=1)
    delay: Duration = 0.0
    # None: the source type's default (AMQP: property:message_id). "none": no dedup.
    dedup_key: SelectorText | None = None

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

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify: bool = True


class SourceBase(_Strict):
    """Settings shared by every source type."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    route: RouteConfig
    on_invalid: Literal["fail", "dead-letter"] = "fail"
    max_body_bytes: int = Field(1_048_576, ge=1)
    batch_size: int = Field(500, ge=1, le=10_000)
    # How long the first message of a batch waits for company. 0: none; under load batches
    # still form, from what arrives while the previous batch is being stored, and a lone
    # message is not held back (a delay mostly adds latency; ``latency(batch_delay=...)`` in
    # bench/__main__.py measures it).
    batch_delay: Duration = 0.0
    required: bool = False


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


# The source models live with their adapters (jobwire.adapters.<type>.config) and build on
# the classes above, so the registry is imported here, after them: importing an adapter's
# config module first works too (jobwire.adapters imports this module before any of them).
# The registry and those modules import no broker library (an import-linter contract).
from jobwire.adapters.registry import SOURCE_TYPES, source_union  # noqa: E402

if TYPE_CHECKING:
    SourceConfig = SourceBase
else:
    SourceConfig = source_union()


class ScheduleConfig(_Strict):
    """A periodic job: a cron expression or an interval, firing one job per tick."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]+$")
    cron: str | None = None
    every: Duration | None = None
    timezone: str = "UTC"
    handler: str
    payload: Any = None
    queue: str = "default"
    priority: int = 0
    max_attempts: int | None = Field(None, ge=1)
    start_at: datetime | None = None
    end_at: datetime | None = None
    max_runs: int | None = Field(None, ge=1)
    enabled: bool = True
    # After downtime: none (skip missed ticks), latest (one run for them), all (every one).
    catch_up: Literal["none", "latest", "all"] = "latest"

    @model_validator(mode="after")
    def _timing(self) -> ScheduleConfig:
        if (self.cron is None) == (self.every is None):
            raise ValueError("give exactly one of cron or every")
        if self.cron is not None and not valid_cron(self.cron):
            raise ValueError(f"cron {self.cron!r} is not a valid five-field or @ expression")
        if self.every is not None and self.every < 1:
            raise ValueError("every must be at least 1s")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {self.timezone!r}") from None
        for key in ("start_at", "end_at"):
            value = getattr(self, key)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{key} needs a time zone offset (e.g. 2026-01-01T00:00:00Z)")
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

    enabled: bool = True
    finished: Duration = 30 * 86400.0
    every: Duration = 600.0
    batch: int = Field(1000, ge=1, le=100_000)


class LoggingConfig(_Strict):
    """How log lines look."""

    format: Literal["auto", "console", "json"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class HttpConfig(_Strict):
    """The daemon's HTTP server: health, readiness, metrics and the admin API."""

    enabled: bool = True
    # host:port; port 0 picks a free one (logged as http_listening).
    listen: str = "127.0.0.1:8080"
    # Bearer token for mutations (enqueue, retry, cancel). None: mutations are refused.
    admin_token: str | None = Field(None, min_length=16, json_schema_extra=SECRET)

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

    database: DatabaseConfig = DatabaseConfig()
    workers: WorkersConfig = WorkersConfig()
    queues: dict[str, QueueConfig] = Field(default_factory=lambda: {"default": QueueConfig()})
    retry: RetryConfig = RetryConfig()
    handlers: dict[str, str] = Field(default_factory=dict)
    sources: list[SourceConfig] = Field(default_factory=list)
    schedules: list[ScheduleConfig] = Field(default_factory=list)
    retention: RetentionConfig = RetentionConfig()
    logging: LoggingConfig = LoggingConfig()
    http: HttpConfig = HttpConfig()

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
            if not re.fullmatch(r"[\w.]+[:.]\w+", target):
                raise ValueError(
                    f"{name}: {target!r} is not a dotted path like 'myapp.jobs:send_email'"
                )
        return value

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


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(
    node: Any, env: Mapping[str, str], path: str, problems: list[tuple[str, str]]
) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of a parsed YAML tree."""
    if isinstance(node, dict):
        return {k: interpolate(v, env, _join(path, str(k)), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env, f"{path}[{i}]", problems) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.append((path, f"environment variable {name} is not set and has no default"))
        return ""

    return _VAR.sub(replace, node)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _loc_to_key(loc: tuple[int | str, ...]) -> str:
    key = ""
    previous: int | str | None = None
    for part in loc:
        if previous == 0 or isinstance(previous, int):
            if part in SOURCE_TYPES:  # the discriminated union's tag: not a key the user wrote
                previous = part
                continue
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
        previous = part
    return key


def _pydantic_problems(err: ValidationError, file: str) -> list[ConfigProblem]:
    problems = []
    for item in err.errors():
        loc = tuple(
            p for p in item["loc"] if not (isinstance(p, str) and p.startswith("function-"))
        )
        key = _loc_to_key(loc)
        if item["type"] == "extra_forbidden":
            reason = "unknown key"
        elif item["type"] == "missing":
            reason = "required key is missing"
        elif item["type"] == "union_tag_invalid":
            tag = (item.get("ctx") or {}).get("tag")
            reason = f"unknown source type {tag!r}; supported: {', '.join(SOURCE_TYPES)}"
            key = _join(key, "type")
        elif item["type"] == "union_tag_not_found":
            reason = f"every source needs a type: {', '.join(SOURCE_TYPES)}"
            key = _join(key, "type")
        else:
            reason = str(item["msg"]).removeprefix("Value error, ")
            if "input" in item and not isinstance(item["input"], dict | list):
                # A secret field's value is never echoed, however wrong it is (a short one
                # would escape the verbatim redaction in parse_config).
                field = next((p for p in reversed(loc) if isinstance(p, str)), "")
                secret = field in _SECRET_KEYS or is_secret_name(field)
                reason += f" (got {MASK if secret else repr(item['input'])})"
        problems.append(ConfigProblem(file, key, reason))
    return problems


def parse_config(text: str, file: str, env: Mapping[str, str] | None = None) -> Config:
    """Parse and validate config text; raise ConfigError naming file, key and reason."""
    env = os.environ if env is None else env
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            [ConfigProblem(file, where, f"invalid YAML: {redact(problem)}")]
        ) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([ConfigProblem(file, "", "the top level must be a mapping of keys")])
    env_problems: list[tuple[str, str]] = []
    data = interpolate(raw, env, "", env_problems)
    problems = [ConfigProblem(file, key, reason) for key, reason in env_problems]
    try:
        config = Config.model_validate(data)
    except ValidationError as err:
        # A key whose variable is missing already has its problem; skip the echo it causes.
        env_keys = {key for key, _ in env_problems}
        problems.extend(p for p in _pydantic_problems(err, file) if p.key not in env_keys)
        # No model to ask which values are secret: take them from the tree as written (after
        # ${VAR} interpolation), wherever a validator's message may have quoted them.
        secrets = raw_secret_values(data, _SECRET_KEYS)
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


def load_config(explicit: str | None = None) -> tuple[Config, Path | None]:
    """Load the config by the look-up order; built-in defaults when no file is found."""
    path = find_config_file(explicit)
    if path is None:
        return Config(), None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(path), "", f"cannot read: {exc.strerror}")]) from None
    return parse_config(text, str(path)), path
