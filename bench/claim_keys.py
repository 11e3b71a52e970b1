"""The claim rate with 1,000 distinct concurrency keys in play against the rate without keys,
in the same run on the same table.

Fills one queue with plain jobs and another with keyed ones (keys dealt round-robin, so
every key has jobs waiting the whole time), then drains each by claim + complete cycles as
a pool does (batches of --batch, outcomes written at once so a key is free for the next
claim). Rounds alternate plain and keyed so a warm cache or an autovacuum favours neither;
prints jobs/s per round and the medians' ratio (the target is >= 70%).

--hot N adds a third case: one hot key (key limit 1) with N jobs waiting ahead of the
others, plus the 1,000 other keys; the claim must skip the hot key's backlog cheaply
rather than read it on every claim.

    .venv/bin/python bench/claim_keys.py --jobs 20000 --keys 1000 --rounds 3
    .venv/bin/python bench/claim_keys.py --jobs 5000 --hot 100000 --rounds 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, too

from bench.common import fresh_database, run
from jobwire.models import JobSpec, JobStatus, Outcome
from jobwire.store.base import ClaimFlow, ClaimRequest, QueueFlow
from jobwire.store.postgres import PostgresStore, migrate

# As the pool asks once it has seen keyed jobs in the queue: all of it by the flow claim.
KEYED = ClaimFlow({"keyed": QueueFlow(key_limit=1)})
HOT = ClaimFlow({"hot": QueueFlow(key_limit=1)})


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per queue and round")
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32, help="slots asked per claim")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hot", type=int, default=0, help="jobs of one hot key (0: no case)")
    args = parser.parse_args()
    async with fresh_database() as url:
        await migrate(url, "jobwire")
        store = await PostgresStore.connect(url, min_size=1, max_size=2)
        rates: dict[str, list[float]] = {"plain": [], "keyed": []}
        for n in range(args.rounds):
            await fill(store, args.jobs, args.keys)
            for name in ("plain", "keyed") if n % 2 == 0 else ("keyed", "plain"):
                rate = await drain(store, name, args.jobs, args.batch)
                rates[name].append(rate)
                print(f"round {n + 1} {name:>5}: {rate:8,.0f} jobs/s", flush=True)
        if args.hot:
            await fill_hot(store, args.hot, args.jobs, args.keys)
            for n in range(args.rounds):
                rate = await drain(store, "hot", args.jobs, args.batch)
                print(f"round {n + 1}   hot: {rate:8,.0f} jobs/s ({args.hot:,} of one key wait)")
                if n + 1 < args.rounds:
                    await fill_hot(store, 0, args.jobs, args.keys)
        await store.close()
    plain, keyed = statistics.median(rates["plain"]), statistics.median(rates["keyed"])
    print(
        f"median: plain {plain:,.0f} jobs/s, keyed ({args.keys} keys) {keyed:,.0f} jobs/s"
        f" = {keyed / plain:.0%} of plain"
    )


async def fill(store: PostgresStore, jobs: int, keys: int) -> None:
    """``jobs`` plain jobs in queue plain, ``jobs`` keyed ones in queue keyed."""
    for start in range(0, jobs, 5000):
        count = min(5000, jobs - start)
        await store.enqueue_many([JobSpec("noop", queue="plain") for _ in range(count)])
        await store.enqueue_many(
            [
                JobSpec("noop", queue="keyed", concurrency_key=f"k{(start + i) % keys}")
                for i in range(count)
            ]
        )


async def fill_hot(store: PostgresStore, hot: int, jobs: int, keys: int) -> None:
    """``hot`` jobs of key "hot" (one of which then runs, so the key is full), then ``jobs``
    jobs over ``keys`` other keys, all in queue hot."""
    for start in range(0, hot, 5000):
        count = min(5000, hot - start)
        await store.enqueue_many(
            [JobSpec("noop", queue="hot", concurrency_key="hot") for _ in range(count)]
        )
    if hot:
        # One of the hot key runs (and never ends here): the key is at its limit throughout.
        await store.claim(ClaimRequest({"hot": 1}, 1, "holder", 3600.0, HOT))
    for start in range(0, jobs, 5000):
        count = min(5000, jobs - start)
        await store.enqueue_many(
            [
                JobSpec("noop", queue="hot", concurrency_key=f"k{(start + i) % keys}")
                for i in range(count)
            ]
        )


async def drain(store: PostgresStore, queue: str, jobs: int, batch: int) -> float:
    """Claim and complete until ``jobs`` ran; jobs per second."""
    flow = {"keyed": KEYED, "hot": HOT}.get(queue)
    done = 0
    t0 = time.perf_counter()
    while done < jobs:
        claimed = await store.claim(ClaimRequest({queue: batch}, batch, "bench", 60.0, flow))
        if not claimed:
            raise SystemExit(f"{queue}: the claim came back empty with {jobs - done} left")
        outcomes = [Outcome(j.id, j.attempts, JobStatus.SUCCEEDED, 0.0) for j in claimed]
        await store.complete_many("bench", outcomes)
        done += len(claimed)
    return jobs / (time.perf_counter() - t0)


if __name__ == "__main__":
    run(main())
