"""Outbox rows in the state a relay leaves them, for the operator's tests."""

from __future__ import annotations

from jobwire.effects import EffectfulOutcome, Effects, OutboxMessage
from jobwire.models import JobSpec, JobStatus
from jobwire.store.base import ClaimRequest
from jobwire.store.postgres import PostgresStore


async def set_aside(
    store: PostgresStore, output: str, count: int, error: str = "refused for good"
) -> list[int]:
    """``count`` messages of ``output`` written by one succeeded job (key ``k``), claimed by a
    relay and refused for good by its broker: set aside, as a relay leaves them. Seed them
    before a daemon relaying ``output`` runs, or its relay may send them first."""
    await store.enqueue_many([JobSpec("noop", {})])
    (job,) = await store.claim(ClaimRequest({"default": 1}, 1, "seed", 30.0))
    messages = [OutboxMessage(output, n, b'{"n": %d}' % n, "k") for n in range(1, count + 1)]
    outcome = EffectfulOutcome(job.id, 1, JobStatus.SUCCEEDED, 0.1, effects=Effects(messages))
    await store.complete_many("seed", [outcome])
    rows = await store.claim_outbox(output, 100, 30.0)
    ids = [r.id for r in rows]
    await store.fail_outbox(ids, error, 10, ids, [rows.lease])
    return ids
