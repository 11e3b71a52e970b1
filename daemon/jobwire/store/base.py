"""The store's role ports: what the intake and pools, the scheduler and operators each use."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, Protocol

from jobwire.effects import Claim, OutboxRow
from jobwire.limits import Rate
from jobwire.models import Job, JobSpec, JobStatus, Outcome, StreamOffset


class StoreUnavailable(Exception):
    """The store could not be reached or did not answer in time; the operation may be retried."""


class StoreRefused(StoreUnavailable):
    """The database answered but refused us (no such database, bad password): no retry helps."""


class InvalidJobData(Exception):
    """The store refused a batch for the data in it (not for being unreachable)."""


@dataclass(frozen=True)
class QueueFlow:
    """How a queue's jobs are claimed on the flow path (under the cluster-wide flow lock):
    keyed jobs at most ``key_limit`` running per key, in id order when ``ordered``; a queue
    rate when ``rate``; ``only_special``: this path takes only the queue's keyed jobs and
    those of rate-limited handlers (the fast claim takes the rest)."""

    key_limit: int = 1
    ordered: bool = False
    rate: Rate | None = None
    only_special: bool = False


@dataclass(frozen=True)
class ClaimFlow:
    """The flow controls a claim obeys: flow-path queues, handler rates, and whom to tell
    when a rate held jobs back (with the seconds until a token is due)."""

    queues: Mapping[str, QueueFlow] = field(default_factory=dict)
    handler_rates: Mapping[str, Rate] = field(default_factory=dict)
    on_throttle: Callable[[float], None] | None = None


@dataclass(frozen=True)
class ClaimRequest:
    """What a pool asks for: up to ``limit`` jobs, at most ``per_queue[q]`` from queue ``q``;
    ``flow``: the rate limits and concurrency keys to obey (none: every job is plain)."""

    per_queue: dict[str, int]
    limit: int
    worker_id: str
    lease: float
    flow: ClaimFlow | None = None


@dataclass(frozen=True)
class FlowState:
    """What the pools re-read every poll: paused queues, and queues with keyed jobs or jobs
    of rate-limited handlers waiting."""

    paused: frozenset[str] = frozenset()
    keyed: frozenset[str] = frozenset()
    limited: frozenset[str] = frozenset()


@dataclass(frozen=True)
class QueueState:
    """A queue an operator paused or resumed, and when and by whom."""

    queue: str
    paused: bool
    changed_at: datetime
    changed_by: str | None


@dataclass(frozen=True)
class DirectStart:
    """Insert some jobs already running in ``worker_id``: an idle pool skips the claim."""

    worker_id: str
    lease: float
    flags: Sequence[bool]  # one per spec: start this one at once


@dataclass(frozen=True)
class Enqueued:
    """What an insert made: an id per spec (None for a duplicate), and the jobs it started."""

    ids: list[int | None]
    started: list[Job] = field(default_factory=list)


@dataclass(frozen=True)
class Renewal:
    """The answer to a lease renewal: which jobs are still this worker's, which to cancel.

    A job asked about but missing from ``held`` is no longer this worker's (its lease was
    recovered, or another worker runs it now): the worker must stop it and write nothing.
    """

    held: frozenset[int] = frozenset()
    cancel: frozenset[int] = frozenset()
    # Still this worker's but not renewed now: another transaction holds the row locked.
    locked: frozenset[int] = frozenset()


@dataclass(frozen=True)
class ScheduleRow:
    """One row of the schedules table (a field per column; a test holds them together)."""

    id: int
    name: str
    cron: str | None
    interval_s: float | None
    timezone: str
    handler: str
    payload: Any
    queue: str
    priority: int
    max_attempts: int | None
    enabled: bool
    start_at: datetime | None
    end_at: datetime | None
    max_runs: int | None
    run_count: int
    last_run_at: datetime | None
    next_run_at: datetime | None
    catch_up: Literal["none", "latest", "all"]
    # "config": written from the config file at start-up; "api": added at run time (CLI, API).
    origin: Literal["config", "api"] = "config"


@dataclass(frozen=True)
class AuditEntry:
    """One operator action to record: who (actor and role), what, on what, how many."""

    actor: str
    role: str
    action: str
    target: str | None = None
    count: int = 0
    detail: dict[str, Any] = field(default_factory=dict)


class OutboxBacklog(NamedTuple):
    """One output's unsent messages: how many, the age of the oldest the relay still tries,
    and how many were set aside (they wait for an operator)."""

    pending: int
    oldest: float
    set_aside: int = 0


@dataclass(frozen=True)
class SetAsideMessage:
    """An outbox message its relay gave up on (``max_attempts`` used, or refused for good):
    it waits for an operator to send it again or discard it."""

    id: int
    output: str
    job_id: int | None
    n: int
    key: str | None
    attempts: int
    last_error: str | None
    created_at: datetime
    failed_at: datetime
    size: int  # the body's bytes


@dataclass(frozen=True)
class FailureGroup:
    """Failed jobs sharing an error fingerprint: how many, when, where, and the newest."""

    fingerprint: str
    count: int
    first_seen: datetime | None
    last_seen: datetime | None
    handlers: list[str]
    queues: list[str]
    sample_id: int


# One minute of finished jobs: (minute, queue, status, count).
ThroughputRow = tuple[datetime, str, str, int]


@dataclass(frozen=True)
class AuditRow:
    """One row of the audit table."""

    id: int
    at: datetime
    actor: str
    role: str
    action: str
    target: str | None
    count: int
    detail: dict[str, Any]


# The handler routing gives a message no route matched (jobwire.routing.UNROUTABLE; the
# store may not import routing, so a contract test holds the two equal).
UNROUTABLE_HANDLER = "(unroutable)"


@dataclass(frozen=True)
class JobFilter:
    """Which jobs an operator's bulk action or listing means; every field narrows it.

    A job is poison when it can only fail again: unroutable, or stored failed before it
    ever ran (attempts 0). ``exclude_poison`` leaves those out.
    """

    status: str | None = None
    queue: str | None = None
    handler: str | None = None
    source: str | None = None
    created_before: datetime | None = None
    created_after: datetime | None = None
    ids: tuple[int, ...] | None = None
    exclude_poison: bool = False


NotifyCallback = Callable[[str], None]


def started_jobs(
    specs: Sequence[JobSpec],
    ids: Sequence[int | None],
    direct: DirectStart | None,
    default_max_attempts: int,
) -> list[Job]:
    """The jobs an insert with ``direct`` made running: flagged, new, and not failed."""
    if direct is None:
        return []
    now = datetime.now(UTC)
    return [
        Job(
            id=job_id,
            handler=spec.handler,
            queue=spec.queue,
            status=JobStatus.RUNNING,
            priority=spec.priority,
            attempts=1,
            max_attempts=spec.max_attempts or default_max_attempts,
            payload=spec.payload,
            run_at=now,
            created_at=now,
            body=spec.body,
            content_type=spec.content_type,
            headers=spec.headers,
            source=spec.source,
            dedup_key=spec.dedup_key,
            worker_id=direct.worker_id,
            started_at=now,
            timeout=spec.timeout,
            concurrency_key=spec.concurrency_key,
            unique_mode=spec.unique or "forever",
        )
        for spec, job_id, flag in zip(specs, ids, direct.flags, strict=True)
        # Not handed off, a duplicate that made no row, or a row stored failed.
        if flag and job_id is not None and spec.failed_reason is None
    ]


class LeaderLock(Protocol):
    """A held leadership lock: held while its connection lives."""

    async def still_held(self) -> bool:
        """False once the lock is gone (its connection dropped)."""

    async def release(self) -> None:
        """Give the lock up."""


class JobStore(Protocol):
    """What the intake and the worker pool use: insert, claim, finish and give back jobs."""

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""

    async def enqueue(
        self,
        specs: Sequence[JobSpec],
        direct: DirectStart | None = None,
        offsets: Sequence[StreamOffset] = (),
    ) -> Enqueued:
        """Insert jobs in one transaction; a duplicate dedup key yields None instead of an id.

        ``offsets`` (a log consumer's positions) commit in the same transaction, never
        moving backwards. With ``direct``, the flagged new rows start running in its worker
        and come back in ``started``, ready to run.
        """

    async def enqueue_many(
        self,
        specs: Sequence[JobSpec],
        direct: DirectStart | None = None,
        offsets: Sequence[StreamOffset] = (),
    ) -> list[int | None]:
        """``enqueue(...).ids``: an id per spec, None for a duplicate dedup key."""

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

    async def set_progress(self, job_id: int, percent: int, note: str | None) -> None:
        """Record a running job's progress."""

    async def existing(self, job_ids: Sequence[int]) -> set[int]:
        """Which of these job ids have a visible (committed) row."""

    async def ready_backlog(self, cap: int) -> int:
        """How many jobs are ready to run, counting no further than ``cap``."""

    async def oldest_ready(self, queues: Sequence[str]) -> dict[str, float]:
        """Seconds the oldest job ready to run now has waited, per queue (0 when none)."""

    async def oldest_ready_elsewhere(self, queues: Sequence[str]) -> float:
        """Seconds the oldest job ready to run now, of any queue but these, has waited."""

    async def flow_state(
        self, queues: Sequence[str], limited_handlers: Collection[str] = (), full: bool = True
    ) -> FlowState:
        """Which of these queues are paused, which have keyed jobs ready, and which have
        jobs of these (rate-limited) handlers waiting; not ``full``: a bounded look that
        may miss some (the caller keeps what it knew until a full one)."""

    async def stats(self, finished: bool = True) -> dict[str, dict[str, int]]:
        """Job counts as ``{queue: {status: count}}`` (metrics read the live ones only)."""

    async def register_worker(
        self,
        worker_id: str,
        host: str,
        pid: int,
        version: str,
        state: dict[str, Any] | None = None,
    ) -> None:
        """Announce this instance in the workers table (``state``: its first heartbeat's)."""

    async def heartbeat_worker(self, worker_id: str, state: dict[str, Any]) -> None:
        """Refresh this instance's heartbeat and published state."""

    async def unregister_worker(self, worker_id: str) -> None:
        """Remove this instance's row on a clean stop."""

    async def other_workers(self, worker_id: str, within: float) -> list[dict[str, Any]]:
        """The state of each other instance whose heartbeat is at most ``within`` seconds
        old."""

    async def listen(self, on_notify: NotifyCallback, on_reconnect: Callable[[], None]) -> None:
        """Deliver notifications until cancelled, reconnecting when the connection drops."""

    async def close(self) -> None:
        """Release connections."""


class ScheduleStore(Protocol):
    """What the scheduler and the schedules commands use, with the leader's lock."""

    async def sync_schedules(self, rows: Sequence[dict[str, Any]]) -> None:
        """Write the configured schedules (config wins); disable those no longer listed."""

    async def due_schedules(self) -> list[ScheduleRow]:
        """Enabled schedules whose next tick has come, the most overdue first."""

    async def fire_schedule(
        self,
        name: str,
        specs: Sequence[JobSpec],
        last_run_at: datetime | None,
        next_run_at: datetime | None,
        expected_next: datetime,
    ) -> int | None:
        """Insert a schedule's tick jobs and move it on, in one transaction.

        Returns how many jobs were new, or None when another leader had already moved the
        schedule on (nothing is written then).
        """

    async def list_schedules(self) -> list[ScheduleRow]:
        """Every schedule, by name."""

    async def get_schedule(self, name: str) -> ScheduleRow | None:
        """One schedule by name."""

    async def set_schedule_enabled(self, name: str, enabled: bool) -> bool:
        """Pause or resume a schedule; False if there is none by that name."""

    async def enqueue_scheduled(self, specs: Sequence[JobSpec]) -> list[int]:
        """Insert jobs linked to their schedule (``spec.schedule_id``); the new ids."""

    async def add_schedule(self, values: Mapping[str, Any]) -> ScheduleRow | None:
        """Add a run-time schedule (origin 'api'); None when the name is taken."""

    async def update_schedule(self, name: str, values: Mapping[str, Any]) -> ScheduleRow | None:
        """Change a run-time schedule; None when there is no run-time schedule by that name."""

    async def remove_schedule(self, name: str) -> bool:
        """Delete a run-time schedule (its jobs stay); False when there is none by that name."""

    async def last_schedule_jobs(self) -> dict[int, tuple[int, str]]:
        """Each schedule's newest job: ``{schedule id: (job id, status)}``."""

    async def try_leadership(
        self, key: str, *, idle_timeout: float | None = None
    ) -> LeaderLock | None:
        """A held lock named ``key``, or None when another instance holds it; with
        ``idle_timeout``, the lock goes when its holder has not pinged for that long."""


@dataclass
class PurgeCursor:
    """How far a purge run has got: the newest finished_at it deleted (None: not started)."""

    finished_at: datetime | None = None


class MaintenanceStore(Protocol):
    """What the leader's housekeeping uses: its own lock, lease rescue and retention."""

    async def try_leadership(
        self, key: str, *, idle_timeout: float | None = None
    ) -> LeaderLock | None:
        """A held lock named ``key``, or None when another instance holds it; with
        ``idle_timeout``, the lock goes when its holder has not pinged for that long."""

    async def recover_expired_leases(self) -> list[int]:
        """Take back jobs whose lease ran out (their worker died); the lost attempt counts."""

    async def purge_finished(
        self, older_than: float, batch: int, cursor: PurgeCursor | None = None
    ) -> int:
        """Delete one batch of finished jobs older than ``older_than`` seconds, oldest first;
        with ``cursor``, from where its last batch ended, and move it on."""

    async def purge_outbox(self, older_than: float, batch: int) -> int:
        """Delete one batch of outbox rows sent more than ``older_than`` seconds ago."""

    async def maintain_tables(
        self, tables: Sequence[str] | None, *, vacuum: bool, analyze: bool, timeout: float
    ) -> list[str]:
        """VACUUM and/or ANALYZE jobwire's own tables (all, or those named); the ones done."""


class OutboxStore(Protocol):
    """What the outbox relays use: claim rows with a lease, mark them sent, give them back."""

    async def claim_outbox(
        self,
        output: str,
        limit: int,
        lease: float,
        after: OutboxRow | None = None,
        sent: Sequence[int] = (),
        leases: Sequence[int] | None = None,
    ) -> Claim:
        """Lease up to ``limit`` unsent rows of ``output``, oldest first (a key in flight
        elsewhere waits), for ``lease`` seconds; ``after``: only rows after that one (the
        previous claim's ``resume``); ``sent``: rows to mark sent first, in the same
        transaction, taken out of ``leases`` (as ``mark_outbox_sent``)."""

    async def mark_outbox_sent(
        self, ids: Sequence[int], leases: Sequence[int] | None = None
    ) -> None:
        """Mark rows sent, after the broker confirmed them, and take them out of ``leases``
        (the caller's; None: whichever names them)."""

    async def release_outbox(
        self, ids: Sequence[int], error: str, leases: Sequence[int] | None = None
    ) -> None:
        """Free rows that could not be sent through no fault of theirs, with the reason:
        only those ``leases`` still hold (None: whichever lease names them)."""

    async def fail_outbox(
        self,
        ids: Sequence[int],
        error: str,
        max_attempts: int,
        permanent: Sequence[int] = (),
        leases: Sequence[int] | None = None,
    ) -> list[int]:
        """Free rows whose own publish failed, or set them aside for good (``max_attempts``
        used up, or in ``permanent``): only those ``leases`` still hold (None: whichever
        lease names them); returns the ids set aside."""

    async def outbox_pending(self) -> dict[str, OutboxBacklog]:
        """Unsent rows per output and the age in seconds of the oldest."""

    async def purge_outbox(self, older_than: float, batch: int) -> int:
        """Delete one batch of rows sent more than ``older_than`` seconds ago."""


class AdminStore(Protocol):
    """What operators and applications use: enqueue, look up, cancel and retry jobs."""

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""

    async def oldest_ready(self, queues: Sequence[str]) -> dict[str, float]:
        """Seconds the oldest job ready to run now has waited, per queue (0 when none)."""

    async def enqueue_many(
        self,
        specs: Sequence[JobSpec],
        direct: DirectStart | None = None,
        offsets: Sequence[StreamOffset] = (),
    ) -> list[int | None]:
        """Insert jobs in one transaction; a duplicate dedup key yields None instead of an id."""

    async def ids_by_dedup_key(self, keys: Sequence[str]) -> dict[str, int]:
        """Existing job ids for the given dedup keys."""

    async def get(self, job_id: int) -> Job | None:
        """One job by id."""

    async def list_jobs(
        self,
        status: str | None = None,
        queue: str | None = None,
        limit: int = 50,
        before_id: int | None = None,
        *,
        handler: str | None = None,
        source: str | None = None,
    ) -> list[Job]:
        """Newest jobs first, optionally filtered; ``before_id`` pages on."""

    async def count_jobs(
        self,
        status: str,
        queue: str | None = None,
        handler: str | None = None,
        source: str | None = None,
        *,
        cap: int,
    ) -> int | None:
        """How many jobs match, counted no further than ``cap``; None for a status whose
        count would read the history (succeeded), where no partial index bounds it."""

    async def failed_since(self, seconds: float, cap: int) -> dict[str, int]:
        """Jobs failed in the last ``seconds``, by queue, counted no further than ``cap``."""

    async def record_audit(self, entry: AuditEntry) -> int:
        """Write an operator's action to the audit table; returns its id."""

    async def list_audit(self, limit: int = 50, before_id: int | None = None) -> list[AuditRow]:
        """Audit rows, newest first; ``before_id`` pages on."""

    async def runs(self, job_id: int) -> list[dict[str, Any]]:
        """The attempts of one job, oldest first."""

    async def stats(self, finished: bool = True) -> dict[str, dict[str, int]]:
        """Job counts as ``{queue: {status: count}}``; only pending, retrying and running
        ones (cheap however long the history) when ``finished`` is false."""

    async def outbox_pending(self) -> dict[str, OutboxBacklog]:
        """Unsent outbox rows per output and the age in seconds of the oldest."""

    async def set_aside_messages(
        self, output: str | None, limit: int, before_id: int | None = None
    ) -> list[SetAsideMessage]:
        """Outbox messages set aside, of ``output`` (None: every output), newest first;
        ``before_id`` pages on."""

    async def resend_set_aside(self, output: str, ids: Sequence[int] | None = None) -> list[int]:
        """Give set-aside messages of ``output`` (those of ``ids``; None: all) back to its
        relay, their attempts counted from zero; returns their ids."""

    async def discard_set_aside(self, output: str, ids: Sequence[int] | None = None) -> list[int]:
        """Delete set-aside messages of ``output`` (those of ``ids``; None: all); returns
        their ids."""

    async def list_workers(self) -> list[dict[str, Any]]:
        """Every instance's row: id, host, pid, version, heartbeat age, published state."""

    async def cancel(self, job_id: int) -> str | None:
        """Cancel a waiting job or flag a running one; returns the status, None if unknown."""

    async def set_queue_paused(self, queue: str, paused: bool, by: str) -> bool:
        """Pause or resume a queue for every instance; False if it already was so."""

    async def queue_states(self) -> list[QueueState]:
        """Every queue an operator paused or resumed, by name."""

    async def retry(self, job_ids: Sequence[int] = (), status: str | None = None) -> list[int]:
        """Run failed or cancelled jobs again; returns the ids that were requeued."""

    async def select_ids(
        self, where: JobFilter, limit: int, before_id: int | None = None
    ) -> list[int]:
        """Ids of matching jobs, newest first, at most ``limit``; ``before_id`` pages on
        (keyset, through the status's index as list_jobs reads it)."""

    async def jobs_by_ids(self, job_ids: Sequence[int]) -> list[Job]:
        """These jobs (those that exist), newest first."""

    async def retry_ids(self, job_ids: Sequence[int], include_poison: bool = False) -> list[int]:
        """Requeue those of these jobs still failed or cancelled (poison ones only with
        ``include_poison``); returns the ids requeued."""

    async def cancel_ids(self, job_ids: Sequence[int]) -> dict[int, str]:
        """Cancel those of these jobs still waiting and flag running ones; returns each
        touched id with its status now (cancelled, or running when flagged)."""

    async def delete_ids(self, job_ids: Sequence[int]) -> list[int]:
        """Delete those of these jobs that are finished, with their runs; returns their ids."""

    # -- the dashboard's (failures, frozen bulk actions, throughput, live changes) --------

    async def failure_groups(self, limit: int) -> list[FailureGroup]:
        """Failed jobs grouped by error fingerprint, the biggest group first."""

    async def failed_ids(
        self, fingerprint: str, limit: int, before_id: int | None = None
    ) -> list[int]:
        """Ids of failed jobs with this fingerprint, newest first; ``before_id`` pages on."""

    async def finished_before(self, job_ids: Sequence[int], at: datetime) -> list[int]:
        """Those of these jobs whose last finish is no later than ``at``."""

    async def throughput(self, since: datetime) -> list[ThroughputRow]:
        """Finished jobs per minute, queue and status since ``since``, oldest first."""

    async def rollup_throughput(self) -> int:
        """Add the whole minutes finished since the last rollup; returns rows written."""

    async def change_marker(self) -> int:
        """A number that moves whenever jobs are inserted, changed or deleted (polled)."""

    async def backfill_fingerprints(self, batch: int) -> int:
        """Fingerprint up to ``batch`` failed jobs that have none yet; returns how many."""

    async def close(self) -> None:
        """Release connections."""


class OperatorStore(AdminStore, ScheduleStore, Protocol):
    """What the CLI and the HTTP API use: the admin role and the schedules."""


class Store(JobStore, OperatorStore, MaintenanceStore, Protocol):
    """Every role: what the wiring holds and hands out by role."""
