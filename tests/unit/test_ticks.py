"""Next-tick computation with fixed clocks: DST, month ends, intervals, windows, catch-up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jobwire.config import ConfigError, parse_config
from jobwire.ticks import TickRule, choose


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def ticks(rule: TickRule, start: datetime, n: int) -> list[datetime]:
    out = []
    t: datetime | None = start
    for _ in range(n):
        assert t is not None
        t = rule.next_after(t)
        assert t is not None
        out.append(t)
    return out


def test_daily_cron_in_a_time_zone_across_spring_forward() -> None:
    rule = TickRule(cron="30 2 * * *", timezone="Europe/Berlin")
    # 2026-03-29: 02:00 -> 03:00 local; 02:30 does not exist that day.
    got = ticks(rule, utc(2026, 3, 27, 12), 3)
    assert got[0] == utc(2026, 3, 28, 1, 30)  # 02:30 CET
    assert got[1].date().isoformat() == "2026-03-29"  # fires once that day, not skipped
    assert got[2] == utc(2026, 3, 30, 0, 30)  # 02:30 CEST


def test_daily_cron_across_fall_back_fires_once() -> None:
    rule = TickRule(cron="30 2 * * *", timezone="Europe/Berlin")
    # 2026-10-25: 03:00 -> 02:00 local; 02:30 happens twice.
    got = ticks(rule, utc(2026, 10, 24, 12), 2)
    assert [t.date().isoformat() for t in got] == ["2026-10-25", "2026-10-26"]


@pytest.mark.parametrize("cron", ["*/30 * * * *", "0 * * * *", "15,45 2 * * *"])
def test_across_fall_back_no_wall_clock_time_runs_twice(cron: str) -> None:
    # docs/schedules.md: "when clocks go back, a time that happens twice runs once". Only a
    # time equal to the previous tick was skipped: "*/30" ran 02:00 and 02:30 twice.
    from zoneinfo import ZoneInfo

    berlin = ZoneInfo("Europe/Berlin")
    rule = TickRule(cron=cron, timezone="Europe/Berlin")
    got = [t for t in ticks(rule, utc(2026, 10, 24, 22), 12) if t < utc(2026, 10, 25, 6)]
    walls = [t.astimezone(berlin).replace(tzinfo=None) for t in got]
    assert len(walls) == len(set(walls)), walls
    # and every wall-clock time of the repeated hour that matches ran (the first time)
    assert {w.strftime("%H:%M") for w in walls if w.hour == 2} == {
        f"02:{m:02d}" for m in range(60) if rule.cron and _matches(rule.cron, m)
    }


def _matches(cron: str, minute: int) -> bool:
    field = cron.split()[0]
    if field.startswith("*/"):
        return minute % int(field[2:]) == 0
    return minute in {int(m) for m in field.split(",")}


def test_month_ends_and_shorthands() -> None:
    assert ticks(TickRule(cron="0 0 31 * *"), utc(2026, 1, 31), 2) == [
        utc(2026, 3, 31),
        utc(2026, 5, 31),
    ]
    assert ticks(TickRule(cron="0 0 L * *"), utc(2026, 1, 31), 2) == [
        utc(2026, 2, 28),
        utc(2026, 3, 31),
    ]
    assert TickRule(cron="@monthly").next_after(utc(2026, 2, 10)) == utc(2026, 3, 1)
    assert TickRule(cron="@hourly").next_after(utc(2026, 2, 10, 5, 0)) == utc(2026, 2, 10, 6)
    assert TickRule(cron="@weekly").next_after(utc(2026, 11, 22)) == utc(2026, 11, 29)


def test_interval_ticks_sit_on_a_grid_shared_by_every_instance() -> None:
    rule = TickRule(every=300)
    assert rule.next_after(utc(2026, 1, 1, 0, 4, 59)) == utc(2026, 1, 1, 0, 5)
    assert rule.next_after(utc(2026, 1, 1, 0, 5)) == utc(2026, 1, 1, 0, 10)
    anchored = TickRule(every=60, start_at=utc(2026, 1, 1, 0, 0, 30))
    assert anchored.next_after(utc(2025, 12, 1)) == utc(2026, 1, 1, 0, 0, 30)
    assert anchored.next_after(utc(2026, 1, 1, 0, 1)) == utc(2026, 1, 1, 0, 1, 30)


def test_start_and_end_window() -> None:
    rule = TickRule(
        cron="0 * * * *", start_at=utc(2026, 5, 1, 10, 30), end_at=utc(2026, 5, 1, 12, 0)
    )
    assert rule.next_after(utc(2026, 1, 1)) == utc(2026, 5, 1, 11)
    assert rule.next_after(utc(2026, 5, 1, 11)) == utc(2026, 5, 1, 12)
    assert rule.next_after(utc(2026, 5, 1, 12)) is None


def test_a_stored_tick_past_a_moved_end_at_is_not_due() -> None:
    # The sync keeps next_run_at when only end_at changes; the stored tick then lay past
    # the new end and still fired once.
    rule = TickRule(every=3600.0, end_at=utc(2026, 5, 1, 12, 30))
    assert rule.due(utc(2026, 5, 1, 13), utc(2026, 5, 1, 13, 0, 1)) == []
    assert rule.due(utc(2026, 5, 1, 12), utc(2026, 5, 1, 13, 0, 1)) == [utc(2026, 5, 1, 12)]


def test_due_and_catch_up_policies() -> None:
    rule = TickRule(every=60)
    now = utc(2026, 1, 1, 1, 0, 1)
    due = rule.due(utc(2026, 1, 1, 0, 55), now)
    assert due == [utc(2026, 1, 1, 0, m) for m in range(55, 60)] + [utc(2026, 1, 1, 1)]
    assert choose(due, now, "all", grace=5) == due
    assert choose(due, now, "none", grace=5) == [utc(2026, 1, 1, 1)]
    assert choose(due, now, "latest", grace=5) == [utc(2026, 1, 1, 1)]
    missed_only = due[:-1]
    assert choose(missed_only, now, "latest", grace=5) == [utc(2026, 1, 1, 0, 59)]
    assert choose(missed_only, now, "none", grace=5) == []
    assert len(TickRule(every=1).due(now - timedelta(days=1), now, limit=1000)) == 1000


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("schedules: [{name: a, handler: noop}]", "exactly one of cron or every"),
        ("schedules: [{name: a, handler: noop, cron: '61 * * * *'}]", "not a valid"),
        (
            "schedules: [{name: a, handler: noop, every: 1h, timezone: Mars/Base}]",
            "unknown timezone",
        ),
        (
            "schedules: [{name: a, handler: noop, every: 1h, start_at: 2026-01-01T00:00:00}]",
            "needs a time zone",
        ),
        (
            "schedules: [{name: a, handler: noop, every: 1h}, {name: a, handler: noop, every: 1h}]",
            "must be unique",
        ),
        # PostgreSQL keeps the calendar's ends as +-infinity, read back with no zone.
        (
            "schedules: [{name: a, handler: noop, every: 1h, start_at: 0001-01-01T00:00:00Z}]",
            "start_at must lie between the years 2 and 9998",
        ),
        (
            "schedules: [{name: a, handler: noop, every: 1h,"
            " end_at: '9999-12-31T23:59:59.999999Z'}]",
            "leave end_at out for a schedule that never ends",
        ),
        ("schedules: [{name: a, handler: noop, every: 99999999999d}]", "at most 3650d"),
        ("schedules: [{name: a, handler: noop, every: .nan}]", "finite"),
        # croniter reads a sixth field as seconds: every second, where five were meant.
        ("schedules: [{name: a, handler: noop, cron: '* * * * * *'}]", "not a valid five-field"),
        ("schedules: [{name: a, handler: noop, cron: '0 0 1 1 * 0 2020'}]", "not a valid"),
        ("schedules: [{name: a, handler: noop, cron: '0 0 30 2 *'}]", "never fires"),
    ],
)
def test_bad_schedules_are_config_errors(text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml", {})
    assert reason in str(info.value)


@pytest.mark.parametrize(
    ("rule", "after"),
    [
        (TickRule(cron="0 0 31 2 *"), utc(2026, 1, 1)),  # 31 February never comes
        (TickRule(cron="0 0 30 2 *"), utc(2026, 1, 1)),
        # The next tick would be in the year 10000.
        (TickRule(cron="0 0 29 2 *", start_at=utc(9998, 12, 31)), utc(2026, 1, 1)),
        (TickRule(every=3650 * 86400.0, start_at=utc(9998, 12, 31)), utc(9998, 12, 31)),
    ],
)
def test_a_rule_with_no_next_tick_has_ended_rather_than_raising(
    rule: TickRule, after: datetime
) -> None:
    assert rule.next_after(after) is None
    assert rule.due(after, after + timedelta(days=1)) == [after]


@pytest.mark.parametrize(
    "rule",
    [
        TickRule(every=1.0),
        TickRule(every=7.5, start_at=datetime(2026, 1, 1, 0, 0, 3, tzinfo=UTC)),
        TickRule(cron="*/15 * * * *", timezone="Europe/Berlin"),
        TickRule(cron="30 2 * * *", timezone="America/New_York"),
    ],
)
def test_last_due_is_the_last_tick_walking_would_find(rule: TickRule) -> None:
    # Across the autumn clock change, from far enough back that walking takes thousands.
    first = rule.next_after(datetime(2026, 10, 20, tzinfo=UTC))
    assert first is not None
    for now in (
        datetime(2026, 11, 2, 7, 0, 0, tzinfo=UTC),
        datetime(2026, 10, 25, 1, 14, 59, 999999, tzinfo=UTC),
        first,
    ):
        walked = rule.due(first, now, limit=10**7)
        assert rule.last_due(first, now) == walked[-1]
    assert rule.last_due(first, first - timedelta(seconds=1)) is None
