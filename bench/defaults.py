"""How the pool's concurrency and a source's prefetch decide a drain's speed: the grid
behind jobwire's defaults.

Drains a filled table at each ``--concurrency`` and an AMQP queue at each pair of
``--concurrency`` x ``--prefetch``, each case once per round (rounds interleave the cases,
so a machine that slows down slows them all alike), and prints each case's median and its
share of the best case's.

    .venv/bin/python -m bench.defaults --jobs 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from bench import amqp_drain, scaleout
from bench.common import AMQP, drain_source, run


async def _table(n: int, concurrency: int | None) -> float:
    return (await scaleout.table_drain(n, concurrency=concurrency)).rate


async def _amqp(n: int, concurrency: int | None, prefetch: int | None) -> float:
    queue = f"jw-bench-defaults-{uuid.uuid4().hex[:8]}"
    await amqp_drain.preload(AMQP, queue, n)
    try:
        source: dict[str, Any] = {"type": "amqp", "url": AMQP, "queue": queue}
        if prefetch is not None:
            source["prefetch"] = prefetch
        return (await drain_source(source, n, concurrency)).rate
    finally:
        await amqp_drain.delete_queue(AMQP, queue)


def _label(value: int | None) -> str:
    return "default" if value is None else str(value)


async def sweep(
    n: int, rounds: int, concurrencies: list[int | None], prefetches: list[int | None]
) -> dict[str, list[float]]:
    """Every case ``rounds`` times, interleaved; jobs per second per case."""
    cases: dict[str, Callable[[], Awaitable[float]]] = {}
    for c in concurrencies:
        cases[f"table drain, concurrency {_label(c)}"] = lambda c=c: _table(n, c)
    for c, p in itertools.product(concurrencies, prefetches):
        name = f"AMQP drain, concurrency {_label(c)}, prefetch {_label(p)}"
        cases[name] = lambda c=c, p=p: _amqp(n, c, p)
    figures: dict[str, list[float]] = {name: [] for name in cases}
    for round_no in range(rounds):
        for name, case in cases.items():
            rate = await case()
            figures[name].append(rate)
            print(f"round {round_no + 1}: {name}: {rate:,.0f} jobs/s", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="*",
        default=[0, 32, 64, 128, 256],
        help="0: the daemon's default",
    )
    parser.add_argument(
        "--prefetch", type=int, nargs="*", default=[0, 200, 1000], help="0: the default"
    )
    args = parser.parse_args()
    concurrencies = [c or None for c in args.concurrency]
    prefetches = [p or None for p in args.prefetch]
    figures = run(sweep(args.jobs, args.rounds, concurrencies, prefetches))
    print()
    for kind in ("table drain", "AMQP drain"):
        rows = {k: statistics.median(v) for k, v in figures.items() if k.startswith(kind)}
        best = max(rows.values())
        for name, rate in rows.items():
            print(f"{name:<55} {rate:>9,.0f} jobs/s  {rate / best:>5.0%} of best")


if __name__ == "__main__":
    main()
