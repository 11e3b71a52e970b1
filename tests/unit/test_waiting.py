"""wait_until: a condition announced by an event, with a deadline."""

from __future__ import annotations

import asyncio

from jobwire.waiting import wait_until


async def test_a_condition_already_true_returns_at_once_without_clearing_the_event() -> None:
    event = asyncio.Event()
    event.set()
    assert await wait_until(event, lambda: True, 0) is True
    assert event.is_set()


async def test_it_returns_once_a_set_event_finds_the_condition_true() -> None:
    event = asyncio.Event()
    count = [0]
    loop = asyncio.get_running_loop()

    def add() -> None:
        count[0] += 1
        event.set()

    for delay in (0.01, 0.02, 0.03):
        loop.call_later(delay, add)
    started = loop.time()
    assert await wait_until(event, lambda: count[0] >= 3, 5.0) is True
    assert count[0] == 3 and loop.time() - started < 4.0


async def test_false_after_the_timeout_when_the_event_never_makes_it_true() -> None:
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, event.set)  # set, but the condition stays false
    started = loop.time()
    assert await wait_until(event, lambda: False, 0.05) is False
    assert loop.time() - started >= 0.05 - 1e-3


async def test_a_condition_true_when_the_time_runs_out_counts() -> None:
    event = asyncio.Event()
    flag = [False]
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, lambda: flag.__setitem__(0, True))  # changed, event never set
    assert await wait_until(event, lambda: flag[0], 0.05) is True
    assert await wait_until(asyncio.Event(), lambda: False, 0) is False
