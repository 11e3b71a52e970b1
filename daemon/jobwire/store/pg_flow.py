"""Flow controls on PostgreSQL: the flow claim (keyed jobs, rate limits) under one
cluster-wide lock, queue pause and resume, and what the pools re-read every poll."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Sequence

import asyncpg

from jobwire.limits import Buckets, Rate, handler_bucket, queue_bucket
from jobwire.models import Job
from jobwire.store.base import ClaimFlow, ClaimRequest, FlowState, QueueState
from jobwire.store.pg_base import PgBase, guard

# Seconds until a claim that found the flow lock taken tries again: a flow claim holds it
# for one statement, a few milliseconds.
FLOW_LOCK_RETRY = 0.02


class PgFlow(PgBase):
    """The flow claim and the queue controls; PgJobs.claim calls ``_claim_flow``."""

    async def _claim_flow(
        self,
        request: ClaimRequest,
        flow: ClaimFlow,
        per_queue: dict[str, int],
        limit: int,
        decode: Callable[[asyncpg.Record], Job],
    ) -> list[Job]:
        """Claim on the flow path: one transaction holding the flow lock, so keyed limits
        and token buckets hold across every instance (the fast claim never takes these)."""
        queues = [q for q, n in per_queue.items() if n > 0]
        if not queues or limit <= 0:
            return []
        rates: dict[str, Rate] = {}
        for q in queues:
            rate = flow.queues[q].rate
            if rate is not None:
                rates[queue_bucket(q)] = rate
        for handler, rate in flow.handler_rates.items():
            rates[handler_bucket(handler)] = rate
        async with guard("claim"), self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(self._q["flow_lock"]):
                # Another instance's flow claim holds the lock (or stalled holding it): the
                # fast-claimed jobs start now, and this part is tried again shortly.
                if flow.on_throttle is not None:
                    flow.on_throttle(FLOW_LOCK_RETRY)
                return []
            buckets = Buckets(rates, {})
            if rates:
                stored = await conn.fetch(self._q["flow_read_buckets"], list(rates))
                buckets = Buckets(rates, {r["name"]: (r["tokens"], r["elapsed"]) for r in stored})
            wanted = []
            for q in queues:
                name = queue_bucket(q)
                wanted.append(buckets.allow(name, per_queue[q]) if name in rates else per_queue[q])
            handlers = list(flow.handler_rates)
            allowed = [buckets.allow(handler_bucket(h), limit) for h in handlers]
            settings = [flow.queues[q] for q in queues]
            rows = await conn.fetch(
                self._q["claim_flow_jobs"],
                queues,
                wanted,
                limit,
                request.worker_id,
                request.lease,
                [s.key_limit for s in settings],
                [s.ordered for s in settings],
                [s.only_special for s in settings],
                handlers,
                allowed,
                handlers,
                [h for h, n in zip(handlers, allowed, strict=True) if n <= 0],
            )
            jobs = [decode(r) for r in rows]
            if rates:
                spent = Counter(queue_bucket(j.queue) for j in jobs)
                spent.update(handler_bucket(j.handler) for j in jobs)
                due = buckets.spend(dict(spent))
                names = list(rates)
                await conn.execute(
                    self._q["flow_write_buckets"], names, [buckets.tokens[n] for n in names]
                )
                if due is not None and flow.on_throttle is not None:
                    flow.on_throttle(due)
        return jobs

    async def flow_state(
        self, queues: Sequence[str], limited_handlers: Collection[str] = (), full: bool = True
    ) -> FlowState:
        """Which of these queues are paused, which have keyed jobs ready, and which have
        jobs of these (rate-limited) handlers waiting; not ``full``: each look bounded."""
        async with guard("flow state"):
            rows = await self._pool.fetch(
                self._q["flow_state"], list(queues), list(limited_handlers), full
            )
        return FlowState(
            paused=frozenset(r["queue"] for r in rows if r["kind"] == "paused"),
            keyed=frozenset(r["queue"] for r in rows if r["kind"] == "keyed"),
            limited=frozenset(r["queue"] for r in rows if r["kind"] == "limited"),
        )

    async def set_queue_paused(self, queue: str, paused: bool, by: str) -> bool:
        """Pause or resume a queue for every instance; False if it already was so."""
        async with guard("pause queue"):
            rows = await self._pool.fetch(
                self._q["flow_set_paused"], queue, paused, by, self._channel
            )
        return bool(rows)

    async def queue_states(self) -> list[QueueState]:
        """Every queue an operator paused or resumed, by name."""
        async with guard("queue states"):
            rows = await self._pool.fetch(self._q["flow_queue_states"])
        return [QueueState(r["queue"], r["paused"], r["changed_at"], r["changed_by"]) for r in rows]
