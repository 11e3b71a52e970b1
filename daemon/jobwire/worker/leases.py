"""The lease keeper: renews the leases of the jobs held here, and stops any attempt whose
lease this pool could not renew in time, or that a renewal no longer finds ours, because
another instance may already have taken it back.

Its upkeep also publishes this instance's heartbeat, gives back rows left running under
this worker with no task (after a lost answer), and rescues other instances' expired
leases. The rescue stays on every instance rather than the maintenance leader: a frozen
(SIGSTOP) or stuck leader keeps its lock's connection open, and its own expired leases are
exactly the ones that would then never be rescued.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from jobwire.store.base import JobStore, StoreUnavailable
from jobwire.worker import fleet
from jobwire.worker.attempt import name_overdue
from jobwire.worker.completer import Completer
from jobwire.worker.executor import Executor
from jobwire.worker.state import PoolState, keep_running, log

# A lease timer this late (seconds) means the event loop was blocked.
_BLOCKED_AFTER = 2.0


class LeaseKeeper:
    """Renews leases on a timer, stops what it cannot hold, and keeps this worker's row."""

    name = "lease keeper"

    def __init__(
        self,
        state: PoolState,
        store: JobStore,
        executor: Executor,
        completer: Completer,
        extra_state: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.state = state
        self.store = store
        self.executor = executor
        self.completer = completer
        # More to publish in this instance's workers row (the daemon adds its sources).
        self.extra_state = extra_state
        self._fleet = fleet.describe(state.config, state.queues)
        self.interval = min(state.workers.lease / 3, 10.0)
        self.task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0  # when the timer should fire (monotonic): lateness is a blocked loop

    def state_now(self) -> dict[str, Any]:
        """What this instance's row says of it at registration (the heartbeat adds more)."""
        return {**self.state.figures(), **self._fleet}

    async def start(self) -> None:
        """Start renewing."""
        self.task = asyncio.create_task(keep_running("lease", self.run), name="jobwire-lease")

    async def stop(self) -> None:
        """Stop renewing (the last step of a pool's stop: what is left is given back)."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait({self.task}, timeout=5)
        if self._timer is not None:
            self._timer.cancel()

    async def run(self) -> None:
        """Renew every interval; then the upkeep: orphans, rescue, heartbeat."""
        state = self.state
        lease = state.workers.lease
        self._arm_timer()
        while True:
            # A loop that wakes late (the process was frozen, the loop blocked) may already be
            # past its leases, and another instance may run those jobs by now: stop them
            # before anything else (the timer does too; this covers a timer not yet run).
            self._expire()
            held = self._held()
            sent = time.monotonic()
            try:
                renewal = await self.store.renew_leases(
                    state.worker_id, lease, [job_id for job_id, _ in held]
                )
            except StoreUnavailable as exc:
                state.store_failed("renew leases", exc)
                # The next try may come too late: stop the jobs one interval before the end.
                self._expire(margin=self.interval, why="store_unavailable")
                await asyncio.sleep(self.interval)
                continue
            state.store_back()
            lost = set()
            for pair in held:
                if pair[0] not in renewal.held:
                    lost.add(pair)
                elif pair in state.leases and pair[0] not in renewal.locked:
                    # A locked row keeps its old lease here: renewed on a later turn, or
                    # stopped at its end like any lease not renewed in time.
                    state.leases[pair] = sent + lease
            self._lost(lost, "not_held")
            # An answer that came after the new lease already ended is no better than none.
            self._expire()
            for job_id, attempt in held:
                if job_id in renewal.cancel:
                    self.executor.cancel(job_id, "cancelled", attempt=attempt)
            await self._upkeep()
            await asyncio.sleep(self.interval)

    async def _upkeep(self) -> None:
        state = self.state
        try:
            if state.orphans_possible:
                await self._give_back_unknown()
            recovered = await self.store.recover_expired_leases()
            await self.store.heartbeat_worker(
                state.worker_id, {**self.state_now(), **self.extra_state()}
            )
            await self.count_instances()
        except StoreUnavailable as exc:
            log.warning("lease_upkeep_failed", error=str(exc))
            recovered = []
        if recovered:
            log.warning("leases_recovered", count=len(recovered), job_ids=recovered[:20])
            state.wake.set()

    async def _give_back_unknown(self) -> None:
        """Give back rows running under this worker that no task here runs.

        Claims and hand-overs wait meanwhile, and the ones in flight finish first: a row
        they committed but had not started yet must not be taken for an orphan.
        """
        state = self.state
        state.reconciling = True
        try:
            state.settled.clear()
            state.note_settled()
            try:
                async with asyncio.timeout(30.0):
                    await state.settled.wait()
            except TimeoutError:
                return  # still busy: try again at the next renewal
            known = sorted({job_id for job_id, _ in state.leases} | set(state.running))
            released = await self.store.release_unknown(state.worker_id, known)
            state.orphans_possible = False
        finally:
            state.reconciling = False
            state.wake.set()
            state.room_changed.set()
        if released:
            log.warning("unknown_jobs_released", count=len(released), job_ids=released[:20])

    async def count_instances(self) -> None:
        """Note whether another instance has a live heartbeat (it may claim our work), and
        for which queues the intake may wait for this pool all the same (fleet.py)."""
        state = self.state
        others = await self.store.other_workers(state.worker_id, state.workers.lease)
        alone = not others
        beside = fleet.paced_beside(state.config, state.queues, others) if others else frozenset()
        if (alone, beside) != (state.alone, state.paced_beside):
            log.info(
                "intake_pacing",
                on=alone or bool(beside),
                other_instances=len(others),
                queues="all" if alone else sorted(beside),
            )
        state.alone, state.paced_beside = alone, beside
        state.room_changed.set()

    def _held(self) -> list[tuple[int, int]]:
        """(job id, attempt) of every lease to renew: running here, or finished with the
        outcome not yet written. Not one being stopped: that one must be left to expire."""
        return [pair for pair in self.state.leases if not self._stopping_attempt(pair)]

    def _stopping_attempt(self, pair: tuple[int, int]) -> bool:
        running = self.state.running.get(pair[0])
        return (
            running is not None
            and running.job.attempts == pair[1]
            and running.stop_reason is not None
        )

    def _arm_timer(self) -> None:
        """Check the leases at the first deadline, and at least every renewal interval:
        should no renewal answer in time (one hanging, the store gone), the jobs still stop
        at their lease's end, not at the lease loop's next turn."""
        if self._timer is not None:
            self._timer.cancel()
        now = time.monotonic()
        first = min(self.state.leases.values(), default=now + self.interval)
        delay = max(0.0, min(first - now, self.interval))
        self._due = now + delay
        self._timer = asyncio.get_running_loop().call_later(delay, self._tick)

    def _tick(self) -> None:
        state = self.state
        late = time.monotonic() - self._due
        if late > _BLOCKED_AFTER:
            # The event loop did nothing for that long: an async handler that blocks it
            # (time.sleep, a CPU loop) stops every job's lease renewal and /healthz. Said
            # here, where the leases it cost are stopped, naming the handlers that may
            # have done it: those running, and those started since the timer last fired.
            suspects = {r.job.handler for r in state.running.values()}
            suspects.update(state.started_lately)
            log.warning("event_loop_blocked", seconds=round(late, 1), handlers=sorted(suspects))
        state.started_lately.clear()
        name_overdue(state.running.values(), time.monotonic())
        self._expire()
        if not self.state.stopping.is_set():
            self._arm_timer()

    def _expire(self, margin: float = 0.0, why: str = "not_renewed_in_time") -> None:
        """Stop every attempt whose lease ends within ``margin`` seconds (or has ended);
        one being cancelled too, so that it writes no "cancelled" either."""
        limit = time.monotonic() + margin
        self._lost({p for p, until in self.state.leases.items() if until <= limit}, why)

    def _lost(self, pairs: set[tuple[int, int]], why: str) -> None:
        """Stop these attempts (job id, attempt) and drop their unwritten outcomes: another
        instance may own the jobs now, and the attempt's outcome is not ours to write."""
        if not pairs:
            return
        for job_id, attempt in pairs:
            self.executor.cancel(job_id, "lease_lost", why=why, attempt=attempt)
            self.state.leases.pop((job_id, attempt), None)
        self.completer.drop(pairs, why)
