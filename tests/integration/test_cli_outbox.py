"""``jobwire outbox``: the real CLI against PostgreSQL holding messages a relay set aside:
listed with why, sent again or discarded by id or all at once (never all without --yes),
each action audited."""

from __future__ import annotations

import asyncio
import json

import asyncpg

from jobwire.store.postgres import PostgresStore
from tests.support.daemon import jobwire
from tests.support.outbox import set_aside as seed


def set_aside(url: str, output: str, count: int) -> list[int]:
    """``count`` messages of ``output`` its broker refused for good: set aside."""

    async def go() -> list[int]:
        store = await PostgresStore.connect(url, min_size=1, max_size=2)
        try:
            return await seed(store, output, count, "NOT_FOUND - no exchange 'billing'")
        finally:
            await store.close()

    return asyncio.run(go())


def audit(url: str) -> list[tuple[str, str, int, list[int]]]:
    """The audit rows: action, target, count and the ids in the detail."""

    async def go() -> list[tuple[str, str, int, list[int]]]:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch(
                "SELECT action, target, count, detail::text AS detail, actor"
                " FROM jobwire.audit ORDER BY id"
            )
        finally:
            await conn.close()
        assert all(r["actor"].startswith("cli:") for r in rows)
        return [
            (r["action"], r["target"], r["count"], json.loads(r["detail"])["ids"]) for r in rows
        ]

    return asyncio.run(go())


def out_json(*args: str) -> dict[str, object]:
    return json.loads(jobwire(*args, "-o", "json").stdout)  # type: ignore[no-any-return]


def test_set_aside_messages_are_listed_resent_and_discarded(database_url: str) -> None:
    db = ("--database-url", database_url)
    ids = set_aside(database_url, "billing", 3)
    listed = out_json("outbox", "list", *db)
    assert listed["outputs"] == {"billing": {"pending": 3, "oldest_seconds": 0.0, "set_aside": 3}}
    table = jobwire("outbox", "set-aside", "billing", *db).stdout
    assert "NOT_FOUND - no exchange 'billing'" in table and str(ids[0]) in table
    rows = out_json("outbox", "set-aside", *db)["set_aside"]
    assert [r["id"] for r in rows] == ids[::-1]  # type: ignore[index]

    resent = jobwire("outbox", "resend", "billing", "--id", str(ids[0]), *db)
    assert resent.stdout.strip() == "1 message(s) of billing resent"
    # All of them without --yes and no terminal to ask on: refused, nothing done.
    refused = jobwire("outbox", "discard", "billing", *db, check=False)
    assert refused.returncode == 2 and "pass --yes or --id" in refused.stderr
    assert out_json("outbox", "list", *db)["outputs"]["billing"]["set_aside"] == 2  # type: ignore[index]
    assert out_json("outbox", "discard", "billing", "--yes", *db) == {
        "output": "billing",
        "discarded": ids[1:],
    }
    again = jobwire("outbox", "discard", "billing", "--yes", *db, check=False)
    assert again.returncode == 1 and "nothing discarded" in again.stdout
    billing = out_json("outbox", "list", *db)["outputs"]["billing"]  # type: ignore[index]
    # The resent one waits for its relay again: unsent, its age counted, not set aside.
    assert (billing["pending"], billing["set_aside"]) == (1, 0) and billing["oldest_seconds"] > 0
    assert audit(database_url) == [
        ("outbox_resend", "billing", 1, [ids[0]]),
        ("outbox_discard", "billing", 2, ids[1:]),
        ("outbox_discard", "billing", 0, []),  # tried, and nothing matched: audited too
    ]


def test_a_name_no_output_can_have_is_refused(database_url: str) -> None:
    out = jobwire("outbox", "resend", " ", "--id", "1", "--database-url", database_url, check=False)
    assert out.returncode == 2 and "cannot be empty" in out.stderr
