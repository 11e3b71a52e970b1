"""The JobStore interface every part of the core talks to."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from jobwire.models import Job, JobSpec, Outcome, StreamOffset


class StoreUnavailable(Exception):
    """The store could not be reached or did not answer in time; the operation may be retried."""


class StoreRefused(StoreUnavailable):
    """The database answered but refused us (no such database, bad password): no retry helps."""


class InvalidJobData(Exception):
    """The store refused a batch for the data in it (not for being unreachable)."""


@dataclass(frozen=True)
class ClaimRequest:
    """What a pool asks for: up to ``limit`` jobs, at most ``per_queue[q]`` from queue ``q``."""

    per_queue: dict[str, int]
    limit: int
    worker_id: str
    lease: float


@dataclass(frozen=True)
class DirectStart:
    """Insert some jobs already running in ``worker_id``: an idle pool skips the claim."""

    worker_id: str
    lease: float
    flags: Sequence[bool]  # one per spec: start this one at once


@dataclass(frozen=True)
class Renewal:
    """The answer to a lease renewal: which jobs are still this worker's, which to cancel.

    A job asked about but missing from ``held`` is no longer this worker's (its lease was
    recovered, or another worker runs it now): the worker must stop it and write nothing.
    """

    held: frozenset[int] = frozenset()
    cancel: frozenset[int] = frozenset()


NotifyCallback = Callable[[str], None]


class JobStore(Protocol):
    """Durable job storage; one implementation per backend (PostgreSQL, memory)."""

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""

    async def enqueue_many(
        self,
        specs: Sequence[JobSpec],
        direct: DirectStart | None = None,
        offsets: Sequence[StreamOffset] = (),
    ) -> list[int | None]:
        """Insert jobs in one transaction; a duplicate dedup key yields None instead of an id.

        ``offsets`` (a log consumer's positions) commit in the same transaction.
        """

    async def stored_offsets(
        self, group_id: str, partitions: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], int]:
        """The next offset stored for each (topic, partition) of a consumer group."""

    async def claim(self, request: ClaimRequest) -> list[Job]:
        """Mark ready jobs running under a lease and return them, priority first then FIFO."""

    async def complete_many(self, worker_id: str, outcomes: Sequence[Outcome]) -> int:
        """Record attempt outcomes; returns how many were still held by this worker."""

    async def renew_leases(self, worker_id: str, lease: float, job_ids: Sequence[int]) -> Renewal:
        """Extend the leases of these running jobs still held by this worker; says which
        were renewed (still held) and which of those are asked to cancel."""

    async def recover_expired_leases(self) -> list[int]:
        """Take back jobs whose lease ran out (their worker died) so others can run them."""

    async def release_unknown(self, worker_id: str, known_ids: Sequence[int]) -> list[int]:
        """Give back jobs running under ``worker_id`` other than ``known_ids`` (rows an insert
        or claim committed though its answer was lost), not counting an attempt."""

    async def release(self, worker_id: str, job_ids: Sequence[int]) -> list[int]:
        """Give unfinished jobs back at shutdown, not counting the interrupted attempt."""

    async def cancel(self, job_id: int) -> str | None:
        """Cancel a waiting job or flag a running one; returns the status, None if unknown."""

    async def retry(self, job_ids: Sequence[int] = (), status: str | None = None) -> list[int]:
        """Run failed or cancelled jobs again; returns the ids that were requeued."""

    async def ready_backlog(self, cap: int) -> int:
        """How many jobs are ready to run, counting no further than ``cap``."""

    async def existing(self, job_ids: Sequence[int]) -> set[int]:
        """Which of these job ids have a visible (committed) row."""

    async def get(self, job_id: int) -> Job | None:
        """One job by id."""

    async def list_jobs(
        self,
        status: str | None = None,
        queue: str | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[Job]:
        """Newest jobs first, optionally filtered; ``before_id`` pages on."""

    async def runs(self, job_id: int) -> list[dict[str, Any]]:
        """The attempts of one job, oldest first."""

    async def stats(self, finished: bool = True) -> dict[str, dict[str, int]]:
        """Job counts as ``{queue: {status: count}}``; only pending, retrying and running
        ones (cheap however long the history) when ``finished`` is false."""

    async def set_progress(self, job_id: int, percent: int, note: str | None) -> None:
        """Record a running job's progress."""

    async def register_worker(self, worker_id: str, host: str, pid: int, version: str) -> None:
        """Announce this instance in the workers table."""

    async def heartbeat_worker(self, worker_id: str, state: dict[str, Any]) -> None:
        """Refresh this instance's heartbeat and published state."""

    async def list_workers(self) -> list[dict[str, Any]]:
        """Every instance's row: id, host, pid, version, heartbeat age, published state."""

    async def unregister_worker(self, worker_id: str) -> None:
        """Remove this instance's row on a clean stop."""

    async def notify(self, message: str) -> None:
        """Wake every instance listening on this store."""

    async def listen(self, on_notify: NotifyCallback, on_reconnect: Callable[[], None]) -> None:
        """Deliver notifications until cancelled, reconnecting when the connection drops."""

    async def close(self) -> None:
        """Release connections."""
