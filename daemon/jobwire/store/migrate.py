"""Schema migrations under an advisory lock, and the leader's lock held on a connection."""

from __future__ import annotations

import contextlib

import asyncpg

from jobwire.store.pg_base import UNAVAILABLE, connecting
from jobwire.store.queries import migrations, queries


async def migrate(dsn: str, schema: str) -> list[str]:
    """Apply missing numbered migrations under an advisory lock; returns the names applied."""
    q = queries()
    async with connecting():
        conn = await asyncpg.connect(dsn)
    applied: list[str] = []
    lock_key = f"jobwire-migrate:{schema}"
    try:
        # One migrator per schema at a time, whichever instance starts first.
        await conn.execute(q["advisory_lock"], lock_key)
        try:
            # DDL takes no parameters: the schema is an identifier, quoted as one.
            quoted = '"' + schema.replace('"', '""') + '"'
            await conn.execute(q["create_schema"].format(schema=quoted))
            await conn.execute(q["use_schema"].format(schema=quoted))
            await conn.execute(q["create_schema_migrations"])
            done = {r["version"] for r in await conn.fetch(q["applied_migrations"])}
            for version, name, sql in migrations():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(q["record_migration"], version, name)
                applied.append(f"{version:04d}_{name}")
        finally:
            await conn.execute(q["advisory_unlock"], lock_key)
    finally:
        await conn.close()
    return applied


class Leadership:
    """An advisory lock held on its own connection: held while the connection lives."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def still_held(self) -> bool:
        """Ping the connection: a dropped connection has lost the lock."""
        if self._conn.is_closed():
            return False
        try:
            await self._conn.fetchval(queries()["ping"], timeout=5)
        except (*UNAVAILABLE, asyncpg.PostgresError):
            return False
        return True

    async def release(self) -> None:
        """Close the connection, which releases the lock."""
        with contextlib.suppress(Exception):
            await self._conn.close(timeout=5)
        self._conn.terminate()
