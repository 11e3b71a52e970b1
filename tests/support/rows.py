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
