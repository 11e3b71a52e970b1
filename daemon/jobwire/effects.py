"""What a handler asks for besides its result (messages to outputs, child jobs), held until
the attempt's completion writes them in the same transaction as its outcome."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from jobwire.models import JobStatus, Outcome


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One message for an output: an outbox row once the attempt succeeds."""

    output: str
    n: int  # 1, 2, ... per attempt: with the job id, the message's stable id
    body: bytes
    key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChildJob:
    """A job to create (``parent_id``: the job that asked) once the attempt succeeds."""

    handler: str
    payload_json: str | None
    queue: str = "default"
    priority: int = 0
    delay: float = 0.0
    dedup_key: str | None = None
    max_attempts: int | None = None
    # Ids of jobs the child waits for (it runs once all succeeded); None: none.
    after: tuple[int, ...] | None = None


@dataclass(slots=True)
class Effects:
    """Everything one attempt recorded, in call order."""

    messages: list[OutboxMessage] = field(default_factory=list)
    children: list[ChildJob] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.messages or self.children)


@dataclass(frozen=True, slots=True)
class Recorded:
    """A handler's return value with the effects its attempt recorded (what the registry's
    ``invoke`` returns for a handler that published or enqueued)."""

    value: Any
    effects: Effects


@dataclass(slots=True)
class EffectfulOutcome(Outcome):
    """A successful outcome carrying effects: the store writes them with it or not at all."""

    effects: Effects | None = None


def effects_of(outcome: Outcome) -> Effects | None:
    """The effects a succeeded outcome carries, None for any other."""
    if (
        isinstance(outcome, EffectfulOutcome)
        and outcome.effects
        and outcome.status == JobStatus.SUCCEEDED
    ):
        return outcome.effects
    return None


def encode_body(body: Any) -> tuple[bytes, str | None]:
    """A message body as bytes, and the content type it implies: bytes as given, text as
    UTF-8, anything else as JSON."""
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body), None
    if isinstance(body, str):
        return body.encode("utf-8"), "text/plain; charset=utf-8"
    try:
        text = json.dumps(body, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"a message body must be bytes, text or JSON: {exc}") from exc
    return text.encode("utf-8"), "application/json"


def message_id(job_id: int | None, n: int, row_id: int) -> str:
    """The stable id of an outbox message: ``jobwire-<job id>-<n>`` (a row without a job,
    from another way in: ``jobwire-row-<id>``)."""
    return f"jobwire-{job_id}-{n}" if job_id is not None else f"jobwire-row-{row_id}"


class OutboxRow(NamedTuple):
    """One unsent outbox row, as a relay claims it (a tuple: a claim builds one per row, and
    a frozen dataclass took over three times as long to build)."""

    id: int
    job_id: int | None
    n: int
    key: str | None
    headers: dict[str, str]
    body: bytes
    attempts: int = 1
    created_at: datetime | None = None

    @property
    def message_id(self) -> str:
        """The stable id every output carries (AMQP message_id, a header elsewhere)."""
        return message_id(self.job_id, self.n, self.id)

    @property
    def message_id_bytes(self) -> bytes:
        """``message_id`` encoded, for outputs whose headers are bytes (Kafka)."""
        if self.job_id is not None:
            return b"jobwire-%d-%d" % (self.job_id, self.n)
        return b"jobwire-row-%d" % self.id


class Claim(list[OutboxRow]):
    """A claim's rows, oldest first; ``resume``: the ``after`` for the same drain's next
    claim (just before the first row this one passed over, so that row is not overtaken by a
    newer row of its key; None: from the start); ``lease``: the lease holding the rows (None
    for no rows), which the relay names when it settles them."""

    resume: OutboxRow | None = None
    lease: int | None = None


def position(row_id: int, created_at: datetime | None) -> OutboxRow:
    """A claim position: as an ``after``, rows past (``created_at``, ``row_id``)."""
    return OutboxRow(row_id, None, 0, None, {}, b"", 0, created_at)


def position_before(row_id: int, created_at: datetime | None) -> OutboxRow:
    """A claim position just before the row ``row_id``: an ``after`` that includes it."""
    return position(row_id - 1, created_at)


@dataclass(frozen=True, slots=True)
class Published:
    """What a publish of one batch achieved: the rows the broker confirmed, why the others
    were not (None when all were), and ``permanent``: rows the broker refused in a way that
    can never succeed (too large, ...), set aside at once instead of retried."""

    confirmed: frozenset[int]
    error: str | None = None
    permanent: frozenset[int] = frozenset()
    # The destination refused every row alike (an AMQP return: no queue bound to it): the
    # fault is the setup's, not a row's, so no row is charged an attempt; they all wait.
    blameless: bool = False


class OutputPublisher(Protocol):
    """The port an adapter implements for an output: publish with the broker's confirmation.

    ``publish`` sends the rows in order (the same key, one after another) and returns the
    ids the broker confirmed; a row is confirmed only when the broker has taken charge of it
    (AMQP confirm, Kafka acks=all, MQTT PUBACK, STOMP RECEIPT). A lost connection is an
    answer (the rows not confirmed, the reason), not an exception.
    """

    async def connect(self) -> None:
        """Open the connection; raise if the broker cannot be reached."""

    async def publish(self, rows: Sequence[OutboxRow], timeout: float) -> Published:
        """Send these rows; return the ids confirmed within ``timeout`` seconds."""

    async def close(self) -> None:
        """Close the connection (safe to call when not connected)."""
