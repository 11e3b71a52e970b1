"""The scheduler: one leader among all instances fires cron and interval schedules.

Leadership is a PostgreSQL advisory lock held on a dedicated connection: it lasts exactly
as long as that connection, so a dead leader's lock is gone at once and another instance
takes over within ``retry_every``. Each tick becomes at most one job, because its dedup
key is the schedule's name and the tick time; moving a schedule on is guarded by the
``next_run_at`` the leader read, so even two leaders at once could not double-fire.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from jobwire.config import Config, ScheduleConfig
from jobwire.leadership import Leader
from jobwire.models import Job, JobSpec
from jobwire.store.base import ScheduleRow, ScheduleStore, StoreUnavailable
from jobwire.ticks import CatchUp, TickRule, choose

log = structlog.get_logger("jobwire.scheduler")


def schedule_rows(schedules: Sequence[ScheduleConfig], now: datetime) -> list[dict[str, Any]]:
    """Config schedules as rows for sync_schedules, each with its next tick from ``now``."""
    return [
        {
            "name": s.name,
            "cron": s.cron,
            "interval_s": s.every,
            "timezone": s.timezone,
            "handler": s.handler,
            "payload": s.payload,
            "queue": s.queue,
            "priority": s.priority,
            "max_attempts": s.max_attempts,
            "enabled": s.enabled,
            "start_at": s.start_at,
            "end_at": s.end_at,
            "max_runs": s.max_runs,
            "catch_up": s.catch_up,
            "next_run_at": s.rule().next_after(now),
        }
        for s in schedules
    ]


def rule_of(row: ScheduleRow) -> TickRule:
    """The timing of a schedules row."""
    return TickRule(
        cron=row.cron,
        every=row.interval_s,
        timezone=row.timezone,
        start_at=row.start_at,
        end_at=row.end_at,
    )


def tick_spec(row: ScheduleRow, tick: datetime | None) -> JobSpec:
    """The job one tick makes; a tick's dedup key makes a second firing impossible."""
    name = row.name
    return JobSpec(
        handler=row.handler,
        payload=row.payload,
        queue=row.queue,
        priority=row.priority,
        max_attempts=row.max_attempts,
        source=f"schedule:{name}",
        dedup_key=None if tick is None else f"schedule:{name}:{tick.isoformat()}",
        schedule_id=row.id,
    )


def schedule_name(job: Job) -> str | None:
    """The name of the schedule that made the job (tick_spec's source: ``schedule:NAME``)."""
    if job.schedule_id is None:
        return None
    source = job.source or ""
    return source.removeprefix("schedule:") if source.startswith("schedule:") else "?"


class Scheduler:
    """Leads when it can; while leading, fires every due schedule."""

    def __init__(
        self,
        store: ScheduleStore,
        config: Config,
        wake: Callable[[], None],
        *,
        schema: str = "jobwire",
        check_every: float = 0.25,
        retry_every: float = 1.0,
        grace: float = 5.0,
    ) -> None:
        self.store = store
        self.config = config
        self.wake = wake
        self.lock_key = f"jobwire-scheduler:{schema}"
        self.check_every = check_every
        self.retry_every = retry_every
        self.grace = grace
        self.fired = 0
        # Schedules that could not be fired, by name, with the error last logged for each.
        self._broken: dict[str, str] = {}
        self._leader = Leader(
            "scheduler",
            store.try_leadership,
            self.lock_key,
            self.fire_due,
            retry_every=retry_every,
            check_every=check_every,
        )

    async def sync(self) -> None:
        """Write the config's schedules to the table (config wins)."""
        await self.store.sync_schedules(schedule_rows(self.config.schedules, datetime.now(UTC)))

    @property
    def leading(self) -> bool:
        """True while this instance holds the scheduler's lock."""
        return self._leader.leading

    async def run(self) -> None:
        """Try to lead; while leading, fire due schedules; until cancelled."""
        await self._leader.run()

    async def fire_due(self) -> int:
        """Fire every due schedule once; returns how many jobs were made."""
        made = 0
        now = datetime.now(UTC)
        for row in await self.store.due_schedules():
            try:
                made += await self._fire(row, now)
            except StoreUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - one broken schedule, not the scheduler
                # A row this version cannot compute (written by hand, or by an older
                # version's checks): the others fire; it is logged once per process.
                if self._broken.get(row.name) != str(exc):
                    self._broken[row.name] = str(exc)
                    log.error(
                        "schedule_broken",
                        schedule=row.name,
                        error=f"{type(exc).__name__}: {exc}",
                        note="fix or delete it (jobwire schedules); the others go on",
                    )
        if made:
            self.fired += made
            self.wake()
        return made

    async def _fire(self, row: ScheduleRow, now: datetime) -> int:
        """Fire one due schedule's ticks; returns how many jobs were made."""
        rule = rule_of(row)
        expected = row.next_run_at  # never None in a due row
        due = rule.due(expected, now) if expected is not None else []
        if expected is None:
            return 0
        if not due:
            if rule.end_at is not None and expected > rule.end_at:
                # A stored tick past a new end_at: the schedule has ended (rather than be
                # read as due again on every pass). Not otherwise: a clock behind the
                # database's would move next_run_at back.
                await self.store.fire_schedule(row.name, [], None, None, expected)
            return 0
        policy: CatchUp = row.catch_up
        # A tick is "missed" once it is older than the grace, or than one interval for
        # fast interval schedules: a 1s schedule that is 3s behind has missed 2 ticks.
        grace = min(self.grace, row.interval_s or self.grace)
        following = rule.next_after(due[-1])
        if policy != "all" and following is not None and following <= now:
            # More missed ticks than due() walks (an every-1s schedule after an hour down):
            # "latest" made a job for every 1,000 of them, each for an old tick, where one
            # was promised. Only the last tick, and any still on time, are added here.
            last = rule.last_due(following, now)
            start = rule.next_after(now - timedelta(seconds=grace, microseconds=1))
            recent = rule.due(start, now) if start is not None and start <= now else []
            due += [t for t in recent if t > due[-1]] or ([last] if last is not None else [])
        chosen = choose(due, now, policy, grace)
        if row.max_runs is not None:
            chosen = chosen[: max(0, row.max_runs - row.run_count)]
        specs = [tick_spec(row, tick) for tick in chosen]
        inserted = await self.store.fire_schedule(
            row.name,
            specs,
            chosen[-1] if chosen else None,
            rule.next_after(due[-1]),
            expected,
        )
        if inserted is None:
            return 0  # another leader moved it on first
        self._broken.pop(row.name, None)
        log.info(
            "schedule_fired",
            schedule=row.name,
            ticks=len(chosen),
            skipped=len(due) - len(chosen),
            jobs=inserted,
        )
        return inserted
