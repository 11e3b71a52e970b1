"""The completer: counts and logs each attempt's outcome, and writes outcomes back in
batches, one statement for many jobs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from jobwire.effects import effects_of
from jobwire.models import Job, JobStatus, Outcome
from jobwire.storable import storable_text
from jobwire.store.base import InvalidJobData, JobStore, StoreUnavailable
from jobwire.worker.state import PoolState, bounded, keep_running, log


class Completer:
    """Collects outcomes and writes them in batches; a final flush on stop."""

    name = "completer"

    def __init__(
        self,
        state: PoolState,
        store: JobStore,
        on_outcome: Callable[[Job, Outcome], None] | None = None,
        on_written: Callable[[set[str]], None] | None = None,
        replies: Mapping[str, str] | None = None,
    ) -> None:
        self.state = state
        self.store = store
        # Told of every attempt's end (metrics: the handler duration histogram).
        self.on_outcome = on_outcome
        # Told, once a batch is written, of the outputs it wrote outbox rows for: the
        # messages of succeeded attempts, and the replies of finished jobs of a replying
        # source (``replies``: source -> its reply output; a claimed job does not carry its
        # reply address, so by source). Their relays then send them now, not at their next
        # poll.
        self.on_written = on_written
        self.replies = replies or {}
        # (job id, attempt) -> the outputs its outcome writes to, of those not yet written.
        self._touched: dict[tuple[int, int], set[str]] = {}
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start writing outcomes as they come."""
        self._task = asyncio.create_task(
            keep_running("complete", self.run), name="jobwire-complete"
        )

    async def stop(self) -> None:
        """Stop the loop, then write what is left (bounded: the store may not answer)."""
        # The loop must not flush the same outcomes alongside the final flush; an
        # interrupted write is repeated, and a repeat matches no row (the attempt is done).
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=5)
        await bounded("flush outcomes", self.flush(final=True), 30)

    def record(self, job: Job, outcome: Outcome) -> None:
        """Count and log one attempt's end, and queue its outcome to be written."""
        state = self.state
        c = state.counters
        if outcome.status == JobStatus.SUCCEEDED:
            c.succeeded += 1
        elif outcome.status == JobStatus.RETRYING:
            c.retried += 1
            retry_in = outcome.retry_in or 0.0
            if retry_in < state.workers.poll_interval:
                # Sooner than the next poll: wake ourselves rather than run it late.
                asyncio.get_running_loop().call_later(retry_in + 0.01, state.wake.set)
            log.warning(
                "job_retrying",
                job_id=job.id,
                handler=job.handler,
                attempt=job.attempts,
                retry_in=round(outcome.retry_in or 0, 3),
                error=(outcome.error or "").partition("\n")[0],
            )
        elif outcome.status == JobStatus.FAILED:
            c.failed += 1
            log.error(
                "job_failed",
                job_id=job.id,
                handler=job.handler,
                attempt=job.attempts,
                error=(outcome.error or "").partition("\n")[0],
            )
        else:
            c.cancelled += 1
            log.info("job_cancelled", job_id=job.id, handler=job.handler)
        if self.on_outcome is not None:
            self.on_outcome(job, outcome)
        if self.on_written is not None:
            touched = self._outputs_of(job, outcome)
            if touched:
                self._touched[(outcome.job_id, outcome.attempt)] = touched
        state.outcomes.append(outcome)
        self._ready.set()

    async def run(self) -> None:
        """Write outcomes as they come, waiting a moment to batch them."""
        workers = self.state.workers
        while True:
            await self._ready.wait()
            # Let a few more outcomes join the batch: one statement for many jobs.
            if len(self.state.outcomes) < workers.completion_batch:
                await asyncio.sleep(workers.completion_delay)
            self._ready.clear()
            await self.flush()

    async def flush(self, final: bool = False) -> None:
        """Write every queued outcome, a batch at a time; a final flush gives up after a
        few failed tries (the leases then expire and the jobs run again)."""
        state = self.state
        tries = 0
        while state.outcomes:
            batch = state.outcomes[: state.workers.completion_batch]
            state.flushing = len(batch)
            try:
                await self.store.complete_many(state.worker_id, batch)
            except InvalidJobData as exc:
                # One outcome the store refuses must not hold every one behind it.
                state.flushing = 0
                log.error("outcomes_refused", count=len(batch), error=str(exc))
                await self._one_by_one(batch)
            except StoreUnavailable as exc:
                state.flushing = 0
                tries += 1
                if final and tries >= 5:
                    log.error(
                        "outcomes_unsaved",
                        count=len(state.outcomes),
                        error=str(exc),
                        note="leases will expire and the jobs run again",
                    )
                    return
                if final:
                    await asyncio.sleep(0.5)  # stopping: store_down would not wait at all
                else:
                    await state.store_down("complete", exc)
                continue
            except BaseException:
                state.flushing = 0
                raise
            state.flushing = 0
            state.store_back()
            state.counters.completion_batches += 1
            del state.outcomes[: len(batch)]
            for o in batch:
                state.leases.pop((o.job_id, o.attempt), None)
            self._tell_written(batch)
            state.room_changed.set()
            if state.backlog or state.flow.active:
                # Slots held by unwritten outcomes are free again; a finished keyed job or
                # a rate's next token may let a held-back job start.
                state.wake.set()

    def _outputs_of(self, job: Job, outcome: Outcome) -> set[str]:
        """The outputs this outcome writes outbox rows for."""
        effects = effects_of(outcome)
        touched = {m.output for m in effects.messages} if effects is not None else set()
        reply = self.replies.get(job.source) if job.source is not None else None
        if reply is not None and outcome.status != JobStatus.RETRYING:
            touched.add(reply)
        return touched

    def _tell_written(self, batch: list[Outcome]) -> None:
        """Tell of the outputs this written batch wrote outbox rows for."""
        if not self._touched or self.on_written is None:
            return
        written: set[str] = set()
        for o in batch:
            written |= self._touched.pop((o.job_id, o.attempt), set())
        if written:
            self.on_written(written)

    async def _one_by_one(self, batch: list[Outcome]) -> None:
        """Write a refused batch one outcome at a time; a refused outcome is written as a
        bare failure, and if even that is refused it is dropped (its lease then expires and
        the job runs again): never a stuck completer."""
        for outcome in batch:
            try:
                await self.store.complete_many(self.state.worker_id, [outcome])
                continue
            except InvalidJobData as exc:
                log.error("outcome_refused", job_id=outcome.job_id, error=str(exc))
                reason = str(exc)
            try:
                await self.store.complete_many(
                    self.state.worker_id, [_bare_failure(outcome, reason)]
                )
            except InvalidJobData as exc:
                log.error("outcome_refused", job_id=outcome.job_id, error=str(exc))

    def drop(self, pairs: set[tuple[int, int]], why: str) -> None:
        """Drop the unwritten outcomes of these attempts (job id, attempt): their lease
        is lost, so they are not ours to write."""
        state = self.state
        # Not the head being written right now: that write is matched against the row's
        # worker and attempt and changes nothing if the job is no longer ours.
        waiting = state.outcomes[state.flushing :]
        kept = [o for o in waiting if (o.job_id, o.attempt) not in pairs]
        if len(kept) < len(waiting):
            for o in waiting:
                if (o.job_id, o.attempt) in pairs:
                    self._touched.pop((o.job_id, o.attempt), None)
                    log.warning(
                        "job_lease_lost",
                        job_id=o.job_id,
                        attempt=o.attempt,
                        reason=why,
                        note=f"finished here ({o.status}); that outcome is not written",
                    )
            state.outcomes[state.flushing :] = kept


def _bare_failure(outcome: Outcome, reason: str) -> Outcome:
    """The same attempt, failed, with nothing in it the store could refuse but the store's
    reason (its first line, escaped and cut: the job's error said nothing of why)."""
    why = storable_text(reason.partition("\n")[0], 500) or ""
    return Outcome(
        outcome.job_id,
        outcome.attempt,
        JobStatus.FAILED,
        outcome.duration,
        error=f"the store refused this attempt's outcome (its result, error or effects): {why}",
    )
