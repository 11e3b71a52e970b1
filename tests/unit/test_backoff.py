"""The one backoff computation: growth, cap, jitter bounds, reset."""

from __future__ import annotations

import asyncio
import random

from jobwire.adapters import base
from jobwire.backoff import Backoff, ceiling, jittered


def test_delays_grow_by_the_factor_from_the_initial_one() -> None:
    b = Backoff(initial=0.1, maximum=100.0, jitter="none")
    assert [round(b.next(), 6) for _ in range(5)] == [0.1, 0.2, 0.4, 0.8, 1.6]
    assert b.attempt == 5


def test_another_factor() -> None:
    b = Backoff(initial=1.0, maximum=100.0, factor=3.0, jitter=False)
    assert [b.next() for _ in range(4)] == [1.0, 3.0, 9.0, 27.0]


def test_delays_are_capped_and_never_overflow() -> None:
    b = Backoff(initial=0.2, maximum=5.0, jitter="none")
    delays = [b.next() for _ in range(1000)]
    assert max(delays) == 5.0
    assert delays[-1] == 5.0
    assert ceiling(2.0, 10.0, 600.0, 10_000) == 600.0


def test_reset_starts_again_from_the_initial_delay() -> None:
    b = Backoff(initial=0.5, maximum=30.0, jitter="none")
    for _ in range(4):
        b.next()
    b.reset()
    assert b.attempt == 0
    assert b.next() == 0.5


def test_equal_jitter_stays_in_the_upper_half_of_the_ceiling() -> None:
    """The reconnect default: never a near-zero wait on a broker that just went down."""
    b = Backoff(initial=1.0, maximum=30.0)
    rng = random.Random(3)
    delays = [b.delay(3, rng) for _ in range(2000)]
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert min(delays) < 4.2 and max(delays) > 7.8  # spread over the whole half


def test_full_jitter_spreads_over_the_whole_ceiling() -> None:
    rng = random.Random(5)
    delays = [jittered(32.0, "full", rng) for _ in range(2000)]
    assert all(0.0 <= d <= 32.0 for d in delays)
    assert min(delays) < 2.0 and max(delays) > 30.0
    assert jittered(32.0, True, random.Random(5)) == jittered(32.0, "full", random.Random(5))


def test_no_jitter_waits_the_ceiling() -> None:
    assert jittered(7.0, "none") == 7.0
    assert jittered(7.0, False) == 7.0


def test_delay_does_not_move_the_count() -> None:
    b = Backoff(initial=1.0, jitter="none")
    assert b.delay(2) == 4.0
    assert b.attempt == 0


async def test_sleep_waits_the_next_delay() -> None:
    b = Backoff(initial=0.01, maximum=1.0, jitter="none")
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert [await b.sleep() for _ in range(3)] == [0.01, 0.02, 0.04]
    assert loop.time() - started >= 0.07
    assert b.attempt == 3


def test_the_adapters_backoff_is_this_one() -> None:
    assert base.Backoff is Backoff
