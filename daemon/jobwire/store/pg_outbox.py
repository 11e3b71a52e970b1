"""The outbox on PostgreSQL: effects written with an attempt's outcome, and the relay's
claim, mark and release (short transactions: no transaction is held across a publish; a
claim's lease is one row of outbox_leases, see migration 0014)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import asyncpg

from jobwire.effects import Claim, OutboxRow, effects_of, position
from jobwire.models import Outcome
from jobwire.store.base import OutboxBacklog, StoreRefused
from jobwire.store.pg_base import PgBase, guard

# Before every row: a claim from the start.
EARLIEST = datetime(1, 1, 1, tzinfo=UTC)


_new_row = tuple.__new__


def _row(record: asyncpg.Record) -> OutboxRow:
    # By position, in outbox_claim's column order (id, job_id, n, key, headers, body,
    # attempts), and built as the tuple it is: a claim builds one per row, and NamedTuple's
    # own constructor and lookups by name took most of the time it spent on each.
    headers = record[4]  # NULL for none (most rows)
    if isinstance(headers, str):  # a connection without the jsonb codec
        headers = json.loads(headers)
    if headers:
        headers = {str(k): str(v) for k, v in headers.items()}
    return _new_row(
        OutboxRow,
        (record[0], record[1], record[2], record[3], headers or {}, record[5], record[6], None),
    )


async def write_effects(
    conn: asyncpg.Connection,
    queries: Mapping[str, str],
    worker_id: str,
    outcomes: Sequence[Outcome],
) -> None:
    """Write the effects of these succeeded outcomes, inside the caller's transaction and
    before its complete_jobs: only for attempts this worker still holds (locked here)."""
    ids: list[int] = []
    attempts: list[int] = []
    m_job: list[int] = []
    m_output: list[str] = []
    m_n: list[int] = []
    m_key: list[str | None] = []
    m_headers: list[str] = []
    m_body: list[bytes] = []
    c_cols: list[list[object]] = [[] for _ in range(9)]
    for outcome in outcomes:
        effects = effects_of(outcome)
        if effects is None:
            continue
        ids.append(outcome.job_id)
        attempts.append(outcome.attempt)
        for m in effects.messages:
            m_job.append(outcome.job_id)
            m_output.append(m.output)
            m_n.append(m.n)
            m_key.append(m.key)
            m_headers.append(json.dumps(m.headers))
            m_body.append(m.body)
        for c in effects.children:
            values = (
                outcome.job_id,
                c.handler,
                c.payload_json,
                c.queue,
                c.priority,
                c.delay,
                c.dedup_key,
                c.max_attempts,
                # Comma-separated: a text[] cannot hold arrays of unequal length.
                None if c.after is None else ",".join(map(str, c.after)),
            )
            for column, value in zip(c_cols, values, strict=True):
                column.append(value)
    if ids:
        await conn.fetchrow(
            queries["outbox_write_effects"],
            ids,
            # Job id -> attempt (the connection's jsonb codec serialises it).
            dict(zip(map(str, ids), attempts, strict=True)),
            worker_id,
            m_job,
            m_output,
            m_n,
            m_key,
            m_headers,
            m_body,
            *c_cols,
        )


class PgOutbox(PgBase):
    """What the outbox relay, metrics and retention run on PostgreSQL."""

    async def claim_outbox(
        self,
        output: str,
        limit: int,
        lease: float,
        after: OutboxRow | None = None,
        sent: Sequence[int] = (),
        leases: Sequence[int] | None = None,
    ) -> Claim:
        """Lease up to ``limit`` unsent rows of ``output`` (oldest first, a key in flight
        elsewhere skipped) for ``lease`` seconds; ``after``: only rows after that one;
        ``sent``: rows to mark sent first (out of ``leases``), in the same transaction (one
        round trip less)."""
        since, since_id = EARLIEST, 0
        if after is not None and after.created_at is not None:
            since, since_id = after.created_at, after.id
        # One statement, its own transaction (see outbox_claim in migrations 0016 and 0017).
        try:
            async with guard("outbox claim"), self._pool.acquire() as conn:
                records = await conn.fetch(
                    self._q["outbox_claim"],
                    output,
                    limit,
                    lease,
                    since,
                    since_id,
                    list(sent),
                    None if leases is None else list(leases),
                )
        except asyncpg.RaiseError as exc:
            if "needs READ COMMITTED" not in str(exc):
                raise
            # The database's or role's default isolation (migration 0017): a setting to fix,
            # not a broker's failure. The relay waits and tries again, keeping its broker
            # connection, and says so once.
            # (asyncpg's text of it carries the HINT: one line here.)
            raise StoreRefused(f"outbox claim: {' '.join(str(exc).split())}") from exc
        # In claim order (the function's ORDER BY, which the statement over it keeps): the
        # relay's whole-batch mark names the ids in this order, as the lease does.
        claim = Claim(map(_row, records))
        if records:  # the claim's own columns are on its first row only
            first = records[0]
            claim.lease = first["lease_id"]
            claim.resume = position(first["resume_id"], first["resume_at"])
        return claim

    async def _settled(
        self,
        conn: asyncpg.Connection,
        query: str,
        ids: Sequence[int],
        leases: Sequence[int] | None,
        *args: object,
    ) -> list[asyncpg.Record]:
        """Take rows ``ids`` out of ``leases`` and run a settling statement on those the
        leases still held (``leases`` None: on every row of ``ids``, whichever lease names
        it), in the caller's transaction (leases first: the lock order the claim's expiry
        keeps)."""
        taken = await conn.fetch(
            self._q["outbox_unlease"], list(ids), None if leases is None else list(leases)
        )
        if leases is not None:
            ids = [r["id"] for r in taken]
            if not ids:
                return []
        return list(await conn.fetch(self._q[query], list(ids), *args))

    async def mark_outbox_sent(
        self, ids: Sequence[int], leases: Sequence[int] | None = None
    ) -> None:
        """Mark rows sent (after the broker confirmed them), out of ``leases``."""
        if ids:
            async with guard("outbox mark"), self._pool.acquire() as conn:
                await conn.execute(
                    self._q["outbox_mark_sent"],
                    list(ids),
                    None if leases is None else list(leases),
                )

    async def release_outbox(
        self, ids: Sequence[int], error: str, leases: Sequence[int] | None = None
    ) -> None:
        """Free rows a relay could not send (those ``leases`` still hold), with the reason."""
        if ids:
            async with guard("outbox release"), self._pool.acquire() as conn, conn.transaction():
                await self._settled(conn, "outbox_release", ids, leases, error[:2000])

    async def fail_outbox(
        self,
        ids: Sequence[int],
        error: str,
        max_attempts: int,
        permanent: Sequence[int] = (),
        leases: Sequence[int] | None = None,
    ) -> list[int]:
        """Free rows whose own publish failed (those ``leases`` still hold), or set them
        aside for good (``max_attempts`` used up, or in ``permanent``); returns the ids set
        aside."""
        if not ids:
            return []
        async with guard("outbox fail"), self._pool.acquire() as conn, conn.transaction():
            records = await self._settled(
                conn,
                "outbox_fail_rows",
                ids,
                leases,
                error[:2000],
                max_attempts,
                list(permanent),
            )
        return [r["id"] for r in records if r["parked"]]

    async def outbox_pending(self) -> dict[str, OutboxBacklog]:
        """Unsent rows per output, the age in seconds of the oldest, and those set aside."""
        async with guard("outbox pending"):
            records = await self._pool.fetch(self._q["outbox_pending"])
        return {
            r["output"]: OutboxBacklog(
                int(r["pending"]), float(r["oldest"] or 0.0), int(r["set_aside"])
            )
            for r in records
        }

    async def purge_outbox(self, older_than: float, batch: int) -> int:
        """Delete up to ``batch`` rows sent more than ``older_than`` seconds ago."""
        async with guard("outbox purge"):
            status = await self._pool.execute(self._q["outbox_purge_sent"], older_than, batch)
        return int(status.split()[-1])
