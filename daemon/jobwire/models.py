"""Plain data the core passes around: broker messages, job specs, jobs and attempt outcomes.

``Message`` and ``MessageSink`` are the port through which sources hand deliveries to the
core: adapters build them, the core never imports an adapter.

One of each is made per message or per job, so they are slotted and not frozen: a frozen
dataclass sets each field through object.__setattr__, several times slower to make. Treat
them as values all the same.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Protocol


class JobStatus(enum.StrEnum):
    """Lifecycle of a job row."""

    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
# Waiting or running: what the metrics count (the rest is history).
LIVE = (JobStatus.PENDING, JobStatus.RETRYING, JobStatus.RUNNING)


@dataclass(slots=True)
class JobSpec:
    """A job to be inserted: everything a producer decides about it."""

    handler: str
    payload: Any = None
    queue: str = "default"
    priority: int = 0
    delay: float = 0.0
    max_attempts: int | None = None
    dedup_key: str | None = None
    body: bytes | None = None
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    source: str | None = None
    parent_id: int | None = None
    # A spec that arrives already failed (poison message): stored as ``failed`` with this reason.
    failed_reason: str | None = None
    # The payload as JSON text when the producer already has it (a broker body that parsed):
    # stored as is, saving a second serialisation.
    payload_json: str | None = None
    # Seconds one attempt may run; None: the queue's timeout (if any).
    timeout: float | None = None
    # Jobs sharing a key are limited together (the queue's key concurrency, order).
    concurrency_key: str | None = None
    # How long dedup_key stays taken: "forever" (None; until retention deletes the row) or
    # "active" (released when the job finishes, so the key can be enqueued again).
    unique: str | None = None
    # The schedule that made the job (its ticks, or a "run now"); written by the scheduler's
    # own insert (store.enqueue_scheduled), which is the only one that reads it.
    schedule_id: int | None = None
    # Ids of jobs this one waits for: it runs once all succeeded, fails if one failed.
    after: list[int] | None = None
    # Where its result goes once it finished (a source with reply: true): see jobwire.reply.
    reply: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class StreamOffset:
    """Where a consumer group goes on in one partition of a log (Kafka): stored with the jobs."""

    group_id: str
    topic: str
    partition: int
    next_offset: int


class DeadLetter(Protocol):
    """Dead-letters one delivery: returns once the dead-letter target has it, else raises.

    When it raises, the delivery is not settled and the broker still has it (it comes back
    when the connection or channel it came on ends); nothing is lost.
    """

    def __call__(self, reason: str | None = None) -> Awaitable[None]:
        """``reason``: why it is poison, passed on where the protocol can carry it (STOMP)."""
        ...


@dataclass(slots=True)
class Message:
    """One broker delivery, decoded; settled through the callables its adapter put in it."""

    source: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    # Protocol metadata a route may select with ``property:NAME`` (message_id, routing_key...).
    properties: dict[str, Any] = field(default_factory=dict)
    content_type: str | None = None
    # A key the adapter knows already (Kafka: topic/partition/offset); routes may override it.
    dedup_key: str | None = None
    ack: Callable[[], Awaitable[None]] | None = None
    nack: Callable[[bool], Awaitable[None]] | None = None
    reject: DeadLetter | None = None
    # A log consumer's position after this message (Kafka): stored with the job row.
    offset: StreamOffset | None = None
    # The adapter's own handle on the delivery (used for batched acks).
    raw: Any = None
    # Why the adapter could not read this delivery (it keeps what it could): the message
    # becomes a failed job with this reason, in its place in the stream.
    unreadable: str | None = None


MessageSink = Callable[[Message], None]
"""Takes one delivery and returns at once (the intake queues it): adapters call it in
arrival order and never wait on it."""
OffsetReader = Callable[[str, Sequence[tuple[str, int]]], Awaitable[dict[tuple[str, int], int]]]
"""Reads a consumer group's stored positions: ``(group_id, [(topic, partition)])``."""


class UnreadableJson(str):
    """A stored JSON value the json module cannot read back, kept as its text.

    PostgreSQL holds what Python refuses: an integer of more than 4,300 digits (jsonb
    prints ``1e5000`` as one), nesting deeper than the recursion limit. Such a row, read
    in a claimed batch, made the whole read fail, and the batch's other jobs were left
    running until their leases ran out. Read as this marker instead, it fails its own job
    with the reason (``unreadable``), reads as text everywhere else, and is written back
    as the text it was.
    """

    error: str

    def __new__(cls, text: str, error: str) -> UnreadableJson:
        """The stored ``text``, and the json module's ``error`` reading it."""
        value = super().__new__(cls, text)
        value.error = error
        return value


def unreadable(job: Job) -> str | None:
    """Why ``job`` cannot be run as stored (a part the json module could not read), if so."""
    for part, value in (("payload", job.payload), ("headers", job.headers)):
        if isinstance(value, UnreadableJson):
            return f"the stored {part} cannot be read: {value.error}"
    return None


@dataclass(slots=True)
class Job:
    """A job row as read from the store."""

    id: int
    handler: str
    queue: str
    status: JobStatus
    priority: int
    attempts: int
    max_attempts: int
    payload: Any
    run_at: datetime
    created_at: datetime
    body: bytes | None = None
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    source: str | None = None
    dedup_key: str | None = None
    result: Any = None
    last_error: str | None = None
    progress: int | None = None
    progress_note: str | None = None
    worker_id: str | None = None
    lease_until: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    parent_id: int | None = None
    cancel_requested: bool = False
    schedule_id: int | None = None
    # The job's own attempt timeout in seconds (wins over the queue's); None: the queue's.
    timeout: float | None = None
    concurrency_key: str | None = None
    # "forever" or "active"; released_key: the dedup key a finished "active" job let go.
    unique_mode: str = "forever"
    released_key: str | None = None
    # What groups a failed job's error with like ones (migration 0010 writes it).
    error_fingerprint: str | None = None
    # The jobs this one waits for (migration 0012); has_dependents: others wait for it.
    after_ids: list[int] | None = None
    has_dependents: bool = False
    # The reply address (migration 0013); "replied" is set once the reply row was written.
    reply: dict[str, Any] | None = None
    # While the job waits on after_ids (run_at infinity): the run_at it asked for, which the
    # wake makes it due at (migration 0021).
    after_run_at: datetime | None = None


@dataclass(slots=True)
class Outcome:
    """How one attempt ended; written back to the store in batches."""

    job_id: int
    attempt: int
    status: JobStatus  # SUCCEEDED, RETRYING, FAILED or CANCELLED
    duration: float
    result_json: str | None = None  # the handler's return value, serialised once
    error: str | None = None
    retry_in: float | None = None


_JOB_FIELDS = tuple(f.name for f in fields(Job))


def job_as_dict(job: Job) -> dict[str, Any]:
    """A job as plain JSON-ready values (CLI and HTTP API)."""
    out: dict[str, Any] = {}
    for key in _JOB_FIELDS:
        value = getattr(job, key)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        elif isinstance(value, JobStatus):
            value = str(value)
        out[key] = value
    return out
