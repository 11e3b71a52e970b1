"""When schedules fire: the next cron or interval tick, and which due ticks to run."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from croniter import croniter

CatchUp = Literal["none", "latest", "all"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TINY = timedelta(microseconds=1)


@dataclass(frozen=True)
class TickRule:
    """A schedule's timing: a cron expression (in a time zone) or a fixed interval."""

    cron: str | None = None
    every: float | None = None
    timezone: str = "UTC"
    start_at: datetime | None = None
    end_at: datetime | None = None

    def next_after(self, after: datetime) -> datetime | None:
        """The first tick strictly after ``after`` (UTC), or None past ``end_at``."""
        if self.start_at is not None and after < self.start_at:
            after = self.start_at - _TINY
        try:
            tick = self._cron_after(after) if self.cron is not None else self._grid_after(after)
        except (ValueError, OverflowError):
            # No tick to be found: a cron date that never comes (31 February, a year field
            # in the past: croniter's CroniterBadDateError is a ValueError), or one past the
            # calendar's end. The schedule has ended, as past end_at.
            return None
        if self.end_at is not None and tick > self.end_at:
            return None
        return tick

    def _cron_after(self, after: datetime) -> datetime:
        assert self.cron is not None
        zone = ZoneInfo(self.timezone)
        local = after.astimezone(zone)
        times = croniter(self.cron, local)
        following: datetime = times.get_next(datetime)
        while _repeated(following.astimezone(UTC).astimezone(zone)):
            # The clocks went back and this wall-clock time comes round again: it matched
            # the first time round, so it runs once, not twice. Only a time equal to
            # ``after`` was skipped before: a daily 02:30 ran once, but "*/30" ran 02:00
            # and 02:30 twice while an hourly cron skipped the repeated 02:00.
            following = times.get_next(datetime)
        return following.astimezone(UTC)

    def _grid_after(self, after: datetime) -> datetime:
        assert self.every is not None
        # Ticks sit on a fixed grid (from start_at, or the epoch), so every instance
        # computes the same tick times.
        anchor = self.start_at or _EPOCH
        steps = math.floor((after - anchor).total_seconds() / self.every) + 1
        tick = anchor + timedelta(seconds=max(steps, 0) * self.every)
        if tick <= after:
            tick += timedelta(seconds=self.every)
        return tick

    def due(self, first: datetime, now: datetime, limit: int = 1000) -> list[datetime]:
        """Every tick from ``first`` up to ``now``, oldest first (at most ``limit``)."""
        ticks: list[datetime] = []
        tick: datetime | None = first
        if self.end_at is not None and first > self.end_at:
            # A stored next tick from before end_at was moved earlier (the config sync keeps
            # next_run_at when only end_at changes): it fired once past the end.
            tick = None
        while tick is not None and tick <= now and len(ticks) < limit:
            ticks.append(tick)
            tick = self.next_after(tick)
        return ticks

    def last_due(self, first: datetime, now: datetime) -> datetime | None:
        """The last tick from ``first`` up to ``now``, or None when there is none; found by
        bisection (some 60 steps), not by walking every tick in between."""
        following = self.next_after(first - _TINY)
        if following is None or following > now:
            return None
        # next_after(x) <= now holds at lo and fails at hi; it only grows with x.
        lo, hi = first - _TINY, now
        while hi - lo > _TINY:
            mid = lo + (hi - lo) / 2
            tick = self.next_after(mid)
            if tick is not None and tick <= now:
                lo = mid
            else:
                hi = mid
        return self.next_after(lo)


def _repeated(local: datetime) -> bool:
    """Whether this local time is the second of two with the same wall-clock reading."""
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def choose(due: list[datetime], now: datetime, policy: CatchUp, grace: float) -> list[datetime]:
    """Which due ticks to fire: ticks older than ``grace`` were missed (downtime)."""
    on_time = [t for t in due if (now - t).total_seconds() <= grace]
    if policy == "all":
        return due
    if policy == "none" or on_time:
        return on_time
    return due[-1:]  # latest: one run for everything missed


def valid_cron(expression: str) -> bool:
    """Whether the expression has five fields croniter accepts, or is @hourly, @daily, ...
    (croniter also takes a sixth field, of seconds, and a seventh, of years: "* * * * * *"
    would fire every second where five fields were meant)."""
    text = expression.strip()
    return (text.startswith("@") or len(text.split()) == 5) and bool(croniter.is_valid(text))


def never_fires(expression: str) -> bool:
    """Whether a valid five-field cron names no day that comes in any year (30 February):
    with five fields that does not depend on when it is asked."""
    return TickRule(cron=expression).next_after(_EPOCH) is None
