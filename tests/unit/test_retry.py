import random

from jobwire.retry import Backoff, RetryPolicy


def test_ceiling_grows_exponentially_and_is_capped() -> None:
    b = RetryPolicy(base=2, factor=2, maximum=600, jitter=False)
    assert [b.delay(n) for n in (1, 2, 3, 4)] == [2, 4, 8, 16]
    assert b.delay(30) == 600
    assert b.delay(10_000) == 600  # no overflow on absurd attempt counts


def test_hcm_schedule_of_2_4_8_minutes() -> None:
    b = RetryPolicy(base=120, factor=2, maximum=3600, jitter=False)
    assert [b.delay(n) for n in (1, 2, 3)] == [120, 240, 480]


def test_full_jitter_stays_within_ceiling_and_spreads() -> None:
    b = RetryPolicy(base=2, factor=2, maximum=600, jitter=True)
    rng = random.Random(7)
    delays = [b.delay(5, rng) for _ in range(2000)]
    assert all(0 <= d <= 32 for d in delays)
    assert max(delays) > 28 and min(delays) < 4  # spread over the whole range


def test_the_old_name_still_builds_the_policy() -> None:
    assert Backoff is RetryPolicy
    assert Backoff(base=3, jitter=False).delay(2) == 6
