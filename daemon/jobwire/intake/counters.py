"""Per-source intake counts, and the log line for each message routing had to change."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from jobwire.models import Message
from jobwire.routing import Poison, Routed


@dataclass
class SourceCounters:
    """Per-source intake counts, for stats and metrics."""

    received: int = 0
    stored: int = 0
    duplicate: int = 0
    invalid: int = 0
    dead_lettered: int = 0
    notified: int = 0
    acked: int = 0
    nacked: int = 0
    batches: int = 0
    # Messages whose headers had to be changed to be storable (they still ran).
    headers_replaced: int = 0
    # Messages that became failed jobs (or were dead-lettered), by Poison reason.
    poison: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict of the counts."""
        return asdict(self)

    def add_poison(self, kind: str | None) -> None:
        """One more message that could not become a runnable job."""
        key = kind or Poison.INTERNAL
        self.poison[key] = self.poison.get(key, 0) + 1

    def note_stored(self, log: Any, message: Message, result: Routed) -> None:
        """Count and log what routing had to change or refuse in one stored message."""
        if result.notes:
            self.headers_replaced += 1
            log.warning(
                "message_headers_replaced", notes=result.notes[:5], dedup_key=result.spec.dedup_key
            )
        reason = result.spec.failed_reason
        if reason is None:
            return
        kind = result.kind or Poison.STORE_REFUSED
        self.invalid += 1
        self.add_poison(kind)
        log.warning(
            "message_invalid",
            kind=kind,
            reason=reason,
            dedup_key=result.spec.dedup_key,
            bytes=len(message.body),
        )
