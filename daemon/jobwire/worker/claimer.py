"""The claimer: takes ready jobs from the store as slots free, and wakes on notifications."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from jobwire.models import Job
from jobwire.store.base import ClaimRequest, JobStore, StoreUnavailable
from jobwire.worker.state import PoolState, keep_running


class Claimer:
    """Claims as many ready jobs as there are free slots, whenever woken or every poll."""

    name = "claimer"

    def __init__(
        self,
        state: PoolState,
        store: JobStore,
        start: Callable[[Job, float], None],
        cancel: Callable[[int, str], bool],
    ) -> None:
        self.state = state
        self.store = store
        self._start = start
        self._cancel = cancel
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start claiming, and listening for notifications if configured."""
        self._tasks = [
            asyncio.create_task(keep_running("claim", self.run), name="jobwire-claim"),
        ]
        if self.state.workers.listen:
            self._tasks.append(
                asyncio.create_task(
                    keep_running("listen", lambda: self.store.listen(self.on_notify, self.wake)),
                    name="jobwire-listen",
                )
            )

    async def stop(self) -> None:
        """Stop claiming and listening (the claim loop ends by itself once the pool stops)."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    def wake(self) -> None:
        """Claim now."""
        self.state.wake.set()

    def on_notify(self, message: str) -> None:
        """A store notification: a cancel request for a job, or new work to claim."""
        if message.startswith("cancel:"):
            with contextlib.suppress(ValueError):
                self._cancel(int(message.split(":", 1)[1]), "cancelled")
            return
        if message == "controls":
            self.state.flow.reread_soon()
            return
        self.state.wake.set()

    async def run(self) -> None:
        """Claim until the pool stops."""
        state = self.state
        workers = state.workers
        while not state.stopping.is_set():
            state.wake.clear()
            await state.flow.refresh(self.store)
            per_queue, free_total = state.free_slots()
            asked = min(free_total, sum(per_queue.values()))
            if asked > 0 and not state.reconciling:
                sent = time.monotonic()
                state.marked_in_claim.clear()
                state.claiming = True
                try:
                    jobs = await self.store.claim(
                        ClaimRequest(
                            per_queue,
                            free_total,
                            state.worker_id,
                            workers.lease,
                            state.flow.claim_flow(),
                        )
                    )
                    state.store_back()
                except StoreUnavailable as exc:
                    # The claim may have committed with its answer lost.
                    state.orphans_possible = True
                    await state.store_down("claim", exc)
                    continue
                finally:
                    state.claiming = False
                    state.note_settled()
                state.counters.claims += 1
                for job in jobs:
                    self._start(job, sent)
                # A full answer, or a queue at its limit, means more may be waiting: claim
                # again as soon as a slot frees instead of waiting for the next wake.
                # A wake during the claim (an insert it may not have seen) is not counted
                # as a backlog: the loop claims again at once anyway. Counting it would send
                # a busy intake's every batch the long way, insert then claim, instead of
                # straight to the pool.
                if len(jobs) >= asked:
                    state.backlog = set(state.queues)
                else:
                    at_limit = {q for q in state.queues if state.busy[q] >= state.limits[q]}
                    state.backlog = at_limit | state.marked_in_claim
                    state.room_changed.set()
                if state.stopping.is_set():
                    break
            elif not state.reconciling:
                # Told of ready work (another producer's insert), or a poll (the only way to
                # find a retry or a delayed job come due), with no slot free: the intake,
                # which takes each slot as it frees, must not take them all past that work.
                # Hold the hand-off until a claim has looked; a finishing job wakes us.
                state.backlog = set(state.queues)
            if not state.wake.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(workers.poll_interval):
                        await state.wake.wait()
