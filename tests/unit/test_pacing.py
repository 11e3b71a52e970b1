"""Pacing: how much of a batch the intake stores now, against a scripted pool."""

from __future__ import annotations

import asyncio
from typing import Any

from jobwire.config import RouteConfig
from jobwire.intake.pacing import Pacer


class ScriptedPool:
    """room() answers from a list (the last answer repeats); wait_room() skips the 0s
    queued before the next answer, or sleeps out its timeout if only 0 is left."""

    hand_off_wait = 0.05

    def __init__(self, rooms: list[int | None]) -> None:
        self.rooms = rooms
        self.waits: list[float] = []
        self.limited_handlers: frozenset[str] = frozenset()

    def room(self, queue: str) -> int | None:
        assert queue == "q"
        return self.rooms.pop(0) if len(self.rooms) > 1 else self.rooms[0]

    async def wait_room(self, queue: str, timeout: float) -> int | None:
        self.waits.append(timeout)
        while len(self.rooms) > 1 and self.rooms[0] == 0:
            self.rooms.pop(0)
        answer = self.room(queue)
        if answer == 0:
            await asyncio.sleep(timeout)
        return answer


def route(**settings: Any) -> RouteConfig:
    return RouteConfig.model_validate({"handler": "h", "queue": "q", **settings})


async def test_a_pool_with_room_takes_what_it_can_start_and_at_least_one() -> None:
    pool = ScriptedPool([5, 500, 0, 3])
    p = Pacer(pool, route())
    assert await p.take(10) == 5
    assert await p.take(10) == 10
    assert await p.take(10) == 3  # waited for a slot, then took what was free
    assert pool.waits == [0.05]


async def test_no_direct_start_possible_stores_all_without_waiting() -> None:
    pool = ScriptedPool([None])
    assert await Pacer(pool, route()).take(7) == 7
    assert pool.waits == []


async def test_after_one_wait_in_vain_the_intake_stores_at_once_until_the_pool_has_room() -> None:
    pool = ScriptedPool([0])
    p = Pacer(pool, route())
    assert await p.take(10) == 10  # waited the limit: stored as ready
    assert await p.take(10) == 10  # no second wait while the pool stays full
    assert pool.waits == [0.05]
    pool.rooms = [2, 0]
    assert await p.take(10) == 2  # the pool had room again: pacing is back
    assert pool.waits == [0.05]


async def test_what_is_held_back_waits_only_for_the_rest_of_its_time() -> None:
    loop = asyncio.get_running_loop()
    pool = ScriptedPool([0])
    p = Pacer(pool, route())
    assert await p.take(8, held_since=loop.time() - 0.03) == 8
    assert len(pool.waits) == 1 and pool.waits[0] <= 0.02 + 1e-3
    pool = ScriptedPool([1])
    p = Pacer(pool, route())
    assert await p.take(8, held_since=loop.time()) == 1  # within its time: paced
    assert await p.take(8, held_since=loop.time() - 0.06) == 8  # past it: all, whatever room
    assert pool.waits == []


async def test_sources_and_routes_whose_jobs_never_start_directly_are_not_paced() -> None:
    cases: list[tuple[RouteConfig, bool]] = [
        (route(delay="1s"), True),
        (route(concurrency_key="json:$.k"), True),
        (RouteConfig.model_validate({"mode": "notify", "queue": "q"}), True),
        (route(), False),  # a caller waits on the answer (HTTP)
    ]
    for settings, may_wait in cases:
        pool = ScriptedPool([0])
        assert await Pacer(pool, settings, may_wait).take(4) == 4
        assert pool.waits == [], settings
    pool = ScriptedPool([0])
    pool.limited_handlers = frozenset({"h"})
    assert await Pacer(pool, route()).take(4) == 4 and pool.waits == []
    # handler_from: any rate-limited handler may be named, so no pacing at all
    from_message = RouteConfig.model_validate({"handler_from": "json:$.t", "queue": "q"})
    pool = ScriptedPool([0])
    pool.limited_handlers = frozenset({"other"})
    assert await Pacer(pool, from_message).take(4) == 4 and pool.waits == []
    pool.limited_handlers = frozenset()
    assert await Pacer(pool, from_message).take(4) == 4 and pool.waits == [0.05]
    # "none" is no key at all: paced
    pool = ScriptedPool([2])
    assert await Pacer(pool, route(concurrency_key="none")).take(4) == 2


async def test_a_draining_intake_stores_everything_at_once() -> None:
    pool = ScriptedPool([0])
    p = Pacer(pool, route())
    p.off = True
    assert await p.take(9) == 9
    assert pool.waits == []
