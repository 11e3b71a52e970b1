"""Ctrl-C in the middle of a bulk action: what was done is said, exactly, never left silent."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import asyncpg
import pytest

from tests.support.daemon import REPO
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

JOBS = 4000  # eight batches of 500


async def _waiting_on_a_lock(conn: asyncpg.Connection) -> bool:
    found = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return bool(found)


async def test_ctrl_c_mid_delete_says_how_many_were_deleted(database_url: str) -> None:
    admin = await asyncpg.connect(database_url)
    holders = [await asyncpg.connect(database_url) for _ in range(2)]
    proc = None
    try:
        ids = [
            r["id"]
            for r in await admin.fetch(
                "INSERT INTO jobwire.jobs (handler, status, attempts, finished_at)"
                " SELECT 'noop', 'succeeded', 1, now() FROM generate_series(1, $1)"
                " RETURNING id",
                JOBS,
            )
        ]
        newest_first = sorted(ids, reverse=True)
        # Rows locked in the third and fifth batches (the action goes newest first): the
        # delete waits on the first, where Ctrl-C is pressed; the second stops it there if
        # the signal was not handled before the first was let go.
        txs = []
        for holder, at in zip(holders, (1200, 2200), strict=True):
            tx = holder.transaction()
            await tx.start()
            await holder.execute(
                "SELECT 1 FROM jobwire.jobs WHERE id = $1 FOR UPDATE", newest_first[at]
            )
            txs.append(tx)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "jobwire",
            "jobs",
            "delete",
            "--status",
            "succeeded",
            "--yes",
            "--database-url",
            database_url,
            cwd=REPO,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ},
        )
        await wait_for(lambda: _waiting_on_a_lock(admin), timeout=30, what="delete blocked")
        proc.send_signal(signal.SIGINT)
        await txs[0].rollback()
        await wait_for(
            lambda: (proc is not None and proc.returncode is not None) or _waiting_on_a_lock(admin),
            timeout=30,
            what="the delete stopped or reached the second lock",
        )
        await txs[1].rollback()
        out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
        left = await admin.fetchval("SELECT count(*) FROM jobwire.jobs")
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        for conn in (admin, *holders):
            await conn.close()
    deleted = JOBS - left
    assert 0 < deleted < JOBS, (deleted, out, err)
    assert proc.returncode == 130, (out, err)
    assert out.decode().strip() == (
        f"interrupted: {deleted} deleted, {JOBS - deleted} of {JOBS} not reached"
    ), err
