"""The job filters shared by ``jobs list`` and the bulk actions (retry, cancel, delete)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click

from jobwire.cli.common import fail
from jobwire.durations import parse_duration
from jobwire.models import JobStatus
from jobwire.store.base import JobFilter

F = TypeVar("F", bound=Callable[..., Any])
STATUSES = [s.value for s in JobStatus]


def parse_when(value: str | None, option: str) -> datetime | None:
    """A time as ISO 8601 (local time unless it says), or a duration meaning that long ago."""
    if value is None:
        return None
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(value))
    except OverflowError:
        fail(f"{option} {value!r} reaches before the year 1")
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value)
        return when if when.tzinfo is not None else when.astimezone()
    except (ValueError, OverflowError):
        fail(f"{option} {value!r} is neither a time (2024-05-01T12:00) nor a duration (2h)")


def filter_options(fn: F) -> F:
    """The filters ``jobs list`` and the bulk actions share."""
    options = [
        click.option("--status", type=click.Choice(STATUSES), default=None),
        click.option("--queue", default=None),
        click.option("--handler", default=None),
        click.option("--source", default=None, help="Where jobs came from (a source, cli...)."),
        click.option(
            "--before",
            default=None,
            help="Created before this time (ISO 8601), or longer ago than a duration (2h).",
        ),
        click.option(
            "--after",
            default=None,
            help="Created at or after this time (ISO 8601), or within a duration (2h).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def job_filter(
    ids: tuple[int, ...],
    status: str | None,
    queue: str | None,
    handler: str | None,
    source: str | None,
    before: str | None,
    after: str | None,
) -> JobFilter:
    """The options as the store's filter."""
    return JobFilter(
        status=status,
        queue=queue,
        handler=handler,
        source=source,
        created_before=parse_when(before, "--before"),
        created_after=parse_when(after, "--after"),
        ids=ids or None,
    )
