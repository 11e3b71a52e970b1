"""The outbox in memory: the same contract as PostgreSQL's (rows written with a successful
outcome, leased claims in id order that keep a key's order, mark, release, purge)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime, timedelta

from jobwire.effects import Claim, Effects, OutboxRow, position_before
from jobwire.models import Job, JobSpec
from jobwire.reply import reply_message
from jobwire.store.base import OutboxBacklog
from jobwire.store.memory_base import MemoryState, now


@dataclasses.dataclass
class MemoryOutboxRow:
    """One outbox row as the memory store keeps it."""

    id: int
    output: str
    job_id: int | None
    n: int
    key: str | None
    headers: dict[str, str]
    body: bytes
    created_at: datetime
    sent_at: datetime | None = None
    attempts: int = 0
    last_error: str | None = None
    failed_at: datetime | None = None


def append_row(
    state: MemoryState,
    output: str,
    job_id: int,
    n: int,
    key: str | None,
    headers: dict[str, str],
    body: bytes,
) -> None:
    """One outbox row, with the next id."""
    next_id = state.outbox[-1].id + 1 if state.outbox else 1
    state.outbox.append(MemoryOutboxRow(next_id, output, job_id, n, key, headers, body, now()))


def write_effects(state: MemoryState, job: Job, effects: Effects) -> None:
    """A succeeded attempt's outbox rows and child jobs (the caller checked it held it)."""
    for m in effects.messages:
        append_row(state, m.output, job.id, m.n, m.key, dict(m.headers), m.body)
    specs = [
        JobSpec(
            c.handler,
            queue=c.queue,
            priority=c.priority,
            delay=c.delay,
            max_attempts=c.max_attempts,
            dedup_key=c.dedup_key,
            source="job",
            parent_id=job.id,
            payload_json=c.payload_json,
            after=None if c.after is None else list(c.after),
        )
        for c in effects.children
    ]
    if specs:
        state._insert(specs, None, ())


class MemoryOutbox(MemoryState):
    """What the outbox relays, metrics and retention run on the memory store."""

    def _write_reply(self, job: Job) -> None:
        """A finished job's reply: one row, n = 0, no key (replies have no order among
        them; its address is the header jobwire-reply-to, from reply_message), as 0015's
        trigger."""
        assert job.reply is not None
        headers, body = reply_message(job)
        append_row(self, job.reply["output"], job.id, 0, None, headers, body)

    async def claim_outbox(
        self,
        output: str,
        limit: int,
        lease: float,
        after: OutboxRow | None = None,
        sent: Sequence[int] = (),
        leases: Sequence[int] | None = None,
    ) -> Claim:
        """Lease up to ``limit`` unsent rows in id order (after ``after``, if given), once
        ``sent`` are marked; a key (or, unkeyed, a job) with a row in flight waits; rows set
        aside are never claimed. ``resume``: as PostgreSQL's (see outbox_claim); the lease
        and the attempts as 0014's."""
        await self.ping()
        if sent:
            await self.mark_outbox_sent(sent, leases)
        at = now()
        self._expire_leases(output, at)
        start = after.id if after is not None else 0
        unsent = [
            r
            for r in self.outbox
            if r.output == output and r.sent_at is None and r.failed_at is None
        ]
        leased = {
            i
            for o, ids, until in self.outbox_leases.values()
            if o == output and until > at
            for i in ids
        }
        busy = [r for r in unsent if r.id in leased]
        busy_keys = {r.key for r in busy if r.key is not None}
        busy_jobs = {r.job_id for r in busy if r.key is None and r.job_id is not None}
        picked: list[MemoryOutboxRow] = []
        skipped: MemoryOutboxRow | None = None
        for r in unsent:
            if r.id <= start:
                continue
            if (
                len(picked) >= limit
                or r.id in leased
                or (r.key in busy_keys if r.key is not None else r.job_id in busy_jobs)
            ):
                skipped = skipped or r
                if len(picked) >= limit:
                    break
                continue
            picked.append(r)
        lease_id = None
        if picked:
            until = at + timedelta(seconds=lease)
            lease_id, self._next_lease = self._next_lease, self._next_lease + 1
            self.outbox_leases[lease_id] = (output, {r.id for r in picked}, until)
        claim = Claim(
            OutboxRow(
                r.id, r.job_id, r.n, r.key, dict(r.headers), r.body, r.attempts + 1, r.created_at
            )
            for r in picked
        )
        claim.lease = lease_id
        if skipped is not None and claim:
            claim.resume = position_before(skipped.id, skipped.created_at)
        elif claim:
            claim.resume = claim[-1]
        return claim

    def _expire_leases(self, output: str, at: datetime) -> None:
        """Drop the expired leases of ``output``, an attempt counted on their unsent rows."""
        expired = [
            k for k, (o, _, until) in self.outbox_leases.items() if o == output and until <= at
        ]
        ids = {i for k in expired for i in self.outbox_leases.pop(k)[1]}
        for r in self.outbox:
            if r.id in ids and r.sent_at is None and r.failed_at is None:
                r.attempts += 1
                r.last_error = "lease expired: the relay that claimed it did not settle it"

    def _unlease(self, ids: set[int], leases: Sequence[int] | None) -> set[int]:
        """Take rows out of ``leases`` (None: any lease naming them), a lease left empty
        dropped; the rows taken out (as outbox_unlease)."""
        taken: set[int] = set()
        for k, (output, held, until) in list(self.outbox_leases.items()):
            if (leases is None or k in leases) and held & ids:
                taken |= held & ids
                left = held - ids
                if left:
                    self.outbox_leases[k] = (output, left, until)
                else:
                    del self.outbox_leases[k]
        return taken

    def _held(self, ids: Sequence[int], leases: Sequence[int] | None) -> set[int]:
        """Rows to settle: those ``leases`` held (taken out of them now), or every one of
        ``ids`` when no leases are named."""
        taken = self._unlease(set(ids), leases)
        return set(ids) if leases is None else taken

    async def mark_outbox_sent(
        self, ids: Sequence[int], leases: Sequence[int] | None = None
    ) -> None:
        """Mark rows sent (a try settled), out of ``leases``."""
        await self.ping()
        wanted, at = set(ids), now()
        self._unlease(wanted, leases)
        for r in self.outbox:
            if r.id in wanted and r.sent_at is None:
                r.sent_at, r.last_error = at, None
                r.attempts += 1

    async def release_outbox(
        self, ids: Sequence[int], error: str, leases: Sequence[int] | None = None
    ) -> None:
        """Free rows that could not be sent through no fault of theirs (those ``leases``
        still hold; no attempt counted)."""
        await self.ping()
        wanted = self._held(ids, leases)
        for r in self.outbox:
            if r.id in wanted and r.sent_at is None:
                r.last_error = error

    async def fail_outbox(
        self,
        ids: Sequence[int],
        error: str,
        max_attempts: int,
        permanent: Sequence[int] = (),
        leases: Sequence[int] | None = None,
    ) -> list[int]:
        """Free rows whose own publish failed (those ``leases`` still hold; an attempt
        counted), or set them aside (attempts used up, or ``permanent``); the ids set
        aside."""
        await self.ping()
        wanted, refused, at = self._held(ids, leases), set(permanent), now()
        parked: list[int] = []
        for r in self.outbox:
            if r.id in wanted and r.sent_at is None:
                r.attempts += 1
                r.last_error = error
                if r.attempts >= max_attempts or r.id in refused:
                    r.failed_at = at
                    parked.append(r.id)
        return parked

    async def outbox_pending(self) -> dict[str, OutboxBacklog]:
        """Unsent rows per output, the age of the oldest, and those set aside."""
        await self.ping()
        at = now()
        found: dict[str, OutboxBacklog] = {}
        for r in self.outbox:
            if r.sent_at is None:
                count, age, aside = found.get(r.output, OutboxBacklog(0, 0.0, 0))
                if r.failed_at is None:  # a row set aside waits for an operator, not lag
                    age = max(age, (at - r.created_at).total_seconds())
                else:
                    aside += 1
                found[r.output] = OutboxBacklog(count + 1, age, aside)
        return found

    async def purge_outbox(self, older_than: float, batch: int) -> int:
        """Delete up to ``batch`` rows sent before ``older_than`` seconds ago."""
        await self.ping()
        cutoff = now() - timedelta(seconds=older_than)
        gone = [r.id for r in self.outbox if r.sent_at is not None and r.sent_at < cutoff]
        gone_set = set(gone[:batch])
        self.outbox[:] = [r for r in self.outbox if r.id not in gone_set]
        return len(gone_set)
