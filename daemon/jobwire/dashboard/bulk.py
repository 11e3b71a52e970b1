"""Bulk actions: retry, cancel or delete everything a filter (or a failure group) matches.

The matching ids are frozen when the operator asks (a POST with the session's CSRF token;
the page then shows that count and asks to confirm), kept in this process's memory with the
session that froze them (one unstarted run per session: a new freeze replaces it), and acted on in
chunks by a background task whose progress the page shows. A job is acted on at most once,
and only while it is still what it was when frozen: the store's statements skip a job whose
status moved on, and retry and delete also skip one that finished again after the freeze
(it ran, and failed again: "retry all" must not loop on it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import structlog

from jobwire.store.base import AdminStore, AuditEntry, JobFilter, StoreUnavailable

log = structlog.get_logger("jobwire.dashboard")

CHUNK = 500  # ids per statement: short transactions, steady progress
FREEZE_PAGE = 10_000  # ids per selection query: a large freeze in a few index range reads
MAX_IDS = 100_000  # a larger match is frozen up to this many (newest first); run it again
MAX_RUNS = 200  # finished runs beyond this are forgotten, oldest first

Act = Callable[[AdminStore, Sequence[int], datetime], Awaitable[int]]


async def _retry(store: AdminStore, ids: Sequence[int], frozen_at: datetime) -> int:
    return len(await store.retry_ids(await store.finished_before(ids, frozen_at)))


async def _cancel(store: AdminStore, ids: Sequence[int], _frozen_at: datetime) -> int:
    return len(await store.cancel_ids(ids))


async def _delete(store: AdminStore, ids: Sequence[int], frozen_at: datetime) -> int:
    return len(await store.delete_ids(await store.finished_before(ids, frozen_at)))


@dataclass(frozen=True)
class BulkKind:
    """One bulk action: the statuses it acts on, and what it does to a chunk."""

    name: str
    done: str
    statuses: tuple[str, ...]
    act: Act


KINDS = {
    k.name: k
    for k in (
        BulkKind("retry", "retried", ("failed", "cancelled"), _retry),
        BulkKind("cancel", "cancelled", ("pending", "retrying", "running"), _cancel),
        BulkKind("delete", "deleted", ("succeeded", "failed", "cancelled"), _delete),
    )
}


@dataclass
class BulkRun:
    """One frozen set of ids and how far acting on it has got."""

    id: str
    session_id: str
    kind: BulkKind
    scope: str  # what was matched, in words
    back: str  # the listing it came from
    ids: list[int]
    capped: bool
    frozen_at: datetime
    state: str = "frozen"  # frozen | running | done | failed
    processed: int = 0
    changed: int = 0
    error: str | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def percent(self) -> int:
        """Progress, 0 to 100."""
        return 100 if not self.ids else self.processed * 100 // len(self.ids)


async def freeze_filter(store: AdminStore, where: JobFilter, statuses: Sequence[str]) -> list[int]:
    """Every id the filter matches among ``statuses`` (up to MAX_IDS + 1), newest first."""
    found: list[int] = []
    for status in [where.status] if where.status else statuses:
        page_where = dataclasses.replace(where, status=status)
        before: int | None = None
        while len(found) <= MAX_IDS:
            page = await store.select_ids(page_where, FREEZE_PAGE, before)
            found += page
            if len(page) < FREEZE_PAGE:
                break
            before = page[-1]
    return sorted(set(found), reverse=True)[: MAX_IDS + 1]


async def freeze_group(store: AdminStore, fingerprint: str) -> list[int]:
    """Every failed id with this fingerprint (up to MAX_IDS + 1), newest first."""
    found: list[int] = []
    before: int | None = None
    while len(found) <= MAX_IDS:
        page = await store.failed_ids(fingerprint, FREEZE_PAGE, before)
        found += page
        if len(page) < FREEZE_PAGE:
            break
        before = page[-1]
    return found[: MAX_IDS + 1]


def describe(kind: BulkKind, where: JobFilter | None, fingerprint: str | None) -> str:
    """What a run covers, in words, for the page and the audit."""
    if fingerprint is not None:
        return f"failed jobs with the error {fingerprint!r}"
    assert where is not None
    parts = [f"{k}={v}" for k in ("queue", "handler", "source") if (v := getattr(where, k))]
    statuses = where.status or "/".join(kind.statuses)
    return f"{statuses} jobs" + (f" where {', '.join(parts)}" if parts else "")


def back_link(where: JobFilter | None, fingerprint: str | None) -> str:
    """The jobs listing of the same set."""
    if fingerprint is not None:
        return "/ui/jobs?" + urlencode({"status": "failed", "fingerprint": fingerprint})
    assert where is not None
    given = {k: v for k in ("status", "queue", "handler", "source") if (v := getattr(where, k))}
    return "/ui/jobs" + (f"?{urlencode(given)}" if given else "")


class BulkRuns:
    """The runs of this process, by id; each belongs to the session that froze it."""

    def __init__(self) -> None:
        self._by_id: dict[str, BulkRun] = {}

    def add(self, run: BulkRun) -> None:
        """Keep a new run: it replaces its session's frozen (unstarted) run, and the oldest
        finished runs past MAX_RUNS are forgotten."""
        for old in [r for r in self._by_id.values() if r.session_id == run.session_id]:
            if old.state == "frozen":
                del self._by_id[old.id]
        self._by_id[run.id] = run
        idle = [r.id for r in self._by_id.values() if r.state != "running"]
        for run_id in idle[: max(0, len(self._by_id) - MAX_RUNS)]:
            del self._by_id[run_id]

    def get(self, run_id: str, session_id: str) -> BulkRun | None:
        """The run, if it exists and is this session's."""
        run = self._by_id.get(run_id)
        return run if run is not None and run.session_id == session_id else None

    def new_id(self) -> str:
        """A fresh, unguessable run id."""
        return secrets.token_urlsafe(12)

    async def close(self) -> None:
        """Stop running tasks (at shutdown): what is done stays done, the rest is not."""
        tasks = [r.task for r in self._by_id.values() if r.task is not None and not r.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)


async def execute(
    run: BulkRun,
    store: AdminStore,
    audit: Callable[[AuditEntry], Awaitable[Any]],
    entry: AuditEntry,
    wake: Callable[[], None],
) -> None:
    """Write "bulk X started", act on the frozen ids a chunk at a time, then write the final
    audit row. Nothing is acted on unless the start row was written."""
    run.state = "running"
    log.info("dashboard_bulk_started", action=run.kind.name, scope=run.scope, ids=len(run.ids))
    started = dataclasses.replace(
        entry, action=f"{entry.action} started", detail={"frozen": str(len(run.ids))}
    )
    try:
        await audit(started)
    except StoreUnavailable as exc:
        run.state, run.error = "failed", f"the database is unavailable: {exc}"
        log.error("dashboard_bulk_not_started", action=run.kind.name, error=str(exc))
        return
    try:
        # A retry goes oldest first, as the CLI's: a waiter's dependencies are older, so
        # they are back before it is retried (newest first, it failed again behind them).
        ids = sorted(run.ids) if run.kind.name == "retry" else run.ids
        for at in range(0, len(ids), CHUNK):
            chunk = ids[at : at + CHUNK]
            run.changed += await run.kind.act(store, chunk, run.frozen_at)
            run.processed += len(chunk)
            if run.kind.name == "retry":
                wake()
        run.state = "done"
    except StoreUnavailable as exc:
        run.state, run.error = "failed", f"the database is unavailable: {exc}"
    except asyncio.CancelledError:
        run.state, run.error = "failed", "the daemon stopped during the action"
        raise
    except Exception as exc:  # the page says so; the bug goes to the log
        log.exception("dashboard_bulk_crashed", action=run.kind.name)
        run.state, run.error = "failed", f"internal error ({type(exc).__name__}); see the log"
    finally:
        detail = {"frozen": str(len(run.ids)), "processed": str(run.processed)}
        if run.error:
            detail["error"] = run.error
        final = dataclasses.replace(entry, count=run.changed, detail=detail)
        try:
            await audit(final)
        except StoreUnavailable:
            log.error("dashboard_bulk_unaudited", action=run.kind.name, count=run.changed)
        log.info("dashboard_bulk_ended", action=run.kind.name, state=run.state, changed=run.changed)


def now() -> datetime:
    """The freeze time (compared with finished_at, which PostgreSQL writes in UTC)."""
    return datetime.now(UTC)
