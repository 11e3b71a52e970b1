"""Counting job rows, the way tests prove "nothing lost, nothing twice"."""

from __future__ import annotations

from typing import Any

import asyncpg


async def fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Rows of one query, on a connection of its own."""
    conn = await asyncpg.connect(url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows
    finally:
        await conn.close()


async def scalar(url: str, sql: str, *args: Any) -> Any:
    """The one value of one query, on a connection of its own."""
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def job_count(url: str, where: str = "true") -> int:
    """Job rows matching ``where`` (SQL, in the test's own words)."""
    return int(await scalar(url, f"SELECT count(*) FROM jobwire.jobs WHERE {where}"))


async def jobs_at_least(url: str, n: int, where: str = "true") -> bool:
    """Whether n job rows match ``where`` (a wait_for probe)."""
    return await job_count(url, where) >= n


async def assert_exactly(url: str, n: int, dedup_keys: bool = True) -> None:
    """n rows and n distinct payload ids (``{"i": ...}``), and n distinct dedup keys unless
    told otherwise: none lost, none twice."""
    row = (
        await fetch(
            url,
            "SELECT count(*) AS n, count(DISTINCT dedup_key) AS d,"
            " count(DISTINCT payload->>'i') AS p FROM jobwire.jobs",
        )
    )[0]
    seen = (row["n"], row["d"] if dedup_keys else n, row["p"])
    assert seen == (n, n, n), f"rows, distinct dedup keys, distinct payloads: {seen}"


async def stored_among_good(url: str, first: str, good: int) -> Any:
    """Run ``first`` (SQL storing one odd job, its value returned), then enqueue ``good``
    ordinary no-op jobs, all in one commit, so the pool claims them in one batch."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            value = await conn.fetchval(first)
            for i in range(good):
                await conn.execute("SELECT jobwire.enqueue('noop', $1::jsonb)", f'{{"i": {i}}}')
        return value
    finally:
        await conn.close()
