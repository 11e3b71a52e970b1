"""Run-time schedules: add, change, remove, pause, resume and run one now.

The CLI, the admin API and the dashboard all act through these functions, so the checks
(cron and time zone, the handler allow-list), the refusals and the audit row are the same
whichever way an operator comes in. A schedule from the config file may be paused, resumed
and run here, never edited or removed: the file owns it and would undo the change at the
next start.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import structlog
from croniter import croniter
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema

from jobwire.api_models import BadInput
from jobwire.config import ScheduleConfig
from jobwire.durations import parse_duration
from jobwire.scheduler import schedule_rows, tick_spec
from jobwire.store.base import AuditEntry, OperatorStore, ScheduleRow
from jobwire.ticks import valid_cron

log = structlog.get_logger("jobwire.schedules")

NAME_PATTERN = r"^[A-Za-z0-9_.:-]+$"
MAX_NAME = 200
INT32_MAX = 2**31 - 1
_NAME = re.compile(NAME_PATTERN)
CRON_FIELDS = ("minute", "hour", "day of month", "month", "day of week")
_EVERY_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "number", "minimum": 1, "maximum": 10 * 365 * 86400},
        {"type": "string", "description": "a duration: 30s, 5m, 1h, 1h30m"},
    ],
    "description": "A fixed interval (at least 1s) instead of cron.",
}
_TIME = Annotated[datetime, Field(strict=False, description="ISO 8601 with an offset.")]
_TEXT = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
_INT32 = Annotated[int, Field(ge=-(2**31), le=INT32_MAX)]
_POSITIVE = Annotated[int, Field(ge=1, le=INT32_MAX)]
_EVERY = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(_EVERY_SCHEMA)]
CONFIG_OWNED = (
    "is defined in the config file: edit or remove it there "
    "(pause, resume and run work at run time)"
)


class ScheduleRefused(Exception):
    """A schedule action refused: 400 bad input, 404 no such schedule, 409 conflict."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


@dataclass(frozen=True)
class Who:
    """Who acts, for the audit row: an actor name and its role."""

    actor: str
    role: str


class ScheduleChanges(BaseModel):
    """The body of ``PUT /api/v1/schedules/{name}``: the fields to change (null clears one)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    cron: _TEXT | None = None
    every: _EVERY | None = None
    timezone: _TEXT | None = None
    handler: _TEXT | None = None
    payload: Any = None
    queue: _TEXT | None = None
    priority: _INT32 | None = None
    max_attempts: _POSITIVE | None = None
    start_at: _TIME | None = None
    end_at: _TIME | None = None
    max_runs: _POSITIVE | None = None
    enabled: bool | None = None
    catch_up: Literal["none", "latest", "all"] | None = None


class ScheduleRequest(BaseModel):
    """The body of ``POST /api/v1/schedules``: a new run-time schedule (cron or every)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=MAX_NAME, pattern=NAME_PATTERN)]
    handler: _TEXT
    cron: _TEXT | None = None
    every: _EVERY | None = None
    timezone: _TEXT = "UTC"
    payload: Any = None
    queue: _TEXT = "default"
    priority: _INT32 = 0
    max_attempts: _POSITIVE | None = None
    start_at: _TIME | None = None
    end_at: _TIME | None = None
    max_runs: _POSITIVE | None = None
    enabled: bool = True
    catch_up: Literal["none", "latest", "all"] = "latest"


def parse_name(text: str) -> str:
    """A schedule name from a path, checked as names are when a schedule is made."""
    if not text or len(text) > MAX_NAME or not _NAME.match(text):
        raise BadInput("name", "a schedule name is 1-200 of A-Z a-z 0-9 _ . : -")
    return text


def cron_problem(expression: str) -> str | None:
    """Why croniter refuses a cron expression, naming the field at fault; None if valid."""
    if valid_cron(expression):
        return None
    parts = expression.split()
    if expression.strip().startswith("@"):
        return f"cron {expression!r}: use @hourly, @daily, @weekly, @monthly or @yearly"
    if len(parts) != len(CRON_FIELDS):
        return (
            f"cron {expression!r} has {len(parts)} fields; it needs five: "
            "minute hour day-of-month month day-of-week"
        )
    for i, part in enumerate(parts):
        probe = ["*"] * len(CRON_FIELDS)
        probe[i] = part
        if not croniter.is_valid(" ".join(probe)):
            return f"cron {expression!r}: the {CRON_FIELDS[i]} field {part!r} is not valid"
    return f"cron {expression!r} is not valid"


def _refusal(exc: ValidationError, model: type[BaseModel]) -> ScheduleRefused:
    """The first problem of a validation as a 400 naming the field."""
    first = exc.errors(include_url=False, include_input=False)[0]
    loc = [str(part)[:40] for part in first["loc"]] or ["body"]
    message = str(first["msg"]).removeprefix("Value error, ")[:200]
    if first["type"] == "extra_forbidden":
        message = f"unknown key; the keys are {', '.join(model.model_fields)}"
    return ScheduleRefused(400, f"{'.'.join(loc)}: {message}", loc[0])


def check_schedule(fields: Mapping[str, Any], allowed: Collection[str] | None) -> ScheduleConfig:
    """A whole schedule checked: types, cron (naming the field), time zone, times, handler."""
    try:
        request = ScheduleRequest.model_validate(dict(fields))
    except ValidationError as exc:
        raise _refusal(exc, ScheduleRequest) from None
    if request.cron is not None:
        problem = cron_problem(request.cron)
        if problem is not None:
            raise ScheduleRefused(400, problem, "cron")
    if request.start_at and request.end_at and request.end_at <= request.start_at:
        raise ScheduleRefused(400, "end_at must be after start_at", "end_at")
    try:
        config = ScheduleConfig.model_validate(request.model_dump())
    except ValidationError as exc:
        refusal = _refusal(exc, ScheduleConfig)
        message = refusal.message.removeprefix("body: ")
        field = next(
            (f for f in ("timezone", "every", "cron", "start_at", "end_at") if f in message), None
        )
        raise ScheduleRefused(400, message, field) from None
    if config.enabled and config.rule().next_after(datetime.now(UTC)) is None:
        field = "cron" if config.cron is not None else ("end_at" if config.end_at else "every")
        raise ScheduleRefused(400, f"{field}: the schedule would never fire again", field)
    if allowed is not None and config.handler not in allowed:
        # Says nothing of which handlers are allowed, nor where they live.
        raise ScheduleRefused(
            400, f"handler {config.handler[:40]!a} is not allowed on this instance", "handler"
        )
    return config


def row_fields(row: ScheduleRow) -> dict[str, Any]:
    """A stored schedule as the fields check_schedule takes (an update starts from them)."""
    return {
        "name": row.name,
        "handler": row.handler,
        "cron": row.cron,
        "every": row.interval_s,
        "timezone": row.timezone,
        "payload": row.payload,
        "queue": row.queue,
        "priority": row.priority,
        "max_attempts": row.max_attempts,
        "start_at": row.start_at,
        "end_at": row.end_at,
        "max_runs": row.max_runs,
        "enabled": row.enabled,
        "catch_up": row.catch_up,
    }


def merge_changes(row: ScheduleRow, changes: Mapping[str, Any]) -> dict[str, Any]:
    """The row's fields with ``changes`` applied; giving cron drops every, and the reverse."""
    try:
        checked = ScheduleChanges.model_validate(dict(changes))
    except ValidationError as exc:
        raise _refusal(exc, ScheduleChanges) from None
    given = {k: getattr(checked, k) for k in checked.model_fields_set}
    merged = row_fields(row)
    if given.get("cron") is not None and "every" not in given:
        merged["every"] = None
    if given.get("every") is not None and "cron" not in given:
        merged["cron"] = None
    merged.update(given)
    return merged


async def _audit(store: OperatorStore, who: Who, action: str, name: str, **detail: Any) -> None:
    entry = AuditEntry(who.actor, who.role, action, f"schedule {name}", 1, detail)
    # The log keeps a copy: a store outage must not hide who did what.
    log.info("schedule_action", actor=who.actor, action=action, schedule=name)
    await store.record_audit(entry)


async def _existing(store: OperatorStore, name: str) -> ScheduleRow:
    row = await store.get_schedule(name)
    if row is None:
        raise ScheduleRefused(404, f"no schedule named {name[:MAX_NAME]!r}", "name")
    return row


async def add_schedule(
    store: OperatorStore,
    fields: Mapping[str, Any],
    allowed: Collection[str] | None,
    who: Who,
) -> ScheduleRow:
    """Add a run-time schedule; 409 when the name is taken (by the config file or not)."""
    config = check_schedule(fields, allowed)
    (values,) = schedule_rows([config], datetime.now(UTC))
    row = await store.add_schedule(values)
    if row is None:
        taken = await store.get_schedule(config.name)
        if taken is not None and taken.origin == "config":
            raise ScheduleRefused(409, f"schedule {config.name!r} {CONFIG_OWNED}", "name")
        raise ScheduleRefused(
            409, f"a schedule named {config.name!r} exists already: update it", "name"
        )
    await _audit(store, who, "schedule_add", row.name, when=row.cron or f"{row.interval_s}s")
    return row


async def update_schedule(
    store: OperatorStore,
    name: str,
    changes: Mapping[str, Any],
    allowed: Collection[str] | None,
    who: Who,
) -> ScheduleRow:
    """Change a run-time schedule; its timing kept unchanged keeps its next tick."""
    old = await _existing(store, name)
    if old.origin == "config":
        raise ScheduleRefused(409, f"schedule {name!r} {CONFIG_OWNED}", "name")
    config = check_schedule(merge_changes(old, changes), allowed)
    (values,) = schedule_rows([config], datetime.now(UTC))
    row = await store.update_schedule(name, values)
    if row is None:  # removed (or taken over by the config) meanwhile
        raise ScheduleRefused(404, f"no run-time schedule named {name!r}", "name")
    await _audit(store, who, "schedule_update", name, changed=sorted(changes))
    return row


async def remove_schedule(store: OperatorStore, name: str, who: Who) -> ScheduleRow:
    """Delete a run-time schedule; the jobs it made stay."""
    old = await _existing(store, name)
    if old.origin == "config":
        raise ScheduleRefused(409, f"schedule {name!r} {CONFIG_OWNED}", "name")
    if not await store.remove_schedule(name):
        raise ScheduleRefused(404, f"no run-time schedule named {name!r}", "name")
    await _audit(store, who, "schedule_remove", name)
    return old


async def set_enabled(store: OperatorStore, name: str, enabled: bool, who: Who) -> ScheduleRow:
    """Pause or resume any schedule (a config one until the next start: the file wins)."""
    await _existing(store, name)
    if not await store.set_schedule_enabled(name, enabled):
        raise ScheduleRefused(404, f"no schedule named {name!r}", "name")
    await _audit(store, who, "schedule_resume" if enabled else "schedule_pause", name)
    return await _existing(store, name)


async def run_now(store: OperatorStore, name: str, who: Who) -> int:
    """Enqueue one job of a schedule now, linked to it; its regular ticks are not moved."""
    row = await _existing(store, name)
    (job_id,) = await store.enqueue_scheduled([tick_spec(row, None)])
    await _audit(store, who, "schedule_run", name, job_id=job_id)
    return job_id
