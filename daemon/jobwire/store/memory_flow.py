"""Flow controls in memory, as PostgreSQL keeps them: the flow claim (keyed jobs, rate
limits), queue pause and resume, and what the pools re-read every poll."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Collection, Sequence
from datetime import datetime

from jobwire.limits import Buckets, Rate, handler_bucket, queue_bucket
from jobwire.models import Job, JobStatus
from jobwire.store.base import ClaimFlow, FlowState, QueueFlow, QueueState
from jobwire.store.memory_base import READY, MemoryState, now

LIVE_WAITING = (JobStatus.PENDING, JobStatus.RETRYING)


class MemoryFlow(MemoryState):
    """The flow claim and the queue controls; MemoryJobs.claim calls ``_flow_candidates``."""

    def _flow_candidates(
        self, flow: ClaimFlow, per_queue: dict[str, int], limit: int, at: datetime
    ) -> list[Job]:
        """The jobs the flow claim may start (the caller marks them running)."""
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
        clock = time.monotonic()
        stored = {n: (t, clock - when) for n, (t, when) in self.buckets.items() if n in rates}
        buckets = Buckets(rates, stored)
        handler_left = {h: buckets.allow(handler_bucket(h), limit) for h in flow.handler_rates}
        chosen: list[Job] = []
        for q in queues:
            name = queue_bucket(q)
            n = buckets.allow(name, per_queue[q]) if name in rates else per_queue[q]
            chosen += self._flow_queue(q, flow.queues[q], n, handler_left, flow, at)
        chosen = sorted(chosen, key=lambda j: (-j.priority, j.id))[:limit]
        if rates:
            spent = Counter(queue_bucket(j.queue) for j in chosen)
            spent.update(handler_bucket(j.handler) for j in chosen)
            due = buckets.spend(dict(spent))
            for name in rates:
                self.buckets[name] = (buckets.tokens[name], clock)
            if due is not None and flow.on_throttle is not None:
                flow.on_throttle(due)
        return chosen

    def _flow_queue(
        self,
        queue: str,
        settings: QueueFlow,
        n: int,
        handler_left: dict[str, int],
        flow: ClaimFlow,
        at: datetime,
    ) -> list[Job]:
        live = [j for j in self.jobs.values() if j.queue == queue]
        running = Counter(
            j.concurrency_key
            for j in live
            if j.concurrency_key is not None and j.status == JobStatus.RUNNING
        )
        waiting = sorted(j.id for j in live if j.concurrency_key and j.status in LIVE_WAITING)
        ready = sorted(
            (j for j in live if j.status in READY and j.run_at <= at),
            key=lambda j: (-j.priority, j.id),
        )
        taken: list[Job] = []
        for job in ready:
            if len(taken) >= n:
                break
            key = job.concurrency_key
            if settings.only_special and key is None and job.handler not in flow.handler_rates:
                continue
            if handler_left.get(job.handler, 1) <= 0:
                continue
            if key is not None:
                if running[key] >= settings.key_limit:
                    continue
                older = (i for i in waiting if i < job.id and self.jobs[i].concurrency_key == key)
                if settings.ordered and next(older, None) is not None:
                    continue
                running[key] += 1
            if job.handler in handler_left:
                handler_left[job.handler] -= 1
            taken.append(job)
        return taken

    async def flow_state(
        self, queues: Sequence[str], limited_handlers: Collection[str] = (), full: bool = True
    ) -> FlowState:
        """Which of these queues are paused, which have keyed jobs ready, and which have
        jobs of these (rate-limited) handlers waiting (always a full look here)."""
        await self.ping()
        waiting = [j for j in self.jobs.values() if j.status in LIVE_WAITING and j.queue in queues]
        at = now()
        keyed = {j.queue for j in waiting if j.concurrency_key is not None and j.run_at <= at}
        limited = {j.queue for j in waiting if j.handler in limited_handlers}
        paused = {q for q, s in self.queue_state.items() if s.paused}
        return FlowState(frozenset(paused), frozenset(keyed), frozenset(limited))

    async def set_queue_paused(self, queue: str, paused: bool, by: str) -> bool:
        """Pause or resume a queue for every instance; False if it already was so."""
        await self.ping()
        state = self.queue_state.get(queue)
        if state is not None and state.paused == paused:
            return False
        self.queue_state[queue] = QueueState(queue, paused, now(), by)
        self._fire("controls")
        return True

    async def queue_states(self) -> list[QueueState]:
        """Every queue an operator paused or resumed, by name."""
        await self.ping()
        return [self.queue_state[q] for q in sorted(self.queue_state)]
